import { setTimeout as sleep } from 'node:timers/promises'
import { decode, encode } from '@msgpack/msgpack'
import t from 'tap'
import { startReceiver } from '../helpers/receiver.js'
import { startRedis } from '../helpers/redis.js'
import { webhookGateway } from '../helpers/webhooks.js'
import { until } from '../helpers/wait.js'

const redis = await startRedis(t)

/** A Backend.AI-shaped message, as its producers pack it: event_name, agent_id, args. */
const event = (name: string, ...args: unknown[]): Buffer => Buffer.from(encode({ event_name: name, agent_id: 'i-agent', args }))

t.test('a consumer webhook takes only what it matches; every other message stays in the list, in its order', async (t) => {
  const { app, names, register } = await webhookGateway(t, redis)
  const receiver = await startReceiver(t)
  await register(receiver.url, ['kernel_*'])
  const pushed: Buffer[] = []
  for (let i = 0; i < 40; i++) {
    pushed.push(event('session_started', i))
    if (i % 4 === 0) pushed.push(event('kernel_started', i))
  }
  await redis.client.rpush(names.prodconsKey, ...pushed)
  await receiver.waitFor(10)
  await until(() => false, 300)
  t.same(receiver.received.map((r) => r.json.event_name), Array(10).fill('kernel_started'), 'the kernel events were delivered')
  const left = await redis.client.lrangeBuffer(names.prodconsKey, 0, -1)
  t.same(left, pushed.filter((f) => (decode(f) as { event_name: string }).event_name === 'session_started'), 'the 40 session events are still there, in order')
  const dead = (await app.inject({ method: 'GET', url: '/dead-letters' })).json()
  t.equal(dead.total, 0, 'nothing was dead-lettered')
})

t.test('malformed, foreign and oversized values are left where they are, counted; a wanted event behind them is taken', async (t) => {
  const { app, names, register } = await webhookGateway(t, redis, { busMaxMessageBytes: 4096 })
  const receiver = await startReceiver(t)
  await register(receiver.url, ['kernel_*'])
  const foreign = [
    Buffer.from([0xc1, 0x00]), // not msgpack
    Buffer.from('busgate-envelope:v2:forged'), // starts like an envelope
    Buffer.from(encode(['kernel_started', 'a', []])), // an array, not a map
    Buffer.from(encode({ event_name: 'kernel_started', agent_id: 1, args: [] })), // agent_id not a str
    Buffer.from(encode({ event_name: 'kernel_started', agent_id: 'a' })), // no args
    event('kernel_started', 'x'.repeat(5000)), // larger than the bound
    Buffer.from([0x83, 0xaa, ...Buffer.from('event_name'), 0xae]), // cut short
    Buffer.from(encode({ args: [Array.from({ length: 500 }, (_, i) => i)], agent_id: 'a', event_name: 'kernel_started' })) // name after a long args
  ]
  await redis.client.rpush(names.prodconsKey, ...foreign, event('kernel_started', 'good'))
  const got = await receiver.waitFor(1)
  t.same(got[0]?.json.args, ['good'])
  await until(() => false, 300)
  t.same(await redis.client.lrangeBuffer(names.prodconsKey, 0, -1), foreign, 'every other value is still there, unchanged, in order')
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /busgate_webhook_list_unreadable 8\b/, 'counted as unreadable')
  t.equal((await app.inject({ method: 'GET', url: '/dead-letters' })).json().total, 0)
})

t.test('a claim looks BUSGATE_WEBHOOK_SCAN_DEPTH deep: what lies beyond waits until the head moves', async (t) => {
  const { names, register } = await webhookGateway(t, redis, { webhookScanDepth: 5, webhookPollMs: 20 })
  const receiver = await startReceiver(t)
  await register(receiver.url, ['kernel_*'])
  const head = Array.from({ length: 6 }, (_, i) => event('session_started', i))
  await redis.client.rpush(names.prodconsKey, ...head, event('kernel_started', 'deep'))
  await until(() => false, 400)
  t.equal(receiver.received.length, 0, 'the seventh value is past the depth')
  // Another consumer (a manager) takes two from the head: the kernel event comes within reach.
  await redis.client.lpop(names.prodconsKey, 2)
  const got = await receiver.waitFor(1)
  t.same(got[0]?.json.args, ['deep'])
  t.equal(await redis.client.llen(names.prodconsKey), 4)
})

