import { setTimeout as sleep } from 'node:timers/promises'
import { decode } from '@msgpack/msgpack'
import t from 'tap'
import { listeningApp, testApp } from './helpers/app.js'
import { monitorCommands, startRedis, startSentinel } from './helpers/redis.js'
import { startReceiver } from './helpers/receiver.js'
import { openStream } from './helpers/sse.js'
import { until } from './helpers/wait.js'
import { parseRedisUrl } from '../src/config.js'
import { RedisEngine } from '../src/engines/redis-engine.js'
import { engineContract } from './engines/contract.js'
import { silentLogger } from './helpers/logger.js'

// Backend.AI runs its Redis behind Sentinel: a master, a replica, and sentinels that fail over.
async function cluster (t: Parameters<typeof startRedis>[0], replicas = 1) {
  const master = await startRedis(t)
  const all = []
  for (let i = 0; i < replicas; i++) all.push(await startRedis(t, () => ['--replicaof', '127.0.0.1', String(master.port)]))
  for (const replica of all) await until(async () => /master_link_status:up/.test(await replica.client.info('replication')), 5000)
  const sentinel = await startSentinel(t, master)
  await until(async () => (await sentinel.client.call('SENTINEL', 'REPLICAS', 'mymaster') as unknown[]).length === replicas, 10_000)
  return { master, replica: all[0] as typeof master, replicas: all, sentinel, url: `redis+sentinel://127.0.0.1:${sentinel.port}/mymaster` }
}

// The same suite as on one server: the engine's parts differ only in how connections are made.
t.test('the engine contract, through the sentinels', async (t) => {
  const { url } = await cluster(t, 0)
  engineContract(t, async (names) => new RedisEngine({
    redis: parseRedisUrl(url), ...names, redisTimeoutMs: 2000, memoryQueueMax: 0, memoryQueueMaxBytes: 0
  }, silentLogger()))
})

t.test('through the sentinels to the master; a failover is followed without a restart, each request answered 202 or 503 in bounded time', async (t) => {
  const { master, replica, sentinel, url } = await cluster(t)
  const { app, base } = await listeningApp(t, url, { redisTimeoutMs: 500, webhookAllowPrivate: true, webhookBackoffMs: 50 })
  const receiver = await startReceiver(t)
  t.equal((await app.inject({ method: 'POST', url: '/webhooks', payload: { url: receiver.url, event_names: ['delivered_*'] } })).statusCode, 201)
  const post = async (n: number) => {
    const started = performance.now()
    const res = await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'numbered', args: [n] } })
    return { n, status: res.statusCode, ms: performance.now() - started }
  }
  t.equal((await post(0)).status, 202)
  t.equal(await master.client.llen('events.prodcons'), 1, 'written to the master')
  t.equal((await app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200)
  const stream = await openStream(`${base}/events/stream`)
  t.teardown(() => stream.close())

  t.equal(await sentinel.client.call('SENTINEL', 'FAILOVER', 'mymaster'), 'OK')
  const answers: Array<{ n: number, status: number, ms: number }> = []
  const deadline = performance.now() + 20_000
  let n = 1
  // Until the new master has taken ten in a row. While it is still a replica it holds what the
  // old master took too: only writes once it is the master count.
  const onNewMaster = async (n: number): Promise<boolean> =>
    ((await replica.client.call('ROLE')) as unknown[])[0] === 'master' &&
    (await replica.client.lrangeBuffer('events.prodcons', -20, -1)).some((f) => (decode(f) as { args: number[] }).args[0] === n)
  let streak = 0
  while (performance.now() < deadline && streak < 10) {
    const answer = await post(n++)
    answers.push(answer)
    streak = answer.status === 202 && await onNewMaster(answer.n) ? streak + 1 : 0
    await sleep(20)
  }
  t.ok(answers.every((a) => a.status === 202 || a.status === 503), `202 or 503 only (${[...new Set(answers.map((a) => a.status))].join(', ')})`)
  t.ok(answers.every((a) => a.ms < 3000), `each within the bound (slowest ${Math.max(...answers.map((a) => a.ms)).toFixed(0)} ms)`)
  t.ok(answers.slice(-10).every((a) => a.status === 202), 'and 202s again on their own')
  t.match(await replica.client.call('ROLE') as unknown[], ['master'], 'the replica is the master now')
  // Without BUSGATE_REDIS_WAIT_REPLICAS a write the old master took just before the switch may
  // be lost (replication is asynchronous); what the new master answered is there.
  const kept = new Set((await replica.client.lrangeBuffer('events.prodcons', 0, -1)).map((f) => (decode(f) as { args: number[] }).args[0]))
  t.ok(answers.slice(-10).every((a) => kept.has(a.n)), 'the new master holds what it answered')
  // The stream goes on: a gap once the subscription has moved to the new master, then what it publishes.
  await until(() => stream.events.some((e) => e.event === 'busgate.gap'), 10_000)
  t.match(JSON.parse(stream.events.find((e) => e.event === 'busgate.gap')?.data ?? '{}'), { reason: 'bus_reconnected' }, 'told of the gap')
  const after = Buffer.from([0x83, 0xaa, ...Buffer.from('event_name'), 0xa5, ...Buffer.from('after'),
    0xa8, ...Buffer.from('agent_id'), 0xa1, 0x61, 0xa4, ...Buffer.from('args'), 0x90])
  await until(async () => {
    await replica.client.publish('events.pubsub', after)
    await sleep(100)
    return stream.events.some((e) => e.event === 'after')
  }, 10_000)
  t.ok(stream.events.some((e) => e.event === 'after'), 'the stream hears the new master')
  // Webhook deliveries go on: the dispatcher's connections followed too.
  t.equal((await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'delivered_after' } })).statusCode, 202)
  const got = await receiver.waitFor(1, 10_000)
  t.equal(got[0]?.json.event_name, 'delivered_after', 'a webhook delivery after the failover')
})

