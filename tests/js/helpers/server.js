// Starts and stops a real `roster` binary for the real-client tests.
//
// Contract: `$ROSTER_BIN serve --listen 127.0.0.1:0` prints
// `roster listening on http://127.0.0.1:PORT` (https:// with --tls-cert) on stdout once it is bound.
//
// Cluster mode (env ROSTER_TEST_CLUSTER=1, or `startServer({ cluster: true })`):
// startServer() starts one redis-server on a free port and CLUSTER_NODES roster
// nodes sharing it (`--redis`, `--node-name nodeN`), each with the settings a
// single server would get. The handle keeps the single-server API (`url` and
// `port` are node 1's) and adds `urls`, `ports`, `nodes` and `redis`. Clients
// made with newClient(handle.url) and proxies made with startProxy(handle.port)
// are spread over the nodes round-robin (see nodeUrlFor / nodePortFor), so the
// clients of one test sit on different nodes without the tests knowing.
//
// With ROSTER_TEST_CLUSTER=redis-cluster, every cluster runs on a Redis
// Cluster instead of one redis-server: 3 masters (no replicas) on free
// ports, made with `redis-cli --cluster create`, the nodes started with
// `--redis-cluster <seeds>`; `redis` is then that Redis Cluster's handle.
import { execFile, spawn } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
export const REPO_ROOT = path.resolve(here, '..', '..', '..')
export const ROSTER_BIN = process.env.ROSTER_BIN || path.join(REPO_ROOT, 'target', 'debug', 'roster')

export const PUBLISHABLE_KEY = 'sb_publishable_test'
export const SECRET_KEY = 'sb_secret_test'
export const JWT_SECRET = 'test-jwt-secret-0123456789abcdef0123'

const LISTEN_RE = /roster listening on (https?:\/\/127\.0\.0\.1:(\d+))/

const CLUSTER_MODE = (process.env.ROSTER_TEST_CLUSTER || '').toLowerCase()
/** Clusters run on a Redis Cluster (ROSTER_TEST_CLUSTER=redis-cluster), not one redis-server. */
export const REDIS_CLUSTER = CLUSTER_MODE === 'redis-cluster'
/** True when the suite runs against a cluster (ROSTER_TEST_CLUSTER=1 or redis-cluster). */
export const CLUSTER = ['1', 'true', 'yes'].includes(CLUSTER_MODE) || REDIS_CLUSTER
export const CLUSTER_NODES = 3
export const REDIS_SERVER_BIN = process.env.REDIS_SERVER_BIN || 'redis-server'
export const REDIS_CLI_BIN = process.env.REDIS_CLI_BIN || 'redis-cli'
/** Faster cluster timings than the defaults, so dead nodes are noticed within the test timeouts. */
const CLUSTER_TIMING_ARGS = [
  '--cluster-heartbeat-ms', '200',
  '--cluster-lease-ms', '1200',
  '--cluster-reap-grace-ms', '200',
  '--cluster-settle-ms', '800',
]

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
 * `cluster` (default: ROSTER_TEST_CLUSTER) starts a cluster instead (see the top).
 */
export async function startServer({ cluster = CLUSTER, ...opts } = {}) {
  return cluster ? startCluster(opts) : startNode(opts)
}

/** One roster process. */
async function startNode({ port = 0, env = {}, args = [], config } = {}) {
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
      return await startNode({ ...opts, port })
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

// ---------------------------------------------------------------------------
// Cluster mode: one redis-server and CLUSTER_NODES roster nodes.

/** Round-robin state of every running cluster, by its primary (node 1) URL and port. */
const clusterByUrl = new Map()
const clusterByPort = new Map()

/**
 * The URL a new client of `url` should use: the next node round-robin when
 * `url` is a running cluster's `url`, else `url` itself.
 */
export function nodeUrlFor(url) {
  const rr = clusterByUrl.get(url)
  if (!rr) return url
  return rr.urls[rr.next++ % rr.urls.length]
}

/** Like nodeUrlFor, for a port (proxies); shares the same round-robin counter. */
export function nodePortFor(port) {
  const rr = clusterByPort.get(Number(port))
  if (!rr) return port
  return rr.ports[rr.next++ % rr.ports.length]
}

/** Start the round-robin over at node 1 (called between tests, so each test starts on node 1). */
export function resetNodeRoundRobin() {
  for (const rr of clusterByUrl.values()) rr.next = 0
}

/** A free TCP port on 127.0.0.1 (bound to port 0, then released). */
export async function freePort() {
  const srv = net.createServer()
  await new Promise((resolve, reject) => {
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', resolve)
  })
  const { port } = srv.address()
  await new Promise((resolve) => srv.close(resolve))
  return port
}

/** Whether `port` on 127.0.0.1 can be bound right now. */
async function portIsFree(port) {
  const srv = net.createServer()
  const ok = await new Promise((resolve) => {
    srv.once('error', () => resolve(false))
    srv.listen(port, '127.0.0.1', () => resolve(true))
  })
  if (ok) await new Promise((resolve) => srv.close(resolve))
  return ok
}

/**
 * A free port for a Redis Cluster node: the node also listens on port + 10,000
 * (its cluster bus), so the port must be at most 55,535 and both must be free.
 * Drawn below the kernel's ephemeral range, where port-0 binds rarely land.
 */
export async function freeClusterPort() {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 10000)
    if ((await portIsFree(port)) && (await portIsFree(port + 10000))) return port
  }
}

