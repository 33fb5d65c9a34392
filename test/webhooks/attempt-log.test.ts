import t from 'tap'
import { MemoryEngine } from '../../src/engines/memory-engine.js'
import { ATTEMPT_LOG_MAX, AttemptLog } from '../../src/webhooks/attempt-log.js'

const engine = new MemoryEngine({ redis: undefined, redisTimeoutMs: 1000, memoryQueueMax: 1000, memoryQueueMaxBytes: 2 ** 20, pubsubChannel: 'p', prodconsKey: 'q' })
t.teardown(async () => { await engine.close() })

const attempt = (n: number) => ({ at: new Date(n * 1000).toISOString(), message_id: `msg_${n}`, event_name: 'kernel_started', status: 204, latency_ms: n, error: null })

t.test('more lines than the log keeps between two flushes: the newest are written, newest first, and the list stays capped', async (t) => {
  const log = new AttemptLog(engine.store, 'al:')
  for (let n = 0; n < ATTEMPT_LOG_MAX + 50; n++) log.record('wh_a', attempt(n))
  log.record('wh_b', attempt(7))
  await log.flush()
  const a = await log.read('wh_a')
  t.equal(a.length, ATTEMPT_LOG_MAX)
  t.same(a.map((l) => l.latency_ms), Array.from({ length: ATTEMPT_LOG_MAX }, (_, i) => ATTEMPT_LOG_MAX + 49 - i), 'the newest 100, newest first')
  t.same((await log.read('wh_b')).map((l) => l.message_id), ['msg_7'], 'each webhook its own')
  log.record('wh_a', attempt(1000))
  await log.flush()
  const again = await log.read('wh_a')
  t.equal(again.length, ATTEMPT_LOG_MAX, 'still capped after the next flush')
  t.equal(again[0]!.message_id, 'msg_1000')
  t.equal(again[1]!.message_id, `msg_${ATTEMPT_LOG_MAX + 49}`, 'the earlier flush behind it')
})

t.test('lines of a webhook deleted before the flush are dropped; a hand-edited line is left out and reported', async (t) => {
  let invalid = 0
  const log = new AttemptLog(engine.store, 'al2:', () => { invalid++ })
  log.record('wh_gone', attempt(1))
  await log.flush((id) => id !== 'wh_gone')
  t.same(await log.read('wh_gone'), [])
  await engine.store.listPushCapped('al2:attempts:wh_x', ['{"status":"lots"}', JSON.stringify(attempt(2))], ATTEMPT_LOG_MAX)
  t.same((await log.read('wh_x')).map((l) => l.message_id), ['msg_2'])
  t.equal(invalid, 1)
})
