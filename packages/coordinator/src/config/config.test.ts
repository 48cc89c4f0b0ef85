import assert from 'node:assert/strict'
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import { findTool, skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import {
  type Config,
  ConfigError,
  defaultConfig,
  loadConfig,
  resolveDatabase,
  type Settings,
} from './config.ts'
import { defaultSettings } from './settings.ts'

const root = realpathSync(mkdtempSync(join(tmpdir(), 'config-test-')))
after(() => rmSync(root, { recursive: true, force: true }))
let dirCount = 0

function makeDir(): string {
  const dir = join(root, `d${dirCount++}`)
  mkdirSync(dir)
  return dir
}

// Writes pgbouncer.ini (and any other files) into a fresh directory.
function ini(text: string, extra: Record<string, string> = {}): string {
  const dir = makeDir()
  for (const [name, t] of Object.entries({ 'pgbouncer.ini': text, ...extra })) {
    writeFileSync(join(dir, name), t)
  }
  return join(dir, 'pgbouncer.ini')
}

function configError(
  fn: () => unknown,
  file: string | null,
  line: number | null,
  key: string | null,
  re: RegExp,
) {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, String(err))
    assert.equal(err.code, 'ERR_CONFIG')
    assert.deepEqual([err.file, err.line, err.key], [file, line, key])
    const prefix = [file === null ? null : line === null ? file : `${file}:${line}`, key]
      .filter((s) => s !== null)
      .join(': ')
    assert.ok(err.message.startsWith(prefix === '' ? '' : `${prefix}: `), err.message)
    assert.match(err.reason, re)
    return true
  })
}

// The kind of file people run PgBouncer 1.18 with. The PgBouncer test below
// starts the real PgBouncer on the very same files.
function realisticFiles(port: number): Record<string, string> {
  return {
    'pgbouncer.ini': `;;; PgBouncer configuration file
;; database name = connect string
[databases]
app = host=10.0.0.5 port=5433 dbname=app_production pool_size=40 reserve_pool=5 pool_mode=transaction max_db_connections=60 min_pool_size=2 client_encoding=UTF8 datestyle=ISO timezone=UTC application_name=web
reporting = host=10.0.0.6 dbname=reporting user=report password='s3cr3t pass' connect_query='SET search_path TO ''reports'', public'
# foodb over the default host
legacy =
* = host=10.0.0.7 port=5432

[users]
batch = pool_mode=session max_user_connections=10

[pgbouncer]
logfile = pgbouncer.log
pidfile = pgbouncer.pid
listen_addr = 127.0.0.1
listen_port = ${port}
unix_socket_dir = ${'.'}
auth_type = md5
auth_file = userlist.txt
admin_users = admin, ops
stats_users = stats
pool_mode = session
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits, search_path
max_client_conn = 500
default_pool_size = 25
reserve_pool_size = 3
reserve_pool_timeout = 2.5
server_lifetime = 1800
server_idle_timeout = 300
query_wait_timeout = 60
client_login_timeout = 30
tcp_keepalive = 1
tcp_keepidle = 60
log_connections = 0
stats_period = 30
;; not implemented here
client_tls_ecdhcurve = auto
tcp_socket_buffer = 0
dns_max_ttl = 30
%include extra.ini
`,
    'extra.ini': '; per-host overrides\nmax_db_connections = 100\nmax_user_connections = 50\n',
    'userlist.txt': `; users
"admin" "md545f2603610af569b6155c45067268c6b"
"app" "plain pass"
"o""brien" "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVk:c2VydmVy"
`,
  }
}

