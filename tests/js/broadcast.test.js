// supabase-js 2.119.1 (realtime-js, vsn 2.0.0) broadcast against a real roster:
// websocket sends (binary kind-3 frames), self/ack, event filters, binary
// payloads (kind-4 frames), httpSend() and the REST batch endpoint.
import { describe, test, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { PUBLISHABLE_KEY, SECRET_KEY, startServer } from './helpers/server.js'
import { closeAllClients, newClient, sleep, uniqueRoom, waitFor } from './helpers/clients.js'

let server

/** How long to keep listening before asserting that something did NOT arrive. */
const QUIET_MS = 300

/**
 * Subscribe to `room` with one broadcast listener per entry of `events`
 * ('*' or an event name); every callback payload is recorded per listener.
 * Resolves once SUBSCRIBED.
 */
async function listen(client, room, { events = ['*'], broadcast } = {}) {
  const config = broadcast ? { broadcast } : {}
  const channel = client.channel(room, { config })
  const rec = { channel, got: {}, statuses: [], errors: [] }
  for (const event of events) {
    rec.got[event] = []
    channel.on('broadcast', { event }, (msg) => rec.got[event].push(msg))
  }
  channel.subscribe((status, err) => {
    rec.statuses.push(status)
    if (err) rec.errors.push(err)
  })
  await waitFor(() => rec.statuses.includes('SUBSCRIBED'), {
    message: () => `${room} never SUBSCRIBED: ${JSON.stringify(rec.statuses)} ${rec.errors}`,
  })
  return rec
}

/** The JSON-safe view of a received broadcast (drops nothing). */
const json = (msg) => JSON.parse(JSON.stringify(msg))

describe('supabase-js broadcast', () => {
  before(async () => {
    server = await startServer()
  })
  afterEach(async () => {
    await closeAllClients()
  })
  after(async () => {
    await closeAllClients()
    await server?.stop()
  })

  test('with self off (default) a broadcast reaches the other member only', async () => {
    const room = uniqueRoom()
    const a = await listen(newClient(server.url), room)
    const b = await listen(newClient(server.url), room)

    assert.equal(await a.channel.send({ type: 'broadcast', event: 'cursor', payload: { x: 10, y: 20 } }), 'ok')
    await waitFor(() => b.got['*'].length >= 1, { message: 'B never received the broadcast' })
    assert.deepEqual(json(b.got['*'][0]), { type: 'broadcast', event: 'cursor', payload: { x: 10, y: 20 } })

    await sleep(QUIET_MS)
    assert.equal(b.got['*'].length, 1, 'exactly one delivery')
    assert.deepEqual(a.got['*'], [], 'the sender must not receive its own broadcast with self: false')
  })

  test('with self on the sender receives its own broadcast as well', async () => {
    const room = uniqueRoom()
    const a = await listen(newClient(server.url), room, { broadcast: { self: true } })
    const b = await listen(newClient(server.url), room)

    assert.equal(await a.channel.send({ type: 'broadcast', event: 'chat', payload: { text: 'hi ünïcødé 👋' } }), 'ok')
    const expected = { type: 'broadcast', event: 'chat', payload: { text: 'hi ünïcødé 👋' } }
    await waitFor(() => a.got['*'].length >= 1 && b.got['*'].length >= 1, {
      message: () => `A got ${a.got['*'].length}, B got ${b.got['*'].length}`,
    })
    assert.deepEqual(json(a.got['*'][0]), expected)
    assert.deepEqual(json(b.got['*'][0]), expected)

    // B has self off: its own send reaches A only.
    assert.equal(await b.channel.send({ type: 'broadcast', event: 'chat', payload: { text: 'from b' } }), 'ok')
    await waitFor(() => a.got['*'].length >= 2)
    await sleep(QUIET_MS)
    assert.equal(b.got['*'].length, 1)
    assert.equal(a.got['*'].length, 2)
  })

  test('with ack on, send() resolves "ok" from the server reply', async () => {
    const room = uniqueRoom()
    const a = await listen(newClient(server.url), room, { broadcast: { ack: true } })
    const b = await listen(newClient(server.url), room)

    // Without a server reply send() would resolve 'timed out' after the timeout.
    const started = Date.now()
    const result = await a.channel.send({ type: 'broadcast', event: 'ping', payload: { n: 1 } }, { timeout: 3_000 })
    assert.equal(result, 'ok')
    assert.ok(Date.now() - started < 2_500, 'the ack must arrive well before the timeout')
    await waitFor(() => b.got['*'].length === 1)

    // ack + self together.
    const c = await listen(newClient(server.url), room, { broadcast: { ack: true, self: true } })
    assert.equal(await c.channel.send({ type: 'broadcast', event: 'ping', payload: { n: 2 } }, { timeout: 3_000 }), 'ok')
    await waitFor(() => c.got['*'].length === 1 && b.got['*'].length === 2)
    assert.deepEqual(json(c.got['*'][0]).payload, { n: 2 })
  })

  test("'*' receives every event, a named listener only its own event (case-insensitively)", async () => {
    const room = uniqueRoom()
    const a = await listen(newClient(server.url), room)
    const b = await listen(newClient(server.url), room, { events: ['*', 'cursor', 'CHAT'] })

    await a.channel.send({ type: 'broadcast', event: 'cursor', payload: { x: 1 } })
    await a.channel.send({ type: 'broadcast', event: 'chat', payload: { text: 'a' } })
    await a.channel.send({ type: 'broadcast', event: 'other', payload: { z: true } })

    await waitFor(() => b.got['*'].length >= 3, { message: () => `B '*' got ${JSON.stringify(b.got['*'])}` })
    await sleep(QUIET_MS)
    assert.deepEqual(
      b.got['*'].map((m) => m.event),
      ['cursor', 'chat', 'other'],
      'broadcasts from one sender arrive in order'
    )
    assert.deepEqual(json(b.got.cursor), [{ type: 'broadcast', event: 'cursor', payload: { x: 1 } }])
    assert.deepEqual(json(b.got.CHAT), [{ type: 'broadcast', event: 'chat', payload: { text: 'a' } }])
  })

  test('a binary (ArrayBuffer) payload arrives as an ArrayBuffer with the same bytes', async () => {
    const room = uniqueRoom()
    const a = await listen(newClient(server.url), room)
    const b = await listen(newClient(server.url), room, { events: ['*', 'blob'] })

    const bytes = new Uint8Array([0, 1, 2, 0x7f, 0x80, 0xfe, 0xff, 0x7b, 0x22]) // includes `{"`
    // realtime-js sends a kind-3 frame with encoding 0 only for a real ArrayBuffer.
    assert.equal(await a.channel.send({ type: 'broadcast', event: 'blob', payload: bytes.slice().buffer }), 'ok')
    // A JSON payload right after it still arrives as JSON.
    assert.equal(await a.channel.send({ type: 'broadcast', event: 'after', payload: { ok: true } }), 'ok')

    await waitFor(() => b.got['*'].length >= 2, { message: () => `B got ${b.got['*'].length}` })
    const msg = b.got.blob[0]
    assert.ok(msg, 'the filtered listener fires for a binary broadcast')
    assert.equal(msg.type, 'broadcast')
    assert.equal(msg.event, 'blob')
    assert.ok(msg.payload instanceof ArrayBuffer, `payload must be an ArrayBuffer, got ${Object.prototype.toString.call(msg.payload)}`)
    assert.deepEqual([...new Uint8Array(msg.payload)], [...bytes])
    assert.deepEqual(json(b.got['*'][1]), { type: 'broadcast', event: 'after', payload: { ok: true } })
    await sleep(QUIET_MS)
    assert.deepEqual(a.got['*'], [])
  })

  test('an empty ArrayBuffer payload arrives as an empty ArrayBuffer', async () => {
    const room = uniqueRoom()
    const a = await listen(newClient(server.url), room)
    const b = await listen(newClient(server.url), room)
    assert.equal(await a.channel.send({ type: 'broadcast', event: 'empty', payload: new ArrayBuffer(0) }), 'ok')
    await waitFor(() => b.got['*'].length === 1)
    assert.ok(b.got['*'][0].payload instanceof ArrayBuffer)
    assert.equal(b.got['*'][0].payload.byteLength, 0)
  })

  test('channel.httpSend() (JSON and binary) reaches every subscriber, the sender included', async () => {
    const room = uniqueRoom()
    const a = await listen(newClient(server.url), room)
    const b = await listen(newClient(server.url), room)

    assert.deepEqual(await a.channel.httpSend('news', { id: 7, tags: ['x'] }), { success: true })
    await waitFor(() => a.got['*'].length === 1 && b.got['*'].length === 1, {
      message: () => `A got ${a.got['*'].length}, B got ${b.got['*'].length}`,
    })
    const expected = { type: 'broadcast', event: 'news', payload: { id: 7, tags: ['x'] } }
    assert.deepEqual(json(b.got['*'][0]), expected)
    // A REST broadcast has no sending channel, so `self` does not apply.
    assert.deepEqual(json(a.got['*'][0]), expected)

    // Binary body (application/octet-stream) → kind-4 binary to vsn-2 clients.
    const bytes = new Uint8Array([9, 8, 7, 0, 255])
    assert.deepEqual(await a.channel.httpSend('raw', bytes.slice().buffer), { success: true })
    await waitFor(() => b.got['*'].length === 2)
    const raw = b.got['*'][1]
    assert.equal(raw.event, 'raw')
    assert.ok(raw.payload instanceof ArrayBuffer, `payload must be an ArrayBuffer, got ${JSON.stringify(raw)}`)
    assert.deepEqual([...new Uint8Array(raw.payload)], [...bytes])

    // httpSend() needs no subscription: a channel that never joined works too.
    const sender = newClient(server.url).channel(room)
    assert.deepEqual(await sender.httpSend('late', { n: 3 }), { success: true })
    await waitFor(() => b.got['*'].length === 3)
    assert.deepEqual(json(b.got['*'][2]), { type: 'broadcast', event: 'late', payload: { n: 3 } })
  })

  test('send() on a channel that is not joined falls back to the REST batch endpoint', async () => {
    const room = uniqueRoom()
    const b = await listen(newClient(server.url), room)
    const sender = newClient(server.url).channel(room)
    const warn = console.warn
    console.warn = () => {} // realtime-js warns that this fallback is deprecated
    let result
    try {
      result = await sender.send({ type: 'broadcast', event: 'fallback', payload: { via: 'rest' } })
    } finally {
      console.warn = warn
    }
    assert.equal(result, 'ok')
    await waitFor(() => b.got['*'].length === 1)
    assert.deepEqual(json(b.got['*'][0]), { type: 'broadcast', event: 'fallback', payload: { via: 'rest' } })
  })

  test('POST /realtime/v1/api/broadcast (batch, via fetch) fans out to the subscribers of each topic', async () => {
    const room1 = uniqueRoom()
    const room2 = uniqueRoom()
    const r1 = await listen(newClient(server.url), room1)
    const r2 = await listen(newClient(server.url), room2, { events: ['*', 'only-this'] })

    const res = await fetch(`${server.url}/realtime/v1/api/broadcast`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', apikey: PUBLISHABLE_KEY },
      body: JSON.stringify({
        messages: [
          { topic: room1, event: 'one', payload: { n: 1 } },
          { topic: room2, event: 'only-this', payload: { n: 2 } },
          { topic: room1, event: 'three', payload: { n: 3 } },
        ],
      }),
    })
    assert.equal(res.status, 202, await res.text())

    await waitFor(() => r1.got['*'].length === 2 && r2.got['*'].length === 1, {
      message: () => `room1 got ${JSON.stringify(r1.got['*'])}, room2 got ${JSON.stringify(r2.got['*'])}`,
    })
    assert.deepEqual(json(r1.got['*']), [
      { type: 'broadcast', event: 'one', payload: { n: 1 } },
      { type: 'broadcast', event: 'three', payload: { n: 3 } },
    ])
    assert.deepEqual(json(r2.got['only-this']), [{ type: 'broadcast', event: 'only-this', payload: { n: 2 } }])

    // Authorization: Bearer <secret key> works as well, and stray query params are ignored.
    const res2 = await fetch(`${server.url}/realtime/v1/api/broadcast?apikey=${PUBLISHABLE_KEY}&vsn=2.0.0`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${SECRET_KEY}` },
      body: JSON.stringify({ messages: [{ topic: room2, event: 'bearer', payload: { ok: 1 } }] }),
    })
    assert.equal(res2.status, 202, await res2.text())
    await waitFor(() => r2.got['*'].length === 2)
    assert.deepEqual(json(r2.got['*'][1]), { type: 'broadcast', event: 'bearer', payload: { ok: 1 } })

    // A wrong key is refused and delivers nothing.
    const bad = await fetch(`${server.url}/realtime/v1/api/broadcast`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', apikey: 'sb_publishable_wrong' },
      body: JSON.stringify({ messages: [{ topic: room1, event: 'nope', payload: {} }] }),
    })
    assert.equal(bad.status, 401)
    await sleep(QUIET_MS)
    assert.equal(r1.got['*'].length, 2)
  })
})
