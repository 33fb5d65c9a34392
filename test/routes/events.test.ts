import { readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { decode } from '@msgpack/msgpack'
import t, { type Test } from 'tap'
import { testApp } from '../helpers/app.js'
import { uniqueNames, watchBus } from '../helpers/bus.js'
import { startRedis } from '../helpers/redis.js'
import type { Config } from '../../src/config.js'

const redis = await startRedis(t)
const fixtures = (JSON.parse(readFileSync(new URL('../fixtures/python-msgpack.json', import.meta.url), 'utf8')) as
  { cases: Array<{ name: string, hex: string }> }).cases

const JSON_CT = { 'content-type': 'application/json' }
const MSGPACK_CT = { 'content-type': 'application/msgpack' }
const hex = (h: string): Buffer => Buffer.from(h.replaceAll(' ', ''), 'hex')
const decodeAll = (frames: Buffer[]): unknown[] => frames.map((f) => decode(f, { useBigInt64: true }))

async function setup (t: Test, overrides: Partial<Config> = {}) {
  const names = uniqueNames()
  const app = await testApp(t, redis.url, { ...names, ...overrides })
  const bus = await watchBus(redis, names)
  return { app, bus }
}

t.test('POST /events with JSON writes one copy to each key', async (t) => {
  const { app, bus } = await setup(t)
  const res = await app.inject({
    method: 'POST',
    url: '/events',
    headers: JSON_CT,
    payload: { event_name: 'kernel_started', agent_id: 'i-ag01', args: ['sess', 1, { $base64: 'AP8=' }, { k: [true, null, 1.5] }] }
  })
  t.equal(res.statusCode, 202)
  t.same(res.json(), { accepted: 1, subscribers: 1, queue_length: 1 }, 'one subscriber: the watcher of this test (no stream is open, so the gateway is not subscribed)')
  const expected = { event_name: 'kernel_started', agent_id: 'i-ag01', args: ['sess', 1, new Uint8Array([0, 255]), { k: [true, null, 1.5] }] }
  const published = await bus.waitPublished(1)
  const queued = await bus.queued()
  t.same(decodeAll(published), [expected])
  t.same(decodeAll(queued), [expected])
  t.same(published[0], queued[0], 'the same bytes on both keys')
})

t.test('agent_id defaults to BUSGATE_AGENT_ID and args to []', async (t) => {
  const { app, bus } = await setup(t, { agentId: 'manager-7' })
  const res = await app.inject({ method: 'POST', url: '/events', headers: { 'content-type': 'application/json; charset=utf-8' }, payload: '{"event_name":"do_idle_check"}' })
  t.equal(res.statusCode, 202)
  t.same(decodeAll(await bus.queued()), [{ event_name: 'do_idle_check', agent_id: 'manager-7', args: [] }])
})

t.test('POST /events with msgpack writes the very bytes, as Python packed them', async (t) => {
  const { app, bus } = await setup(t)
  for (const f of fixtures) {
    const res = await app.inject({ method: 'POST', url: '/events', headers: MSGPACK_CT, payload: hex(f.hex) })
    t.equal(res.statusCode, 202, f.name)
  }
  const queued = await bus.queued()
  t.same(queued.map((b) => b.toString('hex')), fixtures.map((f) => f.hex), 'list: byte for byte, in order')
  const published = await bus.waitPublished(fixtures.length)
  t.same(published.map((b) => b.toString('hex')), fixtures.map((f) => f.hex), 'channel: byte for byte, in order')
})

t.test('POST /events/batch writes all, in order, on both keys', async (t) => {
  const { app, bus } = await setup(t)
  const events = Array.from({ length: 20 }, (_, i) => ({ event_name: `step_${i}`, args: [i] }))
  const res = await app.inject({ method: 'POST', url: '/events/batch', headers: JSON_CT, payload: events })
  t.equal(res.statusCode, 202)
  t.same(res.json(), { accepted: 20, subscribers: 1, queue_length: 20 })
  const expected = events.map((e) => ({ event_name: e.event_name, agent_id: 'manager', args: e.args }))
  t.same(decodeAll(await bus.queued()), expected)
  t.same(decodeAll(await bus.waitPublished(20)), expected)
})

interface BadCase {
  name: string
  url?: string
  headers?: Record<string, string>
  payload?: string | Buffer
  status: number
  code: string
  message?: RegExp
}

const tooLong = 'a'.repeat(129)
const BAD: BadCase[] = [
  { name: 'invalid JSON', payload: '{"event_name": ', status: 400, code: 'BUSGATE_INVALID_JSON' },
  { name: 'empty JSON body', payload: '', status: 400, code: 'BUSGATE_INVALID_JSON', message: /empty/ },
  { name: 'no body at all', headers: {}, payload: undefined, status: 400, code: 'BUSGATE_BAD_REQUEST', message: /needs a body/ },
  { name: 'JSON null', payload: 'null', status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /body must be object/ },
  { name: 'JSON array to /events', payload: '[]', status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /body must be object/ },
  { name: 'event_name missing', payload: '{"args":[]}', status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /event_name/ },
  { name: 'event_name a number', payload: '{"event_name":42}', status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /event_name must be string/ },
  { name: 'event_name CamelCase', payload: '{"event_name":"KernelStarted"}', status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /pattern/ },
  { name: 'event_name kebab-case', payload: '{"event_name":"kernel-started"}', status: 400, code: 'BUSGATE_VALIDATION_FAILED' },
  { name: 'event_name with a space', payload: '{"event_name":"kernel started"}', status: 400, code: 'BUSGATE_VALIDATION_FAILED' },
  { name: 'event_name with a newline', payload: '{"event_name":"kernel\\nstarted"}', status: 400, code: 'BUSGATE_VALIDATION_FAILED' },
  { name: 'event_name leading underscore', payload: '{"event_name":"_kernel"}', status: 400, code: 'BUSGATE_VALIDATION_FAILED' },
  { name: 'event_name double underscore', payload: '{"event_name":"a__b"}', status: 400, code: 'BUSGATE_VALIDATION_FAILED' },
  { name: 'event_name empty', payload: '{"event_name":""}', status: 400, code: 'BUSGATE_VALIDATION_FAILED' },
  { name: 'event_name too long', payload: `{"event_name":"${tooLong}"}`, status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /more than 128/ },
  { name: 'args a string (not coerced)', payload: '{"event_name":"a","args":"x"}', status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /args must be array/ },
  { name: 'args an object', payload: '{"event_name":"a","args":{"0":1}}', status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /args must be array/ },
  { name: 'args null', payload: '{"event_name":"a","args":null}', status: 400, code: 'BUSGATE_VALIDATION_FAILED' },
  { name: 'agent_id a number (not coerced)', payload: '{"event_name":"a","agent_id":7}', status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /agent_id must be string/ },
  { name: 'agent_id empty', payload: '{"event_name":"a","agent_id":""}', status: 400, code: 'BUSGATE_VALIDATION_FAILED' },
  { name: 'unknown property', payload: '{"event_name":"a","agentid":"x"}', status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /additional properties/ },
  { name: 'integer JSON cannot carry', payload: '{"event_name":"a","args":[12345678901234567890]}', status: 400, code: 'BUSGATE_INVALID_EVENT', message: /body\/args\[0\] is an integer beyond/ },
  { name: 'bad $base64', payload: '{"event_name":"a","args":[{"$base64":"%%%"}]}', status: 400, code: 'BUSGATE_INVALID_EVENT', message: /\$base64/ },
  { name: 'lone surrogate in args', payload: '{"event_name":"a","args":["\\ud800"]}', status: 400, code: 'BUSGATE_INVALID_EVENT', message: /lone UTF-16 surrogate/ },
  { name: 'lone surrogate in agent_id', payload: '{"event_name":"a","agent_id":"x\\udfff"}', status: 400, code: 'BUSGATE_INVALID_EVENT', message: /body\/agent_id holds a lone/ },
  { name: 'prototype poisoning', payload: '{"event_name":"a","args":[{"__proto__":{"x":1}}]}', status: 400, code: 'BUSGATE_INVALID_JSON' },
  { name: 'text/plain', headers: { 'content-type': 'text/plain' }, payload: 'kernel_started', status: 415, code: 'BUSGATE_UNSUPPORTED_MEDIA_TYPE', message: /text\/plain .*application\/json or application\/msgpack/ },
  { name: 'form', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: 'event_name=a', status: 415, code: 'BUSGATE_UNSUPPORTED_MEDIA_TYPE' },
  { name: 'oversized body', payload: `{"event_name":"a","args":["${'x'.repeat(5000)}"]}`, status: 413, code: 'BUSGATE_PAYLOAD_TOO_LARGE', message: /4096 bytes/ },
  { name: 'msgpack that does not decode', headers: MSGPACK_CT, payload: hex('c1'), status: 400, code: 'BUSGATE_INVALID_MSGPACK' },
  { name: 'msgpack truncated', headers: MSGPACK_CT, payload: hex('83 aa 6576656e745f6e616d65 a1 61'), status: 400, code: 'BUSGATE_INVALID_MSGPACK', message: /truncated/ },
  { name: 'msgpack with trailing bytes', headers: MSGPACK_CT, payload: hex('83 aa6576656e745f6e616d65 a161 a86167656e745f6964 a162 a461726773 90 00'), status: 400, code: 'BUSGATE_INVALID_MSGPACK', message: /left over/ },
  { name: 'msgpack invalid UTF-8', headers: MSGPACK_CT, payload: hex('83 aa6576656e745f6e616d65 a161 a86167656e745f6964 a2c328 a461726773 90'), status: 400, code: 'BUSGATE_INVALID_MSGPACK', message: /UTF-8/ },
  { name: 'msgpack int map key', headers: MSGPACK_CT, payload: hex('83 aa6576656e745f6e616d65 a161 a86167656e745f6964 a162 a461726773 91 81 01 02'), status: 400, code: 'BUSGATE_INVALID_MSGPACK', message: /map key/ },
  { name: 'msgpack array, not map', headers: MSGPACK_CT, payload: hex('93 a161 a162 90'), status: 400, code: 'BUSGATE_INVALID_EVENT', message: /expected a map/ },
  { name: 'msgpack without args', headers: MSGPACK_CT, payload: hex('82 aa6576656e745f6e616d65 a161 a86167656e745f6964 a162'), status: 400, code: 'BUSGATE_INVALID_EVENT', message: /args must be an array/ },
  { name: 'msgpack with an extra key', headers: MSGPACK_CT, payload: hex('84 aa6576656e745f6e616d65 a161 a86167656e745f6964 a162 a461726773 90 a178 c0'), status: 400, code: 'BUSGATE_INVALID_EVENT', message: /unexpected key "x"/ },
  { name: 'msgpack bad event_name', headers: MSGPACK_CT, payload: hex('83 aa6576656e745f6e616d65 a141 a86167656e745f6964 a162 a461726773 90'), status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /pattern/ },
  { name: 'batch: not an array', url: '/events/batch', payload: '{"event_name":"a"}', status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /body must be array/ },
  { name: 'batch: empty', url: '/events/batch', payload: '[]', status: 400, code: 'BUSGATE_VALIDATION_FAILED' },
  { name: 'batch: over BUSGATE_BATCH_MAX', url: '/events/batch', payload: '[{"event_name":"a"},{"event_name":"b"},{"event_name":"c"},{"event_name":"d"}]', status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /more than 3 items/ },
  { name: 'batch: one bad item spoils all', url: '/events/batch', payload: '[{"event_name":"a"},{"event_name":"B"}]', status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /body\/1\/event_name/ },
  { name: 'batch: one unencodable item spoils all', url: '/events/batch', payload: '[{"event_name":"a"},{"event_name":"b","args":[9007199254740993]}]', status: 400, code: 'BUSGATE_INVALID_EVENT', message: /body\/1\/args\[0\]/ },
  { name: 'batch: msgpack array of strs, not maps', url: '/events/batch', headers: MSGPACK_CT, payload: hex('93 a161 a162 90'), status: 400, code: 'BUSGATE_INVALID_EVENT', message: /body\/0\/expected a map, got a str/ },
  { name: 'msgpack to a route that takes none', url: '/webhooks', headers: MSGPACK_CT, payload: hex('93 a161 a162 90'), status: 415, code: 'BUSGATE_UNSUPPORTED_MEDIA_TYPE' }
]

t.test('bad input gets a clear error and writes nothing', async (t) => {
  const { app, bus } = await setup(t, { bodyLimit: 4096, batchMax: 3 })
  for (const c of BAD) {
    const res = await app.inject({ method: 'POST', url: c.url ?? '/events', headers: c.headers ?? JSON_CT, payload: c.payload })
    t.equal(res.statusCode, c.status, `${c.name}: status`)
    const body = res.json()
    t.match(body, { statusCode: c.status, code: c.code, error: String, message: c.message ?? String }, `${c.name}: error body`)
    t.same(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'], `${c.name}: nothing else in the body`)
  }
  await sleep(100)
  t.same(await bus.queued(), [], 'the list is untouched')
  t.same(bus.published, [], 'nothing was published')

  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /busgate_events_rejected_total\{reason="BUSGATE_VALIDATION_FAILED"\} \d+/)
  t.match(metrics, /busgate_events_rejected_total\{reason="BUSGATE_PAYLOAD_TOO_LARGE"\} 1/)
  t.match(metrics, /busgate_events_rejected_total\{reason="BUSGATE_INVALID_MSGPACK"\} 5/)
})

t.test('Redis down: 503 at once, nothing half-written; back up: 202', async (t) => {
  const own = await startRedis(t)
  const names = uniqueNames()
  const app = await testApp(t, own.url, { ...names, redisTimeoutMs: 500 })
  const ok = await app.inject({ method: 'POST', url: '/events', headers: JSON_CT, payload: { event_name: 'before' } })
  t.equal(ok.statusCode, 202)
  await own.kill()
  const started = Date.now()
  const down = await app.inject({ method: 'POST', url: '/events', headers: JSON_CT, payload: { event_name: 'during' } })
  t.equal(down.statusCode, 503)
  t.ok(Date.now() - started < 1000, 'bounded')
  t.equal(down.headers['retry-after'], '1')
  t.match(down.json(), { code: 'BUSGATE_REDIS_UNAVAILABLE', message: /unavailable/ })
  t.notMatch(down.body, /127\.0\.0\.1|ECONNREFUSED/, 'no internals leak')
  const batch = await app.inject({ method: 'POST', url: '/events/batch', headers: JSON_CT, payload: [{ event_name: 'a' }] })
  t.equal(batch.statusCode, 503)
  const ready = await app.inject({ method: 'GET', url: '/readyz' })
  t.equal(ready.statusCode, 503)
  t.same(ready.json(), { status: 'unavailable', engine: 'redis', bus: 'down' })

  await own.start()
  let status = 0
  for (let i = 0; i < 100 && status !== 202; i++) {
    await sleep(50)
    status = (await app.inject({ method: 'POST', url: '/events', headers: JSON_CT, payload: { event_name: 'after' } })).statusCode
  }
  t.equal(status, 202, 'served again once Redis is back')
  const list = await own.client.lrangeBuffer(names.prodconsKey, 0, -1)
  t.same(decodeAll(list), [{ event_name: 'after', agent_id: 'manager', args: [] }], 'the restarted Redis holds exactly the accepted event')
  t.equal((await app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200)
})

t.test('the memory engine serves the same routes', async (t) => {
  const app = await testApp(t, undefined)
  const res = await app.inject({ method: 'POST', url: '/events/batch', headers: JSON_CT, payload: [{ event_name: 'a' }, { event_name: 'b' }] })
  t.same(res.json(), { accepted: 2, subscribers: 0, queue_length: 2 })
  t.same((await app.inject({ method: 'GET', url: '/readyz' })).json(), { status: 'ready', engine: 'memory', bus: 'up' })
})

t.test('numbers JSON parses as Infinity are refused, not written as float64 infinity', async (t) => {
  const app = await testApp(t, undefined)
  const cases: Array<[string, string, RegExp]> = [
    ['/events', '{"event_name":"a","args":[1e400]}', /body\/args\[0\] is not a finite number/],
    ['/events', '{"event_name":"a","args":[-1e400]}', /body\/args\[0\] is not a finite number/],
    ['/events', '{"event_name":"a","args":[1,{"k":{"deep":[2,-1e999]}}]}', /body\/args\[1\]\.k\.deep\[1\] is not a finite number/],
    ['/events', '{"event_name":"a","args":[{"$base64":"AA=="},1E+400]}', /body\/args\[1\] is not a finite number/],
    ['/events/batch', '[{"event_name":"a"},{"event_name":"b","args":[{"x":1e400}]}]', /body\/1\/args\[0\]\.x is not a finite number/]
  ]
  for (const [url, payload, message] of cases) {
    const res = await app.inject({ method: 'POST', url, headers: JSON_CT, payload })
    t.equal(res.statusCode, 400, payload)
    t.match(res.json(), { code: 'BUSGATE_INVALID_EVENT', message }, payload)
  }
  const ok = await app.inject({ method: 'POST', url: '/events', headers: JSON_CT, payload: '{"event_name":"a","args":[1.7976931348623157e308]}' })
  t.same(ok.json(), { accepted: 1, subscribers: 0, queue_length: 1 }, 'the largest double passes, and nothing before it was written')
})

t.test('an event larger than the bus takes gets 413 and writes nothing: bytes past BUSGATE_BUS_MAX_MESSAGE_BYTES, or too many values', async (t) => {
  const app = await testApp(t, undefined, { busMaxMessageBytes: 4096, bodyLimit: 2 ** 20 })
  const { encode } = await import('@msgpack/msgpack')
  const { MAX_VALUES } = await import('../../src/codec.js')
  const cases: Array<[string, Record<string, string>, string | Buffer, RegExp]> = [
    // 600 floats: under 4 KB of JSON, over 4 KB of msgpack (9 bytes each).
    ['/events', JSON_CT, JSON.stringify({ event_name: 'a', args: Array.from({ length: 600 }, () => 0.5) }), /body\/\d+ bytes of msgpack, more than BUSGATE_BUS_MAX_MESSAGE_BYTES \(4096\)/],
    ['/events', { 'content-type': 'application/msgpack' }, Buffer.from(encode({ event_name: 'a', agent_id: 'b', args: ['x'.repeat(5000)] })), /more than BUSGATE_BUS_MAX_MESSAGE_BYTES/],
    ['/events/batch', JSON_CT, JSON.stringify([{ event_name: 'ok' }, { event_name: 'a', args: ['y'.repeat(5000)] }]), /body\/1\/\d+ bytes of msgpack/],
    // The first refusal in array order, whatever kind: element 0's size before element 1's value.
    ['/events/batch', JSON_CT, JSON.stringify([{ event_name: 'a', args: ['x'.repeat(5000)] }, { event_name: 'b', args: [2 ** 60] }]), /: body\/0\/\d+ bytes of msgpack/]
  ]
  for (const [url, headers, payload, message] of cases) {
    const res = await app.inject({ method: 'POST', url, headers, payload })
    t.equal(res.statusCode, 413, url)
    t.match(res.json(), { code: 'BUSGATE_MESSAGE_TOO_LARGE', message }, url)
  }
  const big = await testApp(t, undefined)
  const many = Array.from({ length: MAX_VALUES }, () => 0)
  for (const [headers, payload] of [
    [JSON_CT, JSON.stringify({ event_name: 'a', args: many })],
    [{ 'content-type': 'application/msgpack' }, Buffer.from(encode({ event_name: 'a', agent_id: 'b', args: many }))]
  ] as const) {
    const res = await big.inject({ method: 'POST', url: '/events', headers, payload })
    t.equal(res.statusCode, 413, headers['content-type'])
    t.match(res.json(), { code: 'BUSGATE_MESSAGE_TOO_LARGE', message: new RegExp(`more than ${MAX_VALUES} values`) })
  }
  t.equal(await app.engine.bus.queueLength() + await big.engine.bus.queueLength(), 0, 'nothing was written')
})
