import { encode } from '@msgpack/msgpack'
import t, { type Test } from 'tap'
import { listeningApp } from '../helpers/app.js'
import { uniqueNames, type BusNames } from '../helpers/bus.js'
import { startRedis } from '../helpers/redis.js'
import { dataOf, openStream } from '../helpers/sse.js'
import { until } from '../helpers/wait.js'
import type { Config } from '../../src/config.js'

// Several gateway instances on one Redis, behind a load balancer: a stream read on one resumes on any.
const redis = await startRedis(t)

async function instance (t: Test, names: BusNames, overrides: Partial<Config> = {}) {
  const { app, base } = await listeningApp(t, redis.url, { ...names, ...overrides })
  const post = async (body: unknown, url = '/events') => {
    const res = await app.inject({ method: 'POST', url, payload: body as object })
    if (res.statusCode !== 202) throw new Error(`produce failed: ${res.body}`)
  }
  const metrics = async () => (await app.inject({ method: 'GET', url: '/metrics' })).body
  return { app, base, post, metrics }
}

const events = (n: number, from = 0, name = 'e') => Array.from({ length: n }, (_, i) => ({ event_name: `${name}_${from + i}`, args: [from + i] }))

t.test('read on one instance, missed while away, resumed on another: exactly what was missed, in order, then live', async (t) => {
  const names = uniqueNames()
  const a = await instance(t, names)
  const b = await instance(t, names)
  const first = await openStream(`${a.base}/events/stream`)
  await a.post(events(10), '/events/batch')
  const read = await first.waitFor(10)
  first.close()
  // Published while the client is away, through the other instance and by another producer.
  await b.post(events(5, 10), '/events/batch')
  for (const e of events(5, 15)) await redis.client.publish(names.pubsubChannel, Buffer.from(encode({ ...e, agent_id: 'ag' })))

  const resumed = await openStream(`${b.base}/events/stream`, { 'last-event-id': read[9]!.id! })
  t.teardown(() => resumed.close())
  await b.post({ event_name: 'live' })
  const got = await resumed.waitFor(11)
  t.same(got.map((e) => e.event), [...events(10, 10).map((e) => e.event_name), 'live'], 'the ten missed, then live')
  t.match(await b.metrics(), /busgate_sse_resumes_total\{result="hit"\} 1\n/)
  // Every instance gives an event the same id.
  const onA = await openStream(`${a.base}/events/stream`, { 'last-event-id': read[9]!.id! })
  t.teardown(() => onA.close())
  t.same((await onA.waitFor(11)).map((e) => e.id), got.map((e) => e.id), 'the same ids on the first instance')
})

t.test('an instance that starts later serves the history, and a restart loses none of it', async (t) => {
  const names = uniqueNames()
  const a = await instance(t, names)
  const s = await openStream(`${a.base}/events/stream`)
  await a.post(events(3), '/events/batch')
  const seen = await s.waitFor(3)
  await a.post(events(4, 3), '/events/batch')
  await s.waitFor(7)
  s.close()

  const later = await instance(t, names)
  const resumed = await openStream(`${later.base}/events/stream`, { 'last-event-id': seen[0]!.id! })
  t.teardown(() => resumed.close())
  t.same((await resumed.waitFor(6)).map((e) => e.event), events(6, 1).map((e) => e.event_name), 'read from Redis: this instance never heard them')
})

t.test('old, unknown and foreign ids get one gap first, then live events', async (t) => {
  const names = uniqueNames()
  const a = await instance(t, names, { sseHistory: 5 })
  const b = await instance(t, names, { sseHistory: 5 })
  const s = await openStream(`${a.base}/events/stream`)
  await a.post(events(2), '/events/batch')
  const oldest = (await s.waitFor(1))[0]!.id!
  // Redis keeps at least 4,096 (so that no reader a moment behind misses any): past that.
  const publisher = redis.connect()
  t.teardown(() => publisher.disconnect())
  const pipeline = publisher.pipeline()
  for (let i = 0; i < 4500; i++) pipeline.publish(names.pubsubChannel, Buffer.from(encode({ event_name: 'filler', agent_id: 'a', args: [i] })))
  await pipeline.exec()
  const newest = (await s.waitFor(4502, 20_000))[4501]!.id!
  s.close()

  const cases: Array<[string, string, string]> = [
    ['trimmed from the history', oldest, 'too_old'],
    ['an id no history gave (before the oldest kept)', '1-0', 'too_old'],
    ['from the future', `${Number(newest.split('-')[0]) + 3_600_000}-0`, 'unknown_id'],
    ['garbage', 'garbage', 'unknown_id'],
    ['an id of a per-process history', 'deadbeef:3', 'unknown_id']
  ]
  for (const [name, lastId, reason] of cases) {
    const r = await openStream(`${b.base}/events/stream`, { 'last-event-id': lastId })
    await r.waitFor(1)
    await b.post({ event_name: 'live_after_gap' })
    const got = await r.waitFor(2)
    r.close()
    t.equal(got[0]!.event, 'busgate.gap', `${name}: a gap event first`)
    t.match(dataOf(got[0]!), { reason, last_event_id: lastId }, name)
    t.equal(got[1]!.event, 'live_after_gap', `${name}: then live events`)
  }
  // The history in Redis holds its bound too (here its least).
  // Trimmed as Redis trims cheaply: whole nodes (100 entries by default), never below the least.
  const kept = await redis.client.xlen(`${names.keyPrefix}history`)
  t.ok(kept >= 4096 && kept < 4096 + 200, `${kept}: the least kept in Redis, and a node's worth more at most`)
})

