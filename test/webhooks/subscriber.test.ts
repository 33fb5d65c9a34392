import { encode } from '@msgpack/msgpack'
import t from 'tap'
import { startReceiver, verifySignature } from '../helpers/receiver.js'
import { startRedis } from '../helpers/redis.js'
import { webhookGateway } from '../helpers/webhooks.js'
import { testApp } from '../helpers/app.js'
import { until } from '../helpers/wait.js'

const redis = await startRedis(t)

const event = (name: string, ...args: unknown[]): Buffer => Buffer.from(encode({ event_name: name, agent_id: 'i-agent', args }))

t.test('a subscriber webhook gets a signed copy of each matching broadcast, whoever published it, and never touches the list', async (t) => {
  const { app, names, register } = await webhookGateway(t, redis)
  const receiver = await startReceiver(t)
  const { id, secret } = await register(receiver.url, ['kernel_*'], { role: 'subscriber' })
  // Subscribed before the registration answered: nothing to wait for.
  t.equal((await app.inject({ method: 'GET', url: `/webhooks/${id}` })).json().role, 'subscriber')
  // A foreign producer (a Backend.AI agent) publishes straight to the channel.
  await redis.client.publish(names.pubsubChannel, event('kernel_started', 'foreign'))
  await redis.client.publish(names.pubsubChannel, event('session_started', 'not wanted'))
  await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'kernel_terminated', args: ['through busgate'] } })
  const got = await receiver.waitFor(2)
  t.same(got.map((r) => r.json.args[0]).sort(), ['foreign', 'through busgate'])
  t.ok(got.every((r) => verifySignature(r, secret)), 'signed')
  await until(() => false, 300)
  t.equal(receiver.received.length, 2, 'nothing else')
  t.equal(await redis.client.llen(names.prodconsKey), 1, 'the consumer list still holds the produced copy, for the consumers')
})

t.test('two instances on one Redis: each event reaches each subscriber once; identical events published twice arrive twice', async (t) => {
  const { app: a, names, register } = await webhookGateway(t, redis)
  const b = await testApp(t, redis.url, { ...names, webhookAllowPrivate: true, webhookBackoffMs: 50 })
  const one = await startReceiver(t)
  const two = await startReceiver(t)
  await register(one.url, ['*'], { role: 'subscriber' })
  await register(two.url, ['numbered'], { role: 'subscriber' })
  await until(async () => (await redis.client.pubsub('NUMSUB', names.pubsubChannel))[1] === 2, 2000)
  for (let i = 0; i < 100; i++) await redis.client.publish(names.pubsubChannel, event('numbered', i))
  await redis.client.publish(names.pubsubChannel, event('twice'))
  await redis.client.publish(names.pubsubChannel, event('twice'))
  await one.waitFor(102)
  await two.waitFor(100)
  await until(() => false, 500)
  t.equal(one.received.length, 102, 'once per event, though both instances heard each')
  t.equal(two.received.length, 100)
  t.same(new Set(two.received.map((r) => r.json.args[0])).size, 100, 'each event once')
  t.equal(one.received.filter((r) => r.json.event_name === 'twice').length, 2, 'the same bytes twice are two events')
  const ids = new Set(one.received.map((r) => r.headers['webhook-id']))
  t.equal(ids.size, 102, 'each its own message id')
  t.ok(a !== b)
})

t.test('a subscriber receiver that fails first gets the event later, with the same id; a deleted one gets nothing more', async (t) => {
  const { app, names, register } = await webhookGateway(t, redis)
  const receiver = await startReceiver(t, (_r, n) => ({ status: n <= 3 ? 503 : 200 }))
  const { id } = await register(receiver.url, ['*'], { role: 'subscriber' })
  await until(async () => (await redis.client.pubsub('NUMSUB', names.pubsubChannel))[1] === 1, 2000)
  await redis.client.publish(names.pubsubChannel, event('kernel_started', 1))
  const got = await receiver.waitFor(4)
  t.equal(got.length, 4)
  t.equal(new Set(got.map((r) => r.headers['webhook-id'])).size, 1, 'one id across the retries')
  t.equal(got.at(-1)?.json.args[0], 1)
  const attempts = (await app.inject({ method: 'GET', url: `/webhooks/${id}/attempts` })).json().attempts
  t.ok(attempts.length >= 1, 'attempts are logged')
  t.equal((await app.inject({ method: 'DELETE', url: `/webhooks/${id}` })).statusCode, 204)
  await redis.client.publish(names.pubsubChannel, event('kernel_started', 2))
  await until(() => false, 300)
  t.equal(receiver.received.length, 4, 'nothing after the delete')
  t.equal(await redis.client.exists(`${names.keyPrefix}subscriber:${id}`), 0, 'its list is gone')
})

