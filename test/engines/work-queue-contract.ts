import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Test } from 'tap'
import type { Engine } from '../../src/engines/engine.js'
import { claimOne } from '../helpers/bus.js'
import { freshEngine, frame, type EngineFactory } from './contract-kit.js'

/** The work queue both engines promise: claims, acks, releases, delays, reclaims, subscriber copies. One suite, run against each engine. */
export function workQueueContract (t: Test, make: EngineFactory): void {
  const fresh = async (t: Test): Promise<Engine> => await freshEngine(t, make)

  t.test('a claim waits for a message, and gives up after its timeout', async (t) => {
    const engine = await fresh(t)
    const consumer = engine.queue.consumer(`{test}.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    const started = Date.now()
    t.equal(await claimOne(consumer, 200), null)
    t.ok(Date.now() - started >= 150, 'waited about the timeout')
    const pending = claimOne(consumer, 5000)
    await sleep(100)
    await engine.bus.produce([frame('late')])
    t.equal(String(await pending), 'late')
  })
  t.test('blocked consumers are served in turn, each message to exactly one', async (t) => {
    const engine = await fresh(t)
    const a = engine.queue.consumer(`{test}.processing.a.${randomUUID()}`)
    const b = engine.queue.consumer(`{test}.processing.b.${randomUUID()}`)
    t.teardown(async () => { await a.close(); await b.close() })
    const first = claimOne(a, 5000)
    await sleep(100)
    const second = claimOne(b, 5000)
    await sleep(100)
    await engine.bus.produce([frame('x')])
    await engine.bus.produce([frame('y')])
    t.equal(String(await first), 'x')
    t.equal(String(await second), 'y')
    t.equal(await engine.bus.queueLength(), 0)
  })
  t.test('a claimed message waits in the processing list until acked', async (t) => {
    const engine = await fresh(t)
    const consumer = engine.queue.consumer(`{test}.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    await engine.bus.produce([frame('a'), frame('b')])
    const a = await claimOne(consumer, 1000)
    const b = await claimOne(consumer, 1000)
    t.equal(await consumer.pending(), 2)
    await consumer.ack(a as Buffer)
    t.equal(await consumer.pending(), 1)
    await consumer.ack(b as Buffer)
    t.equal(await consumer.pending(), 0)
    t.equal(await engine.bus.queueLength(), 0)
  })
  t.test('claims that time out leave nothing behind: the next message goes to a live claim', async (t) => {
    const engine = await fresh(t)
    const consumer = engine.queue.consumer(`{test}.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    await Promise.all(Array.from({ length: 20 }, () => claimOne(consumer, 20)))
    const live = claimOne(consumer, 2000)
    await sleep(50)
    await engine.bus.produce([frame('for the live one')])
    t.equal(String(await live), 'for the live one')
    t.equal(await consumer.pending(), 1)
  })
  t.test('a dead consumer\'s processing list is reclaimed: bare messages to the list head, envelopes to retry', async (t) => {
    const engine = await fresh(t)
    const id = randomUUID()
    const processing = `{test}.processing.${id}`
    const retry = `{test}.retry.${id}`
    await engine.bus.produce([frame('a'), frame('b'), frame('c')])
    const dead = engine.queue.consumer(processing, retry, `{test}.delayed.${id}`)
    t.teardown(() => dead.close())
    const a = await claimOne(dead, 1000) as Buffer
    const b = await claimOne(dead, 1000) as Buffer
    // b's envelope comes back to this consumer once its delay is over.
    await dead.delay(b, frame('ENV:b'), 0)
    t.equal(String(await claimOne(dead, 1000)), 'ENV:b')
    t.equal(await dead.pending(), 2)
    t.equal(await engine.queue.reclaim(processing, retry, 'ENV:'), 2)
    t.equal(await dead.pending(), 0)
    t.equal(await engine.bus.queueLength(), 2, 'a is back in the list, ahead of c')
    const next = engine.queue.consumer(`{test}.processing.next.${id}`, retry)
    t.teardown(() => next.close())
    const order: string[] = []
    for (let i = 0; i < 3; i++) order.push(String(await claimOne(next, 1000)))
    t.same(order, ['ENV:b', 'a', 'c'], 'retries first, then the list in its order')
    t.equal(String(a), 'a')
    t.equal(await engine.queue.reclaim(`{test}.processing.none.${id}`, retry, 'ENV:'), 0)
  })
  t.test('a claim takes a fair share of a long list, and acknowledges what it is given as done', async (t) => {
    const engine = await fresh(t)
    const id = randomUUID()
    const consumer = engine.queue.consumer(`{test}.processing.${id}`, `{test}.retry.${id}`)
    t.teardown(() => consumer.close())
    await engine.bus.produce(Array.from({ length: 40 }, (_, i) => frame(`m${i}`)))
    const first = await consumer.claim(1000, { max: 16, sharers: 4 })
    t.same(first.map(String), Array.from({ length: 10 }, (_, i) => `m${i}`), 'a quarter of 40, in order')
    const second = await consumer.claim(1000, { max: 16, sharers: 4, done: first })
    t.same(second.map(String), Array.from({ length: 7 }, (_, i) => `m${i + 10}`), 'a quarter of the 30 left')
    t.equal(await consumer.pending(), 7, 'the first ten were acknowledged with the second claim')
    const capped = await consumer.claim(1000, { max: 3, sharers: 1, done: second })
    t.same(capped.map(String), ['m17', 'm18', 'm19'], 'never more than max')
    await consumer.ack(...capped)
    t.equal(await consumer.pending(), 0)
    await engine.bus.produce([frame('last')])
    t.same((await consumer.claim(1000, { max: 16, sharers: 100 })).map(String), ['m20'], 'at least one, however many share')
  })
  t.test('released messages go back ahead of the list in their order, envelopes to the retry list', async (t) => {
    const engine = await fresh(t)
    const id = randomUUID()
    const retry = `{test}.retry.${id}`
    const consumer = engine.queue.consumer(`{test}.processing.${id}`, retry, `{test}.delayed.${id}`)
    t.teardown(() => consumer.close())
    await engine.bus.produce([frame('a'), frame('b'), frame('c'), frame('d')])
    const [a, b, c] = await consumer.claim(1000, { max: 3 }) as [Buffer, Buffer, Buffer]
    await consumer.delay(c, frame('ENV:c'), 0)
    t.same((await consumer.claim(1000, { max: 1 })).map(String), ['ENV:c'], 'a due envelope comes first')
    await consumer.release([b, frame('ENV:c'), frame('never claimed')], 'ENV:')
    t.equal(await consumer.pending(), 1, 'only a is still held')
    t.equal(await engine.bus.queueLength(), 2, 'b is back ahead of d; nothing unclaimed was added')
    const other = engine.queue.consumer(`{test}.processing.other.${id}`, retry)
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
    const delayed = `{test}.delayed.${id}`
    const one = engine.queue.consumer(`{test}.processing.one.${id}`, `{test}.retry.${id}`, delayed)
    const two = engine.queue.consumer(`{test}.processing.two.${id}`, `{test}.retry.${id}`, delayed)
    t.teardown(async () => { await one.close(); await two.close() })
    await engine.bus.produce([frame('m')])
    const m = await claimOne(one, 1000) as Buffer
    const dueAt = Date.now() + 1500
    await one.delay(m, frame('ENV:m'), 1500)
    t.equal(await one.pending(), 0, 'out of the processing list')
    await one.delay(frame('not held'), frame('ENV:ghost'), 0)
    await engine.bus.produce([frame('queued')])
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
    const consumer = engine.queue.consumer(`{test}.processing.${id}`, `{test}.retry.${id}`, `{test}.delayed.${id}`)
    t.teardown(() => consumer.close())
    await engine.bus.produce([frame('a'), frame('b'), frame('c'), frame('d')])
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
    const consumer = engine.queue.consumer(`{test}.processing.${id}`)
    t.teardown(() => consumer.close())
    await engine.bus.produce([frame('same'), frame('same'), frame('same')])
    const taken = await consumer.claim(1000, { max: 2 })
    t.same(taken.map(String), ['same', 'same'])
    await consumer.release([frame('same'), frame('same'), frame('same')], 'ENV:')
    t.equal(await consumer.pending(), 0, 'the two held copies went back')
    t.equal(await engine.bus.queueLength(), 3, 'and no third one was made up')
    const again = await consumer.claim(1000, { max: 3 })
    await consumer.ack(again[0] as Buffer, again[1] as Buffer)
    t.equal(await consumer.pending(), 1, 'two acks remove two copies')
    await consumer.release([frame('ENV:never held')], 'ENV:')
    t.equal(await claimOne(consumer, 100), null, 'an envelope not held is not put on the retry list')
  })
  t.test('recordHeard: each occurrence of an event once per webhook, whoever records it; the lists bounded', async (t) => {
    const engine = await fresh(t)
    const id = randomUUID()
    const list = (w: string): string => `{test}.sub.${id}.${w}`
    const copy = (w: string, v: string) => ({ webhook: w, list: list(w), value: frame(v) })
    const seenKey = `{test}.heard.${id}`
    // One instance knows webhook a only; another, a moment later, knows a and b.
    t.same(await engine.queue.recordHeard([{ seenKey, occurrence: 1, copies: [copy('a', 'e1 for a')] }], 10_000, 3), { recorded: [true], dropped: 0 })
    t.same(await engine.queue.recordHeard([{ seenKey, occurrence: 1, copies: [copy('a', 'e1 for a again'), copy('b', 'e1 for b')] }], 10_000, 3),
      { recorded: [true], dropped: 0 }, 'b gets its copy; a not a second one')
    t.same(await engine.queue.recordHeard([{ seenKey, occurrence: 1, copies: [copy('a', 'x'), copy('b', 'y')] }], 10_000, 3), { recorded: [false], dropped: 0 })
    // The same bytes heard a second time are a second event.
    t.same(await engine.queue.recordHeard([{ seenKey, occurrence: 2, copies: [copy('a', 'e2 for a')] }], 10_000, 3), { recorded: [true], dropped: 0 })
    t.equal(await engine.store.listLength(list('a')), 2)
    t.equal(await engine.store.listLength(list('b')), 1)
    const more = Array.from({ length: 3 }, (_, i) => ({ seenKey: `${seenKey}.${i}`, occurrence: 1, copies: [copy('a', `more ${i}`)] }))
    t.same(await engine.queue.recordHeard(more, 10_000, 3), { recorded: [true, true, true], dropped: 2 }, 'the oldest go past the bound')
    const taker = engine.queue.consumer(`{test}.processing.${id}`)
    t.same((await taker.claim(10, { max: 10, sources: [list('a')] })).map(String), ['more 0', 'more 1', 'more 2'])
    await engine.store.deleteKeys(list('b'))
    t.equal(await engine.store.listLength(list('b')), 0)
  })
}
