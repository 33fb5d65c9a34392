import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Test } from 'tap'
import type { Engine } from '../../src/engines/engine.js'
import { claimOne } from '../helpers/bus.js'
import { freshEngine, collect, frame, type ContractOptions, type EngineFactory } from './contract-kit.js'

/** The bus both engines promise: produce, subscribe, the consumer list it fills. One suite, run against each engine. */
export function busContract (t: Test, make: EngineFactory, { nodeSubscribers = false }: ContractOptions = {}): void {
  const fresh = async (t: Test): Promise<Engine> => await freshEngine(t, make)

  t.test('produce writes one copy to the channel and one to the list', async (t) => {
    const engine = await fresh(t)
    t.equal(engine.state, 'ready')
    const sub = await collect(engine)
    const result = await engine.bus.produce([frame('one')])
    t.equal(result.queueLength, 1)
    // A cluster's PUBLISH counts the subscribers of its own node only, wherever the others are.
    if (nodeSubscribers) t.ok(result.subscribers <= 1, 'subscribers on the node that took the write')
    else t.equal(result.subscribers, 1, 'the one subscriber')
    t.same((await sub.until(1)).map(String), ['one'])
    t.equal(await engine.bus.queueLength(), 1)
    const consumer = engine.queue.consumer(`{test}.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    t.equal(String(await claimOne(consumer, 1000)), 'one')
    t.equal(await engine.bus.queueLength(), 0)
  })
  t.test('bytes pass unchanged, including ones that are not UTF-8', async (t) => {
    const engine = await fresh(t)
    const sub = await collect(engine)
    const raw = Buffer.from([0x83, 0x00, 0xff, 0xfe, 0x0a, 0x0d, 0xc1])
    await engine.bus.produce([raw])
    t.same((await sub.until(1))[0], raw)
    const consumer = engine.queue.consumer(`{test}.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    t.same(await claimOne(consumer, 1000), raw)
  })
  t.test('a batch keeps its order on both keys', async (t) => {
    const engine = await fresh(t)
    const sub = await collect(engine)
    const frames = Array.from({ length: 50 }, (_, i) => frame(`m${i}`))
    const result = await engine.bus.produce(frames)
    t.equal(result.queueLength, 50)
    t.same((await sub.until(50)).map(String), frames.map(String))
    const consumer = engine.queue.consumer(`{test}.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    const claimed: string[] = []
    for (let i = 0; i < 50; i++) claimed.push(String(await claimOne(consumer, 1000)))
    t.same(claimed, frames.map(String))
  })
  t.test('frames that are views of one buffer pass as themselves: back to back, out of order, apart, and alone', async (t) => {
    const engine = await fresh(t)
    const sub = await collect(engine)
    const whole = Buffer.from('AAAbbbbCCdEEEEEEfff')
    const at = (start: number, end: number): Buffer => whole.subarray(start, end)
    const sets = [
      [at(0, 3), at(3, 7), at(7, 9)], // back to back
      [at(3, 7), at(0, 3)], // out of order
      [at(0, 3), at(7, 9), at(9, 10)], // a gap
      [at(10, 16), Buffer.from('own'), at(16, 19)], // mixed with a buffer of its own
      [at(9, 10)] // alone
    ]
    for (const frames of sets) await engine.bus.produce(frames)
    const want = sets.flat().map(String)
    t.same((await sub.until(want.length)).map(String), want, 'the channel got each frame, exactly')
    const consumer = engine.queue.consumer(`{test}.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    const claimed: string[] = []
    for (let i = 0; i < want.length; i++) claimed.push(String(await claimOne(consumer, 1000)))
    t.same(claimed, want, 'and the list')
  })
  t.test('concurrent produces: order of acceptance is order in the list and on the channel', async (t) => {
    const engine = await fresh(t)
    const sub = await collect(engine)
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => engine.bus.produce([frame(`c${i}`)])))
    const byLength = results.map((r, i) => [r.queueLength, `c${i}`] as const).sort((a, b) => a[0] - b[0]).map(([, name]) => name)
    t.same(results.map((r) => r.queueLength).sort((a, b) => a - b), Array.from({ length: 200 }, (_, i) => i + 1), 'each accepted once')
    t.same((await sub.until(200)).map(String), byLength, 'the channel saw them in list order')
    const consumer = engine.queue.consumer(`{test}.processing.${randomUUID()}`)
    t.teardown(() => consumer.close())
    const claimed: string[] = []
    for (let i = 0; i < 200; i++) claimed.push(String(await claimOne(consumer, 1000)))
    t.same(claimed, byLength)
  })
  t.test('a produce takes 1 to 5000 frames', async (t) => {
    const engine = await fresh(t)
    await t.rejects(engine.bus.produce([]), RangeError)
    await t.rejects(engine.bus.produce(Array.from({ length: 5001 }, () => frame('x'))), RangeError)
    t.equal(await engine.bus.queueLength(), 0)
  })
  t.test('an unsubscribed handler hears nothing more; others still do', async (t) => {
    const engine = await fresh(t)
    const one = await collect(engine)
    const two = await collect(engine)
    await engine.bus.produce([frame('before')])
    await one.until(1)
    await two.until(1)
    await one.stop()
    await engine.bus.produce([frame('after')])
    t.same((await two.until(2)).map(String), ['before', 'after'])
    await sleep(50)
    t.same(one.got.map(String), ['before'])
  })
}
