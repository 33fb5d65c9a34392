/**
 * The load client of bench/fanout, run as its own process. Prints one JSON line. Every stream
 * counts its events (loss); one in ten also parses them for latency and order.
 *   active URL REDIS_URL CLIENTS RATE SECONDS   N streams; RATE msg/s published to Redis for SECONDS; latency and loss
 *   idle URL CLIENTS HOLD_SECONDS              N streams held open; how many connected, how many stayed
 *   burst URL REDIS_URL CLIENTS EVENTS          N streams that never read, one that does; EVENTS published at once;
 *                                               the slowest /healthz answer meanwhile, and how many stuck streams were cut
 */
import { connect } from 'node:net'
import { request } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { decode, encode } from '@msgpack/msgpack'
import { Redis } from 'ioredis'

interface Conn { received: number, lastSeq: number, outOfOrder: number, closed: boolean, destroy: () => void }

const latencies: number[] = []
const DATA = Buffer.from('data: ')

/**
 * Opens one stream. A sampled stream parses every event (latency, order); the others only
 * count `data:` lines, so that the load client itself stays far cheaper than the servers.
 */
function open (url: string, sampled: boolean): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const conn: Conn = { received: 0, lastSeq: 0, outOfOrder: 0, closed: false, destroy: () => req.destroy() }
    const req = request(url, { headers: { accept: 'text/event-stream' }, agent: false }, (res) => {
      if (res.statusCode !== 200) { reject(new Error(`status ${res.statusCode}`)); return }
      if (!sampled) {
        // Count "data: " in the raw bytes, carrying the last few bytes over chunk boundaries.
        let tail: Buffer = Buffer.alloc(0)
        res.on('data', (chunk: Buffer) => {
          const bytes = tail.length > 0 ? Buffer.concat([tail, chunk]) : chunk
          for (let at = bytes.indexOf(DATA); at >= 0; at = bytes.indexOf(DATA, at + DATA.length)) conn.received++
          tail = bytes.subarray(Math.max(0, bytes.length - (DATA.length - 1)))
        })
        res.on('close', () => { conn.closed = true })
        resolve(conn)
        return
      }
      let buffer = ''
      res.setEncoding('latin1')
      res.on('data', (chunk: string) => {
        buffer += chunk
        let end = buffer.indexOf('\n\n')
        while (end >= 0) {
          const block = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          end = buffer.indexOf('\n\n')
          const at = block.indexOf('data: ')
          if (at < 0) continue
          conn.received++
          const data = block.slice(at + 6)
          // The gateway sends the event as JSON; the baseline sends the raw msgpack as base64.
          const event = (data.startsWith('{') ? JSON.parse(data) : decode(Buffer.from(data, 'base64'))) as { args: [number, number] }
          const [seq, sentAt] = event.args
          latencies.push(performance.now() - sentAt)
          if (seq !== conn.lastSeq + 1) conn.outOfOrder++
          conn.lastSeq = seq
        }
      })
      res.on('close', () => { conn.closed = true })
      resolve(conn)
    })
    req.on('error', (err) => { conn.closed = true; reject(err) })
    req.end()
  })
}

async function openMany (url: string, n: number, sampleEvery = 0): Promise<Conn[]> {
  const conns: Conn[] = []
  for (let i = 0; i < n; i += 250) {
    conns.push(...await Promise.all(Array.from({ length: Math.min(250, n - i) }, (_, j) => open(url, sampleEvery > 0 && (i + j) % sampleEvery === 0))))
  }
  return conns
}

function percentile (sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? Number.NaN
}

