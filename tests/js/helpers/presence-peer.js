// A supabase-js presence peer driven by another test process (e.g. the Python suite).
//
//   node presence-peer.js <project-url> <room> <key> '<json payload to track>'
//
// Joins <room> with presence key <key>, tracks the payload in its SUBSCRIBED
// callback, and prints one JSON line per event on stdout:
//   {"type":"subscribed"} | {"type":"tracked","status":"ok"} | {"type":"sync","state":{...}}
//   {"type":"join"|"leave", "key":..., ...}
// Exits (after leaving and disconnecting) when stdin closes.
import { closeClient, newClient, plain } from './clients.js'

const [url, room, key, payloadJson = '{}'] = process.argv.slice(2)
if (!url || !room || !key) {
  console.error('usage: presence-peer.js <project-url> <room> <key> [payload-json]')
  process.exit(2)
}
const payload = JSON.parse(payloadJson)
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const client = newClient(url)
const channel = client.channel(room, { config: { presence: { key } } })
channel
  .on('presence', { event: 'sync' }, () => emit({ type: 'sync', state: plain(channel.presenceState()) }))
  .on('presence', { event: 'join' }, (p) => emit({ type: 'join', ...plain(p) }))
  .on('presence', { event: 'leave' }, (p) => emit({ type: 'leave', ...plain(p) }))
  .subscribe(async (status, err) => {
    emit({ type: 'status', status, error: err ? String(err) : undefined })
    if (status === 'SUBSCRIBED') {
      emit({ type: 'subscribed' })
      emit({ type: 'tracked', status: await channel.track(payload) })
    }
  })

let closing = false
async function shutdown() {
  if (closing) return
  closing = true
  await closeClient(client)
  process.exit(0)
}
process.stdin.on('end', shutdown)
process.stdin.on('close', shutdown)
process.stdin.resume()
// Never outlive the test that started us.
setTimeout(() => {
  emit({ type: 'error', error: 'peer lifetime exceeded' })
  process.exit(3)
}, 60_000).unref()
