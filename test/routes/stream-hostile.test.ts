import { spawn } from 'node:child_process'
import { connect, type Socket } from 'node:net'
import { request } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { encode } from '@msgpack/msgpack'
import t, { type Test } from 'tap'
import { listeningApp } from '../helpers/app.js'
import { uniqueNames } from '../helpers/bus.js'
import { startRedis } from '../helpers/redis.js'
import { dataOf, openStream } from '../helpers/sse.js'
import { until } from '../helpers/wait.js'
import type { Config } from '../../src/config.js'

// Streams under attack: producers that put anything on the channel, clients that stop reading.
const redis = await startRedis(t)

async function gateway (t: Test, overrides: Partial<Config> = {}) {
  const names = uniqueNames()
  const { app, base } = await listeningApp(t, redis.url, { ...names, ...overrides })
  const publishRaw = async (bytes: Uint8Array) => { await redis.client.publish(names.pubsubChannel, Buffer.from(bytes)) }
  const metrics = async () => (await app.inject({ method: 'GET', url: '/metrics' })).body
  return { app, base, names, publishRaw, metrics }
}

/** A client that sends the request and then never reads a byte of the answer. */
async function stuckStream (base: string): Promise<Socket> {
  const { port } = new URL(base)
  const socket = connect(Number(port), '127.0.0.1')
  socket.on('error', () => {})
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.pause()
  socket.write('GET /events/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n')
  return socket
}

/** Times GET /healthz over real HTTP, as a load balancer would. */
async function healthMs (base: string): Promise<number> {
  const started = performance.now()
  await new Promise<void>((resolve, reject) => {
    const req = request(`${base}/healthz`, (res) => { res.resume(); res.on('end', resolve) })
    req.on('error', reject)
    req.end()
  })
  return performance.now() - started
}

/**
 * test/fixtures/stream-reader.mjs in a process of its own: how far it has read (`read()`), and
 * what it read once it has all, is cut, or gives up.
 */
function spawnReader (url: string, expected: number, timeoutMs: number) {
  const child = spawn(process.execPath, [new URL('../fixtures/stream-reader.mjs', import.meta.url).pathname, url, String(expected), String(timeoutMs)],
    { stdio: ['ignore', 'pipe', 'inherit'] })
  let partial = ''
  let read = 0
  let summary = '{"received":0,"inOrder":false,"closed":true,"why":"no answer"}'
  child.stdout.on('data', (d: Buffer) => {
    const lines = (partial + d.toString()).split('\n')
    partial = lines.pop()!
    for (const line of lines) if (/^\d+$/.test(line)) read = Number(line); else summary = line
  })
  const result = new Promise<{ received: number, inOrder: boolean, closed: boolean, why: string }>((resolve) => {
    child.once('close', () => resolve(JSON.parse(summary)))
  })
  return { result, read: () => read, kill: () => child.kill() }
}

// A timestamp extension whose seconds are far outside what a JavaScript Date holds: Python's
// unpackb reads it; it once killed every gateway with a stream open.
const BOMB = Buffer.from('83aa6576656e745f6e616d65ae6b65726e656c5f73746172746564a86167656e745f6964a161a46172677391c70cff000000004000000000000000', 'hex')