t.test('beside a manager BLPOPping the same list: session events all reach the manager, none is buried', async (t) => {
  const { app, names, register } = await webhookGateway(t, redis)
  const receiver = await startReceiver(t)
  await register(receiver.url, ['kernel_*'])
  const manager = redis.connect()
  t.teardown(() => manager.disconnect())
  const popped: Buffer[] = []
  const state = { running: true }
  const loop = (async () => {
    while (state.running) {
      const got = await manager.blpopBuffer(names.prodconsKey, 0.05)
      if (got !== null) popped.push(got[1])
    }
  })()
  for (let i = 0; i < 200; i++) {
    await app.inject({ method: 'POST', url: '/events', payload: { event_name: i % 2 === 0 ? 'session_started' : 'kernel_started', args: [i] } })
  }
  await until(async () => popped.length + receiver.received.length >= 200 && (await redis.client.llen(names.prodconsKey)) === 0, 10_000)
  state.running = false
  await loop
  const sessionsAtManager = popped.map((f) => decode(f) as { event_name: string }).filter((e) => e.event_name === 'session_started').length
  t.equal(sessionsAtManager, 100, 'every session event went to the manager')
  t.notOk(receiver.received.some((r) => r.json.event_name !== 'kernel_started'), 'the webhook got kernel events only')
  t.equal(popped.length + receiver.received.length, 200, 'each message to one of them')
  t.equal((await app.inject({ method: 'GET', url: '/dead-letters' })).json().total, 0)
})

t.test('a message taken for a webhook deleted before its retry goes back to the head of the list, unchanged', async (t) => {
  const { app, names, register } = await webhookGateway(t, redis, { webhookBackoffMs: 300, webhookBackoffMaxMs: 300 })
  const receiver = await startReceiver(t, () => ({ status: 500 }))
  const { id } = await register(receiver.url, ['kernel_*'])
  const frame = event('kernel_started', 'retried')
  await redis.client.rpush(names.prodconsKey, frame)
  await receiver.waitFor(1)
  t.equal(await redis.client.llen(names.prodconsKey), 0, 'taken')
  t.equal((await app.inject({ method: 'DELETE', url: `/webhooks/${id}` })).statusCode, 204)
  await redis.client.rpush(names.prodconsKey, event('session_started', 'later'))
  await until(async () => (await redis.client.llen(names.prodconsKey)) === 2, 3000)
  const left = await redis.client.lrangeBuffer(names.prodconsKey, 0, -1)
  t.ok(left[0]?.equals(frame), 'the bare message is back, at the head')
  t.equal(receiver.received.length, 1, 'no attempt after the delete')
  await sleep(100)
  t.equal((await app.inject({ method: 'GET', url: '/dead-letters' })).json().total, 0)
})

t.test('the memory engine takes only what matches too', async (t) => {
  const { testApp } = await import('../helpers/app.js')
  const app = await testApp(t, undefined, { webhookAllowPrivate: true })
  const receiver = await startReceiver(t)
  const res = await app.inject({ method: 'POST', url: '/webhooks', payload: { url: receiver.url, event_names: ['kernel_*'] } })
  t.equal(res.statusCode, 201)
  for (const name of ['session_started', 'kernel_started', 'session_terminated']) {
    await app.inject({ method: 'POST', url: '/events', payload: { event_name: name } })
  }
  const got = await receiver.waitFor(1)
  t.equal(got[0]?.json.event_name, 'kernel_started')
  await until(() => false, 200)
  t.equal(await app.engine.bus.queueLength(), 2, 'the other two wait')
})

t.test('a value of 40 MB at the head never travels to the gateway and is left; what is before it is delivered', async (t) => {
  const { names, register } = await webhookGateway(t, redis, { busMaxMessageBytes: 64 * 1024, webhookPollMs: 20 })
  const huge = Buffer.alloc(40 * 1024 * 1024, 0x61)
  await redis.client.rpush(names.prodconsKey, event('kernel_started', 'before'), huge, event('kernel_started', 'after'))
  const sent = async () => Number(/total_net_output_bytes:(\d+)/.exec(await redis.client.info('stats'))?.[1])
  const before = await sent()
  const receiver = await startReceiver(t)
  await register(receiver.url, ['kernel_*'])
  await receiver.waitFor(1)
  await until(() => false, 500)
  t.same(receiver.received.map((r) => r.json.args[0]), ['before'], 'the one before it; the one after is past the 8 MiB a claim reads')
  t.ok(await sent() - before < 8 * 1024 * 1024, `Redis sent ${((await sent() - before) / 2 ** 20).toFixed(1)} MB meanwhile, not the 40 MB value`)
  t.equal(await redis.client.llen(names.prodconsKey), 2, 'the huge value and the one behind it wait for the other consumers')
  t.equal(await redis.client.lindex(names.prodconsKey, 0).then((v) => v?.length), huge.byteLength)
  // A manager pops the huge value: the event behind it comes within reach.
  await redis.client.lpop(names.prodconsKey)
  await receiver.waitFor(2)
  t.same(receiver.received.map((r) => r.json.args[0]), ['before', 'after'])
})
