/**
 * bench/webhooks, in two parts (both by default; `--part throughput` or `--part latency` runs one):
 *
 * throughput: deliveries/s from the consumer list to a local receiver that answers at once, the
 * gateway's dispatcher against bare loops (BLMOVE -> undici POST -> LREM) with as many loops, in
 * the same run. Each run preloads N msgpack events into Redis, starts the consumer, and times
 * from the first delivery until the receiver has counted them all. Target: gateway >= 0.8x the bare loops.
 *
 * latency: the receiver answers each delivery after --latency-ms, and the gateway runs with
 * BUSGATE_WEBHOOK_CONCURRENCY=--in-flight, so at most in-flight / latency deliveries/s are
 * possible (500 / 0.2 s = 2,500/s). Each run preloads --latency-messages events (in-flight x 20
 * by default) and measures deliveries/s at the receiver between its 10% and 90% answers (the
 * ramp-up and the drain left out), by the receiver's own clock. Target: gateway >= 0.8x that
 * limit. In the same round a bare undici client keeping in-flight POSTs open to the same delayed
 * receiver shows what the machine and the receiver allow. While the gateway runs, CLIENT LIST
 * on the benchmark's own redis-server counts its connections (named busgate:<role>): the bar is
 * <= 8 per instance, while it delivers and once it is idle (the run goes on 2 s after the last
 * answer). --take sets BUSGATE_WEBHOOK_TAKE for the latency run (`all` makes the claims block in
 * Redis, BLMOVE, which needs connections of its own; unset, the gateway's default, `matching`).
 *
 *   npm run bench:webhooks -- [--part both|throughput|latency] [--rounds 5]
 *     [--messages 20000] [--loops 8]
 *     [--latency-ms 200] [--in-flight 500] [--latency-messages <in-flight x 20>] [--max-seconds 120] [--take matching|all]
 */
import { parseArgs } from 'node:util'
import { encode } from '@msgpack/msgpack'
import { Redis } from 'ioredis'
import { setTimeout as sleep } from 'node:timers/promises'
import { freePort, median, startProcess, stopProcess, table } from './lib.js'

const { values } = parseArgs({
  options: {
    part: { type: 'string', default: 'both' },
    rounds: { type: 'string', default: '5' },
    messages: { type: 'string', default: '20000' },
    loops: { type: 'string', default: '8' },
    'latency-ms': { type: 'string', default: '200' },
    'in-flight': { type: 'string', default: '500' },
    'latency-messages': { type: 'string' },
    'max-seconds': { type: 'string', default: '120' },
    take: { type: 'string' }
  }
})
const PARTS = ['both', 'throughput', 'latency']
if (!PARTS.includes(values.part)) throw new Error(`--part must be one of ${PARTS.join(', ')}, got "${values.part}"`)
const rounds = Number(values.rounds)
const messages = Number(values.messages)
const loops = Number(values.loops)
const latencyMs = Number(values['latency-ms'])
const inFlight = Number(values['in-flight'])
const latencyMessages = Number(values['latency-messages'] ?? inFlight * 20)
const maxSeconds = Number(values['max-seconds'])
for (const [name, n] of Object.entries({ rounds, messages, loops, 'latency-ms': latencyMs, 'in-flight': inFlight, 'latency-messages': latencyMessages, 'max-seconds': maxSeconds })) {
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got ${n}`)
}
const root = new URL('..', import.meta.url).pathname
const fmt = (n: number): string => Math.round(n).toLocaleString('en-US')

const redisPort = await freePort()
const redisUrl = `redis://127.0.0.1:${redisPort}`
const redis = await startProcess('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--maxclients', '20000'], {}, 'Ready to accept connections')
// Named, so that the connection count leaves it out.
const BENCH_CLIENT = 'bench'
const client = new Redis(redisUrl, { connectionName: BENCH_CLIENT })

