/**
 * bench/fanout: SSE fan-out of the gateway against a bare node:http server that writes one
 * pre-framed buffer to every socket (bench/fanout-baseline.ts), both fed by Redis pub/sub.
 * Each round, for each server: 1,000 streams × 100 msg/s (publish-to-receive latency, loss),
 * then a fresh server with 10,000 idle streams (RSS per stream, all held), then a fresh server
 * with 1,000 streams that never read and one that does while 60,000 events are published at
 * once (the slowest /healthz answer meanwhile).
 * Targets: no loss, p99 ≤ 1.3× the baseline's; ≤ 16 KB RSS per idle client; 10,000 held;
 * /healthz prompt through the burst (≤ 1 s).
 *
 *   npm run bench:fanout -- [--rounds 5] [--clients 1000] [--rate 100] [--seconds 10] [--idle 10000] [--hold 10]
 *                           [--burst-clients 1000] [--burst-events 60000]
 */
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { freePort, median, startProcess, stopProcess, table } from './lib.js'

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    clients: { type: 'string', default: '1000' },
    rate: { type: 'string', default: '100' },
    seconds: { type: 'string', default: '10' },
    idle: { type: 'string', default: '10000' },
    hold: { type: 'string', default: '10' },
    'burst-clients': { type: 'string', default: '1000' },
    'burst-events': { type: 'string', default: '60000' }
  }
})
const root = new URL('..', import.meta.url).pathname
const tsx = ['--import', 'tsx']

function rssBytes (pid: number): number {
  const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]
  return Number(kb) * 1024
}

async function startServer (kind: 'baseline' | 'gateway', redisUrl: string) {
  const port = await freePort()
  const proc = kind === 'baseline'
    ? await startProcess(process.execPath, [...tsx, `${root}bench/fanout-baseline.ts`], { PORT: String(port), REDIS_URL: redisUrl }, 'Server listening')
    : await startProcess(process.execPath, [`${root}dist/src/server.js`], {
      PORT: String(port), REDIS_URL: redisUrl, BUSGATE_SSE_HEARTBEAT_MS: '5000'
    }, 'Server listening')
  return { proc, url: `http://127.0.0.1:${port}/events/stream` }
}

