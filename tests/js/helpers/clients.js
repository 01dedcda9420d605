// supabase-js clients, presence recorders and bounded waits for the tests.
import { createClient } from '@supabase/supabase-js'
import WebSocket from 'ws'
import { PUBLISHABLE_KEY, nodeUrlFor, resetNodeRoundRobin } from './server.js'

export const UUID_V1 = /^[0-9a-f]{8}-[0-9a-f]{4}-1[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

const openClients = new Set()

/**
 * A supabase-js client for the project URL (Node 20 has no global WebSocket: use `ws`).
 * `realtime` adds realtime-js options; `options` adds createClient options
 * (e.g. `accessToken: async () => jwt` for a signed-in user).
 * When `url` is a test cluster's URL, the client goes to the cluster's next
 * node round-robin (see server.js); `client.rosterUrl` is the URL it uses.
 */
export function newClient(url, realtime = {}, options = {}) {
  return newNodeClient(nodeUrlFor(url), realtime, options)
}

/** newClient on exactly `url` (no round-robin): e.g. `newNodeClient(cluster.urls[2])`. */
export function newNodeClient(url, realtime = {}, options = {}) {
  const client = createClient(url, PUBLISHABLE_KEY, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    ...options,
    realtime: { transport: WebSocket, ...realtime },
  })
  client.rosterUrl = url
  openClients.add(client)
  return client
}

/** Leave every channel (bounded), close the socket and stop every client timer. */
export async function closeClient(client) {
  openClients.delete(client)
  const channels = client.getChannels()
  try {
    await withTimeout(client.removeAllChannels(), 2_000)
  } catch {}
  for (const ch of channels) {
    try {
      ch.teardown()
    } catch {}
  }
  try {
    await withTimeout(client.realtime.disconnect(), 2_000)
  } catch {}
}

/** Close every open client; the next test's clients start again at a cluster's node 1. */
export async function closeAllClients() {
  await Promise.all([...openClients].map((c) => closeClient(c)))
  resetNodeRoundRobin()
}

export function plain(value) {
  return value === undefined ? undefined : JSON.parse(JSON.stringify(value))
}

export function uniqueRoom(prefix = 'room') {
  return `${prefix}-${Math.random().toString(36).slice(2, 10)}`
}

/**
 * Join `room` on `client` with presence listeners that record every event.
 * `key` sets config.presence.key, `updates` config.presence.updates
 * ('replace' | 'classic'); `onSubscribed(channel, n)` runs on every
 * SUBSCRIBED (n = 1 for the first join, 2 after the first rejoin, ...).
 */
export function joinRoom(client, room, { key, updates, onSubscribed } = {}) {
  const config = key === undefined ? {} : { presence: { key } }
  // Roster's extension: how this member's own updates reach the others.
  if (updates !== undefined) config.presence = { ...config.presence, updates }
  const channel = client.channel(room, { config })
  const rec = {
    channel,
    events: [], // {event:'sync', state} | {event:'join', key, currentPresences, newPresences} | {event:'leave', ...}
    statuses: [],
    subscribedCount: 0,
    errors: [],
    state: () => plain(channel.presenceState()),
    joins: () => rec.events.filter((e) => e.event === 'join'),
    leaves: () => rec.events.filter((e) => e.event === 'leave'),
    syncs: () => rec.events.filter((e) => e.event === 'sync'),
  }
  channel
    .on('presence', { event: 'sync' }, () => {
      rec.events.push({ event: 'sync', state: plain(channel.presenceState()) })
    })
    .on('presence', { event: 'join' }, (payload) => rec.events.push(plain(payload)))
    .on('presence', { event: 'leave' }, (payload) => rec.events.push(plain(payload)))
    .subscribe((status, err) => {
      rec.statuses.push(status)
      if (err) rec.errors.push(err)
      if (status === 'SUBSCRIBED') {
        rec.subscribedCount += 1
        if (onSubscribed) {
          Promise.resolve(onSubscribed(channel, rec.subscribedCount)).catch((e) => rec.errors.push(e))
        }
      }
    })
  return rec
}

/** joinRoom + wait for SUBSCRIBED and for the first sync (the presence_state). */
export async function joinedRoom(client, room, opts = {}) {
  const rec = joinRoom(client, room, opts)
  await waitFor(() => rec.subscribedCount >= 1, {
    message: () => `channel ${room} never SUBSCRIBED; statuses ${JSON.stringify(rec.statuses)} errors ${rec.errors}`,
  })
  await waitFor(() => rec.syncs().length >= 1, {
    message: () => `no presence sync after joining ${room} (presence_state missing?)`,
  })
  return rec
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

export async function withTimeout(promise, ms, what = 'operation') {
  let timer
  try {
    return await Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms)
      }),
    ])
  } finally {
    clearTimeout(timer)
  }
}

/** Poll `fn` until it returns a truthy value; fail after `timeout` ms. */
export async function waitFor(fn, { timeout = 5_000, interval = 20, message } = {}) {
  const deadline = Date.now() + timeout
  let last
  for (;;) {
    last = await fn()
    if (last) return last
    if (Date.now() > deadline) {
      const msg = typeof message === 'function' ? message() : message
      throw new Error(`waitFor timed out after ${timeout} ms: ${msg ?? fn.toString()}`)
    }
    await sleep(interval)
  }
}

/** The presence state without refs, keys sorted, metas as given: for comparisons. */
export function withoutRefs(state) {
  const out = {}
  for (const key of Object.keys(state).sort()) {
    out[key] = state[key].map(({ presence_ref, ...rest }) => rest)
  }
  return out
}

/** Every presence object is `{presence_ref: non-empty string, ...fields}` without phx_ref(_prev). */
export function assertPresenceObjects(assert, presences, where = '') {
  assert.ok(Array.isArray(presences), `${where}: presences must be an array`)
  for (const p of presences) {
    assert.equal(typeof p.presence_ref, 'string', `${where}: presence_ref must be a string in ${JSON.stringify(p)}`)
    assert.ok(p.presence_ref.length > 0, `${where}: presence_ref must be non-empty`)
    assert.ok(!('phx_ref' in p), `${where}: phx_ref must not leak: ${JSON.stringify(p)}`)
    assert.ok(!('phx_ref_prev' in p), `${where}: phx_ref_prev must not leak: ${JSON.stringify(p)}`)
  }
}
