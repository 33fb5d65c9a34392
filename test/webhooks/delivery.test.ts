import { setTimeout as sleep } from 'node:timers/promises'
import { encode } from '@msgpack/msgpack'
import t, { type Test } from 'tap'
import { startReceiver, verifySignature } from '../helpers/receiver.js'
import { connectionIds, killConnections, startRedis } from '../helpers/redis.js'
import { webhookGateway } from '../helpers/webhooks.js'
import { until } from '../helpers/wait.js'
import type { Config } from '../../src/config.js'
import { EnvelopeSealer } from '../../src/webhooks/envelope.js'

const redis = await startRedis(t)

async function gateway (t: Test, overrides: Partial<Config> = {}) {
  const { app, names, register } = await webhookGateway(t, redis, overrides)
  const post = async (events: object[]) => {
    const res = await app.inject({ method: 'POST', url: '/events/batch', payload: events })
    if (res.statusCode !== 202) throw new Error(res.body)
  }
  const queueEmpty = async () => (await redis.client.llen(names.prodconsKey)) === 0
  return { app, names, register, post, queueEmpty }
}

t.test('a queued event reaches a webhook once, signed, and leaves Redis', async (t) => {
  const { app, register, post, names } = await gateway(t)
  const receiver = await startReceiver(t)
  const { secret } = await register(receiver.url)
  await post([{ event_name: 'kernel_started', agent_id: 'i-ag01', args: ['s1', { $base64: 'AP8=' }] }])
  const [got] = await receiver.waitFor(1)
  t.ok(got, 'delivered')
  t.same(got!.json, { event_name: 'kernel_started', agent_id: 'i-ag01', args: ['s1', { $base64: 'AP8=' }] })
  t.equal(got!.headers['content-type'], 'application/json')
  t.match(got!.headers['webhook-id'], /^msg_/)
  t.ok(Math.abs(Number(got!.headers['webhook-timestamp']) - Date.now() / 1000) < 30, 'a current timestamp')
  t.ok(verifySignature(got!, secret), 'the signature verifies with the secret given at registration')
  await until(() => false, 300)
  t.equal(receiver.received.length, 1, 'exactly once')
  t.equal(await redis.client.llen(names.prodconsKey), 0)
  // Acknowledged with the loop's next claim; the attempt log is written every 250 ms.
  const held = async (): Promise<number> => {
    let n = 0
    for (const key of await redis.client.keys(`${names.keyPrefix}processing:*`)) n += await redis.client.llen(key)
    return n
  }
  const attempts = async () => (await app.inject({ method: 'GET', url: `/webhooks/${(await app.webhooks.list())[0]!.id}/attempts` })).json()
  for (let i = 0; i < 100 && (await held() > 0 || (await attempts()).attempts.length === 0); i++) await sleep(50)
  t.equal(await held(), 0, 'the processing lists are empty')
  t.match((await attempts()).attempts, [{ status: 200, error: null, event_name: 'kernel_started' }])
})

t.test('with no enabled webhook nothing is popped; events wait in Redis and flow once one exists', async (t) => {
  const { register, post, names, app } = await gateway(t)
  await post([{ event_name: 'a' }, { event_name: 'b' }, { event_name: 'c' }])
  await sleep(1500)
  t.equal(await redis.client.llen(names.prodconsKey), 3, 'still queued')
  const receiver = await startReceiver(t)
  // Registered disabled: a registration is in effect before its answer, so one enabled would take them at once.
  const { id } = await register(receiver.url, undefined, { enabled: false })
  await sleep(1500)
  t.equal(await redis.client.llen(names.prodconsKey), 3, 'a disabled webhook takes nothing either')
  await app.inject({ method: 'PATCH', url: `/webhooks/${id}`, payload: { enabled: true } })
  const got = await receiver.waitFor(3)
  t.same(got.map((r) => r.json.event_name).sort(), ['a', 'b', 'c'])
})

