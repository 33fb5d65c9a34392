import { createServer } from 'node:http'

// The receiver of bench/webhooks: counts deliveries, answers 204; prints the count on request.
let count = 0
const server = createServer((req, res) => {
  if (req.method === 'GET') {
    res.end(String(count))
    return
  }
  req.resume()
  req.on('end', () => {
    count++
    res.writeHead(204)
    res.end()
  })
})
server.keepAliveTimeout = 60_000
server.listen(Number(process.env.PORT), '127.0.0.1', () => process.stdout.write('Server listening\n'))
process.on('SIGTERM', () => process.exit(0))
