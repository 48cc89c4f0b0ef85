// `npm start` as a newcomer runs it: one line to connect with, a URL that
// answers, and after Ctrl-C (SIGINT to the whole process group, as a terminal
// sends it) or SIGTERM no PostgreSQL process and no data directory left.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { test } from 'node:test'
import pg from 'pg'

const root = new URL('..', import.meta.url).pathname

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}

function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0)
    return true
  } catch {
    return false
  }
}

function parentOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
}

async function waitFor(what: string, ok: () => boolean, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!ok()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  test(`npm start prints one line that connects; ${signal} leaves nothing behind`, {
    timeout: 300_000,
  }, async () => {
    // As from a shell: none of the npm_* variables of an `npm test` this may run under.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)))
    const child = spawn('npm', ['start', '--silent'], {
      cwd: root,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // its own process group, to signal as a terminal does
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => {
      stdout += d
    })
    child.stderr.on('data', (d) => {
      stderr += d
    })
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve))
    let postmaster = 0
    let dataDir = ''
    try {
      await waitFor(
        'the ready line',
        () => stdout.includes('\n') || child.exitCode !== null,
        120_000,
      )
      assert.equal(child.exitCode, null, stdout + stderr)
      const lines = stdout.trimEnd().split('\n')
      assert.equal(lines.length, 1, stdout)
      const url = /(postgresql:\/\/\S+)/.exec(lines[0])?.[1]
      assert.ok(url, lines[0])
      assert.ok(lines[0].includes(`psql '${url}'`), lines[0])
      assert.equal(stderr, '')

      const client = new pg.Client({ connectionString: url })
      await client.connect()
      try {
        const one = await client.query('select 1 as one')
        assert.equal(one.rows[0].one, 1)
        const { rows } = await client.query(
          "select pg_backend_pid() as pid, current_setting('data_directory') as dir",
        )
        postmaster = parentOf(rows[0].pid)
        dataDir = rows[0].dir
      } finally {
        await client.end()
      }
      assert.ok(alive(postmaster))
      assert.ok(existsSync(dataDir))
      process.kill(-child.pid!, signal)
      // npm reports the signal as its own way to end; what counts is what is left running.
      await exited
      await waitFor('the process group to end', () => !groupAlive(child.pid!), 30_000)
      await waitFor('the postmaster to end', () => !alive(postmaster), 30_000)
      assert.equal(existsSync(dataDir), false, `${dataDir} is left behind`)
    } finally {
      if (groupAlive(child.pid!)) process.kill(-child.pid!, 'SIGKILL')
    }
  })
}
