import t from 'tap'
import { testApp } from '../helpers/app.js'
import { uniqueNames } from '../helpers/bus.js'
import { startRedis } from '../helpers/redis.js'
import { startReceiver, type Received } from '../helpers/receiver.js'
import { until } from '../helpers/wait.js'

const redis = await startRedis(t)

/** Most requests a receiver that answers after `delayMs` held at once. */
function mostAtOnce (received: readonly Received[], delayMs: number): number {
  let most = 0
  for (const r of received) most = Math.max(most, received.filter((o) => o.at <= r.at && o.at + delayMs > r.at).length)
  return most
}

async function twoInstances (t: Parameters<typeof testApp>[0]) {
  const names = uniqueNames()
  const config = { ...names, webhookAllowPrivate: true, webhookBackoffMs: 50, webhookBackoffMaxMs: 200 }
  const a = await testApp(t, redis.url, config)
  const b = await testApp(t, redis.url, config)
  return { a, b, names }
}

const events = (name: string, n: number) => Array.from({ length: n }, (_, i) => ({ event_name: name, args: [i] }))

t.test('max_in_flight holds across two instances; a webhook at its limit holds up no other', async (t) => {
  const { a, b } = await twoInstances(t)
  const slow = await startReceiver(t, () => ({ status: 204, delayMs: 150 }))
  const other = await startReceiver(t, () => ({ status: 204, delayMs: 150 }))
  const created = await a.inject({ method: 'POST', url: '/webhooks', payload: { url: slow.url, event_names: ['kernel_*'], max_in_flight: 2 } })
  t.equal(created.statusCode, 201)
  t.match(created.json(), { max_in_flight: 2, rate_limit: null })
  await a.inject({ method: 'POST', url: '/webhooks', payload: { url: other.url, event_names: ['session_*'] } })
  await until(async () => (await b.inject({ method: 'GET', url: '/webhooks' })).json().webhooks.length === 2, 2000)
  const started = Date.now()
  await a.inject({ method: 'POST', url: '/events/batch', payload: [...events('kernel_started', 16), ...events('session_started', 16)] })
  await other.waitFor(16, 5000)
  const otherDone = Date.now() - started
  await slow.waitFor(16, 15_000)
  const slowDone = Date.now() - started
  t.equal(new Set(slow.received.map((r) => r.json.args[0])).size, 16, 'every limited one delivered')
  t.equal(slow.received.length, 16, 'each once')
  t.ok(mostAtOnce(slow.received, 150) <= 2, `at most 2 at once at the limited receiver (${mostAtOnce(slow.received, 150)})`)
  t.ok(slowDone >= 16 / 2 * 150 * 0.9, `the limited ones took their time (${slowDone} ms)`)
  t.ok(mostAtOnce(other.received, 150) > 2, `the other receiver was not held to it (${mostAtOnce(other.received, 150)} at once)`)
  t.ok(otherDone < slowDone, `the other webhook's 16 were done first (${otherDone} ms)`)
})

t.test('rate_limit holds across two instances, evenly spaced; PATCH changes and removes it', async (t) => {
  const { a, b, names } = await twoInstances(t)
  const receiver = await startReceiver(t)
  const { id } = (await a.inject({ method: 'POST', url: '/webhooks', payload: { url: receiver.url, rate_limit: 10 } })).json() as { id: string }
  await until(async () => (await b.inject({ method: 'GET', url: '/webhooks' })).json().webhooks.length === 1, 2000)
  await a.inject({ method: 'POST', url: '/events/batch', payload: events('kernel_started', 12) })
  await receiver.waitFor(12, 10_000)
  t.equal(receiver.received.length, 12)
  const at = receiver.received.map((r) => r.at).sort((x, y) => x - y)
  const span = (at.at(-1) as number) - (at[0] as number)
  t.ok(span >= 11 * 100 * 0.85, `12 deliveries at 10/s take about 1.1 s (${span} ms)`)
  const gaps = at.slice(1).map((x, i) => x - (at[i] as number))
  t.ok(gaps.filter((g) => g < 50).length <= 1, `evenly spaced, no bursts (gaps ${gaps.join(', ')})`)
  const patched = await b.inject({ method: 'PATCH', url: `/webhooks/${id}`, payload: { rate_limit: null, max_in_flight: 3 } })
  t.match(patched.json(), { rate_limit: null, max_in_flight: 3 })
  const before = receiver.received.length
  const sent = Date.now()
  await until(async () => (await a.inject({ method: 'GET', url: `/webhooks/${id}` })).json().rate_limit === null, 2000)
  await a.inject({ method: 'POST', url: '/events/batch', payload: events('kernel_started', 12) })
  await receiver.waitFor(before + 12, 5000)
  t.ok(Date.now() - sent < 1000, `without the rate, at once (${Date.now() - sent} ms)`)
  // The receiver counts a request before it answers; the place is given back once the answer is in.
  const held = async () => await redis.client.exists(`${names.keyPrefix}inflight:${id}`)
  await until(async () => await held() === 0, 2000)
  t.equal(await held(), 0, 'no place left held once all are done')
  t.equal((await a.inject({ method: 'DELETE', url: `/webhooks/${id}` })).statusCode, 204)
})

t.test('limits are checked: out of range is a 400 naming the field', async (t) => {
  const { a } = await twoInstances(t)
  for (const payload of [{ max_in_flight: 0 }, { max_in_flight: 1.5 }, { rate_limit: 0 }, { rate_limit: -1 }, { rate_limit: 'fast' }]) {
    const res = await a.inject({ method: 'POST', url: '/webhooks', payload: { url: 'http://127.0.0.1:9/hook', ...payload } })
    t.equal(res.statusCode, 400, JSON.stringify(payload))
    t.match(res.json(), { code: 'BUSGATE_VALIDATION_FAILED', message: new RegExp(Object.keys(payload)[0] as string) })
  }
})
