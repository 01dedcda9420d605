// A tiny TCP proxy so a test can kill one client's connection abruptly.
import net from 'node:net'
import { nodePortFor } from './server.js'

function hardClose(socket) {
  try {
    if (typeof socket.resetAndDestroy === 'function' && !socket.destroyed && socket._handle) {
      socket.resetAndDestroy()
      return
    }
  } catch {}
  socket.destroy()
}

/**
 * A proxy to `targetPort`; when that is a test cluster's port, to the cluster's
 * next node round-robin (as newClient does), exposed as `targetPort`.
 */
export async function startProxy(targetPort, targetHost = '127.0.0.1') {
  targetPort = nodePortFor(targetPort)
  const pairs = new Set()
  let refusing = false
  let accepted = 0
  const server = net.createServer((downstream) => {
    if (refusing) {
      hardClose(downstream)
      return
    }
    accepted += 1
    const upstream = net.connect(targetPort, targetHost)
    const pair = { downstream, upstream }
    pairs.add(pair)
    const drop = () => {
      if (!pairs.delete(pair)) return
      downstream.destroy()
      upstream.destroy()
    }
    downstream.on('error', drop).on('close', drop)
    upstream.on('error', drop).on('close', drop)
    downstream.pipe(upstream)
    upstream.pipe(downstream)
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const port = server.address().port
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    targetPort,
    /** Connections accepted so far (each WebSocket is one). */
    accepted: () => accepted,
    open: () => pairs.size,
    /** Reset (RST) both sides of every proxied connection; the proxy keeps listening. */
    cut() {
      for (const pair of [...pairs]) {
        pairs.delete(pair)
        hardClose(pair.downstream)
        hardClose(pair.upstream)
      }
    },
    /**
     * Stop forwarding in both directions but keep every connection open: the
     * peers see silence, no FIN and no RST (a frozen tab / dead network).
     */
    freeze() {
      for (const { downstream, upstream } of pairs) {
        downstream.unpipe(upstream)
        upstream.unpipe(downstream)
        downstream.pause()
        upstream.pause()
      }
    },
    /** While refusing, new connections are reset immediately. */
    refuse(on = true) {
      refusing = on
    },
    async close() {
      this.cut()
      await new Promise((resolve) => server.close(() => resolve()))
    },
  }
}
