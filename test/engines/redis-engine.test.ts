import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { parseRedisUrl } from '../../src/config.js'
import { RedisEngine } from '../../src/engines/redis-engine.js'
import { isUnavailable } from '../../src/errors.js'
import { startRedis } from '../helpers/redis.js'
import { engineContract } from './contract.js'
import { claimOne } from '../helpers/bus.js'
import { silentLogger } from '../helpers/logger.js'

const server = await startRedis(t)

/** the consumer list each engine of engineFor writes to */
const listOf = new WeakMap<RedisEngine, string>()

function engineFor (url: string, overrides: { redisTimeoutMs?: number } = {}): RedisEngine {
  const id = randomUUID()
  const engine = new RedisEngine({
    redis: parseRedisUrl(url),
    pubsubChannel: `test.pubsub.${id}`,
    prodconsKey: `test.prodcons.${id}`,
    redisTimeoutMs: overrides.redisTimeoutMs ?? 1000,
    memoryQueueMax: 0,
    memoryQueueMaxBytes: 0
  }, silentLogger())
  listOf.set(engine, `test.prodcons.${id}`)
  t.teardown(() => engine.close())
  return engine
}

t.test('redis engine contract', async (t) => {
  engineContract(t, async (names) => new RedisEngine({
    redis: parseRedisUrl(server.url), ...names, redisTimeoutMs: 1000, memoryQueueMax: 0, memoryQueueMaxBytes: 0
  }, silentLogger()))
})

t.test('the database index of the URL is the one written to', async (t) => {
  const engine = engineFor(`${server.url}/5`)
  await engine.connect()
  await engine.bus.produce([Buffer.from('in db 5')])
  const db5 = server.connect(5)
  const key = listOf.get(engine) as string
  t.same(await db5.lrange(key, 0, -1), ['in db 5'])
  t.equal(await server.client.exists(key), 0, 'database 0 untouched')
})

t.test('a failing write publishes nothing', async (t) => {
  const engine = engineFor(server.url)
  await engine.connect()
  const key = listOf.get(engine) as string
  await server.client.set(key, 'not a list')
  const heard: Buffer[] = []
  await engine.bus.subscribe({ message: (f) => heard.push(f) })
  // Three produces in one turn: one group, one script call, refused as a whole.
  const results = await Promise.allSettled([
    engine.bus.produce([Buffer.from('a'), Buffer.from('b')]),
    engine.bus.produce([Buffer.from('c')]),
    engine.bus.produce([Buffer.from('d')])
  ])
  t.same(results.map((r) => r.status), ['rejected', 'rejected', 'rejected'])
  const err = (results[0] as PromiseRejectedResult).reason as Error & { command?: unknown }
  t.match(err.message, /^Redis refused the command: WRONGTYPE/)
  t.equal(err.command, undefined, 'the frames do not travel with the error (it gets logged)')
  t.notOk(isUnavailable(err), 'a misconfiguration is not a 503')
  await sleep(100)
  t.same(heard, [], 'no copy reached the channel')
  t.equal(await server.client.get(key), 'not a list')
})

t.test('the largest batch fits in one atomic step', async (t) => {
  const engine = engineFor(server.url)
  await engine.connect()
  const frames = Array.from({ length: 5000 }, (_, i) => Buffer.from(`f${i}`))
  const result = await engine.bus.produce(frames)
  t.equal(result.queueLength, 5000)
  await t.rejects(engine.bus.produce([...frames, Buffer.from('one too many')]), RangeError)
  await t.rejects(engine.bus.produce([]), RangeError)
})

t.test('produces of one turn are grouped, and a group that would grow too large is split, in order', async (t) => {
  const engine = engineFor(server.url)
  await engine.connect()
  const heard: Buffer[] = []
  await engine.bus.subscribe({ message: (f) => heard.push(f) })
  const first = Array.from({ length: 3000 }, (_, i) => Buffer.from(`a${i}`))
  const second = Array.from({ length: 3000 }, (_, i) => Buffer.from(`b${i}`))
  const third = [Buffer.from('c')]
  const [r1, r2, r3] = await Promise.all([engine.bus.produce(first), engine.bus.produce(second), engine.bus.produce(third)])
  t.same([r1.queueLength, r2.queueLength, r3.queueLength], [3000, 6000, 6001], 'each sees the length right after its own frames')
  const key = listOf.get(engine) as string
  t.same((await server.client.lrange(key, 0, -1)).map(String), [...first, ...second, ...third].map(String))
  for (let i = 0; i < 200 && heard.length < 6001; i++) await sleep(10)
  t.same(heard.map(String), [...first, ...second, ...third].map(String), 'published in the same order')
})