t.test('an event whose timestamp no Date can hold crashes nothing, and the next event flows', async (t) => {
  const { app, base, publishRaw } = await gateway(t)
  const stream = await openStream(`${base}/events/stream`)
  t.teardown(() => stream.close())
  await publishRaw(encode({ event_name: 'before_the_bomb', agent_id: 'a', args: [] }))
  await publishRaw(BOMB)
  await publishRaw(encode({ event_name: 'after_the_bomb', agent_id: 'a', args: [] }))
  const got = await stream.waitFor(3)
  t.same(got.map((e) => e.event), ['before_the_bomb', 'kernel_started', 'after_the_bomb'])
  t.same(dataOf(got[1]!), { event_name: 'kernel_started', agent_id: 'a', args: [{ $ext: -1, $base64: 'AAAAAEAAAAAAAAAA' }] })
  t.equal((await app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200)

  // The same value from the history, for a client that resumes from before it.
  const resumed = await openStream(`${base}/events/stream`, { 'last-event-id': got[0]!.id! })
  t.teardown(() => resumed.close())
  t.same((await resumed.waitFor(2)).map((e) => e.event), ['kernel_started', 'after_the_bomb'], 'a replay carries it too')
})

t.test('messages above BUSGATE_BUS_MAX_MESSAGE_BYTES are counted and set aside undecoded; the next one flows', async (t) => {
  const { base, publishRaw, metrics } = await gateway(t, { busMaxMessageBytes: 4096 })
  const stream = await openStream(`${base}/events/stream`)
  t.teardown(() => stream.close())
  await publishRaw(encode({ event_name: 'huge', agent_id: 'a', args: ['x'.repeat(5000)] }))
  await publishRaw(encode({ event_name: 'small', agent_id: 'a', args: ['x'.repeat(4000)] }))
  const got = await stream.waitFor(1)
  await sleep(100)
  t.same(got.map((e) => e.event), ['small'])
  t.match(await metrics(), /busgate_bus_malformed_total\{source="pubsub",reason="too_large"\} 1\n/)

  // While nobody watches, the raw copy is not kept either: a resume from before it skips it.
  const lastId = got[0]!.id!
  stream.close()
  await publishRaw(encode({ event_name: 'huge', agent_id: 'a', args: ['y'.repeat(5000)] }))
  await publishRaw(encode({ event_name: 'kept', agent_id: 'a', args: [] }))
  await sleep(100)
  const resumed = await openStream(`${base}/events/stream`, { 'last-event-id': lastId })
  t.teardown(() => resumed.close())
  t.same((await resumed.waitFor(1)).map((e) => e.event), ['kept'])
  t.match(await metrics(), /busgate_bus_malformed_total\{source="pubsub",reason="too_large"\} 2\n/)
})

t.test('a frame larger than BUSGATE_SSE_MAX_BUFFER_BYTES, then another event, cuts off no reading client', async (t) => {
  const { base, publishRaw, metrics } = await gateway(t, { sseMaxBufferBytes: 64 * 1024, busMaxMessageBytes: 4 * 1024 * 1024 })
  const streams = await Promise.all(Array.from({ length: 3 }, () => openStream(`${base}/events/stream`)))
  t.teardown(() => { for (const s of streams) s.close() })
  for (let i = 0; i < 3; i++) {
    await publishRaw(encode({ event_name: 'big', agent_id: 'a', args: [i, 'z'.repeat(1_500_000)] }))
    await publishRaw(encode({ event_name: 'small', agent_id: 'a', args: [i] }))
  }
  for (const s of streams) t.same((await s.waitFor(6, 10_000)).map((e) => e.event), ['big', 'small', 'big', 'small', 'big', 'small'])
  t.match(await metrics(), /busgate_sse_slow_disconnects_total 0\n/)
  t.match(await metrics(), /busgate_sse_clients 3\n/)
})

t.test('clients that stop reading cost a bounded share each, are cut off, and never stall the gateway', async (t) => {
  const bound = 1024 * 1024
  const { app, base, names, metrics } = await gateway(t, { sseMaxBufferBytes: bound })
  const clients = 400
  const stuck = await Promise.all(Array.from({ length: clients }, async () => await stuckStream(base)))
  t.teardown(() => { for (const s of stuck) s.destroy() })
  await until(() => app.hub.clientCount === clients)
  // Frames of ~100 bytes, about 50,000 a second, until every stuck stream is cut: each socket's
  // kernel buffers take megabytes first (how many depends on the machine), then it is owed more
  // than the bound. A reader that keeps up is never cut: the publisher waits for it.
  const reader = spawnReader(`${base}/events/stream`, Infinity, 120_000)
  t.teardown(() => reader.kill())
  await until(() => app.hub.clientCount === clients + 1)
  t.equal(app.hub.clientCount, clients + 1)

  const heapBefore = process.memoryUsage().heapUsed
  const payload = 'p'.repeat(30)
  let heapPeak = heapBefore
  const sampler = setInterval(() => { heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed) }, 20)
  const publisher = redis.connect()
  let sent = 0
  const slowest = await slowestHealth(base, async () => {
    // 30 MB per stuck stream at most: far more than any kernel takes.
    while (app.hub.clientCount > 1 && sent < 300_000) {
      const pipeline = publisher.pipeline()
      for (const end = sent + 1000; sent < end; sent++) pipeline.publish(names.pubsubChannel, Buffer.from(encode({ event_name: 'burst', agent_id: 'a', args: [sent, payload] })))
      await pipeline.exec()
      await sleep(20)
      // A reader that keeps up, on a machine however busy: never more than 5,000 frames
      // (~500 KB, half the bound) ahead of what it has read.
      while (sent - reader.read() > 5000 && app.hub.clientCount > 1) await sleep(5)
    }
    await publisher.publish(names.pubsubChannel, Buffer.from(encode({ event_name: 'burst', agent_id: 'a', args: [-1, ''] })))
    await reader.result
  })
  clearInterval(sampler)

  t.match(await reader.result, { received: sent, inOrder: true, why: 'end' }, `the reading client got all ${sent} events, in order`)
  t.ok(app.hub.clientCount <= 1, 'every stuck client was cut off')
  t.match(await metrics(), new RegExp(`busgate_sse_slow_disconnects_total ${clients}\n`))
  t.ok(slowest < 1500, `/healthz answered within ${slowest.toFixed(0)} ms throughout`)
  // A queued write per frame and client beyond what the kernel takes: ~18,000 x 400, gigabytes.
  const grown = (heapPeak - heapBefore) / 2 ** 20
  t.ok(grown < 200, `heap grew by ${grown.toFixed(0)} MB at most (${clients} clients, ${bound / 1024} KB bound each)`)
})

