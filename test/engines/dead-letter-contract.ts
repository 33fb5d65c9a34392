import { randomUUID } from 'node:crypto'
import type { Test } from 'tap'
import { LETTER_TRIM_MAX, READ_FRAME_BUDGET, type Engine, type ImportedLetter } from '../../src/engines/engine.js'
import { freshEngine, RETRY, frame, type EngineFactory } from './contract-kit.js'

/** The dead letters both engines promise: bounded, ordered, read under a bound, redelivered once. One suite, run against each engine. */
export function deadLetterContract (t: Test, make: EngineFactory): void {
  const fresh = async (t: Test): Promise<Engine> => await freshEngine(t, make)

  // A bound no letter of these tests reaches.
  const ANY_SIZE = 1024 * 1024
  const letter = (n: number, bytes = frame(`bytes ${n}`)): ImportedLetter => ({ id: `dl_${String(n).padStart(16, '0')}`, meta: `{"n":${n}}`, frame: bytes })
  const drain = async (engine: Engine, t: Test): Promise<string[]> => {
    const consumer = engine.queue.consumer(`{test}.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    const got: string[] = []
    for (let batch = await consumer.claim(100, { max: 1000 }); batch.length > 0; batch = await consumer.claim(100, { max: 1000 })) got.push(...batch.map(String))
    return got
  }
  t.test('dead letters: added newest first, read by id and by page, bounded, removed', async (t) => {
    const engine = await fresh(t)
    const letters = engine.queue.deadLetterStore(`{test}.letters.${randomUUID()}`, RETRY)
    t.same(await letters.page(0, 10, ANY_SIZE), { total: 0, letters: [] })
    t.equal(await letters.newest(), 0)
    const raw = Buffer.from([0x00, 0xff, 0xc1, 0x0a])
    for (let n = 1; n <= 5; n++) t.equal(await letters.add(letter(n, n === 3 ? raw : undefined), 4), n === 5 ? 1 : 0, `add ${n}: drops past the bound`)
    t.equal(await letters.count(), 4)
    t.equal(await letters.add({ ...letter(4), meta: '{"again":true}' }, 4), 0, 'an add sent again')
    t.same((await letters.page(0, 10, ANY_SIZE)).letters.map((l) => [l.id, l.meta]), [5, 4, 3, 2].map((n) => [letter(n).id, `{"n":${n}}`]), 'changes nothing: same place, same letter')
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
    t.same((await engine.queue.deadLetterStore(`{test}.letters.${randomUUID()}`, RETRY).page(0, 10, ANY_SIZE)).total, 0, 'each base its own')
  })
  t.test('dead letters: one lowered bound is caught up with over several adds', async (t) => {
    const engine = await fresh(t)
    const letters = engine.queue.deadLetterStore(`{test}.letters.${randomUUID()}`, RETRY)
    for (let n = 0; n < LETTER_TRIM_MAX + 20; n++) await letters.add(letter(n), 1_000_000)
    t.equal(await letters.add(letter(1_000_001), 10), LETTER_TRIM_MAX, 'no more than LETTER_TRIM_MAX at once')
    t.equal(await letters.count(), 21)
    t.equal(await letters.add(letter(1_000_002), 10), 12)
    t.same((await letters.page(0, 100, ANY_SIZE)).letters.map((l) => l.id).slice(0, 2), [letter(1_000_002).id, letter(1_000_001).id])
    t.equal(await letters.count(), 10)
  })
  t.test('dead letters: redelivered to the end of the consumer list, oldest first, each once', async (t) => {
    const engine = await fresh(t)
    const letters = engine.queue.deadLetterStore(`{test}.letters.${randomUUID()}`, RETRY)
    await engine.bus.produce([frame('queued before')])
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
  t.test('dead letters: a subscriber copy goes back to the retry list as its envelope, never to the consumer list', async (t) => {
    const engine = await fresh(t)
    const letters = engine.queue.deadLetterStore(`{test}.letters.${randomUUID()}`, RETRY)
    await letters.add({ ...letter(1), returns: frame('envelope 1') }, 100)
    await letters.add(letter(2), 100)
    await letters.add({ ...letter(3), returns: frame('envelope 3') }, 100)
    t.match(await letters.get(letter(1).id, ANY_SIZE), { frame: frame('bytes 1') }, 'shown with the bytes it had on the bus')
    t.equal(await letters.redeliver(letter(1).id), true)
    t.same((await letters.redeliverOldest(-Infinity, Infinity, 10)).moved, 2)
    t.same(await drain(engine, t), ['bytes 2'], 'the consumer list got the consumer letter only')
    const retry = engine.queue.consumer(`{test}.processing.${randomUUID()}`, RETRY)
    const back = await retry.claim(10, { max: 10 })
    t.same(back.map(String), ['envelope 1', 'envelope 3'], 'the copies went to the retry list, in order')
    await letters.add({ ...letter(4), returns: frame('envelope 4') }, 100)
    t.equal(await letters.remove(letter(4).id), true)
    t.equal(await letters.count(), 0)
  })
  t.test('dead letters: a letter taken in from the tail of an old list, once, only while that tail is there', async (t) => {
    const engine = await fresh(t)
    const base = `{test}.letters.${randomUUID()}`
    const letters = engine.queue.deadLetterStore(base, RETRY)
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
    const consumer = engine.queue.consumer(`{test}.processing.${id}`, `{test}.retry.${id}`, `{test}.delayed.${id}`)
    t.teardown(() => consumer.close())
    const huge = Buffer.alloc(5000, 7)
    await engine.bus.produce([frame('small'), huge, frame('after')])
    const asides: number[] = []
    const oversized = { maxBytes: 4096, key: `{test}.oversized.${id}`, setAside: (n: number) => asides.push(n) }
    const taken: string[] = []
    for (let i = 0; i < 5 && taken.length < 2; i++) taken.push(...(await consumer.claim(100, { max: 8, oversized })).map(String))
    t.same(taken, ['small', 'after'], 'only what is within the bound comes back')
    t.same(asides, [1])
    t.equal(await consumer.pending(), 2, 'the set-aside value is not held either')
    const letters = engine.queue.deadLetterStore(`{test}.letters.${id}`, RETRY)
    t.same(await letters.adoptHeld(oversized.key, { id: 'dl_0000000000000001', meta: '{"reason":"too_large"}' }, 100), { bytes: 5000, dropped: 0 })
    t.same(await letters.adoptHeld(oversized.key, { id: 'dl_0000000000000002', meta: '{}' }, 100), null, 'then the list is empty')
    const kept = await letters.get('dl_0000000000000001', 2 ** 20)
    t.ok(kept?.frame?.equals(huge), 'its bytes intact')
    t.equal(kept?.meta, '{"reason":"too_large"}')
  })
  t.test('dead letters: bytes past the bound a reader gives stay in the engine, their size read; redelivered whole', async (t) => {
    const engine = await fresh(t)
    const letters = engine.queue.deadLetterStore(`{test}.letters.${randomUUID()}`, RETRY)
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
    const consumer = engine.queue.consumer(`{test}.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    const queued = await consumer.claim(100, { max: 10 })
    t.equal(queued.length, 1)
    t.ok(queued[0]?.equals(large), 'the bytes too large to read went back whole')
    t.equal(await letters.get(letter(2).id, bound), undefined)
  })
  t.test('dead letters: one read brings in at most READ_FRAME_BUDGET of bytes; the rest are shown by their size', async (t) => {
    const engine = await fresh(t)
    const letters = engine.queue.deadLetterStore(`{test}.letters.${randomUUID()}`, RETRY)
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
    const letters = engine.queue.deadLetterStore(`{test}.letters.${randomUUID()}`, RETRY)
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
}
