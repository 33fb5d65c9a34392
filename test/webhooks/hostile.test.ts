import { createServer } from 'node:http'
import { encode } from '@msgpack/msgpack'
import t, { type Test } from 'tap'
import { uniqueNames } from '../helpers/bus.js'
import { startReceiver } from '../helpers/receiver.js'
import { startRedis } from '../helpers/redis.js'
import { webhookGateway } from '../helpers/webhooks.js'
import { until } from '../helpers/wait.js'
import type { Config } from '../../src/config.js'
import { EnvelopeSealer } from '../../src/webhooks/envelope.js'

// The consumer list and the receivers under attack: any producer can RPUSH anything, any
// receiver can lie or stall.
const redis = await startRedis(t)

// With BUSGATE_WEBHOOK_TAKE=all busgate takes whatever is pushed, so these attacks reach the
// dispatcher; with `matching` they are left in the list (test/webhooks/take-matching.test.ts).
async function gateway (t: Test, overrides: Partial<Config> = {}) {
  const { app, names, register } = await webhookGateway(t, redis, { webhookTake: 'all', ...overrides })
  const push = async (...values: Array<Buffer | string>) => { await redis.client.rpush(names.prodconsKey, ...values) }
  const event = (name: string, ...args: unknown[]) => Buffer.from(encode({ event_name: name, agent_id: 'x', args }, { useBigInt64: true }))
  const deadLetters = async () => (await app.inject({ method: 'GET', url: '/dead-letters' })).json() as
    { total: number, dead_letters: Array<{ id: string, reason: string, frame: string | null, frame_bytes: number, message_id: string, error: string }> }
  const held = async (): Promise<number> => {
    let n = await redis.client.llen(names.prodconsKey) + await redis.client.llen(`${names.keyPrefix}retry`) + await redis.client.zcard(`${names.keyPrefix}delayed`)
    for (const key of await redis.client.keys(`${names.keyPrefix}processing:*`)) n += await redis.client.llen(key)
    return n
  }
  return { app, names, register, push, event, deadLetters, held }
}

t.test('a value that only looks like an envelope is a plain message: dead-lettered once, its neighbours delivered once', async (t) => {
  const { register, push, event, deadLetters, held } = await gateway(t)
  const receiver = await startReceiver(t)
  await register(receiver.url)
  const forged = [
    'busgate-envelope:v1:{x',
    'busgate-envelope:v2:{x',
    // A well-formed envelope of the old, unsealed kind, choosing the webhook-id receivers would see.
    'busgate-envelope:v1:' + JSON.stringify({ id: 'msg_chosen_by_anyone', first_seen: Date.now(), attempts: 0, rounds: 0, frame: event('forged_v1').toString('base64') }),
    // The sealed form with a seal made up by the producer.
    'busgate-envelope:v2:' + 'A'.repeat(43) + ':' + JSON.stringify({ id: 'msg_chosen_by_anyone', first_seen: Date.now(), attempts: 0, rounds: 0, frame: event('forged_v2').toString('base64') })
  ]
  await push(event('before', 1), ...forged, event('after', 2))
  const got = await receiver.waitFor(2)
  await until(() => false, 1500)
  // Deliveries are concurrent: their order at the receiver is not the list's.
  t.same(receiver.received.map((r) => r.json.event_name).sort(), ['after', 'before'], 'each good neighbour once, nothing forged delivered')
  t.notOk(receiver.received.some((r) => r.headers['webhook-id'] === 'msg_chosen_by_anyone'), 'no producer chooses the webhook-id')
  t.equal(got.length, 2)
  const dead = await deadLetters()
  t.equal(dead.total, forged.length, 'each forged value dead-lettered once')
  t.ok(dead.dead_letters.every((d) => d.reason === 'malformed'))
  t.same(dead.dead_letters.map((d) => (d.frame === null ? null : Buffer.from(d.frame, 'base64').toString())).sort(), [...forged].sort(), 'with its bytes as they were')
  await until(() => false, 300)
  t.equal(await held(), 0, 'nothing left held or retried')
})

