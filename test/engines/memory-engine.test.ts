import t from 'tap'
import { MemoryEngine } from '../../src/engines/memory-engine.js'
import { engineContract } from './contract.js'
import { claimOne } from '../helpers/bus.js'

const options = { redis: undefined, redisTimeoutMs: 1000, memoryQueueMax: 100_000, memoryQueueMaxBytes: 2 ** 30 }

t.test('memory engine contract', async (t) => {
  engineContract(t, async (names) => new MemoryEngine({ ...options, ...names }))
})

t.test('a full queue refuses the whole produce', async (t) => {
  const engine = new MemoryEngine({ ...options, pubsubChannel: 'p', prodconsKey: 'q', memoryQueueMax: 3 })
  t.teardown(() => engine.close())
  const heard: Buffer[] = []
  await engine.bus.subscribe({ message: (f) => heard.push(f) })
  await engine.bus.produce([Buffer.from('1'), Buffer.from('2')])
  await t.rejects(engine.bus.produce([Buffer.from('3'), Buffer.from('4')]), { code: 'BUSGATE_QUEUE_FULL', statusCode: 503 })
  t.equal(await engine.bus.queueLength(), 2)
  await new Promise((resolve) => setImmediate(resolve))
  t.same(heard.map(String), ['1', '2'], 'nothing of the refused batch was published')
})

t.test('the queue is bounded in bytes too', async (t) => {
  const engine = new MemoryEngine({ ...options, pubsubChannel: 'p', prodconsKey: 'q', memoryQueueMaxBytes: 1024 })
  t.teardown(() => engine.close())
  await engine.bus.produce([Buffer.alloc(1000)])
  await t.rejects(engine.bus.produce([Buffer.alloc(100)]), { code: 'BUSGATE_QUEUE_FULL', message: /1024 bytes/ })
  const consumer = engine.queue.consumer('proc')
  await claimOne(consumer, 10)
  await t.resolves(engine.bus.produce([Buffer.alloc(1000)]), 'room again once consumed')
})

t.test('the caller may reuse its buffer after produce', async (t) => {
  const engine = new MemoryEngine({ ...options, pubsubChannel: 'p', prodconsKey: 'q' })
  t.teardown(() => engine.close())
  const buf = Buffer.from('abc')
  await engine.bus.produce([buf])
  buf.fill(0)
  const consumer = engine.queue.consumer('proc')
  t.equal(String(await claimOne(consumer, 10)), 'abc')
})