const [mode, url, ...rest] = process.argv.slice(2)
if (mode === 'active') {
  const [redisUrl, clientsText, rateText, secondsText] = rest
  const clients = Number(clientsText)
  const rate = Number(rateText)
  const total = rate * Number(secondsText)
  const conns = await openMany(url!, clients, 10)
  await sleep(500)
  const publisher = new Redis(redisUrl!)
  const started = performance.now()
  for (let seq = 1; seq <= total; seq++) {
    // Paced against the clock, not by sleeping a fixed time, so the rate holds under load.
    const due = started + (seq - 1) * (1000 / rate)
    const wait = due - performance.now()
    if (wait > 1) await sleep(wait)
    await publisher.publish('events.pubsub', Buffer.from(encode({ event_name: 'bench_tick', agent_id: 'bench', args: [seq, performance.now()] })))
  }
  for (let i = 0; i < 100 && conns.some((c) => c.received < total && !c.closed); i++) await sleep(50)
  const sorted = Float64Array.from(latencies).sort()
  const expected = clients * total
  const received = conns.reduce((sum, c) => sum + c.received, 0)
  process.stdout.write(JSON.stringify({
    clients,
    published: total,
    expected,
    received,
    lost: expected - received,
    samples: latencies.length,
    outOfOrder: conns.reduce((s, c) => s + c.outOfOrder, 0),
    disconnected: conns.filter((c) => c.closed).length,
    p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99),
    max: sorted[sorted.length - 1]
  }) + '\n')
  publisher.disconnect()
  for (const c of conns) c.destroy()
} else if (mode === 'idle') {
  const [clientsText, holdText] = rest
  const conns = await openMany(url!, Number(clientsText))
  process.stdout.write(JSON.stringify({ connected: conns.length }) + '\n')
  // The orchestrator reads the server's memory now, then we hold on.
  await sleep(Number(holdText) * 1000)
  process.stdout.write(JSON.stringify({ held: conns.filter((c) => !c.closed).length }) + '\n')
  for (const c of conns) c.destroy()
} else if (mode === 'burst') {
  const [redisUrl, clientsText, eventsText] = rest
  const target = new URL(url!)
  const events = Number(eventsText)
  // Streams whose clients send the request and never read a byte.
  const stuck = await Promise.all(Array.from({ length: Number(clientsText) }, async () => {
    const socket = connect(Number(target.port), target.hostname)
    const state = { closed: false }
    socket.on('error', () => {})
    socket.on('close', () => { state.closed = true })
    await new Promise((resolve) => socket.once('connect', resolve))
    socket.pause()
    socket.write(`GET ${target.pathname} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n`)
    return { socket, state }
  }))
  const [reader] = await openMany(url!, 1)
  await sleep(1000)
  const health = async (): Promise<number> => {
    const started = performance.now()
    await new Promise<void>((resolve) => {
      const req = request(new URL('/healthz', target), { agent: false, timeout: 60_000 }, (res) => { res.resume(); res.on('end', resolve) })
      req.on('error', () => resolve())
      req.end()
    })
    return performance.now() - started
  }
  let slowest = 0
  const probing = { on: true }
  const probe = (async () => {
    while (probing.on) {
      slowest = Math.max(slowest, await health())
      await sleep(50)
    }
  })()
  const publisher = new Redis(redisUrl!)
  const started = performance.now()
  for (let sent = 0; sent < events; sent += 1000) {
    const pipeline = publisher.pipeline()
    for (let seq = sent + 1; seq <= Math.min(events, sent + 1000); seq++) {
      pipeline.publish('events.pubsub', Buffer.from(encode({ event_name: 'bench_burst', agent_id: 'bench', args: [seq, 0] })))
    }
    await pipeline.exec()
  }
  while (reader!.received < events && !reader!.closed && performance.now() - started < 120_000) await sleep(20)
  const drainedMs = performance.now() - started
  await sleep(1000)
  probing.on = false
  await probe
  process.stdout.write(JSON.stringify({
    events,
    received: reader!.received,
    drainedMs,
    slowestHealthMs: slowest,
    stuckCut: stuck.filter((s) => s.state.closed).length
  }) + '\n')
  publisher.disconnect()
  reader!.destroy()
  for (const s of stuck) s.socket.destroy()
} else {
  throw new Error(`unknown mode ${mode}`)
}
process.exit(0)
