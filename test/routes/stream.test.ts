import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { connect } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { encode } from '@msgpack/msgpack'
import { EventSource } from 'eventsource'
import t, { type Test } from 'tap'
import { listeningApp } from '../helpers/app.js'
import { uniqueNames, type BusNames } from '../helpers/bus.js'
import { capturingLogger } from '../helpers/logger.js'
import { startRedis } from '../helpers/redis.js'
import { dataOf, openStream } from '../helpers/sse.js'
import { until } from '../helpers/wait.js'
import type { Config } from '../../src/config.js'

const redis = await startRedis(t)

async function gateway (t: Test, overrides: Partial<Config> = {}, names: BusNames = uniqueNames()) {
  const { app, base } = await listeningApp(t, redis.url, { ...names, ...overrides })
  const post = async (body: unknown, url = '/events') => {
    const res = await app.inject({ method: 'POST', url, payload: body as object })
    if (res.statusCode !== 202) throw new Error(`produce failed: ${res.body}`)
  }
  /** PUBLISH as any other producer on the bus would, bypassing the gateway */
  const publishRaw = async (bytes: Uint8Array) => { await redis.client.publish(names.pubsubChannel, Buffer.from(bytes)) }
  return { app, base, post, publishRaw, names }
}

t.test('a stream gets what is posted and what other producers publish, framed as the design says', async (t) => {
  const { base, post, publishRaw } = await gateway(t)
  const stream = await openStream(`${base}/events/stream`)
  t.teardown(() => stream.close())
  t.equal(stream.status, 200)
  t.match(stream.headers['content-type'], /^text\/event-stream/)
  t.equal(stream.headers['cache-control'], 'no-cache, no-transform')
  t.equal(stream.headers['x-accel-buffering'], 'no')

  await post({ event_name: 'kernel_started', agent_id: 'i-ag01', args: ['sess', { $base64: 'AP8=' }] })
  await publishRaw(encode({ event_name: 'instance_heartbeat', agent_id: 'i-ag02', args: [2n ** 63n - 1n, 1.5, null] }, { useBigInt64: true }))
  const events = await stream.waitFor(2)
  t.same(events.map((e) => e.event), ['kernel_started', 'instance_heartbeat'])
  t.same(dataOf(events[0]!), { event_name: 'kernel_started', agent_id: 'i-ag01', args: ['sess', { $base64: 'AP8=' }] })
  t.same(dataOf(events[1]!), { event_name: 'instance_heartbeat', agent_id: 'i-ag02', args: ['9223372036854775807', 1.5, null] })
  // Ids of the shared history (Redis stream ids, opaque to clients), rising.
  const [first, second] = events.map((e) => e.id!.split('-').map(Number) as [number, number])
  t.ok(first![0] < second![0] || (first![0] === second![0] && first![1] < second![1]), `ids rise: ${events[0]!.id}, ${events[1]!.id}`)
  t.same(stream.retries, [2000], 'a retry hint first')
  t.match(stream.raw(), /^retry: 2000\n\nid: \d+-\d+\nevent: kernel_started\ndata: \{.*\}\n\n/)
})

t.test('events reach every client in publish order', async (t) => {
  const { base, post } = await gateway(t)
  const streams = await Promise.all(Array.from({ length: 5 }, () => openStream(`${base}/events/stream`)))
  t.teardown(() => { for (const s of streams) s.close() })
  const batch = Array.from({ length: 300 }, (_, i) => ({ event_name: `step_${i}`, args: [i] }))
  await post(batch.slice(0, 150), '/events/batch')
  for (const e of batch.slice(150)) await post(e)
  for (const s of streams) {
    const got = await s.waitFor(300)
    t.same(got.map((e) => e.event), batch.map((e) => e.event_name), 'all, in order')
  }
  t.same(new Set(streams.map((s) => s.raw())).size, 1, 'the very same bytes to every client')
})

t.test('one Redis subscription per process, however many clients', async (t) => {
  const { base, names, app } = await gateway(t)
  const streams = await Promise.all(Array.from({ length: 30 }, () => openStream(`${base}/events/stream`)))
  t.teardown(() => { for (const s of streams) s.close() })
  const [, count] = await redis.client.pubsub('NUMSUB', names.pubsubChannel) as [string, number]
  t.equal(count, 1)
  t.equal(app.hub.clientCount, 30)
})