t.test('round-robin over the matching webhooks; filters route; with BUSGATE_WEBHOOK_TAKE=all unmatched events are dead-lettered', async (t) => {
  const { register, post, app } = await gateway(t, { webhookTake: 'all' })
  const one = await startReceiver(t)
  const two = await startReceiver(t)
  const sessions = await startReceiver(t)
  await register(one.url, ['kernel_*'])
  await register(two.url, ['kernel_*'])
  await register(sessions.url, ['session_*'])
  const kernels = Array.from({ length: 20 }, (_, i) => ({ event_name: 'kernel_started', args: [i] }))
  await post([...kernels, { event_name: 'session_started' }, { event_name: 'unwanted_event' }])
  await until(() => one.received.length + two.received.length >= 20 && sessions.received.length >= 1)
  t.equal(one.received.length, 10, 'half each')
  t.equal(two.received.length, 10)
  t.same([...one.received, ...two.received].map((r) => (r.json.args[0] as number)).sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i), 'each once')
  t.equal(sessions.received.length, 1)
  await until(() => false, 300)
  const dead = (await app.inject({ method: 'GET', url: '/dead-letters' })).json()
  t.equal(dead.total, 1)
  t.match(dead.dead_letters[0], { reason: 'no_matching_webhook', event_name: 'unwanted_event' })
})

t.test('with BUSGATE_WEBHOOK_TAKE=all, a blocking claim whose connection drops goes on after the reconnect', async (t) => {
  const { register, post, app } = await gateway(t, { webhookTake: 'all' })
  const receiver = await startReceiver(t)
  await register(receiver.url)
  await post([{ event_name: 'before' }])
  await receiver.waitFor(1)
  // The lanes wait in BLMOVE now; their connections are cut (a network blip, a proxy restart).
  await until(async () => (await connectionIds(redis.client, ...waitingConsumers)).length > 0)
  await sleep(200)
  await killConnections(redis.client, ...waitingConsumers)
  await sleep(500)
  await post([{ event_name: 'after' }])
  const got = await receiver.waitFor(2, 8000)
  t.same(got.map((r) => r.json.event_name), ['before', 'after'], 'delivered after the reconnect')
  // A wait the client dropped without an answer would hold its lane, and the close, for ever.
  t.ok(await Promise.race([app.close().then(() => true), sleep(5000).then(() => false)]), 'and it closes: no lane is left in a lost wait')
})

const waitingConsumers = ['name=busgate:consumer', 'cmd=blmove']

t.test('a failing webhook fails over to the next; one that keeps failing is set aside', async (t) => {
  // One loop: with several, deliveries already under way when the circuit opens would also land.
  const { register, post, app } = await gateway(t, { webhookCircuitFailures: 3, webhookCircuitCooldownMs: 60_000, webhookConcurrency: 1 })
  const broken = await startReceiver(t, () => ({ status: 500 }))
  const healthy = await startReceiver(t)
  await register(broken.url)
  await register(healthy.url)
  await post(Array.from({ length: 10 }, (_, i) => ({ event_name: 'tick', args: [i] })))
  await healthy.waitFor(10)
  t.same(healthy.received.map((r) => r.json.args[0]).sort((a, b) => (a as number) - (b as number)), Array.from({ length: 10 }, (_, i) => i), 'all delivered')
  t.equal(broken.received.length, 3, 'the broken one was tried three times, then set aside')
  // The receiver counts a delivery when the request arrives, the gateway when the answer does.
  const metrics = async (): Promise<string> => (await app.inject({ method: 'GET', url: '/metrics' })).body
  for (let i = 0; i < 100 && !/outcome="delivered"\} 10\n/.test(await metrics()); i++) await sleep(20)
  t.match(await metrics(), /busgate_webhook_circuit_open\{webhook="wh_[^"]+"\} 1/)
  t.match(await metrics(), /busgate_webhook_deliveries_total\{outcome="delivered"\} 10/)
})

t.test('retries keep the message id, back off, and succeed', async (t) => {
  const { register, post } = await gateway(t)
  const flaky = await startReceiver(t, (_r, n) => ({ status: n <= 2 ? 503 : 204 }))
  const { secret } = await register(flaky.url)
  await post([{ event_name: 'retry_me' }])
  const got = await flaky.waitFor(3)
  t.equal(got.length, 3)
  t.equal(new Set(got.map((r) => r.headers['webhook-id'])).size, 1, 'the same webhook-id on every attempt')
  t.ok(got.every((r) => verifySignature(r, secret)))
  t.ok(got[2]!.at - got[1]!.at >= 40, 'backed off between rounds')
})

