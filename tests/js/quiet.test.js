// Replace ("quiet") updates with supabase-js 2.119.1 unchanged: a member that
// joined with config.presence.updates = 'replace' updates its state with one
// `join` (the old meta in currentPresences) and no `leave`; a classic member
// in the same room keeps Supabase's join + leave under a new ref.
import { describe, test, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import { startServer } from './helpers/server.js'
import { startProxy } from './helpers/proxy.js'
import { closeAllClients, joinedRoom, newClient, uniqueRoom, waitFor } from './helpers/clients.js'

let server

/** A transport that keeps every text frame the client receives. */
function recordingTransport(frames) {
  return class RecordingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args)
      this.addEventListener('message', (e) => frames.push(String(e.data)))
    }
  }
}

describe('supabase-js replace updates', () => {
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

  test('a replace update fires one join and no leave; a classic member in the room keeps join + leave', async () => {
    const room = uniqueRoom('quiet')
    const frames = []
    const watcher = await joinedRoom(newClient(server.url, { transport: recordingTransport(frames) }), room, {
      key: 'watcher',
    })
    const quiet = await joinedRoom(newClient(server.url), room, { key: 'quiet', updates: 'replace' })
    const classic = await joinedRoom(newClient(server.url), room, { key: 'classic', updates: 'classic' })

    assert.equal(await quiet.channel.track({ status: 'online' }), 'ok')
    assert.equal(await classic.channel.track({ status: 'online' }), 'ok')
    await waitFor(() => watcher.state().quiet && watcher.state().classic)
    const quietRef = watcher.state().quiet[0].presence_ref
    const classicRef = watcher.state().classic[0].presence_ref
    const before = watcher.events.length

    assert.equal(await quiet.channel.track({ status: 'away' }), 'ok')
    // The classic update after it is the marker: frames arrive in order.
    assert.equal(await classic.channel.track({ status: 'away' }), 'ok')
    await waitFor(() => watcher.leaves().some((e) => e.key === 'classic'))

    const after = watcher.events.slice(before)
    const quietEvents = after.filter((e) => e.event !== 'sync' && e.key === 'quiet')
    assert.deepEqual(quietEvents, [
      {
        event: 'join',
        key: 'quiet',
        currentPresences: [{ presence_ref: quietRef, status: 'online' }],
        newPresences: [{ presence_ref: quietRef, status: 'away' }],
      },
    ])
    const classicEvents = after.filter((e) => e.event !== 'sync' && e.key === 'classic')
    assert.deepEqual(
      classicEvents.map((e) => e.event),
      ['join', 'leave'],
    )
    const newClassicRef = classicEvents[0].newPresences[0].presence_ref
    assert.notEqual(newClassicRef, classicRef)
    assert.deepEqual(classicEvents[1].leftPresences, [{ presence_ref: classicRef, status: 'online' }])

    assert.deepEqual(watcher.state().quiet, [{ presence_ref: quietRef, status: 'away' }])
    assert.deepEqual(watcher.state().classic, [{ presence_ref: newClassicRef, status: 'away' }])
    // The updating client's own view, too.
    await waitFor(() => quiet.state().quiet?.[0]?.status === 'away')
    assert.deepEqual(quiet.state().quiet, [{ presence_ref: quietRef, status: 'away' }])
    assert.equal(quiet.leaves().filter((e) => e.key === 'quiet').length, 0)

    // The raw frame (vsn 2.0.0: [join_ref, ref, topic, event, payload]).
    const diffs = frames.map((f) => JSON.parse(f)).filter((m) => m[3] === 'presence_diff')
    const quietDiff = diffs.find((m) => m[4].joins.quiet?.metas[0].status === 'away')
    assert.deepEqual(quietDiff[4].leaves, {})
    assert.equal(quietDiff[4].joins.quiet.metas[0].phx_ref, quietRef)
    const raw = frames.find((f) => f.includes('presence_diff') && f.includes('"away"') && f.includes('"quiet"'))
    console.log(`quiet update frame as received: ${raw}`)
  })

  test('a client that rejoins after missing a replace update shows the new state', async () => {
    const room = uniqueRoom('quiet')
    const proxy = await startProxy(server.port)
    try {
      const quiet = await joinedRoom(newClient(server.url), room, { key: 'quiet', updates: 'replace' })
      assert.equal(await quiet.channel.track({ v: 1 }), 'ok')
      const client = newClient(proxy.url)
      const late = await joinedRoom(client, room, { key: 'late' })
      await waitFor(() => late.state().quiet?.[0]?.v === 1)
      // The connection dies; the update happens while it is away; it comes back and rejoins.
      proxy.refuse(true)
      proxy.cut()
      await waitFor(() => !client.realtime.isConnected())
      assert.equal(await quiet.channel.track({ v: 2 }), 'ok')
      proxy.refuse(false)
      await waitFor(() => late.subscribedCount >= 2, { timeout: 15_000 })
      // Its snapshot alone would keep v 1 (same ref): the server re-sends the meta after it.
      await waitFor(() => late.state().quiet?.[0]?.v === 2, {
        message: () => `late still shows ${JSON.stringify(late.state())}`,
      })
      assert.equal(late.state().quiet.length, 1)
      assert.equal(late.leaves().filter((e) => e.key === 'quiet').length, 0, 'no leave of the updated meta')
    } finally {
      await closeAllClients()
      await proxy.close()
    }
  })
})
