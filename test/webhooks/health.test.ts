import t from 'tap'
import { testApp } from '../helpers/app.js'
import { uniqueNames } from '../helpers/bus.js'
import { startRedis } from '../helpers/redis.js'
import { startReceiver } from '../helpers/receiver.js'
import { until } from '../helpers/wait.js'
import { HEALTHY, Outcomes, applyOutcomes, viewHealth } from '../../src/webhooks/health.js'

const redis = await startRedis(t)
const rules = { circuitFailures: 3, circuitCooldownMs: 1000, disableAfterMs: 10_000 }

t.test('health rules, without Redis: failures count until a success, the circuit opens at the threshold, a long failure disables', async (t) => {
  const failed = (at: number) => ({ kind: 'failed' as const, at, status: 500 })
  let r = applyOutcomes(HEALTHY, new Outcomes().add(failed(1)).add(failed(2)), rules, 2)
  t.match(r, { opened: false, disable: false, record: { failures: 2, failing_since: 1, last_status: 500, set_aside_until: 0 } })
  r = applyOutcomes(r.record, new Outcomes().add(failed(3)), rules, 3)
  t.match(r, { opened: true, record: { failures: 3, set_aside_until: 1003 } }, 'the third failure sets it aside')
  t.equal(viewHealth(r.record, true, 500).state, 'set_aside')
  t.equal(viewHealth(r.record, true, 2000).state, 'failing', 'probed again after the cooldown')
  t.equal(viewHealth(r.record, false, 2000).state, 'disabled')
  // What two instances summed up at once: one saw a success after a failure, the other only failures.
  const mixed = new Outcomes().add(failed(10)).add({ kind: 'delivered', at: 11, status: 204 }).add(failed(12))
  r = applyOutcomes(r.record, mixed, rules, 12)
  t.match(r, { closed: true, record: { failures: 1, failing_since: 12, set_aside_until: 0, last_status: 500 } }, 'a success resets the count')
  r = applyOutcomes(r.record, new Outcomes().add({ kind: 'throttled', at: 13, status: 429, untilMs: 5000 }), rules, 13)
  t.match(r.record, { failures: 1, not_before: 5000 }, 'a Retry-After pauses without counting as a failure')
  t.equal(viewHealth(r.record, true, 14).state, 'set_aside')
  t.equal(applyOutcomes(HEALTHY, new Outcomes().add(failed(0)), rules, 10_000).disable, true, 'failing for disableAfterMs without a success')
  t.same(new Outcomes().add(failed(1)).merge(new Outcomes().add({ kind: 'delivered', at: 2, status: 200 }).add(failed(3))),
    new Outcomes().add(failed(1)).add({ kind: 'delivered', at: 2, status: 200 }).add(failed(3)), 'merging two summaries is adding their outcomes in turn')
})

t.test('two instances share one health: both show it, neither delivers to a webhook set aside, and a webhook failing too long is disabled', async (t) => {
  const names = uniqueNames()
  // Retried only after 10 s: one event, one failure, for as long as the test looks.
  const config = { ...names, webhookAllowPrivate: true, webhookBackoffMs: 10_000, webhookBackoffMaxMs: 10_000, webhookCircuitFailures: 3, webhookCircuitCooldownMs: 60_000 }
  const a = await testApp(t, redis.url, config)
  const b = await testApp(t, redis.url, config)
  const broken = await startReceiver(t, () => ({ status: 500 }))
  const created = await a.inject({ method: 'POST', url: '/webhooks', payload: { url: broken.url, event_names: ['kernel_*'] } })
  t.equal(created.statusCode, 201)
  const { id } = created.json() as { id: string }
  t.match(created.json(), { health: { state: 'healthy', consecutive_failures: 0, last_attempt_at: null, last_status: null, set_aside_until: null } })
  const health = async (app: typeof a) => (await app.inject({ method: 'GET', url: `/webhooks/${id}` })).json().health
  await a.inject({ method: 'POST', url: '/events', payload: { event_name: 'kernel_started', args: [1] } })
  await until(async () => (await health(b)).consecutive_failures >= 1, 5000)
  t.match(await health(b), { state: 'failing', last_status: 500 }, 'the other instance shows what the first saw')
  await a.inject({ method: 'POST', url: '/events/batch', payload: [2, 3, 4].map((n) => ({ event_name: 'kernel_started', args: [n] })) })
  // Each instance shows its own outcomes at once and the other's within a read: they agree within about a second.
  const agreed = async () => {
    const [ha, hb] = [await health(a), await health(b)]
    return ha.state === 'set_aside' && hb.state === 'set_aside' && ha.consecutive_failures === hb.consecutive_failures
  }
  await until(agreed, 5000)
  const [ha, hb] = [await health(a), await health(b)]
  t.equal(ha.consecutive_failures, hb.consecutive_failures, 'both instances count the same failures')
  t.ok(ha.consecutive_failures >= 3 && ha.set_aside_until !== null, `set aside after ${ha.consecutive_failures} failures`)
  const attempts = broken.received.length
  await a.inject({ method: 'POST', url: '/events/batch', payload: [5, 6, 7, 8].map((n) => ({ event_name: 'kernel_started', args: [n] })) })
  await until(() => false, 1000)
  t.equal(broken.received.length, attempts, 'no instance tried it while it was set aside')
  const list = (await b.inject({ method: 'GET', url: '/webhooks' })).json()
  t.equal(list.webhooks[0].health.state, 'set_aside', 'the list shows it too')
})