t.test('the gateway subscribes only while streams are open, and a while after', async (t) => {
  const { base, names, app, post } = await gateway(t, { sseLingerMs: 300 })
  const numsub = async () => ((await redis.client.pubsub('NUMSUB', names.pubsubChannel)) as [string, number])[1]
  t.equal(await numsub(), 0, 'not subscribed before any stream')
  const s = await openStream(`${base}/events/stream`)
  t.equal(await numsub(), 1)
  await post({ event_name: 'seen' })
  const lastId = (await s.waitFor(1))[0]!.id!
  s.close()
  await until(() => app.hub.clientCount === 0)
  t.equal(await numsub(), 1, 'still subscribed just after the last stream closed')
  await sleep(500)
  t.equal(await numsub(), 0, 'unsubscribed once the linger time passed')
  await post({ event_name: 'nobody_watched' })
  const resumed = await openStream(`${base}/events/stream`, { 'last-event-id': lastId })
  t.teardown(() => resumed.close())
  const got = await resumed.waitFor(1)
  t.equal(got[0]!.event, 'busgate.gap', 'what came while unsubscribed is said to be missing')
  t.match(dataOf(got[0]!), { reason: 'too_old' })
  resumed.close()
  const again = await openStream(`${base}/events/stream`, { 'last-event-id': got[0]!.id! })
  t.teardown(() => again.close())
  await post({ event_name: 'after_the_gap' })
  t.same((await again.waitFor(1)).map((e) => e.event), ['after_the_gap'], 'resuming from the gap\'s own id is clean, not another gap')
})

t.test('a long replay is not mistaken for a slow client', async (t) => {
  const { base, post } = await gateway(t, { sseMaxBufferBytes: 4096 })
  const first = await openStream(`${base}/events/stream`)
  await post({ event_name: 'start' })
  const lastId = (await first.waitFor(1))[0]!.id!
  first.close()
  for (let b = 0; b < 4; b++) {
    await post(Array.from({ length: 50 }, (_, i) => ({ event_name: 'backlog', args: [b * 50 + i, 'z'.repeat(20_000)] })), '/events/batch')
  }
  const resumed = await openStream(`${base}/events/stream`, { 'last-event-id': lastId })
  t.teardown(() => resumed.close())
  t.equal((await resumed.waitFor(200, 10_000)).length, 200, 'about 4 MB replayed, with a 4 KB bound for live lag')
  await post({ event_name: 'live_after_replay' })
  t.equal((await resumed.waitFor(201))[200]?.event, 'live_after_replay')
})

t.test('HEAD is not a way into a stream', async (t) => {
  const { app } = await gateway(t)
  const res = await app.inject({ method: 'HEAD', url: '/events/stream' })
  t.equal(res.statusCode, 404)
  t.equal(app.hub.clientCount, 0)
})

t.test('filters: event_name globs and agent_id', async (t) => {
  const { base, post, app } = await gateway(t)
  const kernels = await openStream(`${base}/events/stream?event_name=kernel_*,session_started`)
  const agent = await openStream(`${base}/events/stream?agent_id=i-ag02`)
  const both = await openStream(`${base}/events/stream?event_name=kernel_*&agent_id=i-ag0*`)
  t.teardown(() => { kernels.close(); agent.close(); both.close() })
  await post([
    { event_name: 'kernel_started', agent_id: 'i-ag01' },
    { event_name: 'session_started', agent_id: 'i-ag02' },
    { event_name: 'kernel_terminated', agent_id: 'manager' },
    { event_name: 'instance_heartbeat', agent_id: 'i-ag02' },
    { event_name: 'session_started_late', agent_id: 'x' },
    { event_name: 'kernelx', agent_id: 'x' },
    { event_name: 'last', agent_id: 'i-ag02' }
  ], '/events/batch')
  t.same((await agent.waitFor(3)).map((e) => e.event), ['session_started', 'instance_heartbeat', 'last'])
  t.same(kernels.events.map((e) => e.event), ['kernel_started', 'session_started', 'kernel_terminated'])
  t.same(both.events.map((e) => e.event), ['kernel_started'])
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /busgate_sse_events_total 7\n/)
  t.match(metrics, /busgate_sse_deliveries_total 7\n/, '3 + 3 + 1 writes')

  for (const bad of ['event_name=kernel%20started', 'event_name=', 'event_name=a,,b', 'agent_id=a%0Ab', 'unknown=1', 'last_event_id=' + 'x'.repeat(200)]) {
    const res = await app.inject({ method: 'GET', url: `/events/stream?${bad}` })
    t.equal(res.statusCode, 400, bad)
    t.equal(res.json().code, 'BUSGATE_VALIDATION_FAILED')
  }
})