t.test('a message waiting for its retry holds up neither the messages claimed with it nor its loop', async (t) => {
  // Queued before any webhook exists, so the first claims take batches (a fair share each).
  // The first message fails; the other eleven must not wait for its next round (2 to 4 s).
  const { register, post, names, app } = await gateway(t, { webhookConcurrency: 2, webhookBackoffMs: 4000, webhookBackoffMaxMs: 4000 })
  await post(Array.from({ length: 12 }, (_, i) => ({ event_name: 'batch_member', args: [i] })))
  const receiver = await startReceiver(t, (r) => ({ status: r.json.args[0] === 0 ? 500 : 204 }))
  await register(receiver.url)
  const others = (): Set<unknown> => new Set(receiver.received.filter((r) => r.json.args[0] !== 0).map((r) => r.json.args[0]))
  await until(() => receiver.received.some((r) => r.json.args[0] === 0), 5000)
  await until(() => others().size >= 11, 1400)
  t.equal(others().size, 11, 'the other eleven were delivered while the first waited for its retry')
  t.equal(receiver.received.filter((r) => r.json.args[0] === 0).length, 1, 'the failed one is not retried yet')
  t.equal(await redis.client.zcard(`${names.keyPrefix}delayed`), 1, 'it waits in the delay set, held by no loop')
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /\nbusgate_webhook_delayed 1\n/, 'counted')
})

t.test('a receiver that keeps failing does not hold up deliveries to the others', async (t) => {
  // Two loops; kernel events go only to a receiver that always fails, session events to a
  // healthy one. With retries waiting inside the loops, two kernel events would stop everything.
  const { register, post } = await gateway(t, { webhookConcurrency: 2, webhookBackoffMs: 5000, webhookBackoffMaxMs: 5000, webhookCircuitFailures: 1000 })
  const broken = await startReceiver(t, () => ({ status: 500 }))
  const healthy = await startReceiver(t)
  await register(broken.url, ['kernel_*'])
  await register(healthy.url, ['session_*'])
  await post(Array.from({ length: 6 }, (_, i) => ({ event_name: 'kernel_started', args: [i] })))
  await until(() => broken.received.length >= 6, 5000)
  const started = Date.now()
  await post(Array.from({ length: 6 }, (_, i) => ({ event_name: 'session_started', args: [i] })))
  await healthy.waitFor(6, 2000)
  t.equal(healthy.received.length, 6, `the healthy receiver got all six in ${Date.now() - started} ms, while the kernel events wait for their next round`)
  t.equal(broken.received.length, 6, 'each kernel event tried once so far')
})

t.test('retries run out: the message is dead-lettered, and can be redelivered', async (t) => {
  const { register, post, app, names } = await gateway(t, { webhookMaxAttempts: 3 })
  let healthy = false
  const receiver = await startReceiver(t, () => ({ status: healthy ? 200 : 500 }))
  await register(receiver.url)
  await post([{ event_name: 'doomed', args: [1] }])
  let list = { total: 0, dead_letters: [] as Array<{ id: string, reason: string, attempts: number, message_id: string }> }
  await until(() => list.total > 0 || receiver.received.length > 3, 5000)
  for (let i = 0; i < 100 && list.total === 0; i++) {
    list = (await app.inject({ method: 'GET', url: '/dead-letters' })).json()
    await sleep(50)
  }
  t.equal(receiver.received.length, 3, 'three attempts')
  t.match(list.dead_letters[0], { reason: 'delivery_failed', attempts: 3 })
  const letter = list.dead_letters[0]!
  t.equal((await app.inject({ method: 'GET', url: `/dead-letters/${letter.id}` })).json().message_id, letter.message_id)
  healthy = true
  const redelivered = await app.inject({ method: 'POST', url: `/dead-letters/${letter.id}/redeliver` })
  t.same(redelivered.json(), { redelivered: 1 })
  await receiver.waitFor(4)
  t.equal(receiver.received[3]?.json.event_name, 'doomed')
  t.equal((await app.inject({ method: 'GET', url: '/dead-letters' })).json().total, 0)
  t.equal((await app.inject({ method: 'GET', url: `/dead-letters/${letter.id}` })).statusCode, 404)
  t.equal(await redis.client.llen(names.prodconsKey), 0)
})

t.test('410 Gone disables the webhook; 3xx is not followed', async (t) => {
  const { register, post, app } = await gateway(t, { webhookMaxAttempts: 2 })
  const gone = await startReceiver(t, () => ({ status: 410 }))
  const redirect = await startReceiver(t, () => ({ status: 302, headers: { location: 'http://127.0.0.1:1/elsewhere' } }))
  const { id } = await register(gone.url)
  await post([{ event_name: 'first' }])
  await gone.waitFor(1)
  await until(() => false, 500)
  t.equal((await app.webhooks.get(id))?.enabled, false, 'disabled')
  await app.inject({ method: 'DELETE', url: `/webhooks/${id}` })
  await register(redirect.url)
  await post([{ event_name: 'second' }])
  await redirect.waitFor(2)
  let total = 0
  for (let i = 0; i < 100 && total < 2; i++) {
    total = (await app.inject({ method: 'GET', url: '/dead-letters' })).json().total
    await sleep(50)
  }
  t.equal(total, 2, 'both dead-lettered after their attempts, none lost')
})