t.test('a resume that never reads costs no copy of the history, and is cut once live events pass the bound', async (t) => {
  const { app, base, names } = await gateway(t, { sseMaxBufferBytes: 32 * 1024 })
  const first = await openStream(`${base}/events/stream`)
  const publisher = redis.connect()
  const publish = async (n: number, size: number) => {
    const pipeline = publisher.pipeline()
    for (let i = 0; i < n; i++) pipeline.publish(names.pubsubChannel, Buffer.from(encode({ event_name: 'h', agent_id: 'a', args: [i, 'q'.repeat(size)] })))
    await pipeline.exec()
  }
  await publish(1, 10)
  const oldest = (await first.waitFor(1))[0]!.id!
  first.close()
  await until(() => app.hub.clientCount === 0)
  // 10 MB of history while nobody watches (kept raw): more than a socket's kernel buffers.
  await publish(5000, 2000)
  await sleep(500)

  // Streams that ask for all of it and read none of it.
  const { port } = new URL(base)
  const stuck = await Promise.all(Array.from({ length: 50 }, async () => {
    const socket = connect(Number(port), '127.0.0.1')
    socket.on('error', () => {})
    await new Promise((resolve) => socket.once('connect', resolve))
    socket.pause()
    socket.write(`GET /events/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: ${oldest}\r\n\r\n`)
    return socket
  }))
  t.teardown(() => { for (const s of stuck) s.destroy() })
  await until(() => app.hub.clientCount === 50)
  await sleep(300)
  t.equal(app.hub.clientCount, 50, 'a replay is not lag: all still open')
  t.ok(await healthMs(base) < 500, 'the gateway answers at once')

  for (let i = 0; i < 20; i++) await publish(10, 2000) // 400 KB live: past the 32 KB bound for each of them
  await until(() => app.hub.clientCount === 0, 10_000)
  t.equal(app.hub.clientCount, 0, 'cut off once they fell behind the live events')
})

