import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Test } from 'tap'
import { LETTER_TRIM_MAX, READ_FRAME_BUDGET, type Engine, type ImportedLetter } from '../../src/engines/engine.js'
import { isUnavailable } from '../../src/errors.js'
import { claimOne } from '../helpers/bus.js'

/** Builds a fresh engine on its own channel and list names; the suite closes it. */
export type EngineFactory = (names: { pubsubChannel: string, prodconsKey: string }) => Promise<Engine>

const frame = (s: string): Buffer => Buffer.from(s)
const RETRY = `test.retry.${randomUUID()}`

async function collect (engine: Engine): Promise<{ got: Buffer[], stop: () => Promise<void>, until: (n: number) => Promise<Buffer[]> }> {
  const got: Buffer[] = []
  const stop = await engine.subscribe({ message: (f) => got.push(f) })
  const until = async (n: number): Promise<Buffer[]> => {
    for (let i = 0; i < 200 && got.length < n; i++) await sleep(10)
    return got
  }
  return { got, stop, until }
}

/** The behaviour both engines promise: one suite, run against each. */
export function engineContract (t: Test, make: EngineFactory): void {
  const fresh = async (t: Test): Promise<Engine> => {
    const id = randomUUID()
    const engine = await make({ pubsubChannel: `test.pubsub.${id}`, prodconsKey: `test.prodcons.${id}` })
    t.teardown(() => engine.close())
    await engine.connect()
    return engine
  }

  t.test('produce writes one copy to the channel and one to the list', async (t) => {
    const engine = await fresh(t)
    t.equal(engine.state, 'ready')
    const sub = await collect(engine)
    const result = await engine.produce([frame('one')])
    t.same(result, { subscribers: 1, queueLength: 1 })
    t.same((await sub.until(1)).map(String), ['one'])
    t.equal(await engine.queueLength(), 1)
    const consumer = engine.consumer(`test.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    t.equal(String(await claimOne(consumer, 1000)), 'one')
    t.equal(await engine.queueLength(), 0)
  })

  t.test('bytes pass unchanged, including ones that are not UTF-8', async (t) => {
    const engine = await fresh(t)
    const sub = await collect(engine)
    const raw = Buffer.from([0x83, 0x00, 0xff, 0xfe, 0x0a, 0x0d, 0xc1])
    await engine.produce([raw])
    t.same((await sub.until(1))[0], raw)
    const consumer = engine.consumer(`test.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    t.same(await claimOne(consumer, 1000), raw)
  })

  t.test('a batch keeps its order on both keys', async (t) => {
    const engine = await fresh(t)
    const sub = await collect(engine)
    const frames = Array.from({ length: 50 }, (_, i) => frame(`m${i}`))
    const result = await engine.produce(frames)
    t.equal(result.queueLength, 50)
    t.same((await sub.until(50)).map(String), frames.map(String))
    const consumer = engine.consumer(`test.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    const claimed: string[] = []
    for (let i = 0; i < 50; i++) claimed.push(String(await claimOne(consumer, 1000)))
    t.same(claimed, frames.map(String))
  })

  t.test('concurrent produces: order of acceptance is order in the list and on the channel', async (t) => {
    const engine = await fresh(t)
    const sub = await collect(engine)
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => engine.produce([frame(`c${i}`)])))
    const byLength = results.map((r, i) => [r.queueLength, `c${i}`] as const).sort((a, b) => a[0] - b[0]).map(([, name]) => name)
    t.same(results.map((r) => r.queueLength).sort((a, b) => a - b), Array.from({ length: 200 }, (_, i) => i + 1), 'each accepted once')
    t.same((await sub.until(200)).map(String), byLength, 'the channel saw them in list order')
    const consumer = engine.consumer(`test.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    const claimed: string[] = []
    for (let i = 0; i < 200; i++) claimed.push(String(await claimOne(consumer, 1000)))
    t.same(claimed, byLength)
  })

  t.test('a claim waits for a message, and gives up after its timeout', async (t) => {
    const engine = await fresh(t)
    const consumer = engine.consumer(`test.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    const started = Date.now()
    t.equal(await claimOne(consumer, 200), null)
    t.ok(Date.now() - started >= 150, 'waited about the timeout')
    const pending = claimOne(consumer, 5000)
    await sleep(100)
    await engine.produce([frame('late')])
    t.equal(String(await pending), 'late')
  })

  t.test('blocked consumers are served in turn, each message to exactly one', async (t) => {
    const engine = await fresh(t)
    const a = engine.consumer(`test.processing.a.${randomUUID()}`)
    const b = engine.consumer(`test.processing.b.${randomUUID()}`)
    t.teardown(async () => { await a.close(); await b.close() })
    const first = claimOne(a, 5000)
    await sleep(100)
    const second = claimOne(b, 5000)
    await sleep(100)
    await engine.produce([frame('x')])
    await engine.produce([frame('y')])
    t.equal(String(await first), 'x')
    t.equal(String(await second), 'y')
    t.equal(await engine.queueLength(), 0)
  })

  t.test('a claimed message waits in the processing list until acked', async (t) => {
    const engine = await fresh(t)
    const consumer = engine.consumer(`test.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    await engine.produce([frame('a'), frame('b')])
    const a = await claimOne(consumer, 1000)
    const b = await claimOne(consumer, 1000)
    t.equal(await consumer.pending(), 2)
    await consumer.ack(a as Buffer)
    t.equal(await consumer.pending(), 1)
    await consumer.ack(b as Buffer)
    t.equal(await consumer.pending(), 0)
    t.equal(await engine.queueLength(), 0)
  })

  t.test('claims that time out leave nothing behind: the next message goes to a live claim', async (t) => {
    const engine = await fresh(t)
    const consumer = engine.consumer(`test.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    await Promise.all(Array.from({ length: 20 }, () => claimOne(consumer, 20)))
    const live = claimOne(consumer, 2000)
    await sleep(50)
    await engine.produce([frame('for the live one')])
    t.equal(String(await live), 'for the live one')
    t.equal(await consumer.pending(), 1)
  })

  t.test('a produce takes 1 to 5000 frames', async (t) => {
    const engine = await fresh(t)
    await t.rejects(engine.produce([]), RangeError)
    await t.rejects(engine.produce(Array.from({ length: 5001 }, () => frame('x'))), RangeError)
    t.equal(await engine.queueLength(), 0)
  })

  t.test('an unsubscribed handler hears nothing more; others still do', async (t) => {
    const engine = await fresh(t)
    const one = await collect(engine)
    const two = await collect(engine)
    await engine.produce([frame('before')])
    await one.until(1)
    await two.until(1)
    await one.stop()
    await engine.produce([frame('after')])
    t.same((await two.until(2)).map(String), ['before', 'after'])
    await sleep(50)
    t.same(one.got.map(String), ['before'])
  })

  t.test('the store: hashes, capped lists, counters', async (t) => {
    const engine = await fresh(t)
    const { store } = engine
    const h = `test.hash.${randomUUID()}`
    const l = `test.list.${randomUUID()}`
    const c = `test.counter.${randomUUID()}`
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
  })

  t.test('a dead consumer\'s processing list is reclaimed: bare messages to the list head, envelopes to retry', async (t) => {
    const engine = await fresh(t)
    const id = randomUUID()
    const processing = `test.processing.${id}`
    const retry = `test.retry.${id}`
    await engine.produce([frame('a'), frame('b'), frame('c')])
    const dead = engine.consumer(processing, retry, `test.delayed.${id}`)
    t.teardown(() => dead.close())
    const a = await claimOne(dead, 1000) as Buffer
    const b = await claimOne(dead, 1000) as Buffer
    // b's envelope comes back to this consumer once its delay is over.
    await dead.delay(b, frame('ENV:b'), 0)
    t.equal(String(await claimOne(dead, 1000)), 'ENV:b')
    t.equal(await dead.pending(), 2)
    t.equal(await engine.reclaim(processing, retry, 'ENV:'), 2)
    t.equal(await dead.pending(), 0)
    t.equal(await engine.queueLength(), 2, 'a is back in the list, ahead of c')
    const next = engine.consumer(`test.processing.next.${id}`, retry)
    t.teardown(() => next.close())
    const order: string[] = []
    for (let i = 0; i < 3; i++) order.push(String(await claimOne(next, 1000)))
    t.same(order, ['ENV:b', 'a', 'c'], 'retries first, then the list in its order')
    t.equal(String(a), 'a')
    t.equal(await engine.reclaim(`test.processing.none.${id}`, retry, 'ENV:'), 0)
  })

  t.test('a claim takes a fair share of a long list, and acknowledges what it is given as done', async (t) => {
    const engine = await fresh(t)
    const id = randomUUID()
    const consumer = engine.consumer(`test.processing.${id}`, `test.retry.${id}`)
    t.teardown(() => consumer.close())
    await engine.produce(Array.from({ length: 40 }, (_, i) => frame(`m${i}`)))
    const first = await consumer.claim(1000, { max: 16, sharers: 4 })
    t.same(first.map(String), Array.from({ length: 10 }, (_, i) => `m${i}`), 'a quarter of 40, in order')
    const second = await consumer.claim(1000, { max: 16, sharers: 4, done: first })
    t.same(second.map(String), Array.from({ length: 7 }, (_, i) => `m${i + 10}`), 'a quarter of the 30 left')
    t.equal(await consumer.pending(), 7, 'the first ten were acknowledged with the second claim')
    const capped = await consumer.claim(1000, { max: 3, sharers: 1, done: second })
    t.same(capped.map(String), ['m17', 'm18', 'm19'], 'never more than max')
    await consumer.ack(...capped)
    t.equal(await consumer.pending(), 0)
    await engine.produce([frame('last')])
    t.same((await consumer.claim(1000, { max: 16, sharers: 100 })).map(String), ['m20'], 'at least one, however many share')
  })

  t.test('released messages go back ahead of the list in their order, envelopes to the retry list', async (t) => {
    const engine = await fresh(t)
    const id = randomUUID()
    const retry = `test.retry.${id}`
    const consumer = engine.consumer(`test.processing.${id}`, retry, `test.delayed.${id}`)
    t.teardown(() => consumer.close())
    await engine.produce([frame('a'), frame('b'), frame('c'), frame('d')])
    const [a, b, c] = await consumer.claim(1000, { max: 3 }) as [Buffer, Buffer, Buffer]
    await consumer.delay(c, frame('ENV:c'), 0)
    t.same((await consumer.claim(1000, { max: 1 })).map(String), ['ENV:c'], 'a due envelope comes first')
    await consumer.release([b, frame('ENV:c'), frame('never claimed')], 'ENV:')
    t.equal(await consumer.pending(), 1, 'only a is still held')
    t.equal(await engine.queueLength(), 2, 'b is back ahead of d; nothing unclaimed was added')
    const other = engine.consumer(`test.processing.other.${id}`, retry)
    t.teardown(() => other.close())
    const order: string[] = []
    for (let i = 0; i < 3; i++) order.push(String(await claimOne(other, 1000)))
    t.same(order, ['ENV:c', 'b', 'd'])
    await consumer.ack(a)
    t.equal(await consumer.pending(), 0)
  })

  t.test('a delayed message is held by nobody until it is due, then comes first, to any consumer of the set', async (t) => {
    const engine = await fresh(t)
    const id = randomUUID()
    const delayed = `test.delayed.${id}`
    const one = engine.consumer(`test.processing.one.${id}`, `test.retry.${id}`, delayed)
    const two = engine.consumer(`test.processing.two.${id}`, `test.retry.${id}`, delayed)
    t.teardown(async () => { await one.close(); await two.close() })
    await engine.produce([frame('m')])
    const m = await claimOne(one, 1000) as Buffer
    const dueAt = Date.now() + 1500
    await one.delay(m, frame('ENV:m'), 1500)
    t.equal(await one.pending(), 0, 'out of the processing list')
    await one.delay(frame('not held'), frame('ENV:ghost'), 0)
    await engine.produce([frame('queued')])
    t.same((await two.claim(1000, { max: 5 })).map(String), ['queued'], 'not before it is due; a value not held is not delayed')
    const waited = await claimOne(two, 5000)
    t.equal(String(waited), 'ENV:m', 'a claim waiting on an empty list wakes when it is due')
    t.ok(Date.now() >= dueAt - 20, 'and not before')
    t.equal(await two.pending(), 2)
    t.equal(await claimOne(one, 100), null, 'taken once')
  })

  t.test('due messages are claimed one per claim, ahead of the queue', async (t) => {
    const engine = await fresh(t)
    const id = randomUUID()
    const consumer = engine.consumer(`test.processing.${id}`, `test.retry.${id}`, `test.delayed.${id}`)
    t.teardown(() => consumer.close())
    await engine.produce([frame('a'), frame('b'), frame('c'), frame('d')])
    const [a, b] = await consumer.claim(1000, { max: 2 }) as [Buffer, Buffer]
    await consumer.delay(a, frame('ENV:a'), 0)
    await consumer.delay(b, frame('ENV:b'), 0)
    await sleep(20)
    t.same((await consumer.claim(1000, { max: 8 })).map(String), ['ENV:a'])
    t.same((await consumer.claim(1000, { max: 8 })).map(String), ['ENV:b'])
    t.same((await consumer.claim(1000, { max: 8 })).map(String), ['c', 'd'], 'then the queue')
  })

  t.test('identical messages are counted, not confused: each release or ack takes one copy', async (t) => {
    const engine = await fresh(t)
    const id = randomUUID()
    const consumer = engine.consumer(`test.processing.${id}`)
    t.teardown(() => consumer.close())
    await engine.produce([frame('same'), frame('same'), frame('same')])
    const taken = await consumer.claim(1000, { max: 2 })
    t.same(taken.map(String), ['same', 'same'])
    await consumer.release([frame('same'), frame('same'), frame('same')], 'ENV:')
    t.equal(await consumer.pending(), 0, 'the two held copies went back')
    t.equal(await engine.queueLength(), 3, 'and no third one was made up')
    const again = await consumer.claim(1000, { max: 3 })
    await consumer.ack(again[0] as Buffer, again[1] as Buffer)
    t.equal(await consumer.pending(), 1, 'two acks remove two copies')
    await consumer.release([frame('ENV:never held')], 'ENV:')
    t.equal(await claimOne(consumer, 100), null, 'an envelope not held is not put on the retry list')
  })

  t.test('the store: a merged hash expires, and a guard keeps it as it is', async (t) => {
    const engine = await fresh(t)
    const key = `test.hash.${randomUUID()}`
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
    await engine.store.setExpiring(`test.live.${id}.1`, 'x', 10_000)
    await engine.store.setExpiring(`test.live.${id}.2`, 'x', 50)
    t.equal(await engine.store.exists(`test.live.${id}.1`), true)
    await sleep(120)
    t.equal(await engine.store.exists(`test.live.${id}.2`), false, 'expired')
    t.same((await engine.store.keys(`test.live.${id}.*`)).sort().filter((k) => k.endsWith('.1')), [`test.live.${id}.1`])
  })

  t.test('setIfAbsent keeps the first value, whoever asks later', async (t) => {
    const engine = await fresh(t)
    const key = `test.once.${randomUUID()}`
    t.equal(await engine.store.setIfAbsent(key, 'first'), 'first')
    t.equal(await engine.store.setIfAbsent(key, 'second'), 'first')
    const racing = await Promise.all(Array.from({ length: 10 }, async (_, i) => await engine.store.setIfAbsent(`${key}.race`, `v${i}`)))
    t.equal(new Set(racing).size, 1, 'concurrent callers all get the same value')
    t.equal(await engine.store.exists(key), true)
  })

  // A bound no letter of these tests reaches.
  const ANY_SIZE = 1024 * 1024
  const letter = (n: number, bytes = frame(`bytes ${n}`)): ImportedLetter => ({ id: `dl_${String(n).padStart(16, '0')}`, meta: `{"n":${n}}`, frame: bytes })
  const drain = async (engine: Engine, t: Test): Promise<string[]> => {
    const consumer = engine.consumer(`test.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    const got: string[] = []
    for (let batch = await consumer.claim(100, { max: 1000 }); batch.length > 0; batch = await consumer.claim(100, { max: 1000 })) got.push(...batch.map(String))
    return got
  }

  t.test('dead letters: added newest first, read by id and by page, bounded, removed', async (t) => {
    const engine = await fresh(t)
    const letters = engine.deadLetterStore(`test.letters.${randomUUID()}`, RETRY)
    t.same(await letters.page(0, 10, ANY_SIZE), { total: 0, letters: [] })
    t.equal(await letters.newest(), 0)
    const raw = Buffer.from([0x00, 0xff, 0xc1, 0x0a])
    for (let n = 1; n <= 5; n++) t.equal(await letters.add(letter(n, n === 3 ? raw : undefined), 4), n === 5 ? 1 : 0, `add ${n}: drops past the bound`)
    t.equal(await letters.count(), 4)
    t.same(await letters.get(letter(3).id, ANY_SIZE), { id: letter(3).id, meta: '{"n":3}', frame: raw, frameBytes: 4 }, 'bytes kept as bytes')
    t.equal(await letters.get(letter(1).id, ANY_SIZE), undefined, 'the oldest went')
    const page = await letters.page(1, 2, ANY_SIZE)
    t.equal(page.total, 4)
    t.same(page.letters.map((l) => l.id), [letter(4).id, letter(3).id], 'newest first, from the offset')
    t.same((await letters.page(3, 10, ANY_SIZE)).letters.map((l) => l.id), [letter(2).id])
    t.same((await letters.page(4, 10, ANY_SIZE)).letters, [])
    const newest = await letters.newest()
    const scanned = await letters.scan(Infinity, 3)
    t.same(scanned.map((l) => [l.id, l.meta]), [[letter(5).id, '{"n":5}'], [letter(4).id, '{"n":4}'], [letter(3).id, '{"n":3}']])
    t.equal(scanned[0]!.seq, newest, 'the newest sequence')
    t.ok(scanned[0]!.seq > scanned[1]!.seq && scanned[1]!.seq > scanned[2]!.seq, 'sequences fall, newest first')
    t.same((await letters.scan(scanned[2]!.seq, 3)).map((l) => l.id), [letter(2).id], 'a scan goes on below the last one seen')
    t.same(await letters.frames([letter(4).id, 'dl_none', letter(3).id], ANY_SIZE), [{ frame: frame('bytes 4'), frameBytes: 7 }, { frame: null, frameBytes: 0 }, { frame: raw, frameBytes: 4 }])
    t.same(await letters.frames([], ANY_SIZE), [])
    t.equal(await letters.remove(letter(4).id), true)
    t.equal(await letters.remove(letter(4).id), false)
    t.equal(await letters.get(letter(4).id, ANY_SIZE), undefined)
    t.same((await letters.page(0, 10, ANY_SIZE)).letters.map((l) => l.id), [letter(5).id, letter(3).id, letter(2).id])
    t.same((await engine.deadLetterStore(`test.letters.${randomUUID()}`, RETRY).page(0, 10, ANY_SIZE)).total, 0, 'each base its own')
  })

  t.test('dead letters: one lowered bound is caught up with over several adds', async (t) => {
    const engine = await fresh(t)
    const letters = engine.deadLetterStore(`test.letters.${randomUUID()}`, RETRY)
    for (let n = 0; n < LETTER_TRIM_MAX + 20; n++) await letters.add(letter(n), 1_000_000)
    t.equal(await letters.add(letter(1_000_001), 10), LETTER_TRIM_MAX, 'no more than LETTER_TRIM_MAX at once')
    t.equal(await letters.count(), 21)
    t.equal(await letters.add(letter(1_000_002), 10), 12)
    t.same((await letters.page(0, 100, ANY_SIZE)).letters.map((l) => l.id).slice(0, 2), [letter(1_000_002).id, letter(1_000_001).id])
    t.equal(await letters.count(), 10)
  })

  t.test('dead letters: redelivered to the end of the consumer list, oldest first, each once', async (t) => {
    const engine = await fresh(t)
    const letters = engine.deadLetterStore(`test.letters.${randomUUID()}`, RETRY)
    await engine.produce([frame('queued before')])
    for (let n = 1; n <= 1200; n++) await letters.add(letter(n), 10_000)
    t.equal(await letters.redeliver(letter(7).id), true)
    t.equal(await letters.redeliver(letter(7).id), false, 'once')
    t.equal(await letters.redeliver('dl_none'), false)
    const upto = await letters.newest()
    await letters.add(letter(5000), 10_000)
    // Three at once, in steps of 100: each step is atomic, so no letter moves twice.
    const runs = await Promise.all([0, 1, 2].map(async () => {
      let moved = 0
      for (let after = -Infinity; ;) {
        const step = await letters.redeliverOldest(after, upto, 100)
        moved += step.moved
        if (step.last === null) return moved
        t.ok(step.last > after, 'the cursor moves on')
        after = step.last
      }
    }))
    t.equal(runs.reduce((a, b) => a + b, 0), 1199, 'each moved once between them')
    t.same((await letters.page(0, 10, ANY_SIZE)).letters.map((l) => l.id), [letter(5000).id], 'the one added after `upto` stays')
    const queued = await drain(engine, t)
    t.equal(queued.length, 1201)
    t.same(queued.slice(0, 2), ['queued before', 'bytes 7'], 'after what was queued')
    t.same(queued.slice(2), Array.from({ length: 1200 }, (_, i) => `bytes ${i + 1}`).filter((b) => b !== 'bytes 7'), 'oldest first')
    const last = await letters.newest()
    t.same(await letters.redeliverOldest(-Infinity, last, 10), { moved: 1, last }, 'the last one looked at')
    t.same(await letters.redeliverOldest(last, last, 10), { moved: 0, last: null }, 'none left to look at')
    t.equal(await letters.count(), 0)
  })

  t.test('recordHeard: each occurrence of an event once per webhook, whoever records it; the lists bounded', async (t) => {
    const engine = await fresh(t)
    const id = randomUUID()
    const list = (w: string): string => `test.sub.${id}.${w}`
    const copy = (w: string, v: string) => ({ webhook: w, list: list(w), value: frame(v) })
    const seenKey = `test.heard.${id}`
    // One instance knows webhook a only; another, a moment later, knows a and b.
    t.same(await engine.recordHeard([{ seenKey, occurrence: 1, copies: [copy('a', 'e1 for a')] }], 10_000, 3), { recorded: [true], dropped: 0 })
    t.same(await engine.recordHeard([{ seenKey, occurrence: 1, copies: [copy('a', 'e1 for a again'), copy('b', 'e1 for b')] }], 10_000, 3),
      { recorded: [true], dropped: 0 }, 'b gets its copy; a not a second one')
    t.same(await engine.recordHeard([{ seenKey, occurrence: 1, copies: [copy('a', 'x'), copy('b', 'y')] }], 10_000, 3), { recorded: [false], dropped: 0 })
    // The same bytes heard a second time are a second event.
    t.same(await engine.recordHeard([{ seenKey, occurrence: 2, copies: [copy('a', 'e2 for a')] }], 10_000, 3), { recorded: [true], dropped: 0 })
    t.equal(await engine.store.listLength(list('a')), 2)
    t.equal(await engine.store.listLength(list('b')), 1)
    const more = Array.from({ length: 3 }, (_, i) => ({ seenKey: `${seenKey}.${i}`, occurrence: 1, copies: [copy('a', `more ${i}`)] }))
    t.same(await engine.recordHeard(more, 10_000, 3), { recorded: [true, true, true], dropped: 2 }, 'the oldest go past the bound')
    const taker = engine.consumer(`test.processing.${id}`)
    t.same((await taker.claim(10, { max: 10, sources: [list('a')] })).map(String), ['more 0', 'more 1', 'more 2'])
    await engine.store.deleteKeys(list('b'))
    t.equal(await engine.store.listLength(list('b')), 0)
  })

  t.test('dead letters: a subscriber copy goes back to the retry list as its envelope, never to the consumer list', async (t) => {
    const engine = await fresh(t)
    const letters = engine.deadLetterStore(`test.letters.${randomUUID()}`, RETRY)
    await letters.add({ ...letter(1), returns: frame('envelope 1') }, 100)
    await letters.add(letter(2), 100)
    await letters.add({ ...letter(3), returns: frame('envelope 3') }, 100)
    t.match(await letters.get(letter(1).id, ANY_SIZE), { frame: frame('bytes 1') }, 'shown with the bytes it had on the bus')
    t.equal(await letters.redeliver(letter(1).id), true)
    t.same((await letters.redeliverOldest(-Infinity, Infinity, 10)).moved, 2)
    t.same(await drain(engine, t), ['bytes 2'], 'the consumer list got the consumer letter only')
    const retry = engine.consumer(`test.processing.${randomUUID()}`, RETRY)
    const back = await retry.claim(10, { max: 10 })
    t.same(back.map(String), ['envelope 1', 'envelope 3'], 'the copies went to the retry list, in order')
    await letters.add({ ...letter(4), returns: frame('envelope 4') }, 100)
    t.equal(await letters.remove(letter(4).id), true)
    t.equal(await letters.count(), 0)
  })

  t.test('dead letters: a letter taken in from the tail of an old list, once, only while that tail is there', async (t) => {
    const engine = await fresh(t)
    const base = `test.letters.${randomUUID()}`
    const letters = engine.deadLetterStore(base, RETRY)
    const old = `${base}`
    // An LPUSHed list: newest first, oldest last.
    for (const v of ['o1', 'o2', 'o3', 'o4', 'o5']) await engine.store.listPushCapped(old, v, 100)
    await letters.add(letter(100), 100)
    t.equal(await letters.importTail(old, ['o2', 'o1'], [letter(2), letter(1)], 100), true)
    t.same(await engine.store.listRange(old, 0, -1), ['o5', 'o4', 'o3'], 'taken off the list')
    t.equal(await letters.importTail(old, ['o2', 'o1'], [letter(2), letter(1)], 100), false, 'not twice: the tail is gone')
    t.equal(await letters.importTail(old, ['o4', 'o9'], [letter(4), letter(9)], 100), false, 'not when the tail differs')
    t.equal(await letters.importTail(old, ['o1', 'o2', 'o3', 'o4', 'o5', 'o6'], Array(6).fill(null), 100), false, 'not when the list is shorter')
    t.equal(await letters.count(), 3, 'nothing changed by the refused ones')
    t.equal(await letters.importTail(old, ['o5', 'o4', 'o3'], [letter(5), null, letter(100)], 2), true, 'an id already kept is not added again')
    t.equal(await engine.store.exists(old), false, 'the emptied list is gone')
    t.same(await engine.store.listRange(`${base}:unreadable`, 0, -1), ['o4'], 'a value holding no letter is kept aside')
    t.same((await letters.page(0, 10, ANY_SIZE)).letters.map((l) => l.id), [letter(5).id, letter(2).id], 'in after what was there, oldest first; the bound holds')
    t.equal(await letters.importTail(`${base}.none`, ['x'], [letter(8)], 100), false)
  })

  t.test('a claim sets values past its bound aside, never returning them; they become letters inside the engine', async (t) => {
    const engine = await fresh(t)
    const id = randomUUID()
    const consumer = engine.consumer(`test.processing.${id}`, `test.retry.${id}`, `test.delayed.${id}`)
    t.teardown(() => consumer.close())
    const huge = Buffer.alloc(5000, 7)
    await engine.produce([frame('small'), huge, frame('after')])
    const asides: number[] = []
    const oversized = { maxBytes: 4096, key: `test.oversized.${id}`, setAside: (n: number) => asides.push(n) }
    const taken: string[] = []
    for (let i = 0; i < 5 && taken.length < 2; i++) taken.push(...(await consumer.claim(100, { max: 8, oversized })).map(String))
    t.same(taken, ['small', 'after'], 'only what is within the bound comes back')
    t.same(asides, [1])
    t.equal(await consumer.pending(), 2, 'the set-aside value is not held either')
    const letters = engine.deadLetterStore(`test.letters.${id}`, RETRY)
    t.same(await letters.adoptHeld(oversized.key, { id: 'dl_0000000000000001', meta: '{"reason":"too_large"}' }, 100), { bytes: 5000, dropped: 0 })
    t.same(await letters.adoptHeld(oversized.key, { id: 'dl_0000000000000002', meta: '{}' }, 100), null, 'then the list is empty')
    const kept = await letters.get('dl_0000000000000001', 2 ** 20)
    t.ok(kept?.frame?.equals(huge), 'its bytes intact')
    t.equal(kept?.meta, '{"reason":"too_large"}')
  })

  t.test('dead letters: bytes past the bound a reader gives stay in the engine, their size read; redelivered whole', async (t) => {
    const engine = await fresh(t)
    const letters = engine.deadLetterStore(`test.letters.${randomUUID()}`, RETRY)
    const large = Buffer.from(Array.from({ length: 5000 }, (_, i) => i % 251))
    const empty = Buffer.alloc(0)
    await letters.add(letter(1), 100)
    await letters.add(letter(2, large), 100)
    await letters.add(letter(3, empty), 100)
    const bound = 4096
    t.same(await letters.get(letter(2).id, bound), { id: letter(2).id, meta: '{"n":2}', frame: null, frameBytes: 5000 }, 'its size, not its bytes')
    t.same(await letters.get(letter(2).id, 5000), { id: letter(2).id, meta: '{"n":2}', frame: large, frameBytes: 5000 }, 'the bound is the most bytes read')
    t.same(await letters.get(letter(3).id, bound), { id: letter(3).id, meta: '{"n":3}', frame: empty, frameBytes: 0 }, 'no bytes to read is not none kept')
    t.same(await letters.page(0, 10, bound), {
      total: 3,
      letters: [
        { id: letter(3).id, meta: '{"n":3}', frame: empty, frameBytes: 0 },
        { id: letter(2).id, meta: '{"n":2}', frame: null, frameBytes: 5000 },
        { id: letter(1).id, meta: '{"n":1}', frame: frame('bytes 1'), frameBytes: 7 }
      ]
    }, 'a page the same way')
    t.same(await letters.frames([letter(1).id, letter(2).id, 'dl_none', letter(3).id], bound), [
      { frame: frame('bytes 1'), frameBytes: 7 }, { frame: null, frameBytes: 5000 }, { frame: null, frameBytes: 0 }, { frame: empty, frameBytes: 0 }
    ], 'and the bytes of a filtered page')
    t.equal(await letters.redeliver(letter(2).id), true)
    const consumer = engine.consumer(`test.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    const queued = await consumer.claim(100, { max: 10 })
    t.equal(queued.length, 1)
    t.ok(queued[0]?.equals(large), 'the bytes too large to read went back whole')
    t.equal(await letters.get(letter(2).id, bound), undefined)
  })

  t.test('dead letters: one read brings in at most READ_FRAME_BUDGET of bytes; the rest are shown by their size', async (t) => {
    const engine = await fresh(t)
    const letters = engine.deadLetterStore(`test.letters.${randomUUID()}`, RETRY)
    const mb = Buffer.alloc(2 ** 20, 1)
    const count = READ_FRAME_BUDGET / mb.byteLength + 4
    for (let n = 1; n <= count; n++) await letters.add(letter(n, mb), 1000)
    const { letters: page } = await letters.page(0, 100, 2 * mb.byteLength)
    t.equal(page.length, count)
    t.equal(page.filter((l) => l.frame !== null).length, READ_FRAME_BUDGET / mb.byteLength, 'as many as the budget holds')
    t.ok(page.every((l) => l.frameBytes === mb.byteLength), 'every size told')
    t.ok((await letters.get(page[count - 1]!.id, 2 * mb.byteLength))?.frame?.equals(mb), 'one read by id brings its own bytes')
    const bytes = await letters.frames(page.map((l) => l.id), 2 * mb.byteLength)
    t.equal(bytes.filter((b) => b.frame !== null).length, READ_FRAME_BUDGET / mb.byteLength, 'the bytes of a filtered page alike')
  })

  t.test('dead letters: a redelivery step moves at most READ_FRAME_BUDGET bytes, one letter at least', async (t) => {
    const engine = await fresh(t)
    const letters = engine.deadLetterStore(`test.letters.${randomUUID()}`, RETRY)
    const mb = Buffer.alloc(2 ** 20, 2)
    const fit = READ_FRAME_BUDGET / mb.byteLength
    for (let n = 1; n <= fit + 4; n++) await letters.add(letter(n, mb), 1000)
    const upto = await letters.newest()
    const first = await letters.redeliverOldest(-Infinity, upto, 100)
    t.equal(first.moved, fit, 'as many as the budget holds')
    const rest = await letters.redeliverOldest(first.last as number, upto, 100)
    t.equal(rest.moved, 4, 'the next step goes on where it stopped')
    t.equal(await letters.count(), 0)
    await letters.add(letter(999, Buffer.alloc(READ_FRAME_BUDGET + 1)), 1000)
    t.equal((await letters.redeliverOldest(-Infinity, await letters.newest(), 100)).moved, 1, 'a letter larger than the budget moves on its own')
  })

  t.test('ping answers; after close, produce fails as unavailable', async (t) => {
    const engine = await fresh(t)
    await t.resolves(engine.ping())
    await engine.close()
    t.equal(engine.state, 'closed')
    const err = await engine.produce([frame('x')]).then(() => undefined, (e: unknown) => e)
    t.ok(isUnavailable(err), 'a 503-coded error')
  })
}
