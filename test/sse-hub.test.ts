import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import pino from 'pino'
import t, { type Test } from 'tap'
import { encodeEvent } from '../src/codec.js'
import { LocalFeed } from '../src/engines/feed.js'
import { MemoryEngine } from '../src/engines/memory-engine.js'
import { globList } from '../src/glob.js'
import { NO_EVENTS, SseHub, makeFilter } from '../src/sse-hub.js'
import { until } from './helpers/wait.js'

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
  const hub = new SseHub(new LocalFeed(engine.bus), { lingerMs: 50, historySize: 100, historyBytes: 2 ** 20, maxBufferBytes: 2 ** 20, heartbeatMs: 60_000, retryMs: 1000, maxClients: 10, maxMessageBytes: 2 ** 20 },
    metrics, pino({ level: 'silent' }))
  hub.start()
  t.teardown(async () => { await hub.close(); await engine.close() })

  // Two real requests; the server keeps their responses for the hub, by path: which one it
  // accepts first is the kernel's choice (on a loaded machine the living one, now and then).
  const byPath = new Map<string, ServerResponse>()
  const server = createServer((req, res) => { byPath.set(req.url ?? '', res) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const { port } = server.address() as { port: number }
  let received = ''
  const open = (keep: boolean) => {
    const req = request({ port, path: keep ? '/living' : '/dying' }, (res) => res.on('data', (d: Buffer) => { received += keep ? d.toString() : '' }))
    req.on('error', () => {})
    req.end()
    return req
  }
  const dying = open(false)
  open(true)
  while (byPath.size < 2) await sleep(5)
  const responses = [byPath.get('/dying')!, byPath.get('/living')!]
  dying.destroy()
  while (responses[0]!.socket !== null && !responses[0]!.socket.destroyed) await sleep(5)

  const head = (res: ServerResponse) => () => { res.useChunkedEncodingByDefault = false; res.writeHead(200); res.flushHeaders() }
  await Promise.all([
    hub.open(responses[0]!, makeFilter(undefined, undefined), undefined, head(responses[0]!)),
    hub.open(responses[1]!, makeFilter(undefined, undefined), undefined, head(responses[1]!))
  ])
  t.equal(hub.clientCount, 1)
  await sleep(150) // past the linger time
  await engine.bus.produce([encodeEvent({ event_name: 'still_heard', agent_id: 'x', args: [] })])
  for (let i = 0; i < 100 && !received.includes('still_heard'); i++) await sleep(10)
  t.match(received, /event: still_heard/, 'the living stream still gets events')
})

