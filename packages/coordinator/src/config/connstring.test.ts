import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { parseConnString, parseDatabase, parseUser } from './connstring.ts'
import { ConfigError } from './ini.ts'

const place = { file: 'p.ini', line: 9 }

describe('parseConnString', () => {
  test('pairs, spaces around "=", quoted values with doubled quotes', () => {
    assert.deepEqual(
      parseConnString(
        "  host = 10.0.0.1\tport=5433 password='p w' connect_query='SELECT ''a'', 1' dbname=x  ",
      ),
      [
        { key: 'host', value: '10.0.0.1' },
        { key: 'port', value: '5433' },
        { key: 'password', value: 'p w' },
        { key: 'connect_query', value: "SELECT 'a', 1" },
        { key: 'dbname', value: 'x' },
      ],
    )
  })

  test('an empty string has no pairs', () => {
    assert.deepEqual(parseConnString(''), [])
    assert.deepEqual(parseConnString('   '), [])
  })

  test('a backslash is an ordinary character, as in PgBouncer', () => {
    assert.deepEqual(parseConnString("password='a\\b'"), [{ key: 'password', value: 'a\\b' }])
  })

  for (const [text, re] of [
    ['host', /expected "=" after "host"/],
    ['=x', /"=" without a parameter name/],
    ['host=', /empty value for host/],
    ["password=''", /empty value for password/],
    ["password='open", /unterminated quoted value for password/],
    ["password='a'b", /expected a space after the quoted password/],
  ] as const) {
    test(`rejects ${text}`, () => assert.throws(() => parseConnString(text), re))
  }
})

