// supabase-js 2.119.1 channel auth against a real roster: join errors for bad
// access tokens and private-channel policies, token refresh with
// realtime.setAuth(), and the shutdown (system error + phx_close) at expiry.
import { describe, test, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { startServer } from './helpers/server.js'
import { closeAllClients, newClient, plain, sleep, uniqueRoom, waitFor, withoutRefs } from './helpers/clients.js'
import { nowSeconds, userJwt } from './helpers/jwt.js'

const ALL = '["presence-read", "presence-write", "broadcast-read", "broadcast-write"]'
const POLICIES = `
[[policies]]
topic = "user:{sub}"
role = "authenticated"
allow = ${ALL}

[[policies]]
topic = "shared-*"
role = "authenticated"
allow = ${ALL}
`

let server

/**
 * A supabase-js client whose session token is `token.current` (supabase-js
 * `accessToken` option, as with third-party auth): realtime-js sends it as the
 * join `access_token` and re-reads it on every setAuth()/heartbeat.
 *
 * supabase-js hands the token to realtime-js asynchronously; a channel
 * subscribed before that joins without it (and phx-js captures the join
 * payload at subscribe time), so wait for setAuth as an app would.
 */
async function userClient(jwt) {
  const token = { current: jwt }
  const client = newClient(server.url, {}, { accessToken: async () => token.current })
  await client.realtime.setAuth(jwt)
  assert.equal(client.realtime.accessTokenValue, jwt)
  return { client, token }
}

/**
 * Join `room` recording statuses, errors, system messages and presence syncs.
 * `isPrivate` sets config.private; `key` the presence key.
 */
function join(client, room, { isPrivate = false, key } = {}) {
  const config = { private: isPrivate, ...(key ? { presence: { key } } : {}) }
  const channel = client.channel(room, { config })
  const rec = { channel, statuses: [], errors: [], system: [], syncs: [], broadcasts: [] }
  channel
    .on('system', {}, (payload) => rec.system.push(plain(payload)))
    .on('presence', { event: 'sync' }, () => rec.syncs.push(plain(channel.presenceState())))
    .on('broadcast', { event: '*' }, (msg) => rec.broadcasts.push(plain(msg)))
    .subscribe((status, err) => {
      rec.statuses.push(status)
      rec.errors.push(err)
    })
  rec.state = () => withoutRefs(plain(channel.presenceState()))
  return rec
}

/** Sleep to just past the next whole second, so `exp = now + n` leaves ~n full seconds. */
async function alignToSecond() {
  await sleep(1_000 - (Date.now() % 1_000) + 20)
}

async function subscribed(rec, room) {
  await waitFor(() => rec.statuses.includes('SUBSCRIBED'), {
    message: () => `${room} never SUBSCRIBED: ${JSON.stringify(rec.statuses)} ${rec.errors.filter(Boolean)}`,
  })
  await waitFor(() => rec.syncs.length >= 1, { message: `no presence_state after joining ${room}` })
}

/** Wait for the first CHANNEL_ERROR and return its Error. */
async function firstChannelError(rec, room) {
  const i = await waitFor(() => rec.statuses.indexOf('CHANNEL_ERROR') + 1, {
    timeout: 8_000,
    message: () => `${room}: no CHANNEL_ERROR; statuses ${JSON.stringify(rec.statuses)}`,
  })
  assert.ok(!rec.statuses.includes('SUBSCRIBED'), `${room} must not be SUBSCRIBED: ${JSON.stringify(rec.statuses)}`)
  const err = rec.errors[i - 1]
  assert.ok(err instanceof Error, `CHANNEL_ERROR must carry an Error, got ${err}`)
  return err
}

describe('supabase-js channel auth', () => {
  before(async () => {
    server = await startServer({ config: POLICIES })
  })
  afterEach(async () => {
    await closeAllClients()
  })
  after(async () => {
    await closeAllClients()
    await server?.stop()
  })

  test('an expired access token gets CHANNEL_ERROR "InvalidJWTToken: Token has expired N seconds ago"', async () => {
    const room = uniqueRoom()
    const { client } = await userClient(userJwt({ sub: 'alice', expiresIn: -30 }))
    const rec = join(client, room)
    const err = await firstChannelError(rec, room)
    const m = /^InvalidJWTToken: Token has expired (\d+) seconds ago$/.exec(err.message)
    assert.ok(m, `unexpected reason: ${err.message}`)
    assert.ok(Number(m[1]) >= 30 && Number(m[1]) <= 40, `N should be ~30, got ${m[1]}`)
    assert.match(err.cause.reason, /^InvalidJWTToken: /, 'err.cause is the server response {reason}')
    assert.deepEqual(Object.keys(err.cause), ['reason'])
  })

  test('a malformed access token gets CHANNEL_ERROR "MalformedJWT: ..."', async () => {
    const room = uniqueRoom()
    const { client } = await userClient('this-is-not-a-jwt')
    const rec = join(client, room)
    const err = await firstChannelError(rec, room)
    assert.equal(err.message, 'MalformedJWT: The token provided is not a valid JWT')
    assert.deepEqual(err.cause, { reason: 'MalformedJWT: The token provided is not a valid JWT' })
  })

  test('a valid token without a matching policy gets CHANNEL_ERROR "Unauthorized: ..." on a private channel', async () => {
    const { client } = await userClient(userJwt({ sub: 'alice' }))
    // alice may join user:alice but not user:bob.
    const denied = join(client, 'user:bob', { isPrivate: true })
    const err = await firstChannelError(denied, 'user:bob')
    assert.equal(err.message, 'Unauthorized: You do not have permissions to read from this Channel topic: user:bob')

    const own = join(client, 'user:alice', { isPrivate: true })
    await subscribed(own, 'user:alice')

    // The publishable key alone (role anon) matches no policy either.
    const anon = newClient(server.url)
    const room = `shared-${uniqueRoom()}`
    const anonRec = join(anon, room, { isPrivate: true })
    const anonErr = await firstChannelError(anonRec, room)
    assert.equal(anonErr.message, `Unauthorized: You do not have permissions to read from this Channel topic: ${room}`)
    // ...while the same topic as a public channel is open to it.
    const pub = join(newClient(server.url), room)
    await subscribed(pub, room)
  })

  test('setAuth(newToken) before expiry keeps the channel (and its presence) alive past the first exp', async () => {
    const room = `shared-${uniqueRoom()}`
    await alignToSecond()
    const exp1 = nowSeconds() + 2
    const alice = await userClient(userJwt({ sub: 'alice', expiresIn: exp1 - nowSeconds() }))
    const bob = await userClient(userJwt({ sub: 'bob' }))

    const ra = join(alice.client, room, { isPrivate: true, key: 'alice' })
    await subscribed(ra, room)
    assert.equal(await ra.channel.track({ who: 'alice' }), 'ok')
    const rb = join(bob.client, room, { isPrivate: true, key: 'bob' })
    await subscribed(rb, room)
    await waitFor(() => rb.state().alice, { message: () => `bob state ${JSON.stringify(rb.state())}` })

    // Refresh: the accessToken callback now yields the new token too, so later
    // heartbeats keep sending it.
    const fresh = userJwt({ sub: 'alice', expiresIn: 60 })
    alice.token.current = fresh
    await alice.client.realtime.setAuth(fresh)
    assert.equal(alice.client.realtime.accessTokenValue, fresh)

    // Wait until well past the first token's expiry.
    await sleep(Math.max(0, (exp1 + 1.5) * 1000 - Date.now()))
    assert.deepEqual(ra.statuses, ['SUBSCRIBED'], `alice's channel must stay subscribed: ${ra.errors.filter(Boolean)}`)
    assert.deepEqual(ra.system, [], 'no system error after a refresh')
    assert.equal(ra.channel.state, 'joined')
    assert.deepEqual(rb.state(), { alice: [{ who: 'alice' }] }, 'bob still sees alice')

    // The channel still works both ways.
    assert.equal(await ra.channel.send({ type: 'broadcast', event: 'still-here', payload: { n: 1 } }), 'ok')
    await waitFor(() => rb.broadcasts.some((m) => m.event === 'still-here'))
    assert.equal(await ra.channel.track({ who: 'alice', again: true }), 'ok')
    await waitFor(() => rb.state().alice?.[0]?.again === true)
  })

  test('without a refresh the channel is closed at expiry: system error, then CLOSED; others see the leave', async () => {
    const room = `shared-${uniqueRoom()}`
    await alignToSecond()
    const exp = nowSeconds() + 2
    const alice = await userClient(userJwt({ sub: 'alice', expiresIn: exp - nowSeconds() }))
    const bob = await userClient(userJwt({ sub: 'bob' }))

    const ra = join(alice.client, room, { isPrivate: true, key: 'alice' })
    await subscribed(ra, room)
    assert.equal(await ra.channel.track({ who: 'alice' }), 'ok')
    const rb = join(bob.client, room, { isPrivate: true, key: 'bob' })
    await subscribed(rb, room)
    await waitFor(() => rb.state().alice)

    await waitFor(() => ra.statuses.includes('CLOSED'), {
      timeout: 6_000,
      message: () => `alice never CLOSED: ${JSON.stringify(ra.statuses)} system ${JSON.stringify(ra.system)}`,
    })
    const closedAt = nowSeconds()
    assert.ok(closedAt >= exp, `closed ${exp - closedAt} s before the token's exp`)
    // realtime-js hands the `system` message to .on('system') listeners and
    // reports CLOSED for the phx_close (no CHANNEL_ERROR, no rejoin).
    assert.deepEqual(ra.statuses, ['SUBSCRIBED', 'CLOSED'])
    assert.equal(ra.system.length, 1, `system messages: ${JSON.stringify(ra.system)}`)
    const { message, ...rest } = ra.system[0]
    assert.deepEqual(rest, { extension: 'system', status: 'error', channel: room })
    assert.match(message, /^Token has expired \d+ seconds ago$/)
    assert.equal(ra.channel.state, 'closed')
    assert.ok(!alice.client.getChannels().includes(ra.channel), 'a closed channel is removed from the client')

    // Bob's presence view loses alice; bob's own channel is unaffected.
    await waitFor(() => !rb.state().alice, { message: () => `bob state ${JSON.stringify(rb.state())}` })
    assert.deepEqual(rb.statuses, ['SUBSCRIBED'])

    // No automatic rejoin afterwards.
    await sleep(1_200)
    assert.deepEqual(ra.statuses, ['SUBSCRIBED', 'CLOSED'])
    assert.ok(!rb.state().alice)
  })
})