t.test('a webhook failing for BUSGATE_WEBHOOK_DISABLE_AFTER_MS without a success is disabled, on every instance, and counted; enabled again it starts afresh', async (t) => {
  const names = uniqueNames()
  // Probed every 100 ms once set aside, so that failures keep coming.
  const config = { ...names, webhookAllowPrivate: true, webhookBackoffMs: 50, webhookBackoffMaxMs: 100, webhookCircuitFailures: 3, webhookCircuitCooldownMs: 100, webhookDisableAfterMs: 2000, webhookMaxAttempts: 1000 }
  const a = await testApp(t, redis.url, config)
  const b = await testApp(t, redis.url, config)
  const broken = await startReceiver(t, () => ({ status: 503 }))
  const { id } = (await a.inject({ method: 'POST', url: '/webhooks', payload: { url: broken.url } })).json() as { id: string }
  const started = Date.now()
  await a.inject({ method: 'POST', url: '/events', payload: { event_name: 'kernel_started' } })
  const shown = async (app: typeof a) => (await app.inject({ method: 'GET', url: `/webhooks/${id}` })).json()
  await until(async () => (await shown(b)).enabled === false, 10_000)
  const disabled = await shown(b)
  t.match(disabled, { enabled: false, health: { state: 'disabled', last_status: 503 } })
  t.ok(Date.now() - started >= 2000, `not before BUSGATE_WEBHOOK_DISABLE_AFTER_MS (${Date.now() - started} ms)`)
  t.ok(disabled.health.consecutive_failures >= 3, `after ${disabled.health.consecutive_failures} failures`)
  const metrics = await Promise.all([a, b].map(async (app) => (await app.inject({ method: 'GET', url: '/metrics' })).body))
  t.equal(metrics.filter((m) => /\nbusgate_webhook_disabled_total 1\n/.test(m)).length, 1, 'counted once, by the instance that disabled it')
  const enabled = await b.inject({ method: 'PATCH', url: `/webhooks/${id}`, payload: { enabled: true } })
  t.match(enabled.json(), { enabled: true, health: { state: 'healthy', consecutive_failures: 0, last_attempt_at: null } })
  t.match((await shown(a)).health, { consecutive_failures: 0 }, 'the other instance too')
})

t.test('a health record that does not check (a hand edit) is taken as healthy and reported', async (t) => {
  const names = uniqueNames()
  const app = await testApp(t, redis.url, { ...names, webhookAllowPrivate: true })
  const receiver = await startReceiver(t)
  const { id } = (await app.inject({ method: 'POST', url: '/webhooks', payload: { url: receiver.url } })).json() as { id: string }
  await redis.client.hset(`${names.keyPrefix}health`, id, '{"failures":"lots"}')
  const res = await app.inject({ method: 'GET', url: `/webhooks/${id}` })
  t.equal(res.statusCode, 200)
  t.match(res.json().health, { state: 'healthy', consecutive_failures: 0 })
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /busgate_invalid_records_total\{kind="health"\} 1/)
  await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'kernel_started' } })
  await receiver.waitFor(1, 3000)
  t.equal(receiver.received.length, 1, 'delivered as to a healthy webhook')
})

t.test('messages that come due while their webhook is set aside wait for its end, not for a longer backoff: a receiver that recovers gets them soon after', async (t) => {
  const names = uniqueNames()
  // Rounds back off 400 ms, 800, 1.6 s … up to 60 s: each round counted while nothing could be
  // sent would put the messages tens of seconds past the receiver's recovery.
  const config = {
    ...names, webhookAllowPrivate: true, webhookBackoffMs: 400, webhookBackoffMaxMs: 60_000, webhookCircuitFailures: 3, webhookCircuitCooldownMs: 1000, webhookMaxAttempts: 1000
  }
  const app = await testApp(t, redis.url, config)
  let failing = true
  const delivered = new Set<unknown>()
  const receiver = await startReceiver(t, (r) => {
    if (failing) return { status: 500 }
    delivered.add(JSON.stringify(r.json))
    return { status: 204 }
  })
  const { id } = (await app.inject({ method: 'POST', url: '/webhooks', payload: { url: receiver.url } })).json() as { id: string }
  await app.inject({ method: 'POST', url: '/events/batch', payload: Array.from({ length: 10 }, (_, n) => ({ event_name: 'kernel_started', args: [n] })) })
  // Failing for 6 s: six cooldowns, and backoffs that would reach 25 s if each set-aside round counted.
  await until(() => false, 6000)
  const tried = receiver.received.length
  failing = false
  const recovered = Date.now()
  await until(() => delivered.size === 10, 8000)
  const waited = Date.now() - recovered
  t.ok(waited < 4000, `all 10 delivered ${waited} ms after the receiver recovered (a cooldown is 1 s)`)
  t.ok(tried < 60, `${tried} attempts while it failed: set aside, the messages were not tried`)
  const health = (await app.inject({ method: 'GET', url: `/webhooks/${id}` })).json().health
  t.equal(health.state, 'healthy')
})
