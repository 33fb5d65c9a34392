import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { encode } from '@msgpack/msgpack'
import t, { type Test } from 'tap'
import { testApp } from '../helpers/app.js'
import { uniqueNames, watchBus } from '../helpers/bus.js'
import { startRedis } from '../helpers/redis.js'
import type { Config } from '../../src/config.js'

// POST /events/batch with Content-Type: application/msgpack: one msgpack array of event maps.

const redis = await startRedis(t)

const MSGPACK_CT = { 'content-type': 'application/msgpack' }
const hex = (h: string): Buffer => Buffer.from(h.replaceAll(' ', ''), 'hex')
const utf8 = (s: string): string => Buffer.from(s).toString('hex')
/** Each str as str8 (d9), which msgpack's smallest-fit rule never picks for short strs. */
const str8 = (s: string): string => `d9 ${Buffer.byteLength(s).toString(16).padStart(2, '0')} ${utf8(s)}`
const fixstr = (s: string): string => `${(0xa0 | Buffer.byteLength(s)).toString(16)} ${utf8(s)}`
const event = (name: string, agent: string, args: string, count = 0): string =>
  `83 ${fixstr('event_name')} ${fixstr(name)} ${fixstr('agent_id')} ${fixstr(agent)} ${fixstr('args')} ${(0x90 | count).toString(16)} ${args}`
const concat = (elements: string[], header = (0x90 | elements.length).toString(16)): Buffer => hex([header, ...elements].join(' '))

// Valid, but not what any re-encoding would write: re-encoding anywhere would be caught.
const UNUSUAL = [
  // str8 for every str, keys too
  `83 ${str8('event_name')} ${str8('kernel_started')} ${str8('agent_id')} ${str8('i-ag01')} ${str8('args')} 91 ${str8('sess-1')}`,
  // map16 and array16 headers for tiny counts, float64 for 1.5 and 1.0, uint64 for 1
  `de 0003 ${fixstr('event_name')} ${fixstr('kernel_log')} ${fixstr('agent_id')} ${fixstr('i-ag01')} ${fixstr('args')} dc 0004 cb 3ff8000000000000 cb 3ff0000000000000 cf 0000000000000001 d0 05`,
  // bin args (bin8 and bin16), and an empty bin
  event('blob_sent', 'i-ag02', 'c4 03 0001ff c5 0002 abcd c4 00', 3),
  // a timestamp ext, 32-bit and 96-bit, and float32
  event('ticked', 'i-ag02', 'd6 ff 6553f100 c7 0c ff 00000001 0000000065 53f100 ca 3fc00000', 3),
  // an int64 beyond 2^53, a map with a str16 key, nil and bools
  event('counted', 'manager', 'd3 7fffffffffffffff 81 da 0001 6b c0 c2 c3', 4)
]

async function setup (t: Test, overrides: Partial<Config> = {}) {
  const names = uniqueNames()
  const app = await testApp(t, redis.url, { ...names, ...overrides })
  const bus = await watchBus(redis, names)
  return { app, bus }
}

t.test('each element reaches both keys as its very bytes, in order', async (t) => {
  const { app, bus } = await setup(t)
  for (const header of [undefined, 'dc 0005', 'dd 00000005']) {
    const res = await app.inject({ method: 'POST', url: '/events/batch', headers: MSGPACK_CT, payload: concat(UNUSUAL, header) })
    t.equal(res.statusCode, 202, `array header ${header ?? 'fixarray'}: ${res.body}`)
  }
  const expected = [...UNUSUAL, ...UNUSUAL, ...UNUSUAL].map((e) => e.replaceAll(' ', ''))
  const queued = await bus.queued()
  t.same(queued.map((b) => b.toString('hex')), expected, 'LRANGE: byte for byte, in order')
  const published = await bus.waitPublished(expected.length)
  t.same(published.map((b) => b.toString('hex')), expected, 'the channel: byte for byte, in order')

  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /busgate_events_produced_total\{route="batch",format="msgpack"\} 15/, 'counted as msgpack batch events')
})

