/**
 * bench/ingest: requests/s of POST /events against a bare Fastify route answering 202 (same body,
 * no Redis), and events/s of POST /events/batch against the gateway's own single-event path.
 * Targets: single ≥ 0.75× bare; batch ≥ 10× single (events/s). Each round runs all three, in
 * turn, on the same machine; the medians of the rounds are reported.
 *
 *   npm run bench:ingest -- [--rounds 5] [--duration 10] [--connections 64] [--batch 100] [--wait-replicas 0] [--streams 0]
 *
 * A second baseline runs in the same rounds: a bare Fastify route doing one ioredis Lua produce
 * (RPUSH + PUBLISH) per request, what a hand-written gateway would do (target: single ≥ 1.3×
 * that). --streams-row N (100; 0 = none) adds a row: the single path again while N SSE streams
 * read everything.
 *
 * Where Linux's /proc tells, it also reports the CPU each accepted request cost the server
 * process and Redis together (the load generator left out): a figure that moves far less than
 * req/s with how busy the shared machine is.
 *
 * --wait-replicas N starts N replicas of the private Redis and runs the gateway with
 * BUSGATE_REDIS_WAIT_REPLICAS=N: what a 202 that means "replicated" costs. --streams N keeps N
 * SSE streams open on the gateway (each reading everything) while it is measured: the produce
 * path while the gateway also streams, and records the shared history (unless the environment
 * says BUSGATE_SSE_SHARED_HISTORY=false).
 */
import type { ChildProcess } from 'node:child_process'
import { get } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'
import { Redis } from 'ioredis'
import { cpuSeconds, freePort, median, startProcess, stopProcess, table } from './lib.js'

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    duration: { type: 'string', default: '10' },
    connections: { type: 'string', default: '64' },
    batch: { type: 'string', default: '100' },
    'wait-replicas': { type: 'string', default: '0' },
    streams: { type: 'string', default: '0' },
    'streams-row': { type: 'string', default: '100' }
  }
})
const waitReplicas = Number(values['wait-replicas'])
const rounds = Number(values.rounds)
const duration = Number(values.duration)
const connections = Number(values.connections)
const batchSize = Number(values.batch)
const streamCount = Number(values.streams)
const streamsRow = Number(values['streams-row'])

/** N streams that read and drop everything; resolves once all are open, with what closes them. */
async function openStreams (port: number, n: number): Promise<() => void> {
  const requests = await Promise.all(Array.from({ length: n }, async () => await new Promise<ReturnType<typeof get>>((resolve, reject) => {
    const req = get(`http://127.0.0.1:${port}/events/stream`, (res) => { res.resume(); resolve(req) })
    req.on('error', reject)
  })))
  return () => { for (const req of requests) req.destroy() }
}

const root = new URL('..', import.meta.url).pathname
const event = { event_name: 'kernel_started', agent_id: 'i-ag01', args: ['6f0c9a3e-3f4e-4b3a-9d4c-2a7c1f0e5b11', 'kern-0001', { cpu: 2, mem: '4g' }] }
const single = JSON.stringify(event)
const batch = JSON.stringify(Array.from({ length: batchSize }, () => event))

interface Run {
  rps: number
  p99: number
  non2xx: number
  errors: number
  ok: number
  /** CPU µs per accepted request: the server process, and Redis (undefined off Linux) */
  serverUs?: number
  redisUs?: number
}

/** CPU µs per accepted request between two readings of a process's CPU seconds. */
function perRequest (before: number | undefined, after: number | undefined, ok: number): number | undefined {
  return before === undefined || after === undefined || ok === 0 ? undefined : (after - before) * 1e6 / ok
}

async function load (port: number, path: string, body: string, server?: ChildProcess): Promise<Run> {
  const cpuBefore = [cpuSeconds(server?.pid), cpuSeconds(redis.pid)]
  const result = await autocannon({
    url: `http://127.0.0.1:${port}${path}`,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
    connections,
    duration
  })
  return {
    rps: result.requests.average,
    p99: result.latency.p99,
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
    ok: result['2xx'],
    serverUs: perRequest(cpuBefore[0], cpuSeconds(server?.pid), result['2xx']),
    redisUs: perRequest(cpuBefore[1], cpuSeconds(redis.pid), result['2xx'])
  }
}

async function warm (port: number, path: string, body: string): Promise<void> {
  await autocannon({ url: `http://127.0.0.1:${port}${path}`, method: 'POST', headers: { 'content-type': 'application/json' }, body, connections, duration: 2 })
}

