// A supabase-js broadcast peer driven by another test process (e.g. the Python suite).
//
//   node broadcast-peer.js <project-url> <room> ['<json channel config>']
//
// Joins <room> with a `.on('broadcast', {event: '*'})` listener and prints one
// JSON line per event on stdout:
//   {"type":"status","status":...,"error"?:...} | {"type":"subscribed"}
//   {"type":"broadcast","message":{type,event,payload[,meta]}}
//     (an ArrayBuffer payload is printed as {"binary":[byte, ...]})
//   {"type":"sent","id":...,"result":...} for each command
// Reads one JSON command per stdin line:
//   {"op":"send","id":1,"event":"e","payload":{...}}        channel.send() (binary kind-3 frame)
//   {"op":"send","id":2,"event":"e","binary":[1,2,3]}      same with an ArrayBuffer payload
//   {"op":"httpSend","id":3,"event":"e","payload":{...}}    channel.httpSend()
// Exits (after leaving and disconnecting) when stdin closes.
import { createInterface } from 'node:readline'
import { closeClient, newClient } from './clients.js'

const [url, room, configJson = '{}'] = process.argv.slice(2)
if (!url || !room) {
  console.error("usage: broadcast-peer.js <project-url> <room> ['<json channel config>']")
  process.exit(2)
}
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const printable = (msg) =>
  msg.payload instanceof ArrayBuffer ? { ...msg, payload: { binary: [...new Uint8Array(msg.payload)] } } : msg

const client = newClient(url)
const channel = client.channel(room, { config: JSON.parse(configJson) })
channel
  .on('broadcast', { event: '*' }, (msg) => emit({ type: 'broadcast', message: printable(msg) }))
  .subscribe((status, err) => {
    emit({ type: 'status', status, error: err ? String(err) : undefined })
    if (status === 'SUBSCRIBED') emit({ type: 'subscribed' })
  })

async function run(cmd) {
  const payload = cmd.binary ? new Uint8Array(cmd.binary).buffer : cmd.payload
  try {
    if (cmd.op === 'send') return await channel.send({ type: 'broadcast', event: cmd.event, payload })
    if (cmd.op === 'httpSend') return await channel.httpSend(cmd.event, payload)
    return `unknown op ${cmd.op}`
  } catch (e) {
    return `error: ${e}`
  }
}

createInterface({ input: process.stdin }).on('line', async (line) => {
  if (!line.trim()) return
  const cmd = JSON.parse(line)
  emit({ type: 'sent', id: cmd.id, result: await run(cmd) })
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
// Never outlive the test that started us.
setTimeout(() => {
  emit({ type: 'error', error: 'peer lifetime exceeded' })
  process.exit(3)
}, 60_000).unref()
