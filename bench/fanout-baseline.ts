import { createServer, type ServerResponse } from 'node:http'
import { Redis } from 'ioredis'

// The baseline of bench/fanout: bare node:http, one subscription, each message framed once
// (its bytes as base64, no decoding) and the same buffer written to every socket.
const clients = new Set<ServerResponse>()
const server = createServer((req, res) => {
  if (req.url === '/healthz') {
    res.end('{"status":"ok"}')
    return
  }
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', 'x-accel-buffering': 'no' })
  res.write('retry: 2000\n\n')
  clients.add(res)
  req.on('close', () => clients.delete(res))
})
const subscriber = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379')
subscriber.on('messageBuffer', (_channel: Buffer, message: Buffer) => {
  const frame = Buffer.from(`data: ${message.toString('base64')}\n\n`)
  for (const res of clients) res.write(frame)
})
await subscriber.subscribe('events.pubsub')
server.listen(Number(process.env.PORT), '127.0.0.1', () => process.stdout.write('Server listening\n'))
process.on('SIGTERM', () => process.exit(0))