t.test('nothing a producer sends breaks the framing; bad messages are set aside, good ones still flow', async (t) => {
  const { base, publishRaw, app } = await gateway(t)
  const stream = await openStream(`${base}/events/stream`)
  t.teardown(() => stream.close())
  await publishRaw(encode({ event_name: 'evil\nevent: injected', agent_id: 'x', args: [] }))
  await publishRaw(encode({ event_name: 'busgate.gap', agent_id: 'x', args: [] }))
  await publishRaw(encode({ event_name: '', agent_id: 'x', args: [] }))
  await publishRaw(Buffer.from('not msgpack at all \xc1'))
  await publishRaw(encode(['an', 'array']))
  await publishRaw(encode({ event_name: 'kernel_log', agent_id: 'a\nb', args: ['line\n\ndata: injected\n\nid: 0', '\r\nevent: x', 'tab\t\u2028sep'] }))
  await publishRaw(encode({ event_name: 'after_the_bad_ones', agent_id: 'x', args: [] }))
  const events = await stream.waitFor(2)
  await sleep(100)
  t.same(events.map((e) => e.event), ['kernel_log', 'after_the_bad_ones'], 'only the two good events, nothing injected')
  t.same(dataOf(events[0]!), { event_name: 'kernel_log', agent_id: 'a\nb', args: ['line\n\ndata: injected\n\nid: 0', '\r\nevent: x', 'tab\t\u2028sep'] })
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /busgate_bus_malformed_total\{source="pubsub",reason="wrong_shape"\} 4\n/)
  t.match(metrics, /busgate_bus_malformed_total\{source="pubsub",reason="undecodable"\} 1\n/)
})

t.test('heartbeat comments keep an idle stream alive', async (t) => {
  const { base } = await gateway(t, { sseHeartbeatMs: 100, sseRetryMs: 750 })
  const stream = await openStream(`${base}/events/stream`)
  t.teardown(() => stream.close())
  await sleep(450)
  t.ok(stream.comments.length >= 3, `${stream.comments.length} comments in 450 ms`)
  t.same(stream.retries, [750])
  t.same(stream.events, [])
})

t.test('resume: Last-Event-ID replays what was missed, then live events follow', async (t) => {
  const { base, post } = await gateway(t)
  const first = await openStream(`${base}/events/stream?event_name=keep_*`)
  await post([{ event_name: 'keep_1' }, { event_name: 'skip_1' }, { event_name: 'keep_2' }], '/events/batch')
  const seen = await first.waitFor(2)
  first.close()
  await post([{ event_name: 'keep_3' }, { event_name: 'skip_2' }, { event_name: 'keep_4' }], '/events/batch')

  const resumed = await openStream(`${base}/events/stream?event_name=keep_*`, { 'last-event-id': seen[1]!.id! })
  t.teardown(() => resumed.close())
  await post({ event_name: 'keep_5' })
  t.same((await resumed.waitFor(3)).map((e) => e.event), ['keep_3', 'keep_4', 'keep_5'], 'missed ones, filtered, then live')

  const byQuery = await openStream(`${base}/events/stream?event_name=keep_*&last_event_id=${encodeURIComponent(seen[1]!.id!)}`)
  t.teardown(() => byQuery.close())
  t.same((await byQuery.waitFor(3)).map((e) => e.event), ['keep_3', 'keep_4', 'keep_5'], 'the query parameter works too')

  const headerWins = await openStream(`${base}/events/stream?event_name=keep_*&last_event_id=${encodeURIComponent(seen[0]!.id!)}`,
    { 'last-event-id': resumed.events[2]!.id! })
  t.teardown(() => headerWins.close())
  await post({ event_name: 'keep_6' })
  t.same((await headerWins.waitFor(1)).map((e) => e.event), ['keep_6'], 'the header wins over the query')
})