t.test('what came while no instance listened is said to be missing; a resume from the gap goes on cleanly', async (t) => {
  const names = uniqueNames()
  const a = await instance(t, names, { sseLingerMs: 100 })
  const s = await openStream(`${a.base}/events/stream`)
  await a.post({ event_name: 'seen' })
  const lastId = (await s.waitFor(1))[0]!.id!
  s.close()
  await until(async () => (await redis.client.pubsub('NUMSUB', names.pubsubChannel) as [string, number])[1] === 0, 5000)
  await a.post({ event_name: 'nobody_listened' })

  const b = await instance(t, names)
  const resumed = await openStream(`${b.base}/events/stream`, { 'last-event-id': lastId })
  t.teardown(() => resumed.close())
  await b.post({ event_name: 'after' })
  const got = await resumed.waitFor(2)
  t.same(got.map((e) => e.event), ['busgate.gap', 'after'])
  t.match(dataOf(got[0]!), { reason: 'too_old', last_event_id: lastId })
  resumed.close()
  const again = await openStream(`${b.base}/events/stream`, { 'last-event-id': got[0]!.id! })
  t.teardown(() => again.close())
  await b.post({ event_name: 'later' })
  t.same((await again.waitFor(2)).map((e) => e.event), ['after', 'later'], 'from the gap\'s id: what came after it, no second gap')
})

t.test('the recorder stops: another instance goes on recording where it stopped, and no stream misses anything', async (t) => {
  const names = uniqueNames()
  const a = await instance(t, names)
  const b = await instance(t, names)
  const onA = await openStream(`${a.base}/events/stream`)
  const onB = await openStream(`${b.base}/events/stream`)
  t.teardown(() => { onA.close(); onB.close() })
  const recording = /^busgate_history_recorder 1$/m
  await until(async () => recording.test(await a.metrics()) || recording.test(await b.metrics()))
  const [recorder, other, watching] = recording.test(await a.metrics()) ? [a, b, onB] : [b, a, onA]
  t.notMatch(await other.metrics(), recording, 'one records')
  await other.post(events(20), '/events/batch')
  await watching.waitFor(20)
  // The recorder goes away (closing the app lets go of the lease).
  await recorder.app.close()
  for (let i = 20; i < 60; i += 10) await other.post(events(10, i), '/events/batch')
  const got = await watching.waitFor(60, 10_000)
  t.same(got.map((e) => e.event), events(60).map((e) => e.event_name), 'all of them, in order, no gap')
  t.match(await other.metrics(), recording, 'the other records now')
  t.notMatch(await other.metrics(), /busgate_history_recorded_total\{kind="break"\}/, 'and wrote no break')
})

t.test('the local history is per process, as before, with BUSGATE_SSE_SHARED_HISTORY=false', async (t) => {
  const names = uniqueNames()
  const a = await instance(t, names, { sseSharedHistory: false })
  const b = await instance(t, names, { sseSharedHistory: false })
  const s = await openStream(`${a.base}/events/stream`)
  await a.post({ event_name: 'one' })
  const id = (await s.waitFor(1))[0]!.id!
  s.close()
  t.match(id, /^[0-9a-f]{8}:\d+$/)
  const r = await openStream(`${b.base}/events/stream`, { 'last-event-id': id })
  t.teardown(() => r.close())
  t.match(dataOf((await r.waitFor(1))[0]!), { reason: 'other_instance' })
  t.equal(await redis.client.exists(`${names.keyPrefix}history`), 0, 'nothing in Redis')
})

t.test('a burst far larger than the history reaches a reading stream whole: the reader keeps ahead of the trimming', async (t) => {
  const names = uniqueNames()
  const a = await instance(t, names)
  const s = await openStream(`${a.base}/events/stream`)
  t.teardown(() => s.close())
  const publisher = redis.connect()
  t.teardown(() => publisher.disconnect())
  const pipeline = publisher.pipeline()
  for (let i = 0; i < 40_000; i++) pipeline.publish(names.pubsubChannel, Buffer.from(encode({ event_name: 'burst', agent_id: 'a', args: [i] })))
  await pipeline.exec()
  const got = await s.waitFor(40_000, 60_000)
  t.equal(got.filter((e) => e.event === 'busgate.gap').length, 0, 'no gap')
  t.ok(got.every((e, i) => (dataOf(e) as { args: number[] }).args[0] === i), 'all 40,000 in order')
  t.notMatch(await a.metrics(), /busgate_history_recorded_total\{kind="break"\} [2-9]/, 'no break but the first')
})
