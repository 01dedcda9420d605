// supabase-js presence across a cluster: three roster nodes sharing one
// redis-server (`--redis`), clients pinned to different nodes.
//
// This file always starts its own cluster (in the single-node run as well), so
// it needs `redis-server` on the PATH (or REDIS_SERVER_BIN).
import { describe, test, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { startServer } from './helpers/server.js'
import {
  assertPresenceObjects,
  closeAllClients,
  joinedRoom,
  newNodeClient,
  sleep,
  uniqueRoom,
  waitFor,
  withoutRefs,
} from './helpers/clients.js'

/** Long enough for a duplicate leave (e.g. from a lease reaper) to show up: > lease + reap grace. */
const QUIET_MS = 2_000

let cluster

describe('supabase-js presence across a 3-node cluster', () => {
  before(async () => {
    cluster = await startServer({ cluster: true })
    assert.equal(cluster.urls.length, 3)
  })
  afterEach(async () => {
    await closeAllClients()
  })
  after(async () => {
    await closeAllClients()
    await cluster?.stop()
  })

  test('6 clients on 3 nodes track in one room: every presenceState() converges to the same 6 keys and payloads', async () => {
    const room = uniqueRoom('cluster')
    const members = Array.from({ length: 6 }, (_, i) => ({ key: `user-${i}`, node: i % 3 }))
    const recs = []
    for (const m of members) {
      const client = newNodeClient(cluster.urls[m.node])
      recs.push(await joinedRoom(client, room, { key: m.key }))
    }
    const statuses = await Promise.all(
      recs.map((r, i) => r.channel.track({ name: members[i].key, node: `node${members[i].node + 1}`, i }))
    )
    assert.deepEqual(statuses, Array(6).fill('ok'))

    const expected = {}
    for (const [i, m] of members.entries()) expected[m.key] = [{ name: m.key, node: `node${m.node + 1}`, i }]
    const views = () => recs.map((r, i) => `${members[i].key}@node${members[i].node + 1}: ${JSON.stringify(r.state())}`).join('\n')
    await waitFor(() => recs.every((r) => Object.keys(r.state()).length === 6 && Object.values(r.state()).every((m) => m.length === 1)), {
      timeout: 10_000,
      message: () => `presence did not converge to 6 keys with one meta each:\n${views()}`,
    })
    // Nothing more (no duplicate or stray metas) arrives afterwards.
    await sleep(500)
    for (const [i, r] of recs.entries()) {
      assert.deepEqual(withoutRefs(r.state()), expected, `${members[i].key}'s view:\n${views()}`)
      for (const key of Object.keys(expected)) assertPresenceObjects(assert, r.state()[key], `${members[i].key} sees ${key}`)
    }
    // Every node hands out the same presence_refs: all six views are identical.
    for (const r of recs.slice(1)) assert.deepEqual(r.state(), recs[0].state(), views())
    const refs = Object.values(recs[0].state()).map((metas) => metas[0].presence_ref)
    assert.equal(new Set(refs).size, 6, `presence_refs must be distinct: ${refs}`)

    // Events: each client saw a join for every key (its own included) and a
    // sync whose state held all six keys.
    for (const [i, r] of recs.entries()) {
      const joined = new Set(r.joins().map((e) => e.key))
      assert.deepEqual([...joined].sort(), Object.keys(expected).sort(), `${members[i].key}: joins for ${[...joined]}`)
      for (const e of r.joins()) assertPresenceObjects(assert, e.newPresences, `${members[i].key} join ${e.key}`)
      assert.ok(
        r.syncs().some((s) => Object.keys(s.state).length === 6),
        `${members[i].key}: no sync with all six keys (${r.syncs().length} syncs)`
      )
      assert.deepEqual(r.leaves(), [], `${members[i].key} saw leaves: ${JSON.stringify(r.leaves())}`)
    }
  })

  test('a client on node 1 leaving (removeChannel, then a socket disconnect) gives clients on nodes 2 and 3 exactly one leave each', async () => {
    const room = uniqueRoom('cluster')
    const [n1, n2, n3] = cluster.urls
    const byChannel = newNodeClient(n1) // leaves with removeChannel()
    const bySocket = newNodeClient(n1) // leaves with realtime.disconnect()
    const stay1 = newNodeClient(n1)
    const obs2 = newNodeClient(n2)
    const obs3 = newNodeClient(n3)
    const rc = await joinedRoom(byChannel, room, { key: 'by-channel' })
    const rs = await joinedRoom(bySocket, room, { key: 'by-socket' })
    const r1 = await joinedRoom(stay1, room, { key: 'stay-1' })
    const r2 = await joinedRoom(obs2, room, { key: 'obs-2' })
    const r3 = await joinedRoom(obs3, room, { key: 'obs-3' })
    const all = { 'by-channel': rc, 'by-socket': rs, 'stay-1': r1, 'obs-2': r2, 'obs-3': r3 }
    for (const [key, r] of Object.entries(all)) assert.equal(await r.channel.track({ who: key }), 'ok')
    const observers = { 'stay-1@node1': r1, 'obs-2@node2': r2, 'obs-3@node3': r3 }
    const views = () => Object.entries(observers).map(([n, r]) => `${n}: ${JSON.stringify(r.state())}`).join('\n')
    await waitFor(() => Object.values(observers).every((r) => Object.keys(r.state()).length === 5), {
      timeout: 10_000,
      message: () => `presence did not converge to 5 keys:\n${views()}`,
    })
    const metaOf = (key) => r2.state()[key][0]
    const channelMeta = metaOf('by-channel')
    const socketMeta = metaOf('by-socket')
    for (const r of Object.values(observers)) assert.deepEqual(r.state(), r2.state(), views())

    const leavesOf = (r, key) => r.leaves().filter((e) => e.key === key)

    // 1. removeChannel() on node 1.
    assert.equal(await byChannel.removeChannel(rc.channel), 'ok')
    await waitFor(() => Object.values(observers).every((r) => leavesOf(r, 'by-channel').length >= 1), {
      timeout: 10_000,
      message: () => `not every observer saw by-channel leave:\n${views()}`,
    })

    // 2. A socket disconnect on node 1.
    await bySocket.realtime.disconnect()
    await waitFor(() => Object.values(observers).every((r) => leavesOf(r, 'by-socket').length >= 1), {
      timeout: 10_000,
      message: () => `not every observer saw by-socket leave:\n${views()}`,
    })

    // Past a lease + reap period: still exactly one leave per client, nothing else left.
    await sleep(QUIET_MS)
    for (const [name, r] of Object.entries(observers)) {
      for (const [key, meta] of [
        ['by-channel', channelMeta],
        ['by-socket', socketMeta],
      ]) {
        const leaves = leavesOf(r, key)
        assert.equal(leaves.length, 1, `${name} saw ${leaves.length} leaves for ${key}: ${JSON.stringify(leaves)}`)
        assert.deepEqual(leaves[0].leftPresences, [meta], `${name}: leftPresences of ${key}`)
        assert.deepEqual(leaves[0].currentPresences, [], `${name}: currentPresences of ${key}`)
      }
      assert.deepEqual(
        r.leaves().map((e) => e.key).sort(),
        ['by-channel', 'by-socket'],
        `${name} saw other leaves: ${JSON.stringify(r.leaves())}`
      )
      assert.deepEqual(
        withoutRefs(r.state()),
        { 'obs-2': [{ who: 'obs-2' }], 'obs-3': [{ who: 'obs-3' }], 'stay-1': [{ who: 'stay-1' }] },
        `${name}'s view after the leaves`
      )
    }
  })
})