t.test('resume gaps are said, never skipped silently (a history per process)', async (t) => {
  const names = uniqueNames()
  const { base, post, app } = await gateway(t, { sseHistory: 5, sseSharedHistory: false }, names)

  const s = await openStream(`${base}/events/stream`)
  await post([{ event_name: 'e_1' }, { event_name: 'e_2' }], '/events/batch')
  await post(Array.from({ length: 10 }, (_, i) => ({ event_name: `later_${i}` })), '/events/batch')
  // All twelve heard before a resume: the POST's answer can come before the gateway's subscriber reads them.
  const firstId = (await s.waitFor(12))[0]!.id!
  s.close()

  const cases: Array<[string, string, string]> = [
    ['too old for a history of 5', firstId, 'too_old'],
    ['an id of another instance', `${firstId.startsWith('0badc0de') ? '0badc0df' : '0badc0de'}:1`, 'other_instance'],
    ['garbage', 'garbage', 'unknown_id'],
    ['from the future', `${firstId.split(':')[0]!}:99999`, 'unknown_id']
  ]
  for (const [name, lastId, reason] of cases) {
    const r = await openStream(`${base}/events/stream`, { 'last-event-id': lastId })
    await r.waitFor(1)
    await post({ event_name: 'live_after_gap' })
    const got = await r.waitFor(2)
    r.close()
    t.equal(got[0]!.event, 'busgate.gap', `${name}: a gap event first`)
    t.match(dataOf(got[0]!), { reason, last_event_id: lastId }, name)
    t.equal(got[1]!.event, 'live_after_gap', `${name}: then live events`)
  }
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /busgate_sse_resumes_total\{result="too_old"\} 1\n/)
  t.match(metrics, /busgate_sse_resumes_total\{result="unknown_id"\} 2\n/)
})

t.test('while no stream is open, messages are kept raw; a resume frames them, setting the bad ones aside', async (t) => {
  const { base, post, publishRaw, app } = await gateway(t)
  const first = await openStream(`${base}/events/stream`)
  await post({ event_name: 'seen' })
  const lastId = (await first.waitFor(1))[0]!.id!
  first.close()
  await until(() => app.hub.clientCount === 0)
  await post({ event_name: 'missed_1' })
  await publishRaw(Buffer.from([0xc1]))
  await publishRaw(encode({ event_name: 'forged\nevent: x', agent_id: 'a', args: [] }))
  await post({ event_name: 'missed_2' })
  await sleep(100)
  const metricsBefore = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.notMatch(metricsBefore, /busgate_bus_malformed_total\{/, 'nothing decoded while nobody watched')
  const resumed = await openStream(`${base}/events/stream`, { 'last-event-id': lastId })
  t.teardown(() => resumed.close())
  t.same((await resumed.waitFor(2)).map((e) => e.event), ['missed_1', 'missed_2'])
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /busgate_bus_malformed_total\{source="pubsub",reason="undecodable"\} 1\n/)
  t.match(metrics, /busgate_bus_malformed_total\{source="pubsub",reason="wrong_shape"\} 1\n/)
})

t.test('the history is bounded in bytes too (a history per process; the shared one keeps at least 16 MiB)', async (t) => {
  const { base, post } = await gateway(t, { sseHistoryBytes: 4000, sseSharedHistory: false })
  const s = await openStream(`${base}/events/stream`)
  await post({ event_name: 'first', args: ['x'.repeat(1000)] })
  const firstId = (await s.waitFor(1))[0]!.id!
  s.close()
  for (let i = 0; i < 5; i++) await post({ event_name: 'filler', args: ['y'.repeat(1000)] })
  const resumed = await openStream(`${base}/events/stream`, { 'last-event-id': firstId })
  t.teardown(() => resumed.close())
  const got = await resumed.waitFor(1)
  t.equal(got[0]!.event, 'busgate.gap')
  t.match(dataOf(got[0]!), { reason: 'too_old' })
})