/** Runs the client and hands each JSON line it prints to `onLine`, in order. */
async function runClient (args: string[], onLine: (line: Record<string, number>) => Promise<void> | void): Promise<void> {
  const child = spawn(process.execPath, [...tsx, `${root}bench/fanout-client.ts`, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
  const lines = createInterface({ input: child.stdout })
  for await (const line of lines) await onLine(JSON.parse(line) as Record<string, number>)
  if (child.exitCode === null) await new Promise((resolve) => child.once('exit', resolve))
  if (child.exitCode !== 0) throw new Error(`fanout-client exited with ${child.exitCode}`)
}

interface ActiveResult { p50: number, p99: number, lost: number, outOfOrder: number, disconnected: number }
interface IdleResult { rssPerClient: number, held: number, connected: number }
interface BurstResult { burstHealthMs: number, burstDrainedMs: number, burstReceived: number, burstCut: number, burstPeakRss: number }
type RoundResult = ActiveResult & IdleResult & BurstResult

async function measure (kind: 'baseline' | 'gateway', redisUrl: string): Promise<RoundResult> {
  const result = {} as RoundResult
  const active = await startServer(kind, redisUrl)
  await runClient(['active', active.url, redisUrl, values.clients!, values.rate!, values.seconds!], (line) => {
    Object.assign(result, { p50: line.p50, p99: line.p99, lost: line.lost, outOfOrder: line.outOfOrder, disconnected: line.disconnected })
  })
  await stopProcess(active.proc)

  const idle = await startServer(kind, redisUrl)
  // Warm the server's code paths so the RSS difference is the streams, not the first request.
  await runClient(['idle', idle.url, '200', '0'], () => {})
  await sleep(1000)
  const before = rssBytes(idle.proc.pid!)
  let after = before
  await runClient(['idle', idle.url, values.idle!, values.hold!], async (line) => {
    if (line.connected !== undefined) {
      result.connected = line.connected
      await sleep(3000)
      after = rssBytes(idle.proc.pid!)
    } else {
      result.held = line.held ?? 0
    }
  })
  result.rssPerClient = (after - before) / Number(values.idle)
  await stopProcess(idle.proc)

  const burst = await startServer(kind, redisUrl)
  let peak = 0
  const sampler = setInterval(() => { try { peak = Math.max(peak, rssBytes(burst.proc.pid!)) } catch {} }, 100)
  await runClient(['burst', burst.url, redisUrl, values['burst-clients']!, values['burst-events']!], (line) => {
    Object.assign(result, { burstHealthMs: line.slowestHealthMs, burstDrainedMs: line.drainedMs, burstReceived: line.received, burstCut: line.stuckCut })
  })
  clearInterval(sampler)
  result.burstPeakRss = peak
  await stopProcess(burst.proc)
  return result
}

const redisPort = await freePort()
const redis = await startProcess('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {}, 'Ready to accept connections')
const redisUrl = `redis://127.0.0.1:${redisPort}`
const rounds: Array<{ baseline: RoundResult, gateway: RoundResult }> = []
try {
  for (let round = 1; round <= Number(values.rounds); round++) {
    const baseline = await measure('baseline', redisUrl)
    const gateway = await measure('gateway', redisUrl)
    rounds.push({ baseline, gateway })
    process.stderr.write(`round ${round}: baseline ${JSON.stringify(baseline)}\n         gateway  ${JSON.stringify(gateway)}\n`)
  }
} finally {
  await stopProcess(redis)
}

const med = (pick: (r: { baseline: RoundResult, gateway: RoundResult }) => number): number => median(rounds.map(pick))
const ms = (n: number): string => `${n.toFixed(2)} ms`
const kb = (n: number): string => `${(n / 1024).toFixed(1)} KB`
const active = `${values.clients} clients × ${values.rate} msg/s × ${values.seconds} s`
process.stdout.write(`\nbench/fanout — ${rounds.length} rounds, medians; active: ${active}; idle: ${values.idle} streams held ${values.hold} s\n\n`)
process.stdout.write(table([
  ['measure', 'baseline (node:http)', 'gateway', 'ratio', 'target'],
  ['p50 publish→receive', ms(med((r) => r.baseline.p50)), ms(med((r) => r.gateway.p50)), `${med((r) => r.gateway.p50 / r.baseline.p50).toFixed(2)}×`, ''],
  ['p99 publish→receive', ms(med((r) => r.baseline.p99)), ms(med((r) => r.gateway.p99)), `${med((r) => r.gateway.p99 / r.baseline.p99).toFixed(2)}×`, '≤ 1.3×'],
  ['events lost (all rounds)', String(rounds.reduce((s, r) => s + r.baseline.lost, 0)), String(rounds.reduce((s, r) => s + r.gateway.lost, 0)), '', '0'],
  ['out of order / disconnected', `${rounds.reduce((s, r) => s + r.baseline.outOfOrder + r.baseline.disconnected, 0)}`,
    `${rounds.reduce((s, r) => s + r.gateway.outOfOrder + r.gateway.disconnected, 0)}`, '', '0'],
  ['RSS per idle stream', kb(med((r) => r.baseline.rssPerClient)), kb(med((r) => r.gateway.rssPerClient)), '', '≤ 16 KB'],
  [`idle streams held (of ${values.idle})`, String(Math.min(...rounds.map((r) => r.baseline.held))), String(Math.min(...rounds.map((r) => r.gateway.held))), '', values.idle!],
  [`burst: slowest /healthz (${values['burst-events']} events, ${values['burst-clients']} stuck streams)`, ms(med((r) => r.baseline.burstHealthMs)),
    ms(med((r) => r.gateway.burstHealthMs)), `${med((r) => r.gateway.burstHealthMs / r.baseline.burstHealthMs).toFixed(2)}×`, '≤ 1 s'],
  ['burst: reading stream got all, after', ms(med((r) => r.baseline.burstDrainedMs)), ms(med((r) => r.gateway.burstDrainedMs)), '', ''],
  ['burst: events the reading stream missed (all rounds)', String(rounds.reduce((s, r) => s + Number(values['burst-events']) - r.baseline.burstReceived, 0)),
    String(rounds.reduce((s, r) => s + Number(values['burst-events']) - r.gateway.burstReceived, 0)), '', '0'],
  ['burst: stuck streams cut', String(med((r) => r.baseline.burstCut)), String(med((r) => r.gateway.burstCut)), '', ''],
  ['burst: peak RSS', kb(med((r) => r.baseline.burstPeakRss)), kb(med((r) => r.gateway.burstPeakRss)), '', '']
]) + '\n')
process.stdout.write(`per-round p99 ratios: ${rounds.map((r) => (r.gateway.p99 / r.baseline.p99).toFixed(2)).join(', ')}\n`)