/** Resolves true when a Redis on `port` answers `PING` with `+PONG`. */
function redisPing(port) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1')
    let reply = ''
    const done = (ok) => {
      clearTimeout(timer)
      sock.destroy()
      resolve(ok)
    }
    const timer = setTimeout(() => done(false), 1_000)
    sock.on('connect', () => sock.write('PING\r\n'))
    sock.on('data', (chunk) => {
      reply += chunk
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'))
    })
    sock.on('error', () => done(false))
  })
}

/**
 * Start a throwaway redis-server (no persistence) on a free port and wait until
 * it answers PING. Resolves to `{ port, url, process, logs(), stop() }`.
 */
export async function startRedis() {
  let lastErr
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startRedisOnce(await freePort())
    } catch (err) {
      if (err.fatal) throw err
      lastErr = err // e.g. the free port was taken meanwhile
    }
  }
  throw lastErr
}

async function startRedisOnce(port, extraArgs = []) {
  let output = ''
  const child = spawn(
    REDIS_SERVER_BIN,
    // --dir and --dbfilename: never load (or write) a dump.rdb of the working directory.
    ['--port', String(port), '--save', '', '--appendonly', 'no', '--bind', '127.0.0.1',
      '--dir', os.tmpdir(), '--dbfilename', `roster-test-${process.pid}-${port}.rdb`, ...extraArgs],
    { stdio: ['ignore', 'pipe', 'pipe'] }
  )
  let spawnError
  child.once('error', (err) => {
    spawnError = err
    live.delete(child)
  })
  live.add(child)
  child.once('exit', () => live.delete(child))
  child.stdout.on('data', (chunk) => (output += chunk))
  child.stderr.on('data', (chunk) => (output += chunk))

  const deadline = Date.now() + 10_000
  for (;;) {
    if (spawnError) {
      const err = new Error(
        `cannot start ${REDIS_SERVER_BIN} (${spawnError.message}): cluster mode needs redis-server ` +
          '(apt-get install redis-server, or set REDIS_SERVER_BIN)'
      )
      err.fatal = spawnError.code === 'ENOENT'
      throw err
    }
    if (exited(child)) throw new Error(`redis-server on port ${port} exited early (code ${child.exitCode}):\n${output}`)
    if (await redisPing(port)) break
    if (Date.now() > deadline) {
      await stopProcess(child)
      throw new Error(`redis-server on port ${port} did not answer PING within 10 s:\n${output}`)
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    process: child,
    logs: () => output,
    stop: () => stopProcess(child),
  }
}

/** Run redis-cli with `args`; resolves to its stdout, rejects on failure. */
function redisCli(args) {
  return new Promise((resolve, reject) => {
    execFile(REDIS_CLI_BIN, args, { timeout: 20_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${REDIS_CLI_BIN} ${args.join(' ')}: ${err.message}\n${stdout}${stderr}`))
      else resolve(stdout)
    })
  })
}

/**
 * Start a throwaway Redis Cluster: `masters` redis-servers with
 * `--cluster-enabled yes` (no replicas, no persistence) on free ports, joined
 * with `redis-cli --cluster create`, ready once every node says
 * `cluster_state:ok`. Resolves to `{ cluster: true, seeds, url, ports, logs(), stop() }`
 * (`seeds` is the `--redis-cluster` value).
 */
export async function startRedisCluster({ masters = 3 } = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'roster-redis-cluster-'))
  tempDirs.add(dir)
  const servers = []
  const stopAll = () => Promise.all(servers.map((s) => s.stop()))
  try {
    for (let i = 0; i < masters; i++) {
      let lastErr
      for (let attempt = 0; attempt < 3; attempt++) {
        const port = await freeClusterPort()
        try {
          servers.push(
            await startRedisOnce(port, [
              '--cluster-enabled', 'yes',
              '--cluster-config-file', path.join(dir, `nodes-${port}.conf`),
              '--cluster-node-timeout', '1000',
              '--dir', dir,
            ])
          )
          lastErr = undefined
          break
        } catch (err) {
          if (err.fatal) throw err
          lastErr = err
        }
      }
      if (lastErr) throw lastErr
    }
    const addrs = servers.map((s) => `127.0.0.1:${s.port}`)
    await redisCli(['--cluster', 'create', ...addrs, '--cluster-replicas', '0', '--cluster-yes'])
    const deadline = Date.now() + 20_000
    for (const s of servers) {
      for (;;) {
        const info = await redisCli(['-p', String(s.port), 'cluster', 'info']).catch(() => '')
        if (info.includes('cluster_state:ok')) break
        if (Date.now() > deadline) throw new Error(`redis cluster node ${s.port} not ok within 20 s:\n${info}`)
        await new Promise((r) => setTimeout(r, 50))
      }
    }
  } catch (err) {
    await stopAll()
    throw err
  }
  const seeds = servers.map((s) => s.url).join(',')
  return {
    cluster: true,
    seeds,
    url: seeds,
    ports: servers.map((s) => s.port),
    logs: () => servers.map((s) => `--- redis ${s.port} ---\n${s.logs()}`).join('\n'),
    stop: stopAll,
  }
}

/**
 * Start a cluster: a fresh redis-server (or `redis`, whose ownership passes to
 * the new cluster) and `nodes` roster nodes, node N on `ports[N-1]` (0 = any).
 */
async function startCluster({ env = {}, args = [], config, nodes: count = CLUSTER_NODES, ports = [] } = {}, redis) {
  if (config !== undefined && !args.includes('--config')) {
    args = [...args, '--config', writeConfigFile(config)]
  }
  redis ??= REDIS_CLUSTER ? await startRedisCluster() : await startRedis()
  const redisArgs = redis.cluster ? ['--redis-cluster', redis.seeds] : ['--redis', redis.url]
  const nodeOpts = (i) => ({
    env,
    args: [...args, ...redisArgs, '--node-name', `node${i + 1}`, ...CLUSTER_TIMING_ARGS],
  })
  const results = await Promise.allSettled(
    Array.from({ length: count }, (_, i) => (ports[i] ? startOnPort(ports[i], nodeOpts(i)) : startNode(nodeOpts(i))))
  )
  const failed = results.find((r) => r.status === 'rejected')
  if (failed) {
    await Promise.all(results.filter((r) => r.status === 'fulfilled').map((r) => r.value.stop()))
    await redis.stop()
    throw failed.reason
  }
  const nodes = results.map((r) => r.value)
  const urls = nodes.map((n) => n.url)
  const nodePorts = nodes.map((n) => n.port)
  const rr = { urls, ports: nodePorts, next: 0 }
  clusterByUrl.set(urls[0], rr)
  clusterByPort.set(nodePorts[0], rr)
  let ownsRedis = true
  const unregister = () => {
    if (clusterByUrl.get(urls[0]) === rr) clusterByUrl.delete(urls[0])
    if (clusterByPort.get(nodePorts[0]) === rr) clusterByPort.delete(nodePorts[0])
  }

  return {
    cluster: true,
    // The single-server API, pointing at node 1.
    url: urls[0],
    port: nodePorts[0],
    process: nodes[0].process,
    // Cluster extras.
    urls,
    ports: nodePorts,
    nodes,
    redis,
    logs: () =>
      nodes.map((n, i) => `----- node${i + 1} (${n.url}) -----\n${n.logs()}`).join('\n') +
      `\n----- redis (${redis.url}) -----\n${redis.logs()}`,
    /** Stop every node, then Redis. */
    async stop() {
      unregister()
      await Promise.all(nodes.map((n) => n.stop()))
      if (ownsRedis) {
        ownsRedis = false
        await redis.stop()
      }
    },
    /**
     * Stop every node and start them again on the same ports and with the same
     * names (fresh processes); Redis keeps running with whatever they left in it,
     * as in a rolling restart of a real deployment.
     */
    async restart() {
      unregister()
      await Promise.all(nodes.map((n) => n.stop()))
      if (!ownsRedis) throw new Error('this cluster was stopped or restarted already')
      ownsRedis = false
      return startCluster({ env, args, nodes: count, ports: nodePorts }, redis)
    },
  }
}
