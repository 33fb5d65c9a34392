/**
 * bench/webhooks: deliveries/s from the consumer list to a local receiver, the gateway's
 * dispatcher against bare loops (BLMOVE -> undici POST -> LREM) with as many loops, in the
 * same run. Each run preloads N msgpack events into Redis, starts the consumer, and times
 * from the first delivery until the receiver has counted them all. Target: gateway >= 0.8x the bare loops.
 *
 *   npm run bench:webhooks -- [--rounds 5] [--messages 20000] [--loops 8]
 */
import { parseArgs } from 'node:util'
import { encode } from '@msgpack/msgpack'
import { Redis } from 'ioredis'
import { setTimeout as sleep } from 'node:timers/promises'
import { freePort, median, startProcess, stopProcess, table } from './lib.js'

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    messages: { type: 'string', default: '20000' },
    loops: { type: 'string', default: '8' }
  }
})
const rounds = Number(values.rounds)
const messages = Number(values.messages)
const loops = Number(values.loops)
const root = new URL('..', import.meta.url).pathname

const redisPort = await freePort()
const redisUrl = `redis://127.0.0.1:${redisPort}`
const redis = await startProcess('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {}, 'Ready to accept connections')
const client = new Redis(redisUrl)

async function preload (): Promise<void> {
  await client.flushall()
  for (let i = 0; i < messages; i += 1000) {
    const frames = Array.from({ length: Math.min(1000, messages - i) }, (_, k) =>
      Buffer.from(encode({ event_name: 'kernel_started', agent_id: 'i-ag01', args: [i + k, '6f0c9a3e-3f4e-4b3a-9d4c-2a7c1f0e5b11'] })))
    await client.rpush('events.prodcons', ...frames)
  }
}

/** Deliveries per second once the consumer is delivering: start-up (process, registry) is not counted. */
async function timeDrain (receiverPort: number, startConsumer: () => Promise<() => Promise<void>>): Promise<number> {
  await preload()
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

const samples = { baseline: [] as number[], gateway: [] as number[], ratio: [] as number[] }
try {
  for (let round = 1; round <= rounds; round++) {
    const results: Record<string, number> = {}
    for (const kind of ['baseline', 'gateway'] as const) {
      const receiverPort = await freePort()
      const receiver = await startProcess(process.execPath, ['--import', 'tsx', `${root}bench/webhooks-receiver.ts`], { PORT: String(receiverPort) }, 'Server listening')
      const receiverUrl = `http://127.0.0.1:${receiverPort}/hook`
      results[kind] = await timeDrain(receiverPort, async () => {
        if (kind === 'baseline') {
          const proc = await startProcess(process.execPath, ['--import', 'tsx', `${root}bench/webhooks-baseline.ts`], { REDIS_URL: redisUrl, RECEIVER_URL: receiverUrl, LOOPS: String(loops) }, 'Server listening')
          return async () => { await stopProcess(proc) }
        }
        // The webhook is registered before the gateway starts taking: straight into the registry.
        const port = await freePort()
        const proc = await startProcess(process.execPath, [`${root}dist/src/server.js`], {
          PORT: String(port), REDIS_URL: redisUrl, BUSGATE_WEBHOOK_ALLOW_PRIVATE: 'true', BUSGATE_WEBHOOK_CONCURRENCY: String(loops)
        }, 'Server listening')
        const res = await fetch(`http://127.0.0.1:${port}/webhooks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ url: receiverUrl }) })
        if (res.status !== 201) throw new Error(await res.text())
        return async () => { await stopProcess(proc) }
      })
      await stopProcess(receiver)
    }
    samples.baseline.push(results.baseline!)
    samples.gateway.push(results.gateway!)
    samples.ratio.push(results.gateway! / results.baseline!)
    process.stderr.write(`round ${round}: baseline ${results.baseline!.toFixed(0)}/s, gateway ${results.gateway!.toFixed(0)}/s\n`)
  }
} finally {
  client.disconnect()
  await stopProcess(redis)
}
const fmt = (n: number): string => Math.round(n).toLocaleString('en-US')
process.stdout.write(`\nbench/webhooks — ${rounds} rounds, ${messages} messages, ${loops} loops each, medians\n\n`)
process.stdout.write(table([
  ['consumer', 'deliveries/s', 'ratio', 'target'],
  ['bare loops (BLMOVE → POST → LREM)', fmt(median(samples.baseline)), '', ''],
  ['gateway dispatcher', fmt(median(samples.gateway)), `${median(samples.ratio).toFixed(2)}×`, '≥ 0.8×']
]) + '\n')
process.stdout.write(`per-round ratios: ${samples.ratio.map((r) => r.toFixed(2)).join(', ')}\n`)