t.test('resumes read from the shared history by clients that never read hold a page each, and are cut once their sockets push back and live events pass the bound', async (t) => {
  // The history is written while the first instance watches; the resumes go to a second one,
  // which never heard it: they read it from Redis, a page at a time, as their sockets take it.
  // The first instance's reader is the control: it shares this busy process with the second
  // instance serving 40 MB replays, so under CI load it can stop reading for seconds. It gets a
  // bound it cannot reach (its lag is not what is tested: what the other instance's clients do
  // to it is); the default bound once cut it in CI.
  const { app, base, names, metrics } = await gateway(t, { sseMaxBufferBytes: 256 * 1024 * 1024 })
  const watching = await openStream(`${base}/events/stream`)
  t.teardown(() => watching.close())
  const publisher = redis.connect()
  t.teardown(() => publisher.disconnect())
  const publish = async (n: number, size: number) => {
    const pipeline = publisher.pipeline()
    for (let i = 0; i < n; i++) pipeline.publish(names.pubsubChannel, Buffer.from(encode({ event_name: 'h', agent_id: 'a', args: [i, 'q'.repeat(size)] })))
    await pipeline.exec()
  }
  await publish(1, 10)
  const oldest = (await watching.waitFor(1))[0]!.id!
  // 40 MB of history, in messages of 20 KB: more than a socket's kernel buffers take.
  for (let i = 0; i < 4; i++) await publish(500, 20_000)
  await watching.waitFor(2001, 30_000)

  const { listeningApp: second } = await import('../helpers/app.js')
  const other = await second(t, redis.url, { ...names, sseMaxBufferBytes: 32 * 1024 })
  const { port } = new URL(other.base)
  const heapBefore = process.memoryUsage().heapUsed
  const stuck = await Promise.all(Array.from({ length: 20 }, async () => {
    const socket = connect(Number(port), '127.0.0.1')
    socket.on('error', () => {})
    await new Promise((resolve) => socket.once('connect', resolve))
    socket.pause()
    socket.write(`GET /events/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: ${oldest}\r\n\r\n`)
    return socket
  }))
  t.teardown(() => { for (const s of stuck) s.destroy() })
  await until(() => other.app.hub.clientCount === 20)
  await sleep(500)
  t.equal(other.app.hub.clientCount, 20, 'a replay is not lag: all still open')
  t.ok(await healthMs(other.base) < 500, 'the gateway answers at once')
  const grown = (process.memoryUsage().heapUsed - heapBefore) / 2 ** 20
  t.ok(grown < 100, `heap grew by ${grown.toFixed(0)} MB for 20 replays of a 40 MB history (a copy each would be 800 MB)`)

  for (let i = 0; i < 20; i++) await publish(10, 2000) // 400 KB live: past the 32 KB bound for each of them
  await until(() => other.app.hub.clientCount === 0, 30_000)
  t.equal(other.app.hub.clientCount, 0, 'cut off once they fell behind the live events')
  const slow = /^busgate_sse_slow_disconnects_total (\d+)$/m.exec(await metrics())?.[1]
  t.equal(app.hub.clientCount, 1, `the first instance's reader is untouched (cut there for slowness: ${slow ?? '?'})`)
})

/** A valid event that takes tens of milliseconds to decode: one map of many keys. */
function heavyEvent (i: number): Buffer {
  return Buffer.from(encode({ event_name: 'heavy', agent_id: 'a', args: [i, Object.fromEntries(Array.from({ length: 20_000 }, (_, k) => [`key${k}`, k]))] }))
}