const redisPort = await freePort()
const redis = await startProcess('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {}, 'Ready to accept connections')
const check = new Redis({ port: redisPort })
const replicas = []
for (let i = 0; i < waitReplicas; i++) {
  const port = await freePort()
  replicas.push(await startProcess('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', '/tmp',
    '--replicaof', '127.0.0.1', String(redisPort)], {}, 'MASTER <-> REPLICA sync: Finished with success'))
}

const samples = {
  bare: [] as number[],
  naive: [] as number[],
  streamed: [] as number[],
  naiveRatio: [] as number[],
  streamedRatio: [] as number[],
  single: [] as number[],
  batch: [] as number[],
  singleP99: [] as number[],
  bareP99: [] as number[],
  // Ratios within a round compare runs made minutes apart, not across the machine's mood swings.
  singleRatio: [] as number[],
  batchRatio: [] as number[],
  // CPU µs per request (server process + Redis), per path, where /proc tells
  cpu: { bare: [] as number[], naive: [] as number[], single: [] as number[] }
}
try {
  for (let round = 1; round <= rounds; round++) {
    const barePort = await freePort()
    const bare = await startProcess(process.execPath, ['--import', 'tsx', `${root}bench/bare-server.ts`], { PORT: String(barePort) }, 'Server listening')
    await warm(barePort, '/events', single)
    const b = await load(barePort, '/events', single, bare)
    await stopProcess(bare)

    const naivePort = await freePort()
    const naiveServer = await startProcess(process.execPath, ['--import', 'tsx', `${root}bench/naive-redis-server.ts`],
      { PORT: String(naivePort), REDIS_URL: `redis://127.0.0.1:${redisPort}/0` }, 'Server listening')
    await warm(naivePort, '/events', single)
    await sleep(300)
    await check.flushall()
    const n = await load(naivePort, '/events', single, naiveServer)
    await stopProcess(naiveServer)
    await sleep(300)
    await check.flushall()

    const gwPort = await freePort()
    const gateway = await startProcess(process.execPath, [`${root}dist/src/server.js`], {
      PORT: String(gwPort), REDIS_URL: `redis://127.0.0.1:${redisPort}/0`, BUSGATE_REDIS_WAIT_REPLICAS: String(waitReplicas)
    }, 'Server listening')
    const closeStreams = await openStreams(gwPort, streamCount)
    await warm(gwPort, '/events', single)
    await sleep(300) // let requests still in flight from the warm-up land before counting from zero
    await check.flushall()
    const s = await load(gwPort, '/events', single, gateway)
    await sleep(300)
    const storedSingle = await check.llen('events.prodcons')
    await check.flushall()
    const m = await load(gwPort, '/events/batch', batch)
    await sleep(300)
    const storedBatch = await check.llen('events.prodcons')
    await check.flushall()
    closeStreams()
    let streamed: Run | undefined
    if (streamsRow > 0) {
      const closeRowStreams = await openStreams(gwPort, streamsRow)
      await sleep(300)
      streamed = await load(gwPort, '/events', single)
      closeRowStreams()
      await sleep(300)
      await check.flushall()
    }
    await stopProcess(gateway)

    for (const [name, run] of [['bare', b], ['naive', n], ['single', s], ['batch', m], ['streamed', streamed]] as const) {
      if (run === undefined) continue
      if (run.non2xx > 0 || run.errors > 0) throw new Error(`${name}: ${run.non2xx} non-2xx answers and ${run.errors} errors`)
    }
    // Requests still in flight when the clock stops reach Redis without being counted: at most one per connection.
    if (storedSingle < s.ok || storedSingle > s.ok + connections) throw new Error(`single: ${s.ok} accepted but ${storedSingle} in Redis`)
    if (storedBatch < m.ok * batchSize || storedBatch > (m.ok + connections) * batchSize) {
      throw new Error(`batch: ${m.ok * batchSize} accepted but ${storedBatch} in Redis`)
    }

    for (const [name, run] of [['bare', b], ['naive', n], ['single', s]] as const) {
      if (run.serverUs !== undefined && run.redisUs !== undefined) samples.cpu[name].push(run.serverUs + run.redisUs)
    }
    samples.bare.push(b.rps)
    samples.naive.push(n.rps)
    samples.naiveRatio.push(s.rps / n.rps)
    if (streamed !== undefined) {
      samples.streamed.push(streamed.rps)
      samples.streamedRatio.push(streamed.rps / b.rps)
    }
    samples.single.push(s.rps)
    samples.batch.push(m.rps * batchSize)
    samples.bareP99.push(b.p99)
    samples.singleP99.push(s.p99)
    samples.singleRatio.push(s.rps / b.rps)
    samples.batchRatio.push((m.rps * batchSize) / s.rps)
    process.stderr.write(`round ${round}: bare ${b.rps.toFixed(0)} req/s, naive Redis ${n.rps.toFixed(0)} req/s, single ${s.rps.toFixed(0)} req/s, batch ${(m.rps * batchSize).toFixed(0)} events/s\n`)
  }
} finally {
  check.disconnect()
  for (const replica of replicas) await stopProcess(replica)
  await stopProcess(redis)
}