t.test('with BUSGATE_WEBHOOK_TAKE=all a malformed message is dead-lettered; the good one behind it is delivered', async (t) => {
  const { register, names, app } = await gateway(t, { webhookTake: 'all' })
  const receiver = await startReceiver(t)
  await register(receiver.url)
  await redis.client.rpush(names.prodconsKey, Buffer.from([0xc1, 0x00]), Buffer.from(encode({ event_name: 'good_one', agent_id: 'x', args: [] })))
  await receiver.waitFor(1)
  t.equal(receiver.received[0]?.json.event_name, 'good_one')
  let dead = { total: 0, dead_letters: [] as Array<{ reason: string, frame: string }> }
  for (let i = 0; i < 100 && dead.total === 0; i++) {
    dead = (await app.inject({ method: 'GET', url: '/dead-letters' })).json()
    await sleep(20)
  }
  t.match(dead.dead_letters[0], { reason: 'malformed', frame: 'wQA=' }, 'kept with its bytes')
})

t.test('Redis connections cut again and again mid-delivery: nothing lost, nothing left held', async (t) => {
  const { register, post, names } = await gateway(t, { webhookConcurrency: 4 })
  const receiver = await startReceiver(t, () => ({ status: 204, delayMs: 2 }))
  await post(Array.from({ length: 300 }, (_, i) => ({ event_name: 'cut_through', args: [i] })))
  await register(receiver.url)
  await until(() => receiver.received.length > 20)
  // Every connection but the test's own: claims, acks, releases and blocking pops fail mid-way.
  for (let cut = 0; cut < 4; cut++) {
    await redis.client.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes')
    await sleep(300)
  }
  const seen = (): Set<unknown> => new Set(receiver.received.map((r) => r.json.args[0]))
  await until(() => seen().size >= 300, 30_000)
  t.equal(seen().size, 300, `every message delivered (${receiver.received.length} deliveries in all)`)
  const held = async (): Promise<number> => {
    let n = await redis.client.llen(names.prodconsKey) + await redis.client.llen(`${names.keyPrefix}retry`)
    for (const key of await redis.client.keys(`${names.keyPrefix}processing:*`)) n += await redis.client.llen(key)
    return n
  }
  for (let i = 0; i < 100 && await held() > 0; i++) await sleep(100)
  t.equal(await held(), 0, 'nothing left queued or held')
})

t.test('what a dead instance held is reclaimed and delivered, an envelope with its id', async (t) => {
  const { app, register, names } = await gateway(t, { instanceTtlMs: 600 })
  const receiver = await startReceiver(t)
  await register(receiver.url)
  const bare = Buffer.from(encode({ event_name: 'held_bare', agent_id: 'x', args: [] }))
  // An envelope as an instance seals it, with the key all instances share.
  const key = await app.engine.store.setIfAbsent(`${names.keyPrefix}envelope-key`, EnvelopeSealer.newKey())
  const envelope = new EnvelopeSealer(Buffer.from(key, 'base64'))
    .seal({ id: 'msg_from_the_dead', first_seen: Date.now(), attempts: 2, rounds: 1 }, Buffer.from(encode({ event_name: 'held_envelope', agent_id: 'x', args: [] })))
  await redis.client.rpush(`${names.keyPrefix}processing:deadbeef0000:0`, bare, envelope)
  const got = await receiver.waitFor(2)
  t.same(got.map((r) => r.json.event_name).sort(), ['held_bare', 'held_envelope'])
  t.equal(got.find((r) => r.json.event_name === 'held_envelope')?.headers['webhook-id'], 'msg_from_the_dead', 'the id survives')
  t.equal(await redis.client.llen(`${names.keyPrefix}processing:deadbeef0000:0`), 0)
})

t.test('a receiver that does not answer times out and the message goes elsewhere', async (t) => {
  const { register, post } = await gateway(t, { webhookTimeoutMs: 300 })
  const hanging = await startReceiver(t, () => 'hang')
  const healthy = await startReceiver(t)
  await register(hanging.url)
  await register(healthy.url)
  await post([{ event_name: 'x1' }, { event_name: 'x2' }, { event_name: 'x3' }, { event_name: 'x4' }])
  const got = await healthy.waitFor(4)
  t.equal(got.length, 4)
})