t.test('the answer is the JSON batch\'s', async (t) => {
  const { app } = await setup(t)
  const res = await app.inject({ method: 'POST', url: '/events/batch', headers: MSGPACK_CT, payload: concat([event('a', 'b', ''), event('c', 'd', '')]) })
  t.equal(res.statusCode, 202)
  t.same(res.json(), { accepted: 2, subscribers: 1, queue_length: 2 })
})

t.test('task events in a msgpack batch are recorded as from a JSON one', async (t) => {
  const { app } = await setup(t)
  const taskId = randomUUID()
  const body = Buffer.from(encode([
    { event_name: 'kernel_started', agent_id: 'i-ag01', args: ['s'] },
    { event_name: 'task_updated', agent_id: 'manager', args: [{ task_id: taskId, current_progress: 2, total_progress: 5, message: 'two' }] }
  ]))
  t.equal((await app.inject({ method: 'POST', url: '/events/batch', headers: MSGPACK_CT, payload: body })).statusCode, 202)
  t.match(await redis.client.hgetall(`bgtask.${taskId}`), { status: 'started', current: '2', total: '5', msg: 'two' })
  await redis.client.del(`bgtask.${taskId}`)
})

const good = event('a', 'b', '')
const five = (bad: string): Buffer => concat([good, good, good, bad, good])

interface BadCase { name: string, payload: Buffer, status: number, code: string, message: RegExp }
const BAD: BadCase[] = [
  { name: 'element 3 not valid UTF-8', payload: five(event('a', 'b', 'a2 c328', 1)), status: 400, code: 'BUSGATE_INVALID_MSGPACK', message: /body\/3\/str at byte \d+ is not valid UTF-8/ },
  { name: 'element 3 with an int map key', payload: five(event('a', 'b', '81 01 02', 1)), status: 400, code: 'BUSGATE_INVALID_MSGPACK', message: /body\/3\/map key/ },
  { name: 'element 3 with a bad timestamp', payload: five(event('a', 'b', 'd7 ff ffffffff 00000000', 1)), status: 400, code: 'BUSGATE_INVALID_MSGPACK', message: /body\/3\/timestamp/ },
  { name: 'element 3 an array', payload: five('93 a161 a162 90'), status: 400, code: 'BUSGATE_INVALID_EVENT', message: /body\/3\/expected a map/ },
  { name: 'element 3 with an extra key', payload: five(`84 ${fixstr('event_name')} a161 ${fixstr('agent_id')} a162 ${fixstr('args')} 90 a178 c0`), status: 400, code: 'BUSGATE_INVALID_EVENT', message: /body\/3\/unexpected key "x"/ },
  { name: 'element 3 with a repeated key', payload: five(`83 ${fixstr('event_name')} a161 ${fixstr('event_name')} a161 ${fixstr('args')} 90`), status: 400, code: 'BUSGATE_INVALID_EVENT', message: /body\/3\/agent_id must be a str/ },
  { name: 'element 3 without args', payload: five(`82 ${fixstr('event_name')} a161 ${fixstr('agent_id')} a162`), status: 400, code: 'BUSGATE_INVALID_EVENT', message: /body\/3\/args must be an array/ },
  { name: 'element 3 with a bad event_name', payload: five(event('A', 'b', '')), status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /body\/3\/event_name must match pattern/ },
  { name: 'element 4 truncated', payload: concat([good, good, good, good, '83 a161']), status: 400, code: 'BUSGATE_INVALID_MSGPACK', message: /body\/4\/truncated/ },
  { name: 'fewer elements than the header says', payload: hex(`95 ${good} ${good}`), status: 400, code: 'BUSGATE_INVALID_MSGPACK', message: /body\/2\/truncated/ },
  { name: 'trailing bytes after the array', payload: hex(`92 ${good} ${good} 00`), status: 400, code: 'BUSGATE_INVALID_MSGPACK', message: /1 bytes left over after the array/ },
  { name: 'one event, not an array', payload: hex(good), status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /body must be array/ },
  { name: 'a str, not an array', payload: hex('a161'), status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /body must be array/ },
  { name: 'not msgpack at all', payload: hex('c1'), status: 400, code: 'BUSGATE_INVALID_MSGPACK', message: /0xc1/ },
  { name: 'an array16 header cut short', payload: hex('dc 00'), status: 400, code: 'BUSGATE_INVALID_MSGPACK', message: /truncated/ },
  { name: 'an empty body', payload: Buffer.alloc(0), status: 400, code: 'BUSGATE_INVALID_MSGPACK', message: /truncated/ },
  { name: 'an empty array', payload: hex('90'), status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /fewer than 1 items/ },
  { name: 'an empty array16', payload: hex('dc 0000'), status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /fewer than 1 items/ },
  { name: 'more than BUSGATE_BATCH_MAX', payload: concat([good, good, good, good, good, good]), status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /more than 5 items/ },
  { name: 'a header claiming 2^32-1 elements', payload: hex(`dd ffffffff ${good}`), status: 400, code: 'BUSGATE_VALIDATION_FAILED', message: /more than 5 items/ },
  { name: 'element 1 over BUSGATE_BUS_MAX_MESSAGE_BYTES', payload: concat([good, event('a', 'b', `da 0400 ${'78'.repeat(1024)}`, 1)]), status: 413, code: 'BUSGATE_MESSAGE_TOO_LARGE', message: /body\/1\/\d+ bytes of msgpack, more than BUSGATE_BUS_MAX_MESSAGE_BYTES \(1024\)/ },
  { name: 'element 0 over BUSGATE_BUS_MAX_MESSAGE_BYTES, element 1 undecodable: the first refusal in array order', payload: concat([event('a', 'b', `da 0400 ${'78'.repeat(1024)}`, 1), '83 a161']), status: 413, code: 'BUSGATE_MESSAGE_TOO_LARGE', message: /body\/0\/\d+ bytes of msgpack/ },
  { name: 'a body over BUSGATE_BODY_LIMIT', payload: concat([good, event('a', 'b', `db 00002000 ${'78'.repeat(8192)}`, 1)]), status: 413, code: 'BUSGATE_PAYLOAD_TOO_LARGE', message: /4096/ }
]