const bare = median(samples.bare)
const singleRps = median(samples.single)
const batchEps = median(samples.batch)
const fmt = (n: number): string => Math.round(n).toLocaleString('en-US')
process.stdout.write(`\nbench/ingest — ${rounds} rounds × ${duration} s, ${connections} connections, batch of ${batchSize}, BUSGATE_REDIS_WAIT_REPLICAS=${waitReplicas}, ${streamCount} streams open${streamCount > 0 ? ` (shared history ${process.env.BUSGATE_SSE_SHARED_HISTORY === 'false' ? 'off' : 'on'})` : ''}, medians\n\n`)
process.stdout.write(table([
  ['path', 'rate', 'p99 latency', 'baseline', 'ratio', 'target'],
  ['bare Fastify route (baseline)', `${fmt(bare)} req/s`, `${median(samples.bareP99)} ms`, '', '', ''],
  ['POST /events', `${fmt(singleRps)} req/s`, `${median(samples.singleP99)} ms`, 'bare route', `${median(samples.singleRatio).toFixed(2)}×`, '≥ 0.75×'],
  ['naive Redis route (baseline)', `${fmt(median(samples.naive))} req/s`, '', '', '', ''],
  ['POST /events', `${fmt(singleRps)} req/s`, `${median(samples.singleP99)} ms`, 'naive Redis route', `${median(samples.naiveRatio).toFixed(2)}×`, '≥ 1.3×'],
  ['POST /events/batch', `${fmt(batchEps)} events/s`, '', 'POST /events', `${median(samples.batchRatio).toFixed(1)}×`, '≥ 10×'],
  ...(samples.streamed.length > 0 ? [[`POST /events, ${streamsRow} streams open`, `${fmt(median(samples.streamed))} req/s`, '', 'bare route', `${median(samples.streamedRatio).toFixed(2)}×`, '']] : [])
]) + '\n')
process.stdout.write('\nratios are medians of the per-round ratios; rates are medians of the rounds\n')
if (samples.cpu.single.length > 0) {
  // What each request cost the machine, server and Redis together: the load generator, the server
  // and Redis share its cores, so this, unlike req/s, hardly moves with how busy the machine is.
  const us = (values: number[]): string => `${median(values).toFixed(1)} µs`
  process.stdout.write('\nCPU per accepted request (server process + Redis, from /proc), medians of the rounds\n\n')
  process.stdout.write(table([
    ['path', 'CPU per request', 'bare route ÷ this'],
    ['bare Fastify route', us(samples.cpu.bare), ''],
    ['naive Redis route', us(samples.cpu.naive), `${(median(samples.cpu.bare) / median(samples.cpu.naive)).toFixed(2)}×`],
    ['POST /events', us(samples.cpu.single), `${(median(samples.cpu.bare) / median(samples.cpu.single)).toFixed(2)}×`]
  ]) + '\n')
  process.stdout.write(`rounds (µs): bare ${samples.cpu.bare.map((v) => v.toFixed(1)).join(', ')}; naive ${samples.cpu.naive.map((v) => v.toFixed(1)).join(', ')}; single ${samples.cpu.single.map((v) => v.toFixed(1)).join(', ')}\n`)
}
process.stdout.write(`rounds: bare ${samples.bare.map(fmt).join(', ')}; naive ${samples.naive.map(fmt).join(', ')}; streamed ${samples.streamed.map(fmt).join(', ')}; single ${samples.single.map(fmt).join(', ')}; batch ${samples.batch.map(fmt).join(', ')}\n`)
process.stdout.write(`per-round ratios: single/bare ${samples.singleRatio.map((r) => r.toFixed(2)).join(', ')}; single/naive ${samples.naiveRatio.map((r) => r.toFixed(2)).join(', ')}; batch/single ${samples.batchRatio.map((r) => r.toFixed(1)).join(', ')}\n`)