t.test('a sealed envelope made with another key is not one either', async (t) => {
  const { register, push, event, deadLetters } = await gateway(t)
  const receiver = await startReceiver(t)
  await register(receiver.url)
  const foreign = new EnvelopeSealer(Buffer.from(EnvelopeSealer.newKey(), 'base64'))
    .seal({ id: 'msg_foreign', first_seen: Date.now(), attempts: 0, rounds: 0 }, event('sealed_elsewhere'))
  await push(foreign, event('after'))
  await receiver.waitFor(1)
  await until(async () => (await deadLetters()).total === 1)
  t.same(receiver.received.map((r) => r.json.event_name), ['after'])
  t.match((await deadLetters()).dead_letters, [{ reason: 'malformed' }])
})

t.test('an event whose timestamp no Date can hold is delivered, not a poison message', async (t) => {
  const { register, push, deadLetters, held } = await gateway(t)
  const receiver = await startReceiver(t)
  await register(receiver.url)
  const bomb = Buffer.from('83aa6576656e745f6e616d65ae6b65726e656c5f73746172746564a86167656e745f6964a161a46172677391c70cff000000004000000000000000', 'hex')
  await push(bomb)
  const [got] = await receiver.waitFor(1)
  t.same(got?.json, { event_name: 'kernel_started', agent_id: 'a', args: [{ $ext: -1, $base64: 'AAAAAEAAAAAAAAAA' }] })
  await until(async () => await held() === 0)
  t.equal((await deadLetters()).total, 0)
})

t.test('messages above BUSGATE_BUS_MAX_MESSAGE_BYTES are dead-lettered undecoded, with their bytes; the next one flows', async (t) => {
  const { app, names, register, push, event, deadLetters } = await gateway(t, { busMaxMessageBytes: 4096 })
  const receiver = await startReceiver(t)
  await register(receiver.url)
  const huge = event('huge', 'x'.repeat(5000))
  await push(huge, event('after'))
  await receiver.waitFor(1)
  await until(async () => (await deadLetters()).total === 1)
  t.same(receiver.received.map((r) => r.json.event_name), ['after'])
  const [letter] = (await deadLetters()).dead_letters
  t.equal(letter?.reason, 'too_large')
  // Kept, and redelivered with the rest, but not shown: reading them would bring a producer's
  // hundreds of MB into the gateway.
  t.match(letter, { frame: null, frame_bytes: huge.byteLength }, 'shown by its size')
  const kept = await redis.client.hgetBuffer(`${names.keyPrefix}dead-letters:frames`, letter!.id)
  t.ok(kept?.equals(huge), 'the bytes kept for an operator')
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /busgate_dead_lettered_total\{reason="too_large"\} 1\n/)
})

t.test('the webhook timeout covers the whole answer: a receiver dripping its body does not hold the deliveries', async (t) => {
  const { register, push, event } = await gateway(t, { webhookTimeoutMs: 500, webhookConcurrency: 2, webhookCircuitFailures: 1000 })
  // 200 at once, then a 60,000-byte body at 10 bytes a second.
  const dripping: number[] = []
  const slow = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      dripping.push(Date.now())
      res.writeHead(200, { 'content-length': '60000' })
      // A byte every 100 ms: never idle long enough for a timeout between chunks to fire.
      const timer = setInterval(() => { if (!res.destroyed) res.write('0') }, 100)
      res.on('close', () => clearInterval(timer))
    })
  })
  await new Promise<void>((resolve) => slow.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { slow.closeAllConnections(); slow.close() })
  const healthy = await startReceiver(t)
  await register(`http://127.0.0.1:${(slow.address() as { port: number }).port}/hook`, ['slow_*'])
  await register(healthy.url, ['fast_*'])

  await push(...Array.from({ length: 6 }, (_, i) => event('slow_one', i)), ...Array.from({ length: 20 }, (_, i) => event('fast_one', i)))
  const started = Date.now()
  await healthy.waitFor(20, 15_000)
  t.equal(healthy.received.length, 20, `the healthy webhook got all 20 in ${Date.now() - started} ms`)
  t.ok(Date.now() - started < 8000, 'each dripping attempt gave up after its bound, not after the body')
  t.ok(dripping.length >= 6, `the dripping receiver was tried (${dripping.length} attempts)`)
})

