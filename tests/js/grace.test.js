// The leave grace period (ROSTER_PRESENCE_GRACE_MS) with supabase-js: a
// client whose connection is cut reconnects, re-tracks the same state in its
// SUBSCRIBED callback, and the other client sees no leave and no join; a
// client that does not come back leaves exactly once, after the period.
import { describe, test, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { startServer } from './helpers/server.js'
import { startProxy } from './helpers/proxy.js'
import { closeAllClients, joinRoom, joinedRoom, newClient, sleep, uniqueRoom, waitFor } from './helpers/clients.js'

const GRACE_MS = 4000

describe('supabase-js with a leave grace period', () => {
  let srv
  const proxies = []
  before(async () => {
    srv = await startServer({ env: { ROSTER_PRESENCE_GRACE_MS: String(GRACE_MS) } })
  })
  afterEach(async () => {
    await closeAllClients()
    await Promise.all(proxies.splice(0).map((p) => p.close()))
  })
  after(async () => {
    await closeAllClients()
    await srv.stop()
  })

  test('an abrupt disconnect and reconnect within the period shows no leave and no join to others', async () => {
    const room = uniqueRoom()
    const proxy = await startProxy(srv.port)
    proxies.push(proxy)
    const observer = newClient(srv.url)
    const ro = await joinedRoom(observer, room, { key: 'observer' })
    const roamer = newClient(proxy.url)
    const rr = joinRoom(roamer, room, {
      key: 'roamer',
      onSubscribed: (channel) => channel.track({ status: 'online' }),
    })
    await waitFor(() => ro.state().roamer?.length === 1)
    const ref = ro.state().roamer[0].presence_ref
    const eventsBefore = ro.events.filter((e) => e.event !== 'sync').length

    proxy.cut()
    await waitFor(() => rr.subscribedCount >= 2, {
      timeout: 10_000,
      message: () => `roamer did not rejoin; statuses ${JSON.stringify(rr.statuses)}`,
    })
    // Past the end of the grace period: nothing happened for the observer.
    await sleep(GRACE_MS + 500)
    const churn = ro.events.filter((e) => e.event !== 'sync').slice(eventsBefore)
    assert.deepEqual(churn, [], `the observer saw churn: ${JSON.stringify(churn)}`)
    assert.equal(ro.state().roamer.length, 1)
    assert.equal(ro.state().roamer[0].presence_ref, ref, 'the same presence, taken over')
    // The roamer's own view, rebuilt after its rejoin, agrees.
    assert.deepEqual(rr.state(), ro.state())
  })

  test('without a reconnect exactly one leave goes out, after the period', async () => {
    const room = uniqueRoom()
    const proxy = await startProxy(srv.port)
    proxies.push(proxy)
    const observer = newClient(srv.url)
    const ro = await joinedRoom(observer, room, { key: 'observer' })
    const gone = newClient(proxy.url)
    const rg = await joinedRoom(gone, room, { key: 'gone' })
    assert.equal(await rg.channel.track({ n: 1 }), 'ok')
    await waitFor(() => ro.state().gone)
    proxy.refuse(true)
    proxy.cut()
    const cutAt = Date.now()
    await sleep(GRACE_MS / 2)
    assert.equal(ro.leaves().length, 0, 'no leave during the grace period')
    await waitFor(() => ro.leaves().length >= 1, { timeout: GRACE_MS + 3000 })
    assert.ok(Date.now() - cutAt >= GRACE_MS - 200, 'the leave waited for the period')
    await sleep(500)
    assert.equal(ro.leaves().length, 1)
    assert.equal(ro.leaves()[0].key, 'gone')
    assert.deepEqual(Object.keys(ro.state()), [])
  })
})
