// supabase-js against roster when connections die: abrupt resets, silent
// connections, reconnects through a cut proxy, and a restarted server.
import { describe, test, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { startServer } from './helpers/server.js'
import { startProxy } from './helpers/proxy.js'
import {
  closeAllClients,
  joinRoom,
  joinedRoom,
  newClient,
  sleep,
  uniqueRoom,
  waitFor,
  withoutRefs,
} from './helpers/clients.js'

const servers = []
const proxies = []

async function server(opts) {
  const s = await startServer(opts)
  servers.push(s)
  return s
}

async function proxyTo(port) {
  const p = await startProxy(port)
  proxies.push(p)
  return p
}

describe('supabase-js presence when connections die', () => {
  let shared
  before(async () => {
    shared = await server()
  })
  afterEach(async () => {
    await closeAllClients()
    await Promise.all(proxies.splice(0).map((p) => p.close()))
  })
  after(async () => {
    await closeAllClients()
    await Promise.all(proxies.splice(0).map((p) => p.close()))
    await Promise.all(servers.map((s) => s.stop()))
  })

  test('an abruptly reset connection (TCP RST) makes the other client see a leave within a few seconds', async () => {
    const room = uniqueRoom()
    const proxy = await proxyTo(shared.port)
    const victim = newClient(proxy.url)
    const observer = newClient(shared.url)
    const rv = await joinedRoom(victim, room, { key: 'victim' })
    const ro = await joinedRoom(observer, room, { key: 'observer' })
    assert.equal(await rv.channel.track({ v: 1 }), 'ok')
    await waitFor(() => ro.state().victim)
    const victimMeta = ro.state().victim[0]

    proxy.refuse(true) // the victim must not come back for this test
    proxy.cut()
    const cutAt = Date.now()
    const leave = await waitFor(() => ro.leaves().find((e) => e.key === 'victim'), {
      timeout: 5_000,
      message: () => `no leave for victim; observer state ${JSON.stringify(ro.state())}`,
    })
    assert.ok(Date.now() - cutAt < 5_000)
    assert.deepEqual(leave.leftPresences, [victimMeta])
    assert.deepEqual(leave.currentPresences, [])
    assert.deepEqual(Object.keys(ro.state()), [])
  })

  test('a reconnecting client (proxy cut, proxy still listening) rejoins, re-tracks in SUBSCRIBED and ends with exactly one meta', async () => {
    const room = uniqueRoom()
    const proxy = await proxyTo(shared.port)
    const roamer = newClient(proxy.url)
    const observer = newClient(shared.url)
    const ro = await joinedRoom(observer, room, { key: 'observer' })
    assert.equal(await ro.channel.track({ role: 'observer' }), 'ok')
    const rr = joinRoom(roamer, room, {
      key: 'roamer',
      onSubscribed: (channel, n) => channel.track({ role: 'roamer', n }),
    })
    await waitFor(() => ro.state().roamer?.some((p) => p.n === 1))
    const oldRef = ro.state().roamer[0].presence_ref

    proxy.cut()
    await waitFor(() => rr.subscribedCount >= 2, {
      timeout: 10_000,
      message: () => `roamer did not rejoin; statuses ${JSON.stringify(rr.statuses)}`,
    })
    await waitFor(() => ro.state().roamer?.some((p) => p.n === 2), {
      timeout: 5_000,
      message: () => `observer never saw the re-track; state ${JSON.stringify(ro.state())}`,
    })
    // Let any late duplicate or ghost diff arrive before judging.
    await waitFor(() => ro.state().roamer?.length === 1, {
      timeout: 5_000,
      message: () => `roamer should have exactly one meta: ${JSON.stringify(ro.state())}`,
    })
    await sleep(300)
    const expected = { observer: [{ role: 'observer' }], roamer: [{ role: 'roamer', n: 2 }] }
    assert.deepEqual(withoutRefs(ro.state()), expected)
    assert.ok(!ro.state().roamer.some((p) => p.presence_ref === oldRef), 'the old meta must be gone')
    // The roamer's own view, rebuilt from the fresh presence_state after rejoin, agrees.
    await waitFor(() => rr.state().roamer?.some((p) => p.n === 2) && rr.state().roamer.length === 1)
    assert.deepEqual(withoutRefs(rr.state()), expected)
    assert.deepEqual(rr.state(), ro.state())
    assert.equal(proxy.accepted(), 2, 'one reconnect through the proxy')
  })

  test('after a roster restart on the same port both clients come back with exactly one meta each', async () => {
    const room = uniqueRoom()
    let srv = await server()
    const a = newClient(srv.url)
    const b = newClient(srv.url)
    const track = (channel, n) => channel.track({ n })
    const ra = joinRoom(a, room, { key: 'a', onSubscribed: track })
    const rb = joinRoom(b, room, { key: 'b', onSubscribed: track })
    const both = (rec, n) => {
      const s = rec.state()
      return s.a?.length === 1 && s.b?.length === 1 && s.a[0].n === n && s.b[0].n === n
    }
    await waitFor(() => both(ra, 1) && both(rb, 1))
    const before = ra.state()

    srv = await srv.restart()
    servers.push(srv)
    await waitFor(() => ra.subscribedCount >= 2 && rb.subscribedCount >= 2, {
      timeout: 20_000,
      message: () => `no rejoin after restart: ${JSON.stringify(ra.statuses)} / ${JSON.stringify(rb.statuses)}`,
    })
    const msg = () => `states: ${JSON.stringify(ra.state())} / ${JSON.stringify(rb.state())}`
    await waitFor(() => both(ra, 2) && both(rb, 2), { timeout: 5_000, message: msg })
    await sleep(300)
    assert.deepEqual(withoutRefs(ra.state()), { a: [{ n: 2 }], b: [{ n: 2 }] }, msg())
    assert.deepEqual(withoutRefs(rb.state()), { a: [{ n: 2 }], b: [{ n: 2 }] }, msg())
    assert.deepEqual(ra.state(), rb.state())
    // No pre-restart ref survives in the client views.
    const oldRefs = new Set(Object.values(before).flat().map((p) => p.presence_ref))
    for (const p of Object.values(ra.state()).flat()) assert.ok(!oldRefs.has(p.presence_ref))
  })
})

describe('supabase-js presence with a short server idle timeout', () => {
  let srv
  before(async () => {
    srv = await server({ env: { ROSTER_IDLE_TIMEOUT_MS: '1500' } })
  })
  afterEach(async () => {
    await closeAllClients()
    await Promise.all(proxies.splice(0).map((p) => p.close()))
  })

  test('a silent connection (no FIN, no RST) is dropped by the idle timeout and the other client sees a leave', async () => {
    const room = uniqueRoom()
    const proxy = await proxyTo(srv.port)
    // Both heartbeat faster than the idle timeout, so only silence can end a socket.
    const victim = newClient(proxy.url, { heartbeatIntervalMs: 400 })
    const observer = newClient(srv.url, { heartbeatIntervalMs: 400 })
    const rv = await joinedRoom(victim, room, { key: 'victim' })
    const ro = await joinedRoom(observer, room, { key: 'observer' })
    assert.equal(await rv.channel.track({ v: 1 }), 'ok')
    await waitFor(() => ro.state().victim)
    // Alive across several idle periods while heartbeats flow.
    await sleep(2_000)
    assert.ok(ro.state().victim, 'a heartbeating client must not be dropped')
    assert.equal(ro.leaves().length, 0)

    proxy.refuse(true)
    proxy.freeze()
    const frozenAt = Date.now()
    await waitFor(() => ro.leaves().find((e) => e.key === 'victim'), {
      timeout: 6_000,
      message: () => `no leave after the idle timeout; state ${JSON.stringify(ro.state())}`,
    })
    const took = Date.now() - frozenAt
    assert.ok(took >= 1_000, `leave came after ${took} ms, before the idle timeout could expire`)
    assert.deepEqual(ro.state(), {})
  })
})
