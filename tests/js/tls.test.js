// supabase-js over wss:// against a roster with --tls-cert / --tls-key
// (a test CA made with openssl), trusted through the `ws` transport's `ca`.
import { describe, test, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import { startServer } from './helpers/server.js'
import { closeAllClients, joinRoom, joinedRoom, newNodeClient, uniqueRoom, waitFor } from './helpers/clients.js'
import { makeTestCerts } from './helpers/tls.js'

let server
let certs

/** A `ws` WebSocket that trusts the test CA (and nothing else) for wss://. */
function trustingTransport(ca) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { ca })
    }
  }
}

describe('supabase-js over wss://', () => {
  before(async () => {
    certs = makeTestCerts('localhost')
    // One node even in the cluster run: TLS is per listener, not per cluster.
    server = await startServer({ cluster: false, args: ['--tls-cert', certs.certFile, '--tls-key', certs.keyFile] })
    assert.match(server.url, /^https:\/\//)
  })
  afterEach(async () => {
    await closeAllClients()
  })
  after(async () => {
    await closeAllClients()
    await server?.stop()
  })

  test('two clients see each other\'s presence over wss', async () => {
    const url = `https://localhost:${server.port}`
    const transport = trustingTransport(certs.ca)
    const room = uniqueRoom('tls')
    const a = newNodeClient(url, { transport })
    const b = newNodeClient(url, { transport })
    const ra = await joinedRoom(a, room, { key: 'alice' })
    assert.equal(await ra.channel.track({ user: 'alice' }), 'ok')
    const rb = await joinedRoom(b, room, { key: 'bob' })
    assert.equal(await rb.channel.track({ user: 'bob' }), 'ok')
    await waitFor(() => Object.keys(ra.channel.presenceState()).sort().join() === 'alice,bob')
    await waitFor(() => Object.keys(rb.channel.presenceState()).sort().join() === 'alice,bob')
  })

  test('a client that does not trust the test CA never subscribes', async () => {
    const url = `https://localhost:${server.port}`
    const c = newNodeClient(url, { transport: WebSocket, reconnectAfterMs: () => 200 })
    const rec = joinRoom(c, uniqueRoom('tls'), { key: 'mallory' })
    await waitFor(() => rec.statuses.some((s) => s === 'CHANNEL_ERROR' || s === 'TIMED_OUT'), {
      timeout: 8_000,
      message: () => `statuses ${JSON.stringify(rec.statuses)}`,
    })
    assert.equal(rec.subscribedCount, 0)
  })
})
