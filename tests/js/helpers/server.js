// Starts and stops a real `roster` binary for the real-client tests.
//
// Contract: `$ROSTER_BIN serve --listen 127.0.0.1:0` prints
// `roster listening on http://127.0.0.1:PORT` on stdout once it is bound.
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
export const REPO_ROOT = path.resolve(here, '..', '..', '..')
export const ROSTER_BIN = process.env.ROSTER_BIN || path.join(REPO_ROOT, 'target', 'debug', 'roster')

export const PUBLISHABLE_KEY = 'sb_publishable_test'
export const SECRET_KEY = 'sb_secret_test'
export const JWT_SECRET = 'test-jwt-secret-0123456789abcdef0123'

const LISTEN_RE = /roster listening on (http:\/\/127\.0\.0\.1:(\d+))/

// Every process started here, so that nothing outlives the test file even when
// a test throws before its cleanup runs.
const live = new Set()
const tempDirs = new Set()
process.on('exit', () => {
  for (const child of live) {
    try {
      child.kill('SIGKILL')
    } catch {}
  }
  for (const dir of tempDirs) {
    try {
      rmSync(dir, { recursive: true, force: true })
    } catch {}
  }
})

/** Write `toml` to a temporary file (removed at exit) and return its path. */
export function writeConfigFile(toml) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'roster-test-'))
  tempDirs.add(dir)
  const file = path.join(dir, 'roster.toml')
  writeFileSync(file, toml)
  return file
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null
}

/**
 * Start roster. Resolves to a handle with `url` (project URL), `port`, `stop()`,
 * `restart()` (same port, fresh state) and `logs()` (stdout + stderr so far).
 * `env` adds environment variables, `args` extra `serve` flags, and `config`
 * (TOML text, e.g. `[[policies]]`) is written to a temp file passed as `--config`.
 */
export async function startServer({ port = 0, env = {}, args = [], config } = {}) {
  if (config !== undefined && !args.includes('--config')) {
    args = [...args, '--config', writeConfigFile(config)]
  }
  if (!existsSync(ROSTER_BIN)) {
    throw new Error(`roster binary not found at ${ROSTER_BIN} (set ROSTER_BIN or build it)`)
  }
  let output = ''
  const child = spawn(ROSTER_BIN, ['serve', '--listen', `127.0.0.1:${port}`, ...args], {
    env: {
      ...process.env,
      ROSTER_PUBLISHABLE_KEY: PUBLISHABLE_KEY,
      ROSTER_SECRET_KEY: SECRET_KEY,
      ROSTER_JWT_SECRET: JWT_SECRET,
      ROSTER_LOG: 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  live.add(child)
  child.once('exit', () => live.delete(child))

  const listening = await new Promise((resolve, reject) => {
    let stdout = ''
    const timer = setTimeout(() => {
      finish(new Error(`roster did not print its listening line within 10 s:\n${output}`))
    }, 10_000)
    const onExit = (code, signal) =>
      finish(new Error(`roster exited early (code ${code}, signal ${signal}):\n${output}`))
    const onError = (err) => finish(err)
    function finish(err, value) {
      clearTimeout(timer)
      child.off('exit', onExit)
      child.off('error', onError)
      if (err) {
        try {
          child.kill('SIGKILL')
        } catch {}
        reject(err)
      } else resolve(value)
    }
    child.on('exit', onExit)
    child.on('error', onError)
    child.stdout.on('data', (chunk) => {
      stdout += chunk
      const m = LISTEN_RE.exec(stdout)
      if (m) finish(null, { url: m[1], port: Number(m[2]) })
    })
    // Keep draining both pipes for the whole life of the process.
    child.stdout.on('data', (chunk) => (output += chunk))
    child.stderr.on('data', (chunk) => (output += chunk))
  })

  const handle = {
    url: listening.url,
    port: listening.port,
    process: child,
    logs: () => output,
    async stop() {
      await stopProcess(child)
    },
    /** Stop this server and start a new one on the same port (empty state). */
    async restart() {
      await stopProcess(child)
      return startOnPort(listening.port, { env, args })
    },
  }
  return handle
}

async function startOnPort(port, opts) {
  // The port was just released; retry briefly in case the OS still holds it.
  let lastErr
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    try {
      return await startServer({ ...opts, port })
    } catch (err) {
      lastErr = err
      await new Promise((r) => setTimeout(r, 200))
    }
  }
  throw lastErr
}

/** SIGTERM, then SIGKILL after 3 s. Resolves once the process has exited. */
export async function stopProcess(child) {
  if (exited(child)) return
  const gone = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  const timer = setTimeout(() => {
    if (!exited(child)) child.kill('SIGKILL')
  }, 3_000)
  await gone
  clearTimeout(timer)
}
