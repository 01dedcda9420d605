// supabase-js 2.119.1 (realtime-js, vsn 2.0.0) presence against a real roster.
import { describe, test, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { startServer } from './helpers/server.js'
import {
  UUID_V1,
  assertPresenceObjects,
  closeAllClients,
  closeClient,
  joinedRoom,
  newClient,
  plain,
  sleep,
  uniqueRoom,
  waitFor,
  withoutRefs,
} from './helpers/clients.js'

let server

describe('supabase-js presence', () => {
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

  test('sync, join and leave callbacks fire with key, currentPresences and new/leftPresences for two clients', async () => {
    const room = uniqueRoom()
    const a = newClient(server.url)
    const b = newClient(server.url)

    const ra = await joinedRoom(a, room, { key: 'alice' })
    // The first sync comes from the (empty) presence_state after the join.
    assert.deepEqual(ra.events[0], { event: 'sync', state: {} })

    assert.equal(await ra.channel.track({ user: 'alice', n: 1 }), 'ok')
    // The sender gets its own diff: join(alice, [], [meta]) then sync.
    const ownJoin = await waitFor(() => ra.joins().find((e) => e.key === 'alice'))
    assert.deepEqual(ownJoin.currentPresences, [])
    assert.equal(ownJoin.newPresences.length, 1)
    assertPresenceObjects(assert, ownJoin.newPresences, 'alice own join')
    const aliceRef = ownJoin.newPresences[0].presence_ref
    assert.deepEqual(ownJoin.newPresences, [{ presence_ref: aliceRef, user: 'alice', n: 1 }])
    await waitFor(() => ra.syncs().some((s) => s.state.alice))

    // B joins late: the snapshot reports alice as a join, then sync.
    const rb = await joinedRoom(b, room, { key: 'bob' })
    const bSeesAlice = await waitFor(() => rb.joins().find((e) => e.key === 'alice'))
    assert.deepEqual(bSeesAlice, {
      event: 'join',
      key: 'alice',
      currentPresences: [],
      newPresences: [{ presence_ref: aliceRef, user: 'alice', n: 1 }],
    })
    assert.deepEqual(rb.syncs()[0].state, { alice: [{ presence_ref: aliceRef, user: 'alice', n: 1 }] })

    assert.equal(await rb.channel.track({ user: 'bob' }), 'ok')
    const aSeesBob = await waitFor(() => ra.joins().find((e) => e.key === 'bob'))
    assert.deepEqual(aSeesBob.currentPresences, [])
    assertPresenceObjects(assert, aSeesBob.newPresences, 'bob join seen by alice')
    const bobRef = aSeesBob.newPresences[0].presence_ref
    assert.notEqual(bobRef, aliceRef, 'phx_ref must be unique per meta')
    assert.deepEqual(aSeesBob.newPresences, [{ presence_ref: bobRef, user: 'bob' }])
    // B sees its own join with the same ref.
    const bOwn = await waitFor(() => rb.joins().find((e) => e.key === 'bob'))
    assert.deepEqual(bOwn.newPresences, [{ presence_ref: bobRef, user: 'bob' }])
    await waitFor(() => ra.syncs().some((s) => s.state.alice && s.state.bob))

    // B goes away (socket closed): A gets leave(bob, [], [bob meta]) then a sync without bob.
    await closeClient(b)
    const aSeesBobLeave = await waitFor(() => ra.leaves().find((e) => e.key === 'bob'))
    assert.deepEqual(aSeesBobLeave, {
      event: 'leave',
      key: 'bob',
      currentPresences: [],
      leftPresences: [{ presence_ref: bobRef, user: 'bob' }],
    })
    await waitFor(() => {
      const last = ra.syncs().at(-1)
      return last && !last.state.bob
    })
    assert.deepEqual(ra.state(), { alice: [{ presence_ref: aliceRef, user: 'alice', n: 1 }] })
    for (const e of ra.events.concat(rb.events)) {
      if (e.event === 'join') {
        assertPresenceObjects(assert, e.currentPresences, 'join.currentPresences')
        assertPresenceObjects(assert, e.newPresences, 'join.newPresences')
      } else if (e.event === 'leave') {
        assertPresenceObjects(assert, e.currentPresences, 'leave.currentPresences')
        assertPresenceObjects(assert, e.leftPresences, 'leave.leftPresences')
      }
    }
  })

  test("presenceState() is {key: [{presence_ref, ...fields}]} and await track() resolves 'ok' in under 2 s", async () => {
    const room = uniqueRoom()
    const a = newClient(server.url)
    const b = newClient(server.url)
    const ra = await joinedRoom(a, room, { key: 'alice' })
    const rb = await joinedRoom(b, room, { key: 'bob' })

    const payload = {
      online_at: new Date().toISOString(),
      profile: { name: 'Alice', tags: ['x', 'y'] },
      count: 3,
      ratio: 0.5,
      active: true,
      nothing: null,
      text: 'héllo ✓ "quoted"',
    }
    const started = Date.now()
    const status = await ra.channel.track(payload)
    const took = Date.now() - started
    assert.equal(status, 'ok')
    assert.ok(took < 2_000, `track() took ${took} ms`)

    await waitFor(() => rb.state().alice)
    for (const state of [ra.state(), rb.state()]) {
      assert.deepEqual(Object.keys(state), ['alice'])
      assert.equal(state.alice.length, 1)
      assertPresenceObjects(assert, state.alice, 'presenceState')
      const { presence_ref, ...fields } = state.alice[0]
      assert.deepEqual(fields, payload)
    }
    assert.equal(ra.state().alice[0].presence_ref, rb.state().alice[0].presence_ref)

    const started2 = Date.now()
    assert.equal(await rb.channel.track({ x: 1 }), 'ok')
    assert.ok(Date.now() - started2 < 2_000)
    await waitFor(() => ra.state().bob)
    assert.deepEqual(withoutRefs(ra.state()), { alice: [payload], bob: [{ x: 1 }] })
    assert.deepEqual(withoutRefs(rb.state()), { alice: [payload], bob: [{ x: 1 }] })
  })

  test("a custom key from config.presence.key is the presence key others see", async () => {
    const room = uniqueRoom()
    const a = newClient(server.url)
    const b = newClient(server.url)
    const ra = await joinedRoom(a, room, { key: 'alice' })
    const rb = await joinedRoom(b, room) // observer without a key

    assert.equal(await ra.channel.track({ who: 'a' }), 'ok')
    const join = await waitFor(() => rb.joins().find((e) => e.newPresences.some((p) => p.who === 'a')))
    assert.equal(join.key, 'alice')
    assert.deepEqual(Object.keys(rb.state()), ['alice'])
    assert.deepEqual(Object.keys(ra.state()), ['alice'])
  })

  test('without a configured key each client gets a distinct server-generated UUID v1 key', async () => {
    const room = uniqueRoom()
    const a = newClient(server.url)
    const b = newClient(server.url)
    const ra = await joinedRoom(a, room)
    const rb = await joinedRoom(b, room)
    assert.equal(await ra.channel.track({ who: 'a' }), 'ok')
    assert.equal(await rb.channel.track({ who: 'b' }), 'ok')

    await waitFor(() => Object.keys(ra.state()).length === 2 && Object.keys(rb.state()).length === 2, {
      message: () => `states: ${JSON.stringify(ra.state())} / ${JSON.stringify(rb.state())}`,
    })
    const keyOf = (state, who) => Object.keys(state).find((k) => state[k].some((p) => p.who === who))
    const keyA = keyOf(ra.state(), 'a')
    const keyB = keyOf(ra.state(), 'b')
    assert.match(keyA, UUID_V1)
    assert.match(keyB, UUID_V1)
    assert.notEqual(keyA, keyB)
    // Both clients agree on the keys.
    assert.equal(keyOf(rb.state(), 'a'), keyA)
    assert.equal(keyOf(rb.state(), 'b'), keyB)
    assert.equal(ra.state()[keyA].length, 1)
    assert.equal(ra.state()[keyB].length, 1)
  })

  test('two tabs under one key give one key with two metas; closing one fires leave with the other meta as currentPresences', async () => {
    const room = uniqueRoom()
    const laptop = newClient(server.url)
    const phone = newClient(server.url)
    const observer = newClient(server.url)
    const rl = await joinedRoom(laptop, room, { key: 'user-1' })
    const rp = await joinedRoom(phone, room, { key: 'user-1' })
    const ro = await joinedRoom(observer, room, { key: 'observer' })

    assert.equal(await rl.channel.track({ device: 'laptop' }), 'ok')
    assert.equal(await rp.channel.track({ device: 'phone' }), 'ok')

    await waitFor(() => ro.state()['user-1']?.length === 2, {
      message: () => `observer state ${JSON.stringify(ro.state())}`,
    })
    const metas = ro.state()['user-1']
    assert.deepEqual(Object.keys(ro.state()), ['user-1'])
    assert.deepEqual(metas.map((m) => m.device).sort(), ['laptop', 'phone'])
    assertPresenceObjects(assert, metas, 'two tabs')
    assert.notEqual(metas[0].presence_ref, metas[1].presence_ref)
    const laptopMeta = metas.find((m) => m.device === 'laptop')
    const phoneMeta = metas.find((m) => m.device === 'phone')
    // Each tab sees the same two metas.
    await waitFor(() => rl.state()['user-1']?.length === 2 && rp.state()['user-1']?.length === 2)

    // Second tab's join: currentPresences holds the first meta.
    const phoneJoin = ro.joins().find((e) => e.newPresences.some((p) => p.device === 'phone'))
    assert.equal(phoneJoin.key, 'user-1')
    // (the laptop tracked first and its track was acknowledged, so its diff came first)
    assert.deepEqual(phoneJoin.currentPresences, [laptopMeta])
    assert.deepEqual(phoneJoin.newPresences, [phoneMeta])

    await closeClient(phone)
    const leave = await waitFor(() => ro.leaves().find((e) => e.key === 'user-1'))
    assert.deepEqual(leave.currentPresences, [laptopMeta])
    assert.deepEqual(leave.leftPresences, [phoneMeta])
    assert.deepEqual(ro.state(), { 'user-1': [laptopMeta] })
    await waitFor(() => rl.state()['user-1']?.length === 1)
    assert.deepEqual(rl.state(), { 'user-1': [laptopMeta] })
  })

  test('re-track with a new payload updates the meta in place; untrack fires leave and removes the key', async () => {
    const room = uniqueRoom()
    const a = newClient(server.url)
    const b = newClient(server.url)
    const ra = await joinedRoom(a, room, { key: 'alice' })
    const rb = await joinedRoom(b, room, { key: 'bob' })

    assert.equal(await ra.channel.track({ status: 'online' }), 'ok')
    await waitFor(() => rb.state().alice?.[0]?.status === 'online')
    const firstRef = rb.state().alice[0].presence_ref

    assert.equal(await ra.channel.track({ status: 'away' }), 'ok')
    await waitFor(() => rb.state().alice?.some((p) => p.status === 'away'), {
      message: () => `observer state ${JSON.stringify(rb.state())}`,
    })
    // Give any stray duplicate diff a moment to arrive, then check there is one meta.
    await sleep(200)
    const after = rb.state()
    assert.equal(after.alice.length, 1, `one meta expected after update: ${JSON.stringify(after)}`)
    assert.equal(after.alice[0].status, 'away')
    assert.notEqual(after.alice[0].presence_ref, firstRef, 'an update gets a new phx_ref')
    assert.deepEqual(withoutRefs(ra.state()), { alice: [{ status: 'away' }] })
    // The update arrives as a join of the new meta and a leave of the old one.
    const updJoin = rb.joins().find((e) => e.key === 'alice' && e.newPresences.some((p) => p.status === 'away'))
    assert.ok(updJoin, 'observer saw a join for the updated meta')
    const updLeave = rb.leaves().find((e) => e.key === 'alice')
    assert.ok(updLeave, 'observer saw a leave for the old meta')
    assert.deepEqual(updLeave.leftPresences, [{ presence_ref: firstRef, status: 'online' }])
    assert.deepEqual(updLeave.currentPresences, [after.alice[0]])

    // Untrack: leave(alice, [], [away meta]); the key disappears; the channel stays joined.
    const leavesBefore = rb.leaves().length
    assert.equal(await ra.channel.untrack(), 'ok')
    const untrackLeave = await waitFor(() => rb.leaves().slice(leavesBefore).find((e) => e.key === 'alice'))
    assert.deepEqual(untrackLeave.currentPresences, [])
    assert.deepEqual(untrackLeave.leftPresences, [after.alice[0]])
    await waitFor(() => !('alice' in rb.state()) && !('alice' in ra.state()))
    assert.deepEqual(rb.state(), {})
    assert.equal(ra.channel.state, 'joined')
  })

  test('a late joiner receives the full state on subscribe: its first sync holds every existing member', async () => {
    const room = uniqueRoom()
    const members = ['m1', 'm2', 'm3']
    const recs = []
    for (const key of members) {
      const c = newClient(server.url)
      const r = await joinedRoom(c, room, { key })
      assert.equal(await r.channel.track({ name: key }), 'ok')
      recs.push(r)
    }
    await waitFor(() => Object.keys(recs[0].state()).length === 3)

    const late = newClient(server.url)
    const rl = await joinedRoom(late, room, { key: 'late' })
    const firstSync = rl.syncs()[0]
    assert.deepEqual(withoutRefs(firstSync.state), {
      m1: [{ name: 'm1' }],
      m2: [{ name: 'm2' }],
      m3: [{ name: 'm3' }],
    })
    for (const key of members) assertPresenceObjects(assert, firstSync.state[key], `late sync ${key}`)
    // The snapshot fires one join per existing key, before that sync.
    const firstSyncIdx = rl.events.indexOf(firstSync)
    const joinsBefore = rl.events.slice(0, firstSyncIdx).filter((e) => e.event === 'join')
    assert.deepEqual(joinsBefore.map((e) => e.key).sort(), members)
    // Same refs as the members themselves see.
    assert.deepEqual(firstSync.state, recs[0].state())
  })

  test('removeChannel() on one client fires leave on the other', async () => {
    const room = uniqueRoom()
    const a = newClient(server.url)
    const b = newClient(server.url)
    const ra = await joinedRoom(a, room, { key: 'alice' })
    const rb = await joinedRoom(b, room, { key: 'bob' })
    assert.equal(await ra.channel.track({ v: 1 }), 'ok')
    assert.equal(await rb.channel.track({ v: 2 }), 'ok')
    await waitFor(() => ra.state().bob && rb.state().alice)
    const bobMeta = ra.state().bob[0]

    const status = await b.removeChannel(rb.channel)
    assert.equal(status, 'ok')
    const leave = await waitFor(() => ra.leaves().find((e) => e.key === 'bob'))
    assert.deepEqual(leave.leftPresences, [bobMeta])
    assert.deepEqual(leave.currentPresences, [])
    assert.deepEqual(withoutRefs(ra.state()), { alice: [{ v: 1 }] })
  })

  test('channel.unsubscribe() on one client fires leave on the other', async () => {
    const room = uniqueRoom()
    const a = newClient(server.url)
    const b = newClient(server.url)
    const ra = await joinedRoom(a, room, { key: 'alice' })
    const rb = await joinedRoom(b, room, { key: 'bob' })
    assert.equal(await rb.channel.track({ v: 2 }), 'ok')
    await waitFor(() => ra.state().bob)
    const bobMeta = ra.state().bob[0]

    assert.equal(await rb.channel.unsubscribe(), 'ok')
    const leave = await waitFor(() => ra.leaves().find((e) => e.key === 'bob'))
    assert.deepEqual(plain(leave.leftPresences), [bobMeta])
    assert.deepEqual(ra.state(), {})
    // B's socket stays usable: B can join another room.
    const other = await joinedRoom(b, uniqueRoom('other'), { key: 'bob' })
    assert.equal(await other.channel.track({ again: true }), 'ok')
  })
})