async function preload (n: number): Promise<void> {
  await client.flushall()
  for (let i = 0; i < n; i += 1000) {
    const frames = Array.from({ length: Math.min(1000, n - i) }, (_, k) =>
      Buffer.from(encode({ event_name: 'kernel_started', agent_id: 'i-ag01', args: [i + k, '6f0c9a3e-3f4e-4b3a-9d4c-2a7c1f0e5b11'] })))
    await client.rpush('events.prodcons', ...frames)
  }
}

async function startReceiver (delayMs: number): Promise<{ port: number, url: string, stop: () => Promise<void> }> {
  const port = await freePort()
  const proc = await startProcess(process.execPath, ['--import', 'tsx', `${root}bench/webhooks-receiver.ts`], { PORT: String(port), DELAY_MS: String(delayMs) }, 'Server listening')
  return { port, url: `http://127.0.0.1:${port}/hook`, stop: async () => { await stopProcess(proc) } }
}

/** The gateway with one consumer webhook to `receiverUrl`, registered before it starts taking: straight into the registry. */
async function startGateway (receiverUrl: string, concurrency: number, env: Record<string, string> = {}): Promise<() => Promise<void>> {
  const port = await freePort()
  const proc = await startProcess(process.execPath, [`${root}dist/src/server.js`], {
    PORT: String(port), REDIS_URL: redisUrl, BUSGATE_WEBHOOK_ALLOW_PRIVATE: 'true', BUSGATE_WEBHOOK_CONCURRENCY: String(concurrency), ...env
  }, 'Server listening')
  const res = await fetch(`http://127.0.0.1:${port}/webhooks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ url: receiverUrl }) })
  if (res.status !== 201) {
    await stopProcess(proc)
    throw new Error(await res.text())
  }
  return async () => { await stopProcess(proc) }
}

// ---------------------------------------------------------------------------------------------
// throughput: the gateway against bare loops, to a receiver that answers at once

/** Deliveries per second once the consumer is delivering: start-up (process, registry) is not counted. */
async function timeDrain (receiverPort: number, startConsumer: () => Promise<() => Promise<void>>): Promise<number> {
  await preload(messages)
  const stop = await startConsumer()
  const count = async (): Promise<number> => Number(await (await fetch(`http://127.0.0.1:${receiverPort}/`)).text())
  const deadline = performance.now() + 300_000
  let first = 0
  while ((first = await count()) === 0) {
    if (performance.now() > deadline) throw new Error('nothing delivered')
    await sleep(5)
  }
  const started = performance.now()
  let delivered = first
  while (delivered < messages) {
    await sleep(20)
    delivered = await count()
    if (performance.now() > deadline) throw new Error(`only ${delivered} of ${messages} delivered`)
  }
  const seconds = (performance.now() - started) / 1000
  await stop()
  return (messages - first) / seconds
}

async function throughputPart (): Promise<void> {
  const samples = { baseline: [] as number[], gateway: [] as number[], ratio: [] as number[] }
  for (let round = 1; round <= rounds; round++) {
    const results: Record<string, number> = {}
    for (const kind of ['baseline', 'gateway'] as const) {
      const receiver = await startReceiver(0)
      results[kind] = await timeDrain(receiver.port, async () => {
        if (kind === 'baseline') {
          const proc = await startProcess(process.execPath, ['--import', 'tsx', `${root}bench/webhooks-baseline.ts`], { REDIS_URL: redisUrl, RECEIVER_URL: receiver.url, LOOPS: String(loops) }, 'Server listening')
          return async () => { await stopProcess(proc) }
        }
        return await startGateway(receiver.url, loops)
      })
      await receiver.stop()
    }
    samples.baseline.push(results.baseline!)
    samples.gateway.push(results.gateway!)
    samples.ratio.push(results.gateway! / results.baseline!)
    process.stderr.write(`round ${round}: baseline ${results.baseline!.toFixed(0)}/s, gateway ${results.gateway!.toFixed(0)}/s\n`)
  }
  process.stdout.write(`\nbench/webhooks — ${rounds} rounds, ${messages} messages, ${loops} loops each, medians\n\n`)
  process.stdout.write(table([
    ['consumer', 'deliveries/s', 'ratio', 'target'],
    ['bare loops (BLMOVE → POST → LREM)', fmt(median(samples.baseline)), '', ''],
    ['gateway dispatcher', fmt(median(samples.gateway)), `${median(samples.ratio).toFixed(2)}×`, '≥ 0.8×']
  ]) + '\n')
  process.stdout.write(`per-round ratios: ${samples.ratio.map((r) => r.toFixed(2)).join(', ')}\n`)
}

// ---------------------------------------------------------------------------------------------
// latency: deliveries in flight to a receiver that answers late, and the gateway's Redis connections

interface ReceiverStats { count: number, inFlight: number, maxInFlight: number, sockets: number, maxSockets: number }

interface LatencyRun {
  /** deliveries/s between the window's first and last answer, by the receiver's clock */
  rate: number
  /** the most requests the receiver held unanswered at once, and the most sockets open to it */
  maxInFlight: number
  maxSockets: number
  /** set when --max-seconds ended the window before its last answer */
  cut?: string
}

async function receiverStats (port: number): Promise<ReceiverStats> {
  return await (await fetch(`http://127.0.0.1:${port}/stats`)).json() as ReceiverStats
}

async function answeredAt (port: number, n: number): Promise<number> {
  return ((await (await fetch(`http://127.0.0.1:${port}/at?n=${n}`)).json()) as { ms: number }).ms
}

/**
 * Preloads the messages, starts the sender, and waits until the receiver has answered 90% of
 * them (or --max-seconds passed). The rate is taken between the 10% and the 90% answer: the
 * sender is then at its steady pace, every slot in flight and the list not yet empty. With
 * `idle`, it is called then, and the run goes on until every message is answered and IDLE_MS
 * more, so that what the sender opens once it has nothing to do is seen too.
 */
async function timeLatencyRun (receiverPort: number, startSender: () => Promise<() => Promise<void>>, idle?: () => void): Promise<LatencyRun> {
  await preload(latencyMessages)
  const stop = await startSender()
  try {
    const from = Math.max(1, Math.floor(latencyMessages * 0.1))
    const to = Math.max(from + 1, Math.ceil(latencyMessages * 0.9))
    const deadline = performance.now() + maxSeconds * 1000
    const waitFor = async (n: number): Promise<ReceiverStats> => {
      let stats = await receiverStats(receiverPort)
      while (stats.count < n && performance.now() < deadline) {
        await sleep(50)
        stats = await receiverStats(receiverPort)
      }
      return stats
    }
    const stats = await waitFor(to)
    let last = to
    let cut: string | undefined
    if (stats.count < to) {
      if (stats.count <= from) throw new Error(`only ${stats.count} of ${latencyMessages} answered in ${maxSeconds} s`)
      last = stats.count
      cut = `window cut at --max-seconds ${maxSeconds}: ${stats.count} of ${latencyMessages} answered`
    }
    const seconds = (await answeredAt(receiverPort, last) - await answeredAt(receiverPort, from)) / 1000
    const run = { rate: (last - from) / seconds, maxInFlight: stats.maxInFlight, maxSockets: stats.maxSockets, cut }
    if (idle !== undefined) {
      idle()
      await waitFor(latencyMessages)
      await sleep(IDLE_MS)
    }
    return run
  } finally {
    await stop()
  }
}

/** How long the gateway is watched once every message was answered: its idle loops back off their looks up to 10 x BUSGATE_WEBHOOK_POLL_MS (1 s by default). */
const IDLE_MS = 2000

interface ConnectionCount {
  /** the most connections named busgate:* seen at once, and how they were split by role then */
  busgate: number
  roles: string
  /** the most clients of any name seen at once, the benchmark's own left out */
  total: number
}

type Phase = 'delivering' | 'idle'

/**
 * Polls CLIENT LIST every 100 ms until stopped, keeping the most connections seen while the
 * gateway delivers (from its start to the window's end) and once it has run out of work.
 */
class ConnectionWatch {
  phase: Phase = 'delivering'
  readonly seen: Record<Phase, ConnectionCount> = {
    delivering: { busgate: 0, roles: '', total: 0 },
    idle: { busgate: 0, roles: '', total: 0 }
  }

  #stopped = false
  readonly #poll: Promise<void>

  constructor () {
    this.#poll = this.#run()
  }

  async #run (): Promise<void> {
    while (!this.#stopped) {
      const list = String(await client.client('LIST'))
      const roles = new Map<string, number>()
      let busgate = 0
      let total = 0
      for (const line of list.split('\n')) {
        if (line.trim() === '') continue
        const name = /(?:^| )name=(\S*)/.exec(line)?.[1] ?? ''
        if (name === BENCH_CLIENT) continue
        total++
        if (!name.startsWith('busgate:')) continue
        busgate++
        const role = name.slice('busgate:'.length)
        roles.set(role, (roles.get(role) ?? 0) + 1)
      }
      const seen = this.seen[this.phase]
      seen.total = Math.max(seen.total, total)
      if (busgate > seen.busgate) {
        seen.busgate = busgate
        seen.roles = [...roles].sort(([a], [b]) => a.localeCompare(b)).map(([role, n]) => `${role} ×${n}`).join(', ')
      }
      await sleep(100)
    }
  }

  async stop (): Promise<Record<Phase, ConnectionCount>> {
    this.#stopped = true
    await this.#poll
    return this.seen
  }
}

