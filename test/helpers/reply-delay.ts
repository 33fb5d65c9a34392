import { connect, createServer, type Socket } from 'node:net'

interface Teardown { teardown: (fn: () => unknown) => void }

export interface ReplyDelay {
  /** a redis:// URL that reaches the server through this proxy */
  url: string
  /** Holds the replies of the connection whose next request contains `marker`, for `ms`: the request reaches Redis and runs, its answer comes late (a Redis stalled, a slow network). Once only. */
  holdAfter (marker: string, ms: number): void
  /** how many replies were held */
  held: number
}

/** A TCP proxy in front of a real Redis that can make one answer late. */
export async function replyDelay (t: Teardown, port: number): Promise<ReplyDelay> {
  let armed: { marker: Buffer, ms: number } | undefined
  const sockets = new Set<Socket>()
  const proxy: ReplyDelay = {
    url: '',
    held: 0,
    holdAfter (marker, ms) { armed = { marker: Buffer.from(marker), ms } }
  }
  const server = createServer((client) => {
    const upstream = connect(port, '127.0.0.1')
    sockets.add(client)
    sockets.add(upstream)
    let holdUntil = 0
    let waiting: Buffer[] = []
    client.on('data', (chunk: Buffer) => {
      if (armed !== undefined && chunk.includes(armed.marker)) {
        holdUntil = Date.now() + armed.ms
        armed = undefined
        proxy.held++
        setTimeout(() => {
          // The timer may fire a little before Date.now() reaches holdUntil: nothing may be left behind.
          holdUntil = 0
          for (const held of waiting) client.write(held)
          waiting = []
        }, holdUntil - Date.now())
      }
      upstream.write(chunk)
    })
    upstream.on('data', (chunk: Buffer) => {
      if (Date.now() < holdUntil || waiting.length > 0) waiting.push(chunk)
      else client.write(chunk)
    })
    const end = () => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream) }
    client.on('close', end)
    upstream.on('close', end)
    client.on('error', end)
    upstream.on('error', end)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  proxy.url = `redis://127.0.0.1:${(server.address() as { port: number }).port}`
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return proxy
}