t.test('BUSGATE_REDIS_WAIT_REPLICAS=1: a 202 means the replica holds it; with the replica gone, a 503 that says the outcome is unknown', async (t) => {
  const { replica, url } = await cluster(t)
  const app = await testApp(t, url, { redisWaitReplicas: 1, redisWaitTimeoutMs: 300 })
  const res = await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'replicated' } })
  t.equal(res.statusCode, 202)
  t.equal(await replica.client.llen('events.prodcons'), 1, 'on the replica before the answer')
  await replica.kill()
  const started = performance.now()
  const refused = await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'unconfirmed' } })
  t.equal(refused.statusCode, 503)
  t.match(refused.json(), { code: 'BUSGATE_REPLICATION_UNCONFIRMED', message: /0 of the 1 replicas/ })
  t.ok(performance.now() - started < 1500, 'within the wait bound')
})

t.test('BUSGATE_REDIS_WAIT_REPLICAS=1: a produce sent again after NOSCRIPT (SCRIPT FLUSH) is waited for after it is written', async (t) => {
  const { master, replica, url } = await cluster(t)
  const app = await testApp(t, url, { redisWaitReplicas: 1, redisWaitTimeoutMs: 1000 })
  t.equal((await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'first' } })).statusCode, 202)
  await master.client.script('FLUSH')
  const seen: string[] = []
  // The produce script's calls (their key is the list) and the WAITs; the engine's other scripts are left out.
  await monitorCommands(t, master.port, (args) => {
    const name = String(args[0]).toLowerCase()
    if (name === 'wait' || (name.startsWith('eval') && args[3] === 'events.prodcons')) seen.push(name)
  })
  const res = await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'after_flush' } })
  t.equal(res.statusCode, 202)
  t.equal(await replica.client.llen('events.prodcons'), 2, 'on the replica before the answer')
  await until(() => seen.includes('eval'))
  t.same(seen, ['evalsha', 'wait', 'eval', 'wait'], 'refused, sent again with its text, and a WAIT after that')
})

t.test('BUSGATE_REDIS_WAIT_REPLICAS=1: kill -9 of the master under load loses no event answered 202; 202s resume on the new master', async (t) => {
  const { master, replicas, sentinel, url } = await cluster(t, 2)
  const app = await testApp(t, url, { redisWaitReplicas: 1, redisWaitTimeoutMs: 500, redisTimeoutMs: 500 })
  const accepted: number[] = []
  const statuses = new Map<number | string, number>()
  let n = 0
  let killed = false
  const deadline = performance.now() + 30_000
  const worker = async (): Promise<void> => {
    while (performance.now() < deadline) {
      const mine = n++
      const res = await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'numbered', args: [mine] } })
      const key = res.statusCode === 202 ? 202 : `${res.statusCode} ${res.json().code as string}`
      statuses.set(key, (statuses.get(key) ?? 0) + 1)
      if (res.statusCode === 202) accepted.push(mine)
      if (killed && accepted.slice(-20).every((a) => a > killedAt) && accepted.filter((a) => a > killedAt).length >= 20) return
      if (res.statusCode !== 202) await sleep(50)
    }
  }
  let killedAt = Infinity
  const workers = [worker(), worker(), worker(), worker()]
  await until(() => accepted.length >= 200, 10_000)
  killedAt = n
  killed = true
  await master.kill()
  await Promise.all(workers)
  t.ok(accepted.filter((a) => a > killedAt).length >= 20, `202s resumed after the kill (${[...statuses].map(([s, c]) => `${s}: ${c}`).join(', ')})`)
  const [host, port] = await sentinel.client.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', 'mymaster') as [string, string]
  const promoted = replicas.find((r) => r.port === Number(port))
  t.ok(promoted !== undefined, `a replica was promoted (${host}:${port})`)
  const kept = new Set((await promoted!.client.lrangeBuffer('events.prodcons', 0, -1)).map((f) => (decode(f) as { args: number[] }).args[0]))
  const lost = accepted.filter((a) => !kept.has(a))
  t.same(lost, [], `every one of the ${accepted.length} events answered 202 is on the new master`)
})