t.test('out of memory inside the script is a 503, and nothing is written', async (t) => {
  const own = await startRedis(t)
  const engine = engineFor(own.url)
  await engine.connect()
  await own.client.config('SET', 'maxmemory', '1')
  const err = await engine.bus.produce([Buffer.from('x')]).then(() => undefined, (e: unknown) => e)
  await own.client.config('SET', 'maxmemory', '0')
  t.match(err, { code: 'BUSGATE_REDIS_UNAVAILABLE', message: /OOM/ })
  const key = listOf.get(engine) as string
  t.equal(await own.client.llen(key), 0)
})

t.test('claim keeps the message in the processing list until ack', async (t) => {
  const engine = engineFor(server.url)
  await engine.connect()
  const processing = `test.processing.${randomUUID()}`
  const consumer = engine.queue.consumer(processing)
  t.teardown(() => consumer.close())
  await engine.bus.produce([Buffer.from('held')])
  const claimed = await claimOne(consumer, 1000)
  t.same(await server.client.lrange(processing, 0, -1), ['held'])
  await consumer.ack(claimed as Buffer)
  t.same(await server.client.lrange(processing, 0, -1), [])
})

t.test('with a password', async (t) => {
  const secured = await startRedis(t, () => ['--requirepass', 's3cret pass'])
  const good = engineFor(`redis://:${encodeURIComponent('s3cret pass')}@127.0.0.1:${secured.port}/2`)
  await good.connect()
  t.equal(good.state, 'ready')
  t.same(await good.bus.produce([Buffer.from('x')]), { subscribers: 0, queueLength: 1 })

  const bad = engineFor(`redis://:wrong@127.0.0.1:${secured.port}`, { redisTimeoutMs: 300 })
  await bad.connect()
  t.not(bad.state, 'ready')
  const err = await bad.bus.produce([Buffer.from('x')]).then(() => undefined, (e: unknown) => e)
  t.ok(isUnavailable(err), 'refused as unavailable')
})

t.test('a dead Redis gives 503-coded errors at once, and the engine recovers when it returns', async (t) => {
  const own = await startRedis(t)
  const engine = engineFor(own.url, { redisTimeoutMs: 500 })
  await engine.connect()
  await engine.bus.produce([Buffer.from('before')])
  await own.kill()
  await sleep(50)
  const started = Date.now()
  const err = await engine.bus.produce([Buffer.from('during')]).then(() => undefined, (e: unknown) => e)
  t.ok(isUnavailable(err), 'unavailable')
  t.ok(Date.now() - started < 600, `failed within the bound (${Date.now() - started} ms)`)
  await t.rejects(engine.ping(), { code: 'BUSGATE_REDIS_UNAVAILABLE' })
  t.equal(engine.state, 'down')

  await own.start()
  for (let i = 0; i < 100 && engine.state !== 'ready'; i++) await sleep(50)
  t.equal(engine.state, 'ready', 'reconnected')
  t.same(await engine.bus.produce([Buffer.from('after')]), { subscribers: 0, queueLength: 1 }, 'the restarted (empty) server took it')
})

t.test('a Redis that stops answering gives 503 within the bound, not a hang', async (t) => {
  const own = await startRedis(t)
  const engine = engineFor(own.url, { redisTimeoutMs: 300 })
  await engine.connect()
  const serverPid = Number(/process_id:(\d+)/.exec(await own.client.info('server'))?.[1])
  process.kill(serverPid, 'SIGSTOP')
  t.teardown(() => { try { process.kill(serverPid, 'SIGCONT') } catch {} })
  const started = Date.now()
  const err = await engine.bus.produce([Buffer.from('x')]).then(() => undefined, (e: unknown) => e)
  const took = Date.now() - started
  t.match(err, { code: 'BUSGATE_REDIS_UNAVAILABLE', message: /did not answer in time/ })
  t.ok(took >= 250 && took < 1000, `answered after the 300 ms bound (${took} ms)`)
  process.kill(serverPid, 'SIGCONT')
})