describe('loadConfig: a realistic pgbouncer.ini', () => {
  const file = ini('', realisticFiles(16432))
  const dir = join(file, '..')
  const config = loadConfig(file)

  test('every setting: the file’s values, PgBouncer’s defaults for the rest', () => {
    const expected: Settings = {
      ...defaultSettings(),
      logfile: 'pgbouncer.log',
      pidfile: 'pgbouncer.pid',
      listenAddr: '127.0.0.1',
      listenPort: 16432,
      unixSocketDir: '.',
      authType: 'md5',
      authFile: join(dir, 'userlist.txt'),
      adminUsers: ['admin', 'ops'],
      statsUsers: ['stats'],
      poolMode: 'session',
      serverResetQuery: 'DISCARD ALL',
      ignoreStartupParameters: ['extra_float_digits', 'search_path'],
      maxClientConn: 500,
      defaultPoolSize: 25,
      reservePoolSize: 3,
      reservePoolTimeout: 2.5,
      serverLifetime: 1800,
      serverIdleTimeout: 300,
      queryWaitTimeout: 60,
      clientLoginTimeout: 30,
      tcpKeepalive: true,
      tcpKeepidle: 60,
      logConnections: false,
      statsPeriod: 30,
      clientTlsEcdhcurve: 'auto',
      dnsMaxTtl: 30,
      maxDbConnections: 100,
      maxUserConnections: 50,
      conffile: file,
    }
    assert.deepEqual(config.settings, expected)
    // A few defaults spelled out, so a wrong table cannot hide behind defaultSettings().
    const s = config.settings
    assert.deepEqual(
      [s.minPoolSize, s.serverConnectTimeout, s.serverLoginRetry, s.maxPacketSize, s.pktBuf],
      [0, 15, 15, 2147483647, 4096],
    )
    assert.deepEqual(
      [s.serverResetQueryAlways, s.soReuseport, s.logDisconnections, s.applicationNameAddHost],
      [false, false, true, false],
    )
    assert.deepEqual(
      [s.listenBacklog, s.verbose, s.clientIdleTimeout, s.authUser],
      [128, 0, 0, null],
    )
    assert.equal(config.file, file)
  })

  test('databases, fallback and users', () => {
    assert.deepEqual(
      { ...config.databases },
      {
        app: {
          name: 'app',
          host: '10.0.0.5',
          port: 5433,
          hosts: [{ host: '10.0.0.5', port: 5433 }],
          dbname: 'app_production',
          poolSize: 40,
          reservePoolSize: 5,
          poolMode: 'transaction',
          maxDbConnections: 60,
          minPoolSize: 2,
          clientEncoding: 'UTF8',
          datestyle: 'ISO',
          timezone: 'UTC',
          applicationName: 'web',
          line: 4,
          file,
        },
        reporting: {
          name: 'reporting',
          host: '10.0.0.6',
          port: 5432,
          hosts: [{ host: '10.0.0.6', port: 5432 }],
          dbname: 'reporting',
          user: 'report',
          password: 's3cr3t pass',
          connectQuery: "SET search_path TO 'reports', public",
          line: 5,
          file,
        },
        legacy: {
          name: 'legacy',
          host: '',
          port: 5432,
          hosts: [{ host: '', port: 5432 }],
          dbname: 'legacy',
          line: 7,
          file,
        },
      },
    )
    assert.deepEqual(config.fallbackDatabase, {
      name: '*',
      host: '10.0.0.7',
      port: 5432,
      hosts: [{ host: '10.0.0.7', port: 5432 }],
      dbname: '*',
      line: 8,
      file,
    })
    assert.deepEqual(
      { ...config.users },
      {
        batch: { name: 'batch', poolMode: 'session', maxUserConnections: 10, line: 11, file },
      },
    )
  })

  test('auth_file users, relative to the config’s directory when not in the current one', () => {
    assert.deepEqual(
      { ...config.authUsers },
      {
        admin: 'md545f2603610af569b6155c45067268c6b',
        app: 'plain pass',
        'o"brien': 'SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVk:c2VydmVy',
      },
    )
  })

  test('one warning names every setting that is not implemented', () => {
    assert.equal(config.warnings.length, 1)
    const [w] = config.warnings
    assert.match(w!, /not implemented/)
    for (const name of ['client_tls_ecdhcurve', 'tcp_socket_buffer', 'dns_max_ttl'])
      assert.ok(w!.includes(name), name)
    for (const name of ['listen_port', 'pool_mode', 'max_db_connections', 'client_tls_sslmode'])
      assert.ok(!w!.includes(name), name)
  })

  test('resolveDatabase: exact entry, else the fallback named after the request', () => {
    assert.equal(resolveDatabase(config, 'app'), config.databases.app)
    assert.deepEqual(resolveDatabase(config, 'other'), {
      name: 'other',
      host: '10.0.0.7',
      port: 5432,
      hosts: [{ host: '10.0.0.7', port: 5432 }],
      dbname: 'other',
      line: 8,
      file,
    })
    assert.equal(resolveDatabase(config, 'pgbouncer'), null)
  })

  test('overrides (command-line flags) win over the file', () => {
    const c = loadConfig(file, { listenPort: 7777, poolMode: 'statement', adminUsers: ['root'] })
    assert.deepEqual(
      [c.settings.listenPort, c.settings.poolMode, c.settings.adminUsers, c.settings.maxClientConn],
      [7777, 'statement', ['root'], 500],
    )
  })
})