describe('parseDatabase', () => {
  test('every PgBouncer key, typed', () => {
    const { config, unimplemented } = parseDatabase(
      'app',
      "host=db1,db2 port=6000 dbname=appdb user=u password='p w' auth_user=au client_encoding=UTF8 " +
        "datestyle=ISO timezone=UTC application_name=web connect_query='SELECT 1' pool_size=10 " +
        'min_pool_size=2 reserve_pool=3 pool_mode=Transaction max_db_connections=5 ' +
        'max_db_client_connections=50 server_lifetime=30 load_balance_hosts=disable ' +
        "target_session_attrs=read-write auth_dbname=authdb auth_query='SELECT 2' query_wait_timeout=7",
      place,
    )
    assert.deepEqual(config, {
      name: 'app',
      host: 'db1,db2',
      port: 6000,
      hosts: [
        { host: 'db1', port: 6000 },
        { host: 'db2', port: 6000 },
      ],
      dbname: 'appdb',
      user: 'u',
      password: 'p w',
      authUser: 'au',
      clientEncoding: 'UTF8',
      datestyle: 'ISO',
      timezone: 'UTC',
      applicationName: 'web',
      connectQuery: 'SELECT 1',
      poolSize: 10,
      minPoolSize: 2,
      reservePoolSize: 3,
      poolMode: 'transaction',
      maxDbConnections: 5,
      maxDbClientConnections: 50,
      serverLifetime: 30,
      loadBalanceHosts: 'disable',
      targetSessionAttrs: 'read-write',
      authDbname: 'authdb',
      authQuery: 'SELECT 2',
      queryWaitTimeout: 7,
      line: 9,
      file: 'p.ini',
    })
    assert.deepEqual(unimplemented, [])
  })

  test("defaults: no host (unix_socket_dir's socket, as PgBouncer), port 5432, dbname = entry name", () => {
    const { config, unimplemented } = parseDatabase('legacy', '', place)
    assert.deepEqual(config, {
      name: 'legacy',
      host: '',
      port: 5432,
      hosts: [{ host: '', port: 5432 }],
      dbname: 'legacy',
      line: 9,
      file: 'p.ini',
    })
    assert.deepEqual(unimplemented, [])
  })

  test('host list: one port for all hosts, or one per host', () => {
    const all = parseDatabase('a', 'host=127.0.0.2,127.0.0.3 port=6000', place).config
    assert.deepEqual(all.hosts, [
      { host: '127.0.0.2', port: 6000 },
      { host: '127.0.0.3', port: 6000 },
    ])
    assert.equal(all.loadBalanceHosts, undefined, 'round-robin unless told')
    const each = parseDatabase('a', 'host=h1,h2,h3 port=5432,5433,5434', place).config
    assert.deepEqual(
      each.hosts.map((h) => `${h.host}:${h.port}`),
      ['h1:5432', 'h2:5433', 'h3:5434'],
    )
    assert.equal(each.port, 5432)
    assert.equal(each.host, 'h1,h2,h3', 'as written, for SHOW DATABASES')
    for (const attrs of [
      'any',
      'read-write',
      'read-only',
      'primary',
      'standby',
      'prefer-standby',
    ]) {
      const parsed = parseDatabase('a', `host=h1,h2 target_session_attrs=${attrs}`, place)
      assert.equal(parsed.config.targetSessionAttrs, attrs)
      assert.deepEqual(parsed.unimplemented, [])
    }
    const rr = parseDatabase('a', 'host=h1,h2 load_balance_hosts=ROUND-ROBIN', place).config
    assert.equal(rr.loadBalanceHosts, 'round-robin')
    assert.deepEqual(parseDatabase('a', 'port=5433', place).config.hosts, [
      { host: '', port: 5433 },
    ])
    // Socket directories and TCP hosts in one list, each with its port.
    assert.deepEqual(
      parseDatabase('a', 'host=/run/postgresql,10.0.0.2 port=5432,5433', place).config.hosts,
      [
        { host: '/run/postgresql', port: 5432 },
        { host: '10.0.0.2', port: 5433 },
      ],
    )
  })

  for (const [text, re] of [
    [
      'host=h1,h2,h3 port=5432,5433',
      /p\.ini:9: a: port: 2 ports for 3 hosts; give one port for all/,
    ],
    ['host=h1 port=5432,5433', /port: 2 ports for 1 hosts/],
    ['host=h1,,h2', /host: empty entry in host list "h1,,h2"/],
    ['host=h1, port=1', /host: empty entry/],
    ['host=h1,h2 port=5432,x', /port: invalid port: 5432,x/],
    ['host=h1,h2 port=5432,0', /port: invalid port/],
    [`host=${Array.from({ length: 17 }, (_, i) => `h${i}`).join(',')}`, /17 hosts .* at most 16/],
    ['host=h1,h2 load_balance_hosts=random', /load_balance_hosts: invalid value: random/],
  ] as const) {
    test(`host list: rejects ${text.slice(0, 40)}`, () => {
      assert.throws(
        () => parseDatabase('a', text, place),
        (err) => err instanceof ConfigError && re.test(err.message),
      )
    })
  }

  test('reserve_pool_size is the newer alias of reserve_pool; -1 leaves query_wait_timeout unset', () => {
    const { config } = parseDatabase('a', 'reserve_pool_size=4 query_wait_timeout=-1', place)
    assert.equal(config.reservePoolSize, 4)
    assert.equal('queryWaitTimeout' in config, false)
  })

  for (const [connstr, re] of [
    ['pool_size=abc', /^p\.ini:9: app: pool_size: expected a non-negative integer, got "abc"$/],
    ['pool_size=-1', /pool_size: expected a non-negative integer/],
    ['port=0', /port: invalid port: 0/],
    ['port=70000', /port: invalid port: 70000/],
    ['pool_mode=fast', /^p\.ini:9: app: pool_mode: invalid pool mode: fast$/],
    ['server_lifetime=-5', /server_lifetime: expected a non-negative number of seconds/],
    [
      'reserve_pool_sizee=3',
      /^p\.ini:9: app: unrecognized connection parameter: reserve_pool_sizee$/,
    ],
    ['host=', /^p\.ini:9: app: syntax error in connection string: empty value for host$/],
  ] as const) {
    test(`rejects ${connstr}`, () => {
      assert.throws(
        () => parseDatabase('app', connstr, place),
        (err: unknown) =>
          err instanceof ConfigError && err.key === 'app' && err.line === 9 && re.test(err.message),
      )
    })
  }

  test('the admin console name is reserved', () => {
    assert.throws(
      () => parseDatabase('pgbouncer', 'host=x', place),
      /pgbouncer: database name "pgbouncer" is reserved/,
    )
  })
})

describe('parseUser', () => {
  test('user keys, implemented and not', () => {
    const { config, unimplemented } = parseUser(
      'batch',
      'pool_mode=session max_user_connections=10 pool_size=3 reserve_pool_size=1 ' +
        'max_user_client_connections=20 query_timeout=30 query_wait_timeout=5 ' +
        'idle_transaction_timeout=6 transaction_timeout=7 client_idle_timeout=8',
      place,
    )
    assert.deepEqual(config, {
      name: 'batch',
      poolMode: 'session',
      maxUserConnections: 10,
      poolSize: 3,
      reservePoolSize: 1,
      maxUserClientConnections: 20,
      queryTimeout: 30,
      queryWaitTimeout: 5,
      idleTransactionTimeout: 6,
      transactionTimeout: 7,
      clientIdleTimeout: 8,
      line: 9,
      file: 'p.ini',
    })
    assert.deepEqual(unimplemented, [])
  })

  test('unknown user key and bad values', () => {
    assert.throws(
      () => parseUser('u', 'host=x', place),
      /^ConfigError: p\.ini:9: u: unrecognized user parameter: host$/,
    )
    assert.throws(
      () => parseUser('u', 'max_user_connections=ten', place),
      /max_user_connections: expected a non-negative integer/,
    )
    assert.throws(() => parseUser('u', 'pool_mode', place), /syntax error in user settings/)
  })
})
