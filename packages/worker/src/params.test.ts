import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { parseOptions, syncStatement, trackedName, varsKey } from './params.ts'

describe('tracked session parameters', () => {
  test('ParameterStatus names map to the tracked keys, others to null', () => {
    assert.equal(trackedName('DateStyle'), 'datestyle')
    assert.equal(trackedName('TimeZone'), 'timezone')
    assert.equal(trackedName('application_name'), 'application_name')
    assert.equal(trackedName('server_version'), null)
  })

  test('one combined SET for what differs, quoting values; null when nothing does', () => {
    assert.equal(
      syncStatement({ timezone: 'UTC', application_name: "it's" }, { timezone: 'Asia/Tokyo' }),
      "SET timezone='UTC';SET application_name='it''s';",
    )
    assert.equal(syncStatement({ timezone: 'UTC' }, { timezone: 'UTC' }), null)
    // A client without an opinion keeps the server's value.
    assert.equal(syncStatement({}, { timezone: 'UTC' }), null)
  })

  test('varsKey is equal exactly when every tracked value is', () => {
    assert.equal(varsKey({ timezone: 'UTC' }), varsKey({ timezone: 'UTC' }))
    assert.notEqual(varsKey({ timezone: 'UTC' }), varsKey({ timezone: 'UTC ' }))
    assert.notEqual(varsKey({}), varsKey({ timezone: '' }))
  })

  test('options: -c and -- settings of tracked parameters, backslash-escaped spaces', () => {
    assert.deepEqual(parseOptions('-c TimeZone=UTC --application-name=my\\ app'), {
      vars: { timezone: 'UTC', application_name: 'my app' },
    })
    assert.deepEqual(parseOptions('-cDateStyle=ISO'), { vars: { datestyle: 'ISO' } })
    assert.deepEqual(parseOptions('-c work_mem=1MB'), { unsupported: 'work_mem' })
    assert.deepEqual(parseOptions('-X'), { unsupported: '-X' })
  })
})