t.test('a real EventSource reconnects by itself and loses nothing', async (t) => {
  const { app, base, post } = await gateway(t, { sseRetryMs: 200 })
  const es = new EventSource(`${base}/events/stream?event_name=tick`)
  t.teardown(() => es.close())
  const got: Array<{ id: string, data: unknown }> = []
  let opened = 0
  es.addEventListener('tick', (e) => got.push({ id: e.lastEventId, data: JSON.parse(e.data) }))
  es.addEventListener('busgate.gap', () => t.fail('no gap expected'))
  es.onopen = () => { opened++ }
  await until(() => opened === 1)
  for (let i = 0; i < 3; i++) await post({ event_name: 'tick', args: [i] })
  await until(() => got.length === 3)
  app.server.closeAllConnections() // the connection drops under the client
  for (let i = 3; i < 6; i++) await post({ event_name: 'tick', args: [i] })
  await until(() => got.length === 6)
  t.equal(opened, 2, 'it reconnected once')
  t.same(got.map((g) => (g.data as { args: number[] }).args[0]), [0, 1, 2, 3, 4, 5], 'every event once, in order')
})

t.test('a client that stops reading is cut off; the others are not held back', async (t) => {
  const { app, base, post } = await gateway(t, { sseMaxBufferBytes: 1024 * 1024 })
  const fast = await openStream(`${base}/events/stream`)
  t.teardown(() => fast.close())
  // A raw socket that sends the request and never reads the answer.
  const { port } = new URL(base)
  const stuck = connect(Number(port), '127.0.0.1')
  stuck.on('error', () => {})
  t.teardown(() => stuck.destroy())
  await new Promise((resolve) => stuck.once('connect', resolve))
  stuck.pause()
  stuck.write('GET /events/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n')
  for (let i = 0; i < 100 && app.hub.clientCount < 2; i++) await sleep(10)
  t.equal(app.hub.clientCount, 2)

  // 30 MB in all: more than the kernel's socket buffers and the 1 MB bound together.
  const big = 'x'.repeat(300_000)
  const started = Date.now()
  for (let i = 0; i < 100; i++) await post({ event_name: 'bulk', args: [i, big] })
  const got = await fast.waitFor(100, 20_000)
  t.equal(got.length, 100, 'the reading client got everything')
  t.ok(Date.now() - started < 15_000, `in ${Date.now() - started} ms`)
  for (let i = 0; i < 100 && app.hub.clientCount > 1; i++) await sleep(20)
  t.equal(app.hub.clientCount, 1, 'the stuck client is gone')
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /busgate_sse_slow_disconnects_total 1\n/)
  t.match(metrics, /busgate_sse_clients 1\n/)
})

t.test('closed streams are cleaned up at once', async (t) => {
  const { app, base } = await gateway(t)
  const streams = await Promise.all(Array.from({ length: 40 }, () => openStream(`${base}/events/stream?event_name=a_${Math.floor(Math.random() * 3)}`)))
  t.equal(app.hub.clientCount, 40)
  for (const s of streams) s.close()
  for (let i = 0; i < 100 && app.hub.clientCount > 0; i++) await sleep(10)
  t.equal(app.hub.clientCount, 0)
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /busgate_sse_clients 0\n/)
})

t.test('the subscribe scope, by header or access_token; the token is not logged', async (t) => {
  const log = capturingLogger('debug')
  const { buildApp } = await import('../../src/app.js')
  const { defaultConfig, parseRedisUrl } = await import('../../src/config.js')
  const app = await buildApp(defaultConfig({
    ...uniqueNames(),
    redis: parseRedisUrl(redis.url),
    tokens: [{ token: 'sub-token-123456', scopes: new Set(['subscribe']) }, { token: 'pub-token-123456', scopes: new Set(['publish']) }]
  }), { logger: log.logger })
  t.teardown(() => app.close())
  await app.listen({ host: '127.0.0.1', port: 0 })
  const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
  const noToken = await openStream(`${base}/events/stream`)
  t.equal(noToken.status, 401)
  noToken.close()
  const wrongScope = await openStream(`${base}/events/stream`, { authorization: 'Bearer pub-token-123456' })
  t.equal(wrongScope.status, 403)
  wrongScope.close()
  const byHeader = await openStream(`${base}/events/stream`, { authorization: 'Bearer sub-token-123456' })
  const byQuery = await openStream(`${base}/events/stream?access_token=sub-token-123456`)
  t.equal(byHeader.status, 200)
  t.equal(byQuery.status, 200)
  byHeader.close()
  byQuery.close()
  await sleep(50)
  t.notMatch(log.lines(), /sub-token-123456/)
  t.match(log.lines(), /access_token=\[redacted\]/)
})

