import { decode } from '@msgpack/msgpack'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
import t from 'tap'
import { listeningApp } from './helpers/app.js'
import { uniqueNames } from './helpers/bus.js'
import { startReceiver } from './helpers/receiver.js'
import { killConnections, startCluster } from './helpers/redis.js'
import { parseRedisUrl } from '../src/config.js'
import { RedisEngine } from '../src/engines/redis-engine.js'
import { engineContract } from './engines/contract.js'
import { silentLogger } from './helpers/logger.js'
import { openStream } from './helpers/sse.js'
import { until } from './helpers/wait.js'

const cluster = await startCluster(t)

/** The master that holds `key`'s slot. */
async function masterOf (key: string): Promise<Redis> {
  const slot = await cluster.client.call('CLUSTER', 'KEYSLOT', key) as number
  return cluster.client.nodes('master').find((n) => (cluster.client.slots[slot] ?? []).includes(`${n.options.host}:${n.options.port}`))!
}

// The same suite as on one server: the engine's parts differ only in how connections are made.
t.test('the engine contract, on a Redis Cluster', async (t) => {
  engineContract(t, async (names) => new RedisEngine({
    redis: parseRedisUrl(cluster.url), ...names, redisTimeoutMs: 2000, memoryQueueMax: 0, memoryQueueMaxBytes: 0
  }, silentLogger()), { nodeSubscribers: true })
})

t.test('on a Redis Cluster: produce (one and a batch, all or none), the stream, consumer and subscriber webhooks, dead letters and their redelivery', async (t) => {
  const names = uniqueNames()
  const { app, base } = await listeningApp(t, cluster.url, { ...names, webhookAllowPrivate: true, webhookMaxAttempts: 1, webhookBackoffMs: 50 })
  const stream = await openStream(`${base}/events/stream`)
  t.teardown(() => stream.close())
  t.equal((await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'one' } })).statusCode, 202)
  t.equal((await app.inject({ method: 'POST', url: '/events/batch', payload: [{ event_name: 'two' }, { event_name: 'three' }] })).statusCode, 202)
  const queued = (await cluster.client.lrangeBuffer(names.prodconsKey, 0, -1)).map((f) => (decode(f) as { event_name: string }).event_name)
  t.same(queued, ['one', 'two', 'three'], 'both copies: the list')
  await stream.waitFor(3)
  t.same(stream.events.map((e) => e.event), ['one', 'two', 'three'], 'and the channel')

  const consumer = await startReceiver(t)
  let failing = true
  const subscriber = await startReceiver(t, () => ({ status: failing ? 500 : 200 }))
  t.equal((await app.inject({ method: 'POST', url: '/webhooks', payload: { url: consumer.url, event_names: ['one', 'two', 'three', 'later'] } })).statusCode, 201)
  t.equal((await app.inject({ method: 'POST', url: '/webhooks', payload: { url: subscriber.url, event_names: ['later'], role: 'subscriber' } })).statusCode, 201)
  await consumer.waitFor(3)
  t.same(consumer.received.map((r) => r.json.event_name).sort(), ['one', 'three', 'two'], 'the consumer webhook took the queued ones')
  t.equal((await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'later' } })).statusCode, 202)
  await consumer.waitFor(4)
  // The subscriber's one attempt fails: a dead letter, in the list's slot too, redelivered to it.
  let letters: Array<{ id: string }> = []
  await until(async () => {
    letters = (await app.inject({ method: 'GET', url: '/dead-letters' })).json().dead_letters
    return letters.length === 1
  }, 5000)
  t.equal(letters.length, 1, 'dead-lettered')
  failing = false
  t.equal((await app.inject({ method: 'POST', url: `/dead-letters/${letters[0]?.id ?? ''}/redeliver` })).statusCode, 202)
  await until(() => subscriber.received.some((r, i) => i > 0 && r.json.event_name === 'later'), 5000)
  t.ok(subscriber.received.length >= 2, 'redelivered to the subscriber')
  // Every key busgate made is in the consumer list's slot.
  const slot = await cluster.client.call('CLUSTER', 'KEYSLOT', names.prodconsKey)
  const made: string[] = []
  for (const node of cluster.client.nodes('master')) made.push(...await node.keys(`${names.keyPrefix}*`))
  t.ok(made.length > 3, `busgate made its keys (${made.length})`)
  for (const key of made) t.equal(await cluster.client.call('CLUSTER', 'KEYSLOT', key), slot, `${key} in the list's slot`)
})