/** The slowest /healthz answer while `work` runs, probing every 20 ms. */
async function slowestHealth (base: string, work: () => Promise<void>): Promise<number> {
  let slowest = 0
  const probing = { on: true }
  const probe = (async () => {
    while (probing.on) {
      slowest = Math.max(slowest, await healthMs(base))
      await sleep(20)
    }
  })()
  await work()
  probing.on = false
  await probe
  return slowest
}

t.test('heavy messages are decoded a slice at a time: a burst of them, live or replayed, never holds the gateway', async (t) => {
  const { app, base, names } = await gateway(t)
  const first = await openStream(`${base}/events/stream`)
  const publisher = redis.connect()
  await publisher.publish(names.pubsubChannel, Buffer.from(encode({ event_name: 'start', agent_id: 'a', args: [] })))
  const oldest = (await first.waitFor(1))[0]!.id!
  first.close()
  await until(() => app.hub.clientCount === 0)
  const heavy = Array.from({ length: 60 }, (_, i) => heavyEvent(i))
  const pipeline = publisher.pipeline()
  for (const bytes of heavy) pipeline.publish(names.pubsubChannel, bytes)
  await pipeline.exec()
  await sleep(300)

  // A resume whose filter takes none of them: nothing is written, everything must be decoded.
  const replaySlowest = await slowestHealth(base, async () => {
    const resumed = await openStream(`${base}/events/stream?event_name=nothing_matches`, { 'last-event-id': oldest })
    t.teardown(() => resumed.close())
    await sleep(2500)
  })
  t.ok(replaySlowest < 500, `/healthz within ${replaySlowest.toFixed(0)} ms while a resume decodes 60 heavy messages`)

  // The same, live, to a stream that takes them.
  const live = await openStream(`${base}/events/stream?event_name=heavy`)
  t.teardown(() => live.close())
  const liveSlowest = await slowestHealth(base, async () => {
    const again = publisher.pipeline()
    for (const bytes of heavy) again.publish(names.pubsubChannel, bytes)
    await again.exec()
    await live.waitFor(60, 30_000)
  })
  t.equal(live.events.length, 60, 'all of them streamed')
  t.ok(liveSlowest < 500, `/healthz within ${liveSlowest.toFixed(0)} ms while 60 heavy messages stream`)
})

t.test('a thousand streams with filters of their own cost no more than their matching, and never stall the gateway', async (t) => {
  const { app, base, names } = await gateway(t, { sseMaxClients: 5000 })
  const { port } = new URL(base)
  // 50 globs each, that match nothing: every event is tested against every one of them.
  const sockets = await Promise.all(Array.from({ length: 1000 }, async (_, i) => {
    const globs = Array.from({ length: 50 }, (_, k) => `*${'q'.repeat(20)}${i}x${k}*`).join(',')
    const socket = connect(Number(port), '127.0.0.1')
    socket.on('error', () => {})
    await new Promise((resolve) => socket.once('connect', resolve))
    socket.write(`GET /events/stream?event_name=${globs} HTTP/1.1\r\nHost: x\r\n\r\n`)
    socket.resume()
    return socket
  }))
  t.teardown(() => { for (const s of sockets) s.destroy() })
  const reader = await openStream(`${base}/events/stream?event_name=wanted_*`)
  t.teardown(() => reader.close())
  await until(() => app.hub.clientCount === 1001, 10_000)
  const publisher = redis.connect()
  const slowest = await slowestHealth(base, async () => {
    for (let batch = 0; batch < 10; batch++) {
      const pipeline = publisher.pipeline()
      // Names that differ each time: nothing can be remembered from one event to the next.
      for (let i = 0; i < 500; i++) pipeline.publish(names.pubsubChannel, Buffer.from(encode({ event_name: `wanted_${batch}_${i}`, agent_id: 'a', args: [] })))
      await pipeline.exec()
      await sleep(100)
    }
    await reader.waitFor(5000, 30_000)
  })
  t.equal(reader.events.length, 5000, 'the stream that wants them got them all')
  t.ok(slowest < 500, `/healthz within ${slowest.toFixed(0)} ms`)
})