describe('loadConfig: details', () => {
  test('%include relative to the including file; its section stays in force after it', () => {
    const file = ini('[pgbouncer]\nauth_type = trust\n%include more.ini\nb = host=b2\n', {
      'more.ini': 'max_client_conn = 9\n[databases]\na = host=a\n',
    })
    const c = loadConfig(file)
    assert.equal(c.settings.maxClientConn, 9)
    assert.deepEqual(Object.keys(c.databases), ['a', 'b'])
    assert.deepEqual([c.databases.a?.file, c.databases.a?.line], [join(file, '..', 'more.ini'), 3])
    assert.deepEqual(
      [c.databases.b?.host, c.databases.b?.file, c.databases.b?.line],
      ['b2', file, 4],
    )
  })

  test('comments, quoted names and values taken literally', () => {
    const c = loadConfig(
      ini(
        [
          '# hash comment',
          '; semicolon comment',
          '[databases]',
          '"my db" = host=h dbname=\'my db\'',
          '[pgbouncer]',
          "server_reset_query = 'DEALLOCATE ALL' ; trailing",
          'listen_addr =',
        ].join('\n'),
      ),
    )
    assert.equal(c.databases['my db']?.dbname, 'my db')
    assert.equal(c.settings.serverResetQuery, "'DEALLOCATE ALL' ; trailing")
    assert.equal(c.settings.listenAddr, '')
  })

  test('without listen_addr we listen on 127.0.0.1; no fallback means unknown names resolve to null', () => {
    const c = loadConfig(ini('[databases]\na = host=x\n[pgbouncer]\nauth_type = trust\n'))
    assert.equal(c.settings.listenAddr, '127.0.0.1')
    assert.equal(c.fallbackDatabase, null)
    assert.equal(resolveDatabase(c, 'b'), null)
    assert.equal(resolveDatabase(c, 'constructor'), null)
    assert.deepEqual(c.warnings, [])
  })

  test('later definitions win', () => {
    const c = loadConfig(
      ini(
        '[databases]\na = host=x\na = host=y\n[pgbouncer]\nauth_type=any\nverbose=1\nverbose=2\n',
      ),
    )
    assert.equal(c.databases.a?.host, 'y')
    assert.equal(c.databases.a?.line, 3)
    assert.equal(c.settings.verbose, 2)
  })

  test('lenient where PgBouncer is strict, with a warning saying so', () => {
    const file = ini('[PgBouncer]\nLISTEN_PORT = 7000\nso_reuseport = yes\nauth_type = trust\n')
    const c = loadConfig(file)
    assert.equal(c.settings.listenPort, 7000)
    assert.equal(c.settings.soReuseport, true)
    assert.equal(c.warnings.length, 1)
    assert.match(c.warnings[0]!, /PgBouncer itself would refuse/)
    assert.ok(c.warnings[0]!.includes(`${file}:1 [PgBouncer]`))
    assert.ok(c.warnings[0]!.includes(`${file}:2 LISTEN_PORT`))
    assert.ok(c.warnings[0]!.includes(`${file}:3 so_reuseport = yes`))
  })

  test('a repeated [pgbouncer] section keeps earlier values and warns', () => {
    const file = ini(
      '[pgbouncer]\nlisten_port = 7000\nauth_type = trust\n[databases]\n[pgbouncer]\nmax_client_conn = 5\n',
    )
    const c = loadConfig(file)
    assert.deepEqual([c.settings.listenPort, c.settings.maxClientConn], [7000, 5])
    assert.equal(c.warnings.length, 1)
    assert.match(c.warnings[0]!, /:1, .*:5: \[pgbouncer\] appears more than once; PgBouncer resets/)
  })

  test('[databases] and [users] have no unimplemented keys left; the one warning names the settings; [peers] is read', () => {
    const c = loadConfig(
      ini(
        '[databases]\na = target_session_attrs=any\n[users]\nu = query_timeout=3\n[peers]\n1 = host=/tmp/p1\n[pgbouncer]\nauth_type=trust\nsyslog=1\n',
      ),
    )
    assert.equal(c.warnings.length, 1)
    assert.match(c.warnings[0]!, /no effect: syslog$/)
    assert.equal(c.databases.a!.targetSessionAttrs, 'any')
    assert.deepEqual(c.peers['1'], { id: 1, host: '/tmp/p1', port: 6432 })
  })

  test('[peers]: host, port (6432 by default), pool_size', () => {
    const c = loadConfig(
      ini(
        '[peers]\n1 = host=127.0.0.2 port=7000 pool_size=3\n2 = host=/run/pgb\n[pgbouncer]\npeer_id = 1\n',
      ),
    )
    assert.equal(c.settings.peerId, 1)
    assert.deepEqual(c.peers['1'], { id: 1, host: '127.0.0.2', port: 7000, poolSize: 3 })
    assert.deepEqual(c.peers['2'], { id: 2, host: '/run/pgb', port: 6432 })
  })

  test('socket options Node.js cannot set are each named with what the sockets get instead', () => {
    const c = loadConfig(
      ini(
        '[pgbouncer]\nauth_type=trust\ntcp_keepidle=30\ntcp_keepintvl=5\ntcp_keepcnt=3\ntcp_user_timeout=1000\n',
      ),
    )
    assert.equal(c.warnings.length, 3)
    assert.match(
      c.warnings[0]!,
      /:4: tcp_keepintvl has no effect: Node\.js sets TCP_KEEPINTVL to 1/,
    )
    assert.match(c.warnings[1]!, /:5: tcp_keepcnt has no effect: Node\.js sets TCP_KEEPCNT to 10/)
    assert.match(c.warnings[2]!, /:6: tcp_user_timeout has no effect: Node\.js cannot set/)
    assert.ok(!c.warnings.some((w) => w.includes('tcp_keepidle')))
  })

  test('a password auth_type without auth_file or auth_user warns', () => {
    const c = loadConfig(ini('[pgbouncer]\nauth_type = scram-sha-256\n'))
    assert.deepEqual(c.warnings, [
      'auth_type scram-sha-256 without auth_file or auth_user: no user can log in',
    ])
  })
})