t.test('on a Redis Cluster: the task view (bgtask.<id> wherever it hashes) and retries through the delay set', async (t) => {
  const names = uniqueNames()
  const { app, base } = await listeningApp(t, cluster.url, { ...names, webhookAllowPrivate: true, webhookBackoffMs: 50, webhookBackoffMaxMs: 100 })
  const post = async (event: object) => {
    const res = await app.inject({ method: 'POST', url: '/events', payload: event })
    t.equal(res.statusCode, 202)
  }
  // The channel subscription is up (a cluster node acknowledged it) once an event comes through.
  const warm = await openStream(`${base}/events/stream`)
  t.teardown(() => warm.close())
  await post({ event_name: 'warm_up' })
  await warm.waitFor(1)
  const slots = new Set<unknown>()
  for (let i = 0; i < 4; i++) {
    const taskId = `5f3c7a2e-9d1b-4c8e-a0f2-00000000000${i}`
    await post({ event_name: 'task_updated', args: [{ task_id: taskId, message: 'half', current_progress: 1, total_progress: 2 }] })
    t.match(await cluster.client.hgetall(`bgtask.${taskId}`), { status: 'started', current: '1' })
    slots.add(await cluster.client.call('CLUSTER', 'KEYSLOT', `bgtask.${taskId}`))
    const stream = await openStream(`${base}/events/background-task?task_id=${taskId}`)
    await stream.waitFor(1)
    await post({ event_name: 'task_done', args: [{ task_id: taskId, message: 'done', current_progress: 2, total_progress: 2 }] })
    await stream.ended
    // The cluster bus may bring the first broadcast after the state read from the hash: the same
    // progress, which the task view sends once.
    t.same(stream.events.map((e) => e.event), ['task_updated', 'task_done', 'server_close'])
  }
  t.ok(slots.size > 1, `the task hashes lie in ${slots.size} slots`)
  const receiver = await startReceiver(t, (_r, n) => ({ status: n <= 2 ? 503 : 200 }))
  t.equal((await app.inject({ method: 'POST', url: '/webhooks', payload: { url: receiver.url, event_names: ['retried'] } })).statusCode, 201)
  await post({ event_name: 'retried' })
  const got = await receiver.waitFor(3)
  t.equal(got.length, 3, 'failed twice, then delivered')
  t.equal(new Set(got.map((r) => r.headers['webhook-id'])).size, 1, 'one id across the retries')
})

t.test('on a Redis Cluster: a produce in flight when its node connection drops is answered 503, never sent again behind the client', async (t) => {
  const names = uniqueNames()
  const { app } = await listeningApp(t, cluster.url, { ...names, redisTimeoutMs: 3000 })
  t.equal((await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'warm_up' } })).statusCode, 202)
  const node = await masterOf(names.prodconsKey)
  // The node holds writes: the produce reaches it and waits there, unanswered.
  await node.call('CLIENT', 'PAUSE', '1500', 'WRITE')
  const answer = app.inject({ method: 'POST', url: '/events', payload: { event_name: 'in_flight' } })
  await sleep(300)
  await killConnections(node, 'name=busgate:commands')
  const res = await answer
  t.equal(res.statusCode, 503, 'the client is told')
  t.match(res.json(), { code: 'BUSGATE_REDIS_UNAVAILABLE', message: /may still have happened/ })
  await sleep(1700)
  const queued = (await cluster.client.lrangeBuffer(names.prodconsKey, 0, -1)).map((f) => (decode(f) as { event_name: string }).event_name)
  t.same(queued, ['warm_up'], 'and the produce was not sent again once the node took writes')
})

t.test('on a Redis Cluster: a produce that times out on its node is answered 503 in bounded time', async (t) => {
  const names = uniqueNames()
  const { app } = await listeningApp(t, cluster.url, { ...names, redisTimeoutMs: 500 })
  t.equal((await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'warm_up' } })).statusCode, 202)
  const node = await masterOf(names.prodconsKey)
  await node.call('CLIENT', 'PAUSE', '3000', 'WRITE')
  const started = performance.now()
  const res = await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'late' } })
  t.equal(res.statusCode, 503)
  t.match(res.json(), { code: 'BUSGATE_REDIS_UNAVAILABLE', message: /did not answer in time/ })
  t.ok(performance.now() - started < 2500, 'within the timeout, not after the pause')
  await sleep(3000)
})
