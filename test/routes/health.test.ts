import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { testApp } from '../helpers/app.js'
import { uniqueNames } from '../helpers/bus.js'
import { startRedis } from '../helpers/redis.js'

const redis = await startRedis(t)

t.test('liveness and readiness', async (t) => {
  const app = await testApp(t, redis.url, uniqueNames())
  t.same((await app.inject({ method: 'GET', url: '/healthz' })).json(), { status: 'ok' })
  const ready = await app.inject({ method: 'GET', url: '/readyz' })
  t.equal(ready.statusCode, 200)
  t.same(ready.json(), { status: 'ready', engine: 'redis', bus: 'up' })
})

t.test('metrics: events produced, rejected by reason, bus state, queue length, latency', async (t) => {
  const app = await testApp(t, redis.url, uniqueNames())
  await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'a' } })
  await app.inject({ method: 'POST', url: '/events', headers: { 'content-type': 'application/msgpack' }, payload: Buffer.from('83aa6576656e745f6e616d65a161a86167656e745f6964a162a46172677390', 'hex') })
  await app.inject({ method: 'POST', url: '/events/batch', payload: [{ event_name: 'a' }, { event_name: 'b' }, { event_name: 'c' }] })
  await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'A' } })
  await app.inject({ method: 'POST', url: '/events', headers: { 'content-type': 'text/plain' }, payload: 'x' })
  const res = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /text\/plain; version=0.0.4/)
  const text = res.body
  t.match(text, /busgate_events_produced_total\{route="single",format="json"\} 1\n/)
  t.match(text, /busgate_events_produced_total\{route="single",format="msgpack"\} 1\n/)
  t.match(text, /busgate_events_produced_total\{route="batch",format="json"\} 3\n/)
  t.match(text, /busgate_events_rejected_total\{reason="BUSGATE_VALIDATION_FAILED"\} 1\n/)
  t.match(text, /busgate_events_rejected_total\{reason="BUSGATE_UNSUPPORTED_MEDIA_TYPE"\} 1\n/)
  t.match(text, /busgate_bus_up\{engine="redis"\} 1\n/)
  t.match(text, /busgate_queue_length 5\n/)
  t.match(text, /busgate_http_request_duration_seconds_count\{method="POST",route="\/events",status_code="202"\} 2\n/)
  t.match(text, /busgate_process_resident_memory_bytes \d+/)
})

t.test('metrics while Redis is down still answer, with the bus down', async (t) => {
  const own = await startRedis(t)
  const app = await testApp(t, own.url, { ...uniqueNames(), redisTimeoutMs: 300 })
  await own.kill()
  // The gateway notices when the socket closes, a moment after the kill.
  let res = await app.inject({ method: 'GET', url: '/metrics' })
  for (let i = 0; i < 100 && !res.body.includes('busgate_bus_up{engine="redis"} 0'); i++) {
    await sleep(20)
    res = await app.inject({ method: 'GET', url: '/metrics' })
  }
  t.equal(res.statusCode, 200)
  t.match(res.body, /busgate_bus_up\{engine="redis"\} 0\n/)
  t.match(res.body, /busgate_queue_length NaN\n/i, 'unknown, not a stale or false number')
})