describe('loadConfig: every error names file, line and key', () => {
  const bad = (text: string) => ini(`[pgbouncer]\nauth_type = trust\n${text}\n`)

  test('unknown setting', () => {
    const f = bad('listen_prot = 6432')
    configError(() => loadConfig(f), f, 3, 'listen_prot', /^unknown setting$/)
  })
  test('bad integer', () => {
    const f = bad('default_pool_size = 2O')
    configError(() => loadConfig(f), f, 3, 'default_pool_size', /expected an integer, got "2O"/)
  })
  test('the console as auth_dbname (PgBouncer refuses the file)', () => {
    const f = bad('auth_dbname = pgbouncer')
    configError(
      () => loadConfig(f),
      f,
      3,
      'auth_dbname',
      /^cannot use the reserved "pgbouncer" database as an auth_dbname$/,
    )
  })
  test('bad enum', () => {
    const f = bad('pool_mode = fast')
    configError(() => loadConfig(f), f, 3, 'pool_mode', /invalid value "fast"/)
  })
  test('negative timeout', () => {
    const f = bad('server_idle_timeout = -1')
    configError(() => loadConfig(f), f, 3, 'server_idle_timeout', /must not be negative/)
  })
  test('unknown section', () => {
    const f = bad('[pgbouncr]')
    configError(() => loadConfig(f), f, 3, 'pgbouncr', /unknown section \[pgbouncr\]/)
  })
  test('setting before any section', () => {
    const f = ini('listen_port = 1\n')
    configError(() => loadConfig(f), f, 1, 'listen_port', /outside of any \[section\]/)
  })
  test('include loop', () => {
    const f = join(makeDir(), 'pgbouncer.ini')
    writeFileSync(f, `[pgbouncer]\nauth_type = trust\n%include ${f}\n`)
    configError(() => loadConfig(f), f, 3, '%include', /%include loop/)
  })
  test('unknown database parameter', () => {
    const f = ini('[databases]\n\napp = host=x reserve_pool_sise=3\n')
    configError(
      () => loadConfig(f),
      f,
      3,
      'app',
      /unrecognized connection parameter: reserve_pool_sise/,
    )
  })
  test('bad pool size in [users]', () => {
    const f = ini('[users]\nu = pool_size=big\n')
    configError(() => loadConfig(f), f, 2, 'u', /pool_size: expected a non-negative integer/)
  })
  test('bad [peers] entry', () => {
    const f = ini('[peers]\nx = host=h\n')
    configError(() => loadConfig(f), f, 2, 'x', /peer ids must be numbers/)
    const g = ini('[peers]\n1 = port=6432\n')
    configError(() => loadConfig(g), g, 2, '1', /host was not provided/)
    const h = ini('[peers]\n1 = host=a port=none\n')
    configError(() => loadConfig(h), h, 2, '1', /invalid port: none/)
  })
  test('missing auth_file names the setting’s line', () => {
    const f = bad('auth_file = /nonexistent/userlist.txt')
    configError(
      () => loadConfig(f),
      f,
      3,
      'auth_file',
      /cannot read auth_file "\/nonexistent\/userlist\.txt": ENOENT/,
    )
  })
  test('bad userlist line names the auth_file and its line', () => {
    const f = bad('auth_file = users.txt')
    writeFileSync(join(f, '..', 'users.txt'), '"a" "b"\nc d\n')
    configError(() => loadConfig(f), 'users.txt', 2, null, /expected "user" "password"/)
  })
  test('auth_type this version does not support', () => {
    const f = ini('[pgbouncer]\n\nauth_type = pam\n')
    configError(
      () => loadConfig(f),
      f,
      3,
      'auth_type',
      /^auth_type pam is not supported by this version$/,
    )
  })
  test('auth_type hba without auth_hba_file, or with one that cannot be read', () => {
    const f = ini('[pgbouncer]\n\nauth_type = hba\n')
    configError(() => loadConfig(f), f, 3, 'auth_type', /^auth_type hba needs auth_hba_file$/)
    const g = ini('[pgbouncer]\nauth_type = hba\nauth_hba_file = /nonexistent/hba.conf\n')
    configError(
      () => loadConfig(g),
      g,
      3,
      'auth_hba_file',
      /^cannot read auth_hba_file "\/nonexistent\/hba\.conf"/,
    )
  })
  test('bad override', () => {
    const f = bad('')
    configError(
      () => loadConfig(f, { listenPort: -1 }),
      null,
      null,
      'listen_port',
      /out of range.*\(command line\)/,
    )
    configError(
      () => loadConfig(f, { authType: 'pam' }),
      null,
      null,
      'auth_type',
      /auth_type pam is not supported/,
    )
    configError(
      () => loadConfig(f, { bogus: 1 } as unknown as Partial<Settings>),
      null,
      null,
      'bogus',
      /unknown setting/,
    )
  })
})