t.test('copies wait in Redis while the receiver is set aside, and are delivered once it is back', async (t) => {
  const { names, register } = await webhookGateway(t, redis, { webhookCircuitFailures: 1, webhookCircuitCooldownMs: 500 })
  let down = true
  const receiver = await startReceiver(t, () => ({ status: down ? 500 : 200 }))
  const { id } = await register(receiver.url, ['*'], { role: 'subscriber' })
  await until(async () => (await redis.client.pubsub('NUMSUB', names.pubsubChannel))[1] === 1, 2000)
  for (let i = 0; i < 20; i++) await redis.client.publish(names.pubsubChannel, event('numbered', i))
  await receiver.waitFor(1)
  const waiting = async (): Promise<number> => await redis.client.llen(`${names.keyPrefix}subscriber:${id}`) + await redis.client.zcard(`${names.keyPrefix}delayed`)
  await until(async () => (await waiting()) >= 19, 2000)
  t.ok(await waiting() >= 19, 'the copies wait in Redis, in its list or for their next round')
  down = false
  await until(() => new Set(receiver.received.filter((r) => r.json.event_name === 'numbered').map((r) => r.json.args[0])).size >= 20, 10_000)
  t.equal(new Set(receiver.received.map((r) => r.json.args[0])).size, 20, 'every one delivered')
})

t.test('a subscriber copy that runs out of attempts is dead-lettered for its webhook, and redelivered to it alone', async (t) => {
  const { app, names, register } = await webhookGateway(t, redis, { webhookMaxAttempts: 2 })
  let failing = true
  const subscriber = await startReceiver(t, () => ({ status: failing ? 500 : 200 }))
  const consumer = await startReceiver(t)
  const { id } = await register(subscriber.url, ['audit_*'], { role: 'subscriber' })
  await register(consumer.url, ['*'])
  await redis.client.publish(names.pubsubChannel, event('audit_logged', 'once'))
  let letters: Array<{ id: string, webhook_id: string | null, reason: string, event_name: string }> = []
  await until(async () => {
    letters = (await app.inject({ method: 'GET', url: '/dead-letters' })).json().dead_letters
    return letters.length === 1
  }, 5000)
  t.match(letters[0], { webhook_id: id, reason: 'delivery_failed', event_name: 'audit_logged' })
  failing = false
  const before = subscriber.received.length
  t.equal((await app.inject({ method: 'POST', url: `/dead-letters/${letters[0]?.id ?? ''}/redeliver` })).statusCode, 202)
  await subscriber.waitFor(before + 1)
  await until(() => false, 300)
  t.equal(subscriber.received.length, before + 1, 'the subscriber got it again')
  t.equal(subscriber.received.at(-1)?.headers['webhook-id'], subscriber.received[0]?.headers['webhook-id'], 'with its id')
  t.equal(consumer.received.length, 0, 'no consumer webhook got it')
  t.equal(await redis.client.llen(names.prodconsKey), 0, 'nor the consumer list')
})

t.test('the memory engine: a subscriber webhook gets its copies, the consumer list keeps its own', async (t) => {
  const app = await testApp(t, undefined, { webhookAllowPrivate: true })
  const receiver = await startReceiver(t)
  const res = await app.inject({ method: 'POST', url: '/webhooks', payload: { url: receiver.url, event_names: ['kernel_*'], role: 'subscriber' } })
  t.equal(res.statusCode, 201)
  for (const name of ['kernel_started', 'session_started', 'kernel_terminated']) {
    t.equal((await app.inject({ method: 'POST', url: '/events', payload: { event_name: name } })).statusCode, 202)
  }
  const got = await receiver.waitFor(2)
  await until(() => false, 200)
  t.same(got.map((r) => r.json.event_name).sort(), ['kernel_started', 'kernel_terminated'])
  t.equal(await app.engine.bus.queueLength(), 3, 'the consumer list untouched')
})

t.test('hostile broadcasts (not msgpack, wrong shape, past the bound, an envelope look-alike) make no copy and stop nothing; a good one after them is delivered', async (t) => {
  const { app, names, register } = await webhookGateway(t, redis, { busMaxMessageBytes: 4096 })
  const receiver = await startReceiver(t)
  const { id } = await register(receiver.url, ['*'], { role: 'subscriber' })
  for (const bad of [Buffer.from([0xc1, 0x00]), Buffer.from(encode(['kernel_started', 'a', []])), Buffer.from('busgate-envelope:v2:forged'),
    event('kernel_started', 'x'.repeat(5000)), Buffer.from([0x83, 0xaa, ...Buffer.from('event_name'), 0xae]), Buffer.alloc(0)]) {
    await redis.client.publish(names.pubsubChannel, bad)
  }
  await redis.client.publish(names.pubsubChannel, event('kernel_started', 'good'))
  const got = await receiver.waitFor(1)
  await until(() => false, 300)
  t.same(receiver.received.map((r) => r.json.args[0]), ['good'], 'only the good one')
  t.same(got[0]?.json.args, ['good'])
  t.equal(await redis.client.llen(`${names.keyPrefix}subscriber:${id}`), 0, 'no copy of the others waits')
  t.equal((await app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/dead-letters' })).json().total, 0)
})