const most = (c: Record<Phase, ConnectionCount>): number => Math.max(c.delivering.busgate, c.idle.busgate)
const describe = (c: ConnectionCount): string => `${c.busgate} busgate:* (${c.roles === '' ? 'none' : c.roles}), ${c.total} in all`

async function latencyPart (): Promise<boolean> {
  const limit = inFlight / (latencyMs / 1000)
  const bare: LatencyRun[] = []
  const gateway: Array<LatencyRun & { connections: Record<Phase, ConnectionCount> }> = []
  let refused: string | undefined
  for (let round = 1; round <= rounds; round++) {
    let receiver = await startReceiver(latencyMs)
    try {
      bare.push(await timeLatencyRun(receiver.port, async () => {
        const proc = await startProcess(process.execPath, ['--import', 'tsx', `${root}bench/webhooks-latency-baseline.ts`],
          { RECEIVER_URL: receiver.url, IN_FLIGHT: String(inFlight), TOTAL: String(latencyMessages) }, 'Server listening')
        return async () => { await stopProcess(proc) }
      }))
    } finally {
      await receiver.stop()
    }
    const b = bare.at(-1)!
    let line = `latency round ${round}: bare undici ${fmt(b.rate)}/s (${(b.rate / limit).toFixed(2)}×, receiver held ${b.maxInFlight} at once)`
    if (refused === undefined) {
      receiver = await startReceiver(latencyMs)
      let watch: ConnectionWatch | undefined
      try {
        const run = await timeLatencyRun(receiver.port, async () => {
          watch = new ConnectionWatch()
          try {
            return await startGateway(receiver.url, inFlight, values.take === undefined ? {} : { BUSGATE_WEBHOOK_TAKE: values.take })
          } catch (err) {
            // The gateway's own words when it refuses its configuration ("busgate: BUSGATE_…: …").
            const words = /busgate: (BUSGATE_\w+: .*)/.exec((err as Error).message)?.[1]
            if (words !== undefined) refused = words
            throw err
          }
        }, () => { watch!.phase = 'idle' })
        const connections = await watch!.stop()
        gateway.push({ ...run, connections })
        line += `, gateway ${fmt(run.rate)}/s (${(run.rate / limit).toFixed(2)}×, receiver held ${run.maxInFlight} at once); ` +
          `Redis connections max while delivering ${describe(connections.delivering)}, once idle ${describe(connections.idle)}` +
          (run.cut === undefined ? '' : ` [${run.cut}]`)
      } catch (err) {
        await watch?.stop()
        if (refused === undefined) throw err
      } finally {
        await receiver.stop()
      }
      if (refused !== undefined) line += `, gateway refused: ${refused}`
    }
    process.stderr.write(`${line}\n`)
  }

  const ratio = (runs: LatencyRun[]): string => `${(median(runs.map((r) => r.rate)) / limit).toFixed(2)}×`
  process.stdout.write(`\nbench/webhooks latency — ${rounds} rounds, receiver answers after ${latencyMs} ms, ${inFlight} in flight ` +
    `(BUSGATE_WEBHOOK_CONCURRENCY=${inFlight}${values.take === undefined ? '' : `, BUSGATE_WEBHOOK_TAKE=${values.take}`}), ${latencyMessages} messages, rate between the 10% and 90% answers, medians\n\n`)
  // The gateway against the bare client of the same round, for a machine too busy to reach the limit.
  const versusBare = gateway.map((g, i) => g.rate / bare[i]!.rate)
  const rows = [
    ['sender', 'deliveries/s', 'ratio to limit', 'target', 'vs bare undici'],
    [`limit: in-flight / latency (${inFlight} / ${latencyMs / 1000} s)`, fmt(limit), '1.00×', '', ''],
    [`bare undici, ${inFlight} concurrent POSTs`, fmt(median(bare.map((r) => r.rate))), ratio(bare), '', '']
  ]
  if (refused !== undefined) rows.push(['gateway dispatcher', 'refused', '', '≥ 0.8×', ''])
  else rows.push(['gateway dispatcher', fmt(median(gateway.map((r) => r.rate))), ratio(gateway), '≥ 0.8×', `${median(versusBare).toFixed(2)}×`])
  process.stdout.write(table(rows) + '\n')
  if (refused !== undefined) {
    process.stdout.write(`\nthe gateway refused BUSGATE_WEBHOOK_CONCURRENCY=${inFlight}: ${refused}\n` +
      '(a dispatcher that does not take that many in flight yet: try a smaller --in-flight)\n')
    return false
  }
  const worst = gateway.reduce((a, b) => (most(b.connections) > most(a.connections) ? b : a)).connections
  const total = (phase: Phase): string => String(Math.max(...gateway.map((r) => r.connections[phase].total)))
  process.stdout.write('\n' + table([
    ["gateway's Redis connections (CLIENT LIST, max seen)", 'delivering', 'idle', 'bar'],
    ['named busgate:*', String(worst.delivering.busgate), String(worst.idle.busgate), '≤ 8'],
    ['all clients (the benchmark\'s own left out)', total('delivering'), total('idle'), '']
  ]) + '\n')
  process.stdout.write(`roles at the max: delivering ${worst.delivering.roles === '' ? 'none' : worst.delivering.roles}; idle ${worst.idle.roles === '' ? 'none' : worst.idle.roles}\n`)
  process.stdout.write(`per-round ratios to the limit: gateway ${gateway.map((r) => (r.rate / limit).toFixed(2)).join(', ')}; ` +
    `bare undici ${bare.map((r) => (r.rate / limit).toFixed(2)).join(', ')}; gateway vs bare ${versusBare.map((r) => r.toFixed(2)).join(', ')}\n`)
  process.stdout.write(`per-round busgate:* connections (delivering/idle): ${gateway.map((r) => `${r.connections.delivering.busgate}/${r.connections.idle.busgate}`).join(', ')}\n`)
  process.stdout.write(`most requests the receiver held at once: gateway ${gateway.map((r) => r.maxInFlight).join(', ')}; ` +
    `bare undici ${bare.map((r) => r.maxInFlight).join(', ')} (sockets open to it, the benchmark's own included: gateway ${gateway.map((r) => r.maxSockets).join(', ')})\n`)
  for (const [round, run] of gateway.entries()) if (run.cut !== undefined) process.stdout.write(`round ${round + 1}: ${run.cut}\n`)
  return true
}

let ok = true
try {
  if (values.part !== 'latency') await throughputPart()
  if (values.part !== 'throughput') ok = await latencyPart()
} finally {
  client.disconnect()
  await stopProcess(redis)
}
if (!ok) process.exitCode = 1