describe('defaultConfig', () => {
  test('127.0.0.1:6432, trust, every database to 127.0.0.1:5432', () => {
    const c: Config = defaultConfig()
    assert.equal(c.file, null)
    assert.deepEqual(
      [c.settings.listenAddr, c.settings.listenPort, c.settings.authType, c.settings.poolMode],
      ['127.0.0.1', 6432, 'trust', 'session'],
    )
    assert.deepEqual(resolveDatabase(c, 'shop'), {
      name: 'shop',
      host: '127.0.0.1',
      port: 5432,
      hosts: [{ host: '127.0.0.1', port: 5432 }],
      dbname: 'shop',
      line: 0,
    })
    assert.deepEqual(
      [c.warnings, { ...c.databases }, { ...c.users }, { ...c.authUsers }],
      [[], {}, {}, {}],
    )
  })

  test('overrides apply and are checked', () => {
    const c = defaultConfig({ listenPort: 7000, poolMode: 'transaction', authType: 'md5' })
    assert.deepEqual([c.settings.listenPort, c.settings.poolMode], [7000, 'transaction'])
    assert.equal(c.warnings.length, 1)
    configError(
      () => defaultConfig({ maxClientConn: 1.5 }),
      null,
      null,
      'max_client_conn',
      /expected an integer/,
    )
  })
})