// The hub against real sockets, on the memory engine: a produce reaches the hub in one turn.
async function hubWithSockets (t: Test, maxBufferBytes: number) {
  const engine = new MemoryEngine({ redis: undefined, pubsubChannel: 'p', prodconsKey: 'q', redisTimeoutMs: 1000, memoryQueueMax: 1_000_000, memoryQueueMaxBytes: 2 ** 31 })
  const counters = { slow: 0 }
  const metrics = { clients: () => {}, published: () => {}, delivered: () => {}, slowDisconnect: () => { counters.slow++ }, resume: () => {}, malformed: () => {} }
  const hub = new SseHub(new LocalFeed(engine.bus), { lingerMs: 60_000, historySize: 10_000, historyBytes: 2 ** 30, maxBufferBytes, heartbeatMs: 60_000, retryMs: 1000, maxClients: 100, maxMessageBytes: 2 ** 25 },
    metrics, pino({ level: 'silent' }))
  hub.start()
  const responses: ServerResponse[] = []
  const server = createServer((_req, res) => { responses.push(res) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { await hub.close(); server.closeAllConnections(); server.close(); await engine.close() })
  const { port } = server.address() as { port: number }
  const head = (res: ServerResponse) => () => { res.useChunkedEncodingByDefault = false; res.writeHead(200); res.flushHeaders() }
  /** A stream through the hub; `reading` false leaves the client's socket paused. */
  const stream = async (reading: boolean, filter = makeFilter(undefined, undefined)) => {
    const n = responses.length
    const chunks: Buffer[] = []
    const state = { closed: false, res: undefined as IncomingMessage | undefined }
    const req = request({ port, path: '/' }, (res) => {
      state.res = res
      if (!reading) res.pause()
      res.on('data', (d: Buffer) => chunks.push(d))
      res.on('close', () => { state.closed = true })
      res.on('error', () => {})
    })
    req.on('error', () => {})
    req.end()
    while (responses.length <= n) await sleep(2)
    const res = responses[n]!
    const handle = await hub.open(res, filter, undefined, head(res))
    const text = () => Buffer.concat(chunks).toString()
    return { res, handle, state, text, ids: () => [...text().matchAll(/^id: [0-9a-f]+:(\d+)$/gm)].map((m) => Number(m[1])) }
  }
  const publish = async (...events: Array<{ name: string, size: number }>) => {
    await engine.bus.produce(events.map((e) => encodeEvent({ event_name: e.name, agent_id: 'a', args: ['x'.repeat(e.size)] })))
  }
  return { hub, counters, stream, publish }
}

const consecutive = (ids: number[]) => ids.every((v, i) => i === 0 || v === ids[i - 1]! + 1)

t.test('a reader whose socket fills while the turn\'s write budget runs out gets every event once, in order', async (t) => {
  const { counters, stream, publish } = await hubWithSockets(t, 64 * 2 ** 20)
  const first = await stream(true)
  const second = await stream(true)
  // One turn, one 9 MiB chunk: the first client's socket fills on it, the budget ends before the second.
  await publish(...Array.from({ length: 9 }, () => ({ name: 'big', size: 2 ** 20 })))
  await until(() => first.ids().length === 9 && second.ids().length === 9, 5000)
  await publish({ name: 'after', size: 10 }, { name: 'after', size: 10 })
  await until(() => first.ids().length === 11 && second.ids().length === 11, 5000)
  for (const s of [first, second]) {
    t.equal(s.ids().length, 11, 'each event once')
    t.ok(consecutive(s.ids()), 'in publish order')
  }
  t.equal(counters.slow, 0)
})

t.test('a stalled stream cut in the middle of a send leaves the others what they are owed', async (t) => {
  const { counters, stream, publish } = await hubWithSockets(t, 2 ** 20)
  const stalled = await stream(false)
  const readers = [await stream(true), await stream(true)]
  for (let i = 0; i < 200 && stalled.res.socket?.writableNeedDrain !== true; i++) {
    await publish({ name: 'fill', size: 256 * 1024 })
    await sleep(20)
  }
  t.ok(stalled.res.socket?.writableNeedDrain, 'the stalled stream fell behind')
  await publish({ name: 'lag', size: 700 * 1024 })
  await sleep(20)
  await publish({ name: 'lag', size: 700 * 1024 })
  await sleep(20)
  // One chunk larger than the budget: the stalled stream is cut before the readers are reached.
  await publish(...Array.from({ length: 9 }, () => ({ name: 'burst', size: 2 ** 20 })))
  await sleep(500)
  for (let i = 0; i < 5; i++) {
    await publish({ name: 'after', size: 300 * 1024 })
    await sleep(50)
  }
  await until(() => readers.every((r) => r.text().split('event: after').length === 6), 10_000)
  for (const r of readers) {
    t.equal(r.state.closed, false, 'still open')
    t.ok(consecutive(r.ids()), 'every event, in order')
    t.equal(r.text().split('event: after').length - 1, 5, 'up to the last one')
  }
  t.equal(counters.slow, 1, 'only the stalled stream was cut')
})

t.test('a view\'s own frames still queued go out before its end', async (t) => {
  const { stream } = await hubWithSockets(t, 64 * 2 ** 20)
  const view = await stream(false, NO_EVENTS)
  await until(() => view.state.res !== undefined)
  const pad = 'p'.repeat(64 * 1024)
  let n = 0
  while (view.res.socket?.writableNeedDrain !== true) view.handle!.write(Buffer.from(`event: task_updated\ndata: {"n":${n++},"pad":"${pad}"}\n\n`))
  for (let k = 0; k < 5; k++) view.handle!.write(Buffer.from(`event: task_updated\ndata: {"n":${n++}}\n\n`))
  view.handle!.end(Buffer.from('event: server_close\ndata: {}\n\n'))
  view.state.res!.resume()
  await until(() => view.state.closed, 5000)
  const got = [...view.text().matchAll(/"n":(\d+)/g)].map((m) => Number(m[1]))
  t.same(got, Array.from({ length: n }, (_, i) => i), 'every frame, in order')
  t.ok(view.text().endsWith('event: server_close\ndata: {}\n\n'), 'then the end')
})
