import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Test } from 'tap'
import type { Engine } from '../../src/engines/engine.js'
import { freshEngine, type EngineFactory } from './contract-kit.js'

/** The store both engines promise: busgate's own hashes, lists, counters and expiring keys. One suite, run against each engine. */
export function storeContract (t: Test, make: EngineFactory): void {
  const fresh = async (t: Test): Promise<Engine> => await freshEngine(t, make)

  t.test('the store: hashes, capped lists, counters', async (t) => {
    const engine = await fresh(t)
    const { store } = engine
    const h = `{test}.hash.${randomUUID()}`
    const l = `{test}.list.${randomUUID()}`
    const c = `{test}.counter.${randomUUID()}`
    t.equal(await store.hashGet(h, 'a'), null)
    await store.hashSet(h, 'a', '1')
    await store.hashSet(h, 'b', '2')
    await store.hashSet(h, 'a', '3')
    t.equal(await store.hashGet(h, 'a'), '3')
    t.same(await store.hashGetAll(h), { a: '3', b: '2' })
    t.equal(await store.hashDelete(h, 'a'), true)
    t.equal(await store.hashDelete(h, 'a'), false)
    t.same(await store.hashGetAll(h), { b: '2' })
    t.same(await store.hashGetAll(`${h}.none`), {})

    for (const v of ['1', '2', '3', '4']) await store.listPushCapped(l, v, 3)
    t.equal(await store.listPushCapped(l, '5', 3), 4, 'the length before trimming')
    t.same(await store.listRange(l, 0, -1), ['5', '4', '3'], 'newest first, the oldest trimmed')
    t.same(await store.listRange(l, 1, 1), ['4'])
    t.equal(await store.listLength(l), 3)
    t.equal(await store.listRemove(l, '4'), 1)
    t.same(await store.listRange(l, 0, -1), ['5', '3'])

    t.equal(await store.increment(c), 1)
    t.equal(await store.increment(c), 2)
    t.equal(await store.hashIncrement(h, 'n', 64), 64)
    t.equal(await store.hashIncrement(h, 'n', 64), 128)
    t.equal(await store.hashGet(h, 'n'), '128', 'a field as HINCRBY leaves it')
  })
  t.test('the store: a merged hash expires, and a guard keeps it as it is', async (t) => {
    const engine = await fresh(t)
    const key = `{test}.hash.${randomUUID()}`
    t.equal(await engine.store.hashMerge(key, { a: '1' }, { b: 'default', a: 'not this' }, 10_000), true)
    t.same(await engine.store.hashGetAll(key), { a: '1', b: 'default' })
    t.equal(await engine.store.hashMerge(key, { b: '2' }, { c: '3' }, 10_000, { field: 'a', values: ['0', '1'] }), false, 'guarded')
    t.same(await engine.store.hashGetAll(key), { a: '1', b: 'default' })
    t.equal(await engine.store.hashMerge(key, { b: '2' }, {}, 80, { field: 'a', values: ['0'] }), true)
    t.same(await engine.store.hashGetAll(key), { a: '1', b: '2' })
    await sleep(150)
    t.same(await engine.store.hashGetAll(key), {}, 'expired with the last ttl')
    const rising = { field: 'state', values: ['ended'], rising: 'n' }
    t.equal(await engine.store.hashMerge(key, { n: '5', note: 'five' }, {}, 10_000, rising), true, 'a new hash')
    t.equal(await engine.store.hashMerge(key, { n: '3', note: 'three' }, {}, 10_000, rising), false, 'no going back')
    t.equal(await engine.store.hashMerge(key, { n: '5.5', note: 'more' }, {}, 10_000, rising), true)
    t.equal(await engine.store.hashMerge(key, { note: 'no number brought' }, {}, 10_000, rising), true)
    t.same(await engine.store.hashGetAll(key), { n: '5.5', note: 'no number brought' })
  })
  t.test('the store: expiring keys and key listing', async (t) => {
    const engine = await fresh(t)
    const id = randomUUID()
    await engine.store.setExpiring(`{test}.live.${id}.1`, 'x', 10_000)
    await engine.store.setExpiring(`{test}.live.${id}.2`, 'x', 50)
    t.equal(await engine.store.exists(`{test}.live.${id}.1`), true)
    await sleep(120)
    t.equal(await engine.store.exists(`{test}.live.${id}.2`), false, 'expired')
    t.same((await engine.store.keys(`{test}.live.${id}.*`)).sort().filter((k) => k.endsWith('.1')), [`{test}.live.${id}.1`])
  })
  t.test('slots under shared limits: at most so many held at once, a rate evenly spaced, a dead holder\'s place freed', async (t) => {
    const engine = await fresh(t)
    const { store } = engine
    const id = randomUUID()
    const [held, rate] = [`{test}.inflight.${id}`, `{test}.rate.${id}`]
    t.equal(await store.slotAcquire(held, rate, 'a', 2, 0, 60_000), 0)
    t.equal(await store.slotAcquire(held, rate, 'b', 2, 0, 60_000), 0)
    t.equal(await store.slotAcquire(held, rate, 'c', 2, 0, 60_000), -1, 'two held: the third waits')
    await store.slotRelease(held, 'a')
    t.equal(await store.slotAcquire(held, rate, 'c', 2, 0, 60_000), 0, 'one given back: taken')
    const short = `{test}.inflight.short.${id}`
    t.equal(await store.slotAcquire(short, rate, 'x', 1, 0, 50), 0)
    await sleep(80)
    t.equal(await store.slotAcquire(short, rate, 'y', 1, 0, 50), 0, 'a holder that never gave it back loses it after its ttl')
    t.equal(await store.slotAcquire(held, rate, 'r1', 0, 10, 60_000), 0, 'a rate of 10/s: the first at once')
    const wait = await store.slotAcquire(held, rate, 'r2', 0, 10, 60_000)
    t.ok(wait > 50 && wait <= 100, `the next in about 100 ms (${wait})`)
    await sleep(wait + 5)
    t.equal(await store.slotAcquire(held, rate, 'r2', 0, 10, 60_000), 0, 'then it is allowed')
    t.equal(await store.slotAcquire(held, rate, 'r3', 0, 0, 60_000), 0, 'no bound: always')
  })

  t.test('setIfAbsent keeps the first value, whoever asks later', async (t) => {
    const engine = await fresh(t)
    const key = `{test}.once.${randomUUID()}`
    t.equal(await engine.store.setIfAbsent(key, 'first'), 'first')
    t.equal(await engine.store.setIfAbsent(key, 'second'), 'first')
    const racing = await Promise.all(Array.from({ length: 10 }, async (_, i) => await engine.store.setIfAbsent(`${key}.race`, `v${i}`)))
    t.equal(new Set(racing).size, 1, 'concurrent callers all get the same value')
    t.equal(await engine.store.exists(key), true)
  })
}