t.test('one bad element, or a bad array, refuses all and writes nothing', async (t) => {
  const { app, bus } = await setup(t, { batchMax: 5, busMaxMessageBytes: 1024, bodyLimit: 4096 })
  t.equal((await app.inject({ method: 'POST', url: '/events/batch', headers: MSGPACK_CT, payload: concat([good]) })).statusCode, 202, 'one event before')
  await bus.waitPublished(1)
  for (const c of BAD) {
    const res = await app.inject({ method: 'POST', url: '/events/batch', headers: MSGPACK_CT, payload: c.payload })
    t.equal(res.statusCode, c.status, `${c.name}: status`)
    const body = res.json()
    t.match(body, { statusCode: c.status, code: c.code, message: c.message }, `${c.name}: error body`)
    t.same(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'], `${c.name}: nothing else in the body`)
  }
  await sleep(100)
  t.equal((await bus.queued()).length, 1, 'the list holds only the event from before')
  t.equal(bus.published.length, 1, 'nothing more was published')
})

t.test('other routes still refuse msgpack with 415', async (t) => {
  const { app } = await setup(t)
  for (const url of ['/webhooks', '/dead-letters/redeliver']) {
    const res = await app.inject({ method: 'POST', url, headers: MSGPACK_CT, payload: concat([good]) })
    t.equal(res.statusCode, 415, url)
    t.equal(res.json().code, 'BUSGATE_UNSUPPORTED_MEDIA_TYPE', url)
  }
})