// --- The same realistic file through PgBouncer's own parser ---------------

const PGBOUNCER = findTool('pgbouncer')
const asRoot = process.getuid?.() === 0
const runuser = findTool('runuser')
const skipPgBouncer = !PGBOUNCER
  ? skipWithout('pgbouncer', PGBOUNCER)
  : asRoot && (!runuser || spawnSync('id', ['postgres']).status !== 0)
    ? 'PgBouncer refuses to run as root and there is no runuser/postgres user to run it as'
    : false

async function freePort(): Promise<number> {
  const srv = createServer()
  await new Promise<void>((ok) => srv.listen(0, '127.0.0.1', ok))
  const { port } = srv.address() as { port: number }
  await new Promise((ok) => srv.close(ok))
  return port
}

describe('PgBouncer accepts the same file', { skip: skipPgBouncer }, () => {
  test('pgbouncer starts on the realistic ini and reports no error', {
    timeout: 20_000,
  }, async () => {
    const port = await freePort()
    const dir = makeDir()
    for (const [name, text] of Object.entries(realisticFiles(port))) {
      writeFileSync(join(dir, name), text)
      chmodSync(join(dir, name), 0o644)
    }
    chmodSync(root, 0o755)
    chmodSync(dir, 0o777) // PgBouncer, as postgres, writes its log and pid file here

    // Our loader agrees on the same bytes.
    assert.equal(loadConfig(join(dir, 'pgbouncer.ini')).settings.listenPort, port)

    const [cmd, args] = asRoot
      ? [runuser!, ['-u', 'postgres', '--', PGBOUNCER!, 'pgbouncer.ini']]
      : [PGBOUNCER!, ['pgbouncer.ini']]
    const child: ChildProcess = spawn(cmd, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    const exited = new Promise<number | null>((ok) => child.on('exit', (code) => ok(code)))
    try {
      await new Promise<void>((ok) => {
        const timer = setTimeout(ok, 8000)
        const onData = (b: Buffer) => {
          output += b.toString()
          if (/process up/.test(output)) {
            clearTimeout(timer)
            ok()
          }
        }
        child.stdout!.on('data', onData)
        child.stderr!.on('data', onData)
        exited.then(() => {
          clearTimeout(timer)
          ok()
        })
      })
      assert.match(output, /process up: PgBouncer/, output)
      assert.match(output, new RegExp(`listening on 127\\.0\\.0\\.1:${port}`), output)
      assert.doesNotMatch(output, / (ERROR|FATAL) /, output)
    } finally {
      // Signal PgBouncer itself (its pid file names it): runuser, told to stop,
      // would wait two seconds before it kills its child.
      const pidFile = join(dir, 'pgbouncer.pid')
      const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8').trim()) : 0
      if (pid > 0) process.kill(pid, 'SIGTERM')
      else child.kill('SIGTERM')
      const timeout = new Promise((ok) => setTimeout(() => ok('timeout'), 5000).unref())
      if ((await Promise.race([exited, timeout])) === 'timeout') {
        if (pid > 0) process.kill(pid, 'SIGKILL')
        child.kill('SIGKILL')
      }
    }
  })
})

describe('loadConfig: client_tls_* and server_tls_*', () => {
  // One self-signed certificate and its key, and a second key that is not its.
  const dir = makeDir()
  const make = (name: string) =>
    spawnSync(
      'openssl',
      [
        ...['req', '-x509', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'],
        ...['-keyout', join(dir, `${name}.key`), '-out', join(dir, `${name}.crt`)],
        ...['-days', '2', '-subj', '/CN=127.0.0.1'],
      ],
      { stdio: 'ignore' },
    )
  make('a')
  make('b')
  const base = '[databases]\n[pgbouncer]\nlisten_port = 6432\n'

  test('the files are read, relative to the ini, into the TLS material of each side', () => {
    const file = join(dir, 'ok.ini')
    writeFileSync(
      file,
      `${base}client_tls_sslmode = require\nclient_tls_key_file = a.key\nclient_tls_cert_file = a.crt\nclient_tls_protocols = tlsv1.3\nserver_tls_sslmode = verify-full\nserver_tls_ca_file = b.crt\n`,
    )
    const config = loadConfig(file)
    assert.equal(config.tls.client?.sslmode, 'require')
    assert.equal(config.tls.client?.key, readFileSync(join(dir, 'a.key'), 'utf8'))
    assert.equal(config.tls.client?.cert, readFileSync(join(dir, 'a.crt'), 'utf8'))
    assert.deepEqual(
      [config.tls.client?.minVersion, config.tls.client?.maxVersion],
      ['TLSv1.3', 'TLSv1.3'],
    )
    assert.equal(config.tls.server?.sslmode, 'verify-full')
    assert.equal(config.tls.server?.ca, readFileSync(join(dir, 'b.crt'), 'utf8'))
    assert.equal(config.tls.server?.key, undefined)
    assert.deepEqual(
      [config.tls.server?.minVersion, config.tls.server?.maxVersion],
      ['TLSv1.2', 'TLSv1.3'],
    )
    assert.ok(!config.warnings.join('\n').includes('tls'), config.warnings.join('\n'))
  })

  test('sslmode disable on both sides needs no files and gives no material', () => {
    const file = join(dir, 'off.ini')
    writeFileSync(file, `${base}server_tls_sslmode = disable\n`)
    assert.deepEqual(loadConfig(file).tls, { client: null, server: null })
  })

  test('what cannot work is an error naming the file, line and key', () => {
    const cases: [string, number, string, RegExp][] = [
      [
        'client_tls_sslmode = require\nclient_tls_cert_file = a.crt\n',
        4,
        'client_tls_key_file',
        /needs client_tls_key_file and client_tls_cert_file/,
      ],
      [
        'client_tls_sslmode = prefer\nclient_tls_key_file = missing.key\nclient_tls_cert_file = a.crt\n',
        5,
        'client_tls_key_file',
        /cannot read client_tls_key_file "missing.key"/,
      ],
      [
        'client_tls_sslmode = require\nclient_tls_key_file = b.key\nclient_tls_cert_file = a.crt\n',
        5,
        'client_tls_key_file',
        /TLS setup refused/,
      ],
      [
        'client_tls_sslmode = verify-ca\nclient_tls_key_file = a.key\nclient_tls_cert_file = a.crt\n',
        4,
        'client_tls_ca_file',
        /client_tls_ca_file, which is not set/,
      ],
      [
        'server_tls_sslmode = require\nserver_tls_protocols = tlsv9\n',
        5,
        'server_tls_protocols',
        /unknown TLS protocol "tlsv9"/,
      ],
      [
        'server_tls_sslmode = require\nserver_tls_key_file = a.key\n',
        5,
        'server_tls_cert_file',
        /go together/,
      ],
    ]
    for (const [lines, line, key, re] of cases) {
      const file = join(dir, `bad${line}${key}.ini`)
      writeFileSync(file, base + lines)
      // a key that is not set has no line: the error then names the file and key
      const set = lines.includes(`${key} =`)
      configError(() => loadConfig(file), file, set ? line : null, key, re)
    }
  })
})
