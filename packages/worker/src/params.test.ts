import assert from 'node:assert/strict'
import { afterEach, describe, test } from 'node:test'
import {
  OPTIONS_FORM,
  parseOptions,
  reportedName,
  syncStatement,
  trackedName,
  trackedNames,
  trackParameters,
  varsKey,
} from './params.ts'

describe('tracked session parameters', () => {
  afterEach(() => trackParameters(['IntervalStyle']))

  test('ParameterStatus names map to the tracked keys, others to null', () => {
    assert.equal(trackedName('DateStyle'), 'datestyle')
    assert.equal(trackedName('TimeZone'), 'timezone')
    assert.equal(trackedName('application_name'), 'application_name')
    assert.equal(trackedName('server_version'), null)
    // track_extra_parameters' default.
    assert.equal(trackedName('IntervalStyle'), 'intervalstyle')
    assert.equal(reportedName('intervalstyle'), 'IntervalStyle')
  })

  test('track_extra_parameters adds to the five, in any case, once each', () => {
    trackParameters(['search_path', 'SEARCH_PATH', 'TimeZone'])
    assert.deepEqual(trackedNames(), [
      'client_encoding',
      'datestyle',
      'timezone',
      'standard_conforming_strings',
      'application_name',
      'search_path',
    ])
    assert.equal(trackedName('IntervalStyle'), null)
    assert.equal(trackedName('Search_Path'), 'search_path')
  })

  test('one combined SET for what differs, quoting values; null when nothing does', () => {
    assert.equal(
      syncStatement(
        { timezone: 'UTC', application_name: "it's" },
        { timezone: 'Asia/Tokyo', application_name: '' },
      ),
      "SET timezone='UTC';SET application_name='it''s';",
    )
    assert.equal(syncStatement({ timezone: 'UTC' }, { timezone: 'UTC' }), null)
    // A client without an opinion keeps the server's value.
    assert.equal(syncStatement({}, { timezone: 'UTC' }), null)
    // A parameter the server never reported is left alone, as PgBouncer does.
    assert.equal(syncStatement({ intervalstyle: 'iso_8601' }, {}), null)
    assert.equal(
      syncStatement({ intervalstyle: 'iso_8601' }, { intervalstyle: 'postgres' }),
      "SET intervalstyle='iso_8601';",
    )
  })

  test('search_path goes unquoted: the server reports it quoted already', () => {
    trackParameters(['search_path'])
    assert.equal(
      syncStatement({ search_path: 'app, "My Schema"' }, { search_path: '"$user", public' }),
      'SET search_path=app, "My Schema";',
    )
    assert.equal(
      syncStatement({ search_path: '""' }, { search_path: 'public' }),
      "SET search_path='';",
    )
  })

  test('varsKey is equal exactly when every tracked value is', () => {
    assert.equal(varsKey({ timezone: 'UTC' }), varsKey({ timezone: 'UTC' }))
    assert.notEqual(varsKey({ timezone: 'UTC' }), varsKey({ timezone: 'UTC ' }))
    assert.notEqual(varsKey({}), varsKey({ timezone: '' }))
    assert.notEqual(varsKey({}), varsKey({ intervalstyle: 'iso_8601' }))
  })

  test('options: -c and -- settings of tracked parameters, backslash-escaped spaces', () => {
    assert.deepEqual(parseOptions('-c TimeZone=UTC --application_name=my\\ app', []), {
      vars: { timezone: 'UTC', application_name: 'my app' },
    })
    assert.deepEqual(parseOptions('-cDateStyle=ISO  -c  IntervalStyle=iso_8601 ', []), {
      vars: { datestyle: 'ISO', intervalstyle: 'iso_8601' },
    })
    assert.deepEqual(parseOptions('', []), { vars: {} })
  })

  test('options: PgBouncer 1.20+ texts for what it cannot honour', () => {
    assert.deepEqual(parseOptions('-c work_mem=1MB', []), {
      error: 'unsupported startup parameter in options: work_mem',
    })
    assert.deepEqual(parseOptions('-X', []), { error: OPTIONS_FORM })
    assert.deepEqual(parseOptions('-c geqo', []), { error: OPTIONS_FORM })
    // PgBouncer does not turn dashes into underscores.
    assert.deepEqual(parseOptions('--application-name=x', []), {
      error: 'unsupported startup parameter in options: application-name',
    })
    // ignore_startup_parameters: the parameter's own name, or options for all of them.
    assert.deepEqual(parseOptions('-c work_mem=1MB -c TimeZone=UTC', ['work_mem']), {
      vars: { timezone: 'UTC' },
    })
    assert.deepEqual(parseOptions('-c work_mem=1MB', ['options']), { vars: {} })
    assert.deepEqual(parseOptions('-X', ['options']), { error: OPTIONS_FORM })
  })
})
