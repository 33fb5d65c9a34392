import { spawn, type ChildProcess } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { startReceiver } from '../helpers/receiver.js'
import { freePort, startRedis } from '../helpers/redis.js'
import { until } from '../helpers/wait.js'
import { readyBatch } from '../../src/webhooks/delivery-lane.js'

/** deliveries in flight per instance */
const CONCURRENCY = 4
/** the most a kill -9 can make an instance (one lane) deliver twice: in flight, and done but not yet acknowledged (see DeliveryLane) */
const RESENT_MAX = CONCURRENCY + readyBatch(CONCURRENCY)
const SERVER = new URL('../../src/server.ts', import.meta.url).pathname

async function gateway (t: { teardown: (fn: () => unknown) => void }, redisUrl: string): Promise<{ proc: ChildProcess, base: string }> {
  const port = await freePort()
  const proc = spawn(process.execPath, ['--import', 'tsx', SERVER], {
    env: {
      ...process.env,
      PORT: String(port),
      REDIS_URL: redisUrl,
      BUSGATE_WEBHOOK_ALLOW_PRIVATE: 'true',
      BUSGATE_INSTANCE_TTL_MS: '1000',
      BUSGATE_WEBHOOK_CONCURRENCY: String(CONCURRENCY),
      BUSGATE_WEBHOOK_BACKOFF_MS: '50',
      LOG_LEVEL: 'warn'
    },
    stdio: ['ignore', 'ignore', 'inherit']
  })
  t.teardown(() => { if (proc.exitCode === null) proc.kill('SIGKILL') })
  const base = `http://127.0.0.1:${port}`
  for (let i = 0; i < 200; i++) {
    try {
      if ((await fetch(`${base}/healthz`)).ok) return { proc, base }
    } catch {}
    await sleep(50)
  }
  throw new Error('gateway did not start')
}

t.test('two instances on one Redis: every message delivered, spread round-robin; kill -9 of one loses nothing', async (t) => {
  const redis = await startRedis(t)
  // Slow enough answers that the killed instance is holding messages when it dies.
  const slow = () => ({ status: 200, delayMs: 20 })
  const one = await startReceiver(t, slow)
  const two = await startReceiver(t, slow)
  const a = await gateway(t, redis.url)
  const b = await gateway(t, redis.url)
  for (const url of [one.url, two.url]) {
    const res = await fetch(`${a.base}/webhooks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ url }) })
    t.equal(res.status, 201)
  }
  await sleep(1200) // both instances have read the registry

  const total = 600
  for (let i = 0; i < total; i += 100) {
    const events = Array.from({ length: 100 }, (_, k) => ({ event_name: 'numbered', args: [i + k] }))
    const res = await fetch(`${a.base}/events/batch`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(events) })
    t.equal(res.status, 202)
  }
  const all = () => [...one.received, ...two.received]
  await until(() => all().length >= total / 4)
  const instancesSeen = new Set(all().map((r) => String(r.headers['webhook-id']).slice(4, 16)))
  t.equal(instancesSeen.size, 2, 'both instances were delivering')
  const held = async (): Promise<number> => {
    let n = 0
    for (const key of await redis.client.keys('busgate:processing:*')) n += await redis.client.llen(key)
    return n
  }
  let holding = 0
  for (let i = 0; i < 100 && holding === 0; i++) holding = await held()
  t.ok(holding > 0, `messages were held in processing lists when the kill came (${holding})`)
  b.proc.kill('SIGKILL')

  const seqs = () => new Set(all().map((r) => r.json.args[0] as number))
  await until(() => seqs().size >= total, 30_000)
  t.equal(seqs().size, total, 'every message delivered at least once')
  const duplicates = all().length - seqs().size
  // What the killed instance had in flight or done but not yet acknowledged (its acks go with
  // its next claim) is sent again: never more than its deliveries in flight and one batch.
  t.ok(duplicates <= RESENT_MAX, `duplicates only where the crash forced them (${duplicates}, at most ${RESENT_MAX})`)
  t.ok(one.received.length > total * 0.3 && two.received.length > total * 0.3, `spread: ${one.received.length} / ${two.received.length}`)
  t.equal(await redis.client.llen('events.prodcons'), 0, 'the list is empty')
  await until(() => false, 500)
  for (const key of await redis.client.keys('busgate:processing:*')) t.equal(await redis.client.llen(key), 0, `${key} empty`)
  a.proc.kill('SIGTERM')
})

t.test('a subscriber webhook beside a Python-like manager: copies once per event across two instances; kill -9 of one loses none', async (t) => {
  const redis = await startRedis(t)
  const receiver = await startReceiver(t, () => ({ status: 200, delayMs: 20 }))
  const a = await gateway(t, redis.url)
  const b = await gateway(t, redis.url)
  const res = await fetch(`${a.base}/webhooks`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ url: receiver.url, event_names: ['kernel_*'], role: 'subscriber' })
  })
  t.equal(res.status, 201)
  await until(async () => (await redis.client.pubsub('NUMSUB', 'events.pubsub'))[1] === 2, 3000)
  const { encode } = await import('@msgpack/msgpack')
  const total = 300
  for (let i = 0; i < total; i++) {
    // As a Backend.AI agent produces: one copy published, one pushed for the managers.
    const frame = Buffer.from(encode({ event_name: i % 3 === 0 ? 'session_started' : 'kernel_started', agent_id: 'i-a', args: [i] }))
    await redis.client.multi().publish('events.pubsub', frame).rpush('events.prodcons', frame).exec()
  }
  const wanted = Array.from({ length: total }, (_, i) => i).filter((i) => i % 3 !== 0)
  await until(() => receiver.received.length >= wanted.length / 3)
  b.proc.kill('SIGKILL')
  const seen = () => new Set(receiver.received.map((r) => r.json.args[0] as number))
  await until(() => seen().size >= wanted.length, 30_000)
  t.same([...seen()].sort((x, y) => x - y), wanted, 'every kernel event reached the subscriber, none other')
  const duplicates = receiver.received.length - seen().size
  t.ok(duplicates <= RESENT_MAX, `duplicates only where the kill forced them (${duplicates}, at most ${RESENT_MAX})`)
  t.equal(await redis.client.llen('events.prodcons'), total, 'the consumer list is the managers\', untouched')
  a.proc.kill('SIGTERM')
})