t.test('a lost Redis subscription: streams stay open, are told of the gap, and go on', async (t) => {
  const own = await startRedis(t)
  const { app, base } = await listeningApp(t, own.url, { ...uniqueNames(), redisTimeoutMs: 500 })
  const stream = await openStream(`${base}/events/stream`)
  t.teardown(() => stream.close())
  await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'before_the_fault' } })
  const beforeId = (await stream.waitFor(1))[0]!.id!
  await own.kill()
  let ready = 200
  for (let i = 0; i < 100 && ready === 200; i++) {
    await sleep(20)
    ready = (await app.inject({ method: 'GET', url: '/readyz' })).statusCode
  }
  t.equal(ready, 503, 'not ready while the subscription is down')
  await own.start()
  // Reconnecting waits out a backoff of up to 2 s per connection: on a loaded machine more than waitFor's usual 5 s in all.
  await stream.waitFor(2, 15_000)
  t.equal(stream.events[1]?.event, 'busgate.gap')
  t.match(dataOf(stream.events[1]!), { reason: 'bus_reconnected' })
  let status = 0
  for (let i = 0; i < 100 && status !== 202; i++) {
    status = (await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'after_restart' } })).statusCode
    if (status !== 202) await sleep(50)
  }
  t.equal((await stream.waitFor(3))[2]?.event, 'after_restart', 'the same stream carries on')
  t.equal((await app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200)
  const late = await openStream(`${base}/events/stream`, { 'last-event-id': beforeId })
  t.teardown(() => late.close())
  t.match(dataOf((await late.waitFor(1))[0]!), { reason: 'too_old' }, 'a later resume from before the fault is told of the gap too')
})

t.test('closing the gateway ends every stream with a retry hint, promptly', async (t) => {
  const { app, base } = await listeningApp(t, redis.url, { ...uniqueNames(), sseRetryMs: 1234 })
  const streams = await Promise.all(Array.from({ length: 200 }, () => openStream(`${base}/events/stream`)))
  const started = Date.now()
  await app.close()
  t.ok(Date.now() - started < 2000, `closed in ${Date.now() - started} ms`)
  await Promise.all(streams.map((s) => s.ended))
  t.ok(streams.every((s) => s.retries.length === 2 && s.retries[1] === 1234), 'each got a last retry hint')
})

t.test('past BUSGATE_SSE_MAX_CLIENTS a new stream gets 503', async (t) => {
  const { base } = await gateway(t, { sseMaxClients: 2 })
  const a = await openStream(`${base}/events/stream`)
  const b = await openStream(`${base}/events/stream`)
  t.teardown(() => { a.close(); b.close() })
  const c = await openStream(`${base}/events/stream`)
  t.equal(c.status, 503)
  t.match(c.raw(), /BUSGATE_TOO_MANY_STREAMS/)
})

t.test('a Python producer on the same Redis is streamed too', async (t) => {
  const python = process.env.BUSGATE_TEST_PYTHON ?? (existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3')
  const { base } = await gateway(t, {}, { pubsubChannel: 'events.pubsub', prodconsKey: 'events.prodcons', keyPrefix: 'busgate:' })
  const stream = await openStream(`${base}/events/stream`)
  t.teardown(() => stream.close())
  const res = spawnSync(python, [new URL('../fixtures/backend-ai-peer.py', import.meta.url).pathname, 'produce', String(redis.port), '0'], { encoding: 'utf8' })
  t.equal(res.status, 0, res.stderr)
  const got = await stream.waitFor(3)
  t.same(got.map((e) => e.event), ['kernel_started', 'instance_heartbeat', 'task_done'])
  t.same(dataOf(got[1]!), { event_name: 'instance_heartbeat', agent_id: 'i-ag01', args: [{ cpu: '8', mem: 2 ** 40 }, { $base64: 'AP8=' }] })
})
