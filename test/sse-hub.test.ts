import { createServer, request, type ServerResponse } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import pino from 'pino'
import t from 'tap'
import { encodeEvent } from '../src/codec.js'
import { MemoryEngine } from '../src/engines/memory-engine.js'
import { globList } from '../src/glob.js'
import { SseHub, makeFilter } from '../src/sse-hub.js'

t.test('globs match in linear time', async (t) => {
  const cases: Array<[string, string, boolean]> = [
    ['kernel_*', 'kernel_started', true], ['kernel_*', 'kernel_', true], ['kernel_*', 'kernel', false],
    ['*_started', 'session_started', true], ['*_started', 'started', false], ['a*b*c', 'abc', true], ['a*b*c', 'aXbYc', true],
    ['a*b*c', 'acb', false], ['a*a', 'a', false], ['a*a', 'aa', true], ['*', '', true], ['exact', 'exact', true],
    ['exact', 'exactly', false], ['x,kernel_*', 'kernel_a', true], ['*a*', 'bab', true], ['a.b', 'aXb', false]
  ]
  for (const [glob, value, expected] of cases) t.equal(globList(glob)(value), expected, `${glob} ~ ${value}`)
  const evil = globList('*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b')
  const started = performance.now()
  for (let i = 0; i < 1000; i++) evil('a'.repeat(128))
  t.ok(performance.now() - started < 200, `a thousand worst cases in ${(performance.now() - started).toFixed(1)} ms`)
})

t.test('a stream that dies while another is opening does not end the subscription under the living one', async (t) => {
  const engine = new MemoryEngine({ redis: undefined, pubsubChannel: 'p', prodconsKey: 'q', redisTimeoutMs: 1000, memoryQueueMax: 1000, memoryQueueMaxBytes: 2 ** 20 })
  const metrics = { clients: () => {}, published: () => {}, delivered: () => {}, slowDisconnect: () => {}, resume: () => {}, malformed: () => {} }
  const hub = new SseHub(engine, { lingerMs: 50, historySize: 100, historyBytes: 2 ** 20, maxBufferBytes: 2 ** 20, heartbeatMs: 60_000, retryMs: 1000, maxClients: 10, maxMessageBytes: 2 ** 20 },
    metrics, pino({ level: 'silent' }))
  hub.start()
  t.teardown(async () => { await hub.close(); await engine.close() })

  // Two real requests; the server keeps their responses for the hub.
  const responses: ServerResponse[] = []
  const server = createServer((_req, res) => { responses.push(res) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const { port } = server.address() as { port: number }
  let received = ''
  const open = (keep: boolean) => {
    const req = request({ port, path: '/' }, (res) => res.on('data', (d: Buffer) => { received += keep ? d.toString() : '' }))
    req.on('error', () => {})
    req.end()
    return req
  }
  const dying = open(false)
  open(true)
  while (responses.length < 2) await sleep(5)
  dying.destroy()
  while (responses[0]!.socket !== null && !responses[0]!.socket.destroyed) await sleep(5)

  const head = (res: ServerResponse) => () => { res.useChunkedEncodingByDefault = false; res.writeHead(200); res.flushHeaders() }
  await Promise.all([
    hub.open(responses[0]!, makeFilter(undefined, undefined), undefined, head(responses[0]!)),
    hub.open(responses[1]!, makeFilter(undefined, undefined), undefined, head(responses[1]!))
  ])
  t.equal(hub.clientCount, 1)
  await sleep(150) // past the linger time
  await engine.produce([encodeEvent({ event_name: 'still_heard', agent_id: 'x', args: [] })])
  for (let i = 0; i < 100 && !received.includes('still_heard'); i++) await sleep(10)
  t.match(received, /event: still_heard/, 'the living stream still gets events')
})
