import { createServer } from 'node:http'

// The receiver of bench/webhooks: counts deliveries, answers 204; prints the count on request.
// With DELAY_MS it answers each delivery that much later (a timer each, so thousands wait at
// once): a receiver with latency, for the latency run. A delivery is counted when it is answered.
//   GET /        the count, as text
//   GET /stats   JSON { count, inFlight, maxInFlight, sockets, maxSockets }
//   GET /at?n=K  JSON { ms }: when (this process's performance.now()) the K-th answer was sent, -1 if not yet
const delayMs = Number(process.env.DELAY_MS ?? '0')
let count = 0
let inFlight = 0
let maxInFlight = 0
let sockets = 0
let maxSockets = 0
/** when each answer was sent, in order (performance.now()) */
const answeredAt: number[] = []

// HTTP keep-alive is on (Node's default; its timeout is raised below), with no limit on the
// requests per socket and no timeouts in the way of thousands of requests that wait on purpose.
const server = createServer({
  requestTimeout: 0,
  headersTimeout: 0
}, (req, res) => {
  if (req.method === 'GET') {
    const url = new URL(req.url ?? '/', 'http://receiver')
    if (url.pathname === '/stats') {
      res.end(JSON.stringify({ count, inFlight, maxInFlight, sockets, maxSockets }))
    } else if (url.pathname === '/at') {
      res.end(JSON.stringify({ ms: answeredAt[Number(url.searchParams.get('n')) - 1] ?? -1 }))
    } else {
      res.end(String(count))
    }
    return
  }
  inFlight++
  if (inFlight > maxInFlight) maxInFlight = inFlight
  req.resume()
  req.on('end', () => {
    const answer = (): void => {
      inFlight--
      count++
      answeredAt.push(performance.now())
      res.writeHead(204)
      res.end()
    }
    if (delayMs > 0) setTimeout(answer, delayMs)
    else answer()
  })
})
server.keepAliveTimeout = 60_000
server.maxRequestsPerSocket = 0
// server.maxConnections is left unset: no limit.
server.on('connection', (socket) => {
  sockets++
  if (sockets > maxSockets) maxSockets = sockets
  socket.once('close', () => { sockets-- })
})
// A deep accept queue: thousands of keep-alive connections may open in the same instant.
server.listen({ port: Number(process.env.PORT), host: '127.0.0.1', backlog: 4096 }, () => process.stdout.write('Server listening\n'))
process.on('SIGTERM', () => process.exit(0))