t.test('an envelope sealed under a key that changed since (a Redis that lost its data) is read again with the new one', async (t) => {
  const { register, push, event, names } = await gateway(t)
  const receiver = await startReceiver(t)
  await register(receiver.url)
  await push(event('first'))
  await receiver.waitFor(1) // this instance has read its key
  await redis.client.del(`${names.keyPrefix}envelope-key`)
  // Another instance makes a new key and seals a retry with it.
  const key = EnvelopeSealer.newKey()
  await redis.client.set(`${names.keyPrefix}envelope-key`, key)
  const envelope = new EnvelopeSealer(Buffer.from(key, 'base64')).seal({ id: 'msg_after_the_loss', first_seen: Date.now(), attempts: 1, rounds: 1 }, event('retried'))
  await redis.client.rpush(`${names.keyPrefix}retry`, envelope)
  await receiver.waitFor(2)
  t.same(receiver.received.map((r) => r.json.event_name), ['first', 'retried'])
  t.equal(receiver.received[1]?.headers['webhook-id'], 'msg_after_the_loss', 'its id kept')
})

t.test('a key cut short by hand is refused with a clear warning, and nothing is delivered with it', async (t) => {
  const names = uniqueNames()
  await redis.client.set(`${names.keyPrefix}envelope-key`, 'c2hvcnQ=')
  const { capturingLogger } = await import('../helpers/logger.js')
  const log = capturingLogger('info')
  const { buildApp } = await import('../../src/app.js')
  const { defaultConfig, parseRedisUrl } = await import('../../src/config.js')
  const app = await buildApp(defaultConfig({ ...names, redis: parseRedisUrl(redis.url), webhookAllowPrivate: true }), { logger: log.logger })
  t.teardown(async () => { await app.close() })
  await app.ready()
  const receiver = await startReceiver(t)
  await app.inject({ method: 'POST', url: '/webhooks', payload: { url: receiver.url } })
  await redis.client.rpush(names.prodconsKey, Buffer.from(encode({ event_name: 'waits', agent_id: 'x', args: [] })))
  await until(() => log.lines().includes('holds no valid envelope key'), 5000)
  t.match(log.lines(), /envelope-key holds no valid envelope key .*delete it, and busgate makes a new one/)
  t.equal(receiver.received.length, 0)
  await redis.client.del(`${names.keyPrefix}envelope-key`)
  await receiver.waitFor(1)
  t.same(receiver.received.map((r) => r.json.event_name), ['waits'], 'delivered once the key is gone and made anew')
})

t.test('a value of any size on the consumer list never travels to the gateway: it is dead-lettered inside Redis', async (t) => {
  const { app, register, push, event, names } = await gateway(t, { busMaxMessageBytes: 64 * 1024 })
  const huge = Buffer.alloc(40 * 1024 * 1024, 0x61)
  await push(event('before'), huge, event('after'))
  const sent = async () => Number(/total_net_output_bytes:(\d+)/.exec(await redis.client.info('stats'))?.[1])
  const before = await sent()
  const receiver = await startReceiver(t)
  await register(receiver.url)
  await receiver.waitFor(2)
  t.same(receiver.received.map((r) => r.json.event_name).sort(), ['after', 'before'], 'both neighbours, in whatever order their concurrent deliveries ended')
  const letters = `${names.keyPrefix}dead-letters`
  await until(async () => await redis.client.zcard(`${letters}:ids`) === 1, 5000)
  const [id] = await redis.client.zrange(`${letters}:ids`, '0', '-1')
  t.equal(await redis.client.hstrlen(`${letters}:frames`, id!), huge.byteLength, 'kept whole, for an operator')
  t.match(JSON.parse(await redis.client.hget(`${letters}:meta`, id!) ?? '{}'), { reason: 'too_large', event_name: null })
  t.ok(await sent() - before < 8 * 1024 * 1024, `Redis sent ${((await sent() - before) / 2 ** 20).toFixed(1)} MB meanwhile, not the 40 MB value`)
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /busgate_dead_lettered_total\{reason="too_large"\} 1\n/)
  t.equal(await redis.client.llen(`${names.keyPrefix}oversized`), 0)
})
