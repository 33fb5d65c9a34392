import { readFileSync } from 'node:fs'
import t from 'tap'
import {
  CodecError, MAX_DEPTH, decodeEvent, encodeEvent, fromJsonValue, hexPreview, parseWireEvent, scanMsgpack, toJsonEvent, toJsonValue
} from '../src/codec.js'

interface Fixture { name: string, hex: string, json: unknown, reencodable: boolean }
const fixtures = (JSON.parse(readFileSync(new URL('./fixtures/python-msgpack.json', import.meta.url), 'utf8')) as { cases: Fixture[] }).cases

const bytes = (hex: string): Uint8Array => new Uint8Array(Buffer.from(hex, 'hex'))
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')

t.test('events packed by Python msgpack decode to the documented JSON mapping', async (t) => {
  t.ok(fixtures.length >= 20, 'fixtures are present')
  for (const f of fixtures) {
    const event = decodeEvent(bytes(f.hex))
    t.same(toJsonEvent(event), f.json, f.name)
    t.same(parseWireEvent(bytes(f.hex)), event, `${f.name}: accepted as a POST body too`)
  }
})

t.test('JSON events re-encode to the exact bytes Python writes', async (t) => {
  const reencodable = fixtures.filter((f) => f.reencodable)
  t.ok(reencodable.length >= 12, 'most fixtures are representable in JSON')
  for (const f of reencodable) {
    const json = f.json as { event_name: string, agent_id: string, args: unknown[] }
    const encoded = encodeEvent({ event_name: json.event_name, agent_id: json.agent_id, args: fromJsonValue(json.args) as unknown[] })
    t.equal(hex(encoded), f.hex, f.name)
  }
})

t.test('integers beyond 2^53 decode without loss', async (t) => {
  const f = fixtures.find((x) => x.name === 'big_integers')
  t.ok(f)
  const args = decodeEvent(bytes(f!.hex)).args
  t.equal(args[2], 2n ** 53n + 1n)
  t.equal(args[5], 2n ** 63n - 1n)
  t.equal(args[6], -(2n ** 63n))
  t.equal(args[7], 2n ** 64n - 1n)
  t.same(toJsonValue(args[7]), '18446744073709551615')
})

t.test('binary decodes as bytes and maps to $base64', async (t) => {
  const f = fixtures.find((x) => x.name === 'binary')
  const args = decodeEvent(bytes(f!.hex)).args
  t.ok(args[0] instanceof Uint8Array)
  t.same([...(args[0] as Uint8Array)], [0, 1, 2, 255, 254])
  t.same(toJsonValue(args[0]), { $base64: 'AAEC//4=' })
})

t.test('the JSON mapping of values Python does not send', async (t) => {
  t.equal(toJsonValue(Number.NaN), 'NaN')
  t.equal(toJsonValue(-Infinity), '-Infinity')
  t.equal(toJsonValue(new Date('2024-01-02T03:04:05.000Z')), '2024-01-02T03:04:05.000Z')
  t.equal(toJsonValue(12n), 12)
  t.equal(toJsonValue(-(2n ** 53n)), '-9007199254740992')
  // timestamp extension -1 and an unknown extension 5, packed by hand
  const ts = decodeEvent(bytes('83aa6576656e745f6e616d65a178a86167656e745f6964a178a46172677391d6ff00000001')).args[0]
  t.equal(toJsonValue(ts), '1970-01-01T00:00:01.000Z')
  const ext = decodeEvent(bytes('83aa6576656e745f6e616d65a178a86167656e745f6964a178a46172677391d5050102')).args[0]
  t.same(toJsonValue(ext), { $ext: 5, $base64: 'AQI=' })
})

t.test('fromJsonValue: $base64, unsafe integers, depth', async (t) => {
  const out = fromJsonValue([{ $base64: 'AAE=' }, { $base64: 'x', other: 1 }, 'plain']) as unknown[]
  t.ok(out[0] instanceof Uint8Array)
  t.same([...(out[0] as Uint8Array)], [0, 1])
  t.same(out[1], { $base64: 'x', other: 1 }, 'an object with other keys stays a map')
  t.throws(() => fromJsonValue([{ $base64: 'not base64!' }]), { reason: 'wrong_shape', message: /args\[0\]\.\$base64 must be a padded base64 string/ })
  t.throws(() => fromJsonValue([{ $base64: 'AAE' }]), /padded base64/)
  t.throws(() => fromJsonValue([1, { a: 2 ** 60 }]), /args\[1\]\.a is an integer beyond/)
  t.equal(fromJsonValue(1e300), 1e300 as unknown, 'past 2^64 a number can only be a float, and stays one')
  t.throws(() => fromJsonValue(2 ** 53), /beyond/)
  t.throws(() => fromJsonValue(-(2 ** 63)), /beyond/)
  t.equal(hex(encodeEvent({ event_name: 'a', agent_id: 'b', args: [1e300] })).slice(-18), 'cb7e37e43c8800759c', 'as float64')
  let deep: unknown = 1
  for (let i = 0; i < MAX_DEPTH + 1; i++) deep = [deep]
  t.throws(() => fromJsonValue(deep), /nested deeper than 512/)
})

t.test('strings UTF-8 cannot carry are refused, not mangled', async (t) => {
  t.throws(() => fromJsonValue(['ok', 'lone \ud800 surrogate']), { reason: 'wrong_shape', message: /args\[1\] holds a lone UTF-16 surrogate/ })
  t.throws(() => fromJsonValue([{ 'k\udc00': 1 }]), /the key holds a lone UTF-16 surrogate/)
  t.throws(() => fromJsonValue(['x'.repeat(300) + '\ud83d']), /lone/, 'long strings too')
  t.same(fromJsonValue(['pair \ud83d\ude00 ok']), ['pair 😀 ok'], 'a proper pair is fine')
})

t.test('JSON nesting is bounded where the msgpack scanner bounds it', async (t) => {
  const nest = (levels: number): unknown => {
    let v: unknown = 'bottom'
    for (let i = 0; i < levels; i++) v = [v]
    return v
  }
  // args is level 2 of the frame; MAX_DEPTH levels in all.
  const deepest = [nest(MAX_DEPTH - 2)]
  const encoded = encodeEvent({ event_name: 'a', agent_id: 'b', args: fromJsonValue(deepest) as unknown[] })
  t.equal(scanMsgpack(encoded), undefined, 'the deepest JSON accepted is a frame the scanner accepts')
  t.throws(() => fromJsonValue([nest(MAX_DEPTH - 1)]), /nested deeper/)
})

t.test('a foreign message nested absurdly deep is undecodable, not a crash', async (t) => {
  const head = Buffer.from('83aa6576656e745f6e616d65a178a86167656e745f6964a178a461726773', 'hex')
  const deep = Buffer.concat([head, Buffer.alloc(200_000, 0x91), Buffer.from([0xc0])])
  t.throws(() => decodeEvent(deep), { name: 'CodecError', reason: 'undecodable', message: /nested deeper/ })
})

t.test('encoded maps hold exactly the three keys, in Backend.AI order', async (t) => {
  const encoded = encodeEvent({ event_name: 'a', agent_id: 'b', args: [], extra: 1 } as never)
  t.equal(hex(encoded), '83aa6576656e745f6e616d65a161a86167656e745f6964a162a461726773' + '90')
})

t.test('names and agent ids of every length and script round-trip', async (t) => {
  for (const agent of ['a', 'x'.repeat(31), 'x'.repeat(32), 'é'.repeat(16), 'é'.repeat(40), '日本'.repeat(50), 'x'.repeat(255), 'y'.repeat(256), '🎉'.repeat(20000)]) {
    const encoded = encodeEvent({ event_name: 'n'.repeat(128), agent_id: agent, args: [agent] })
    const back = decodeEvent(encoded)
    t.equal(back.agent_id, agent, `agent of ${agent.length} UTF-16 units`)
    t.same(back.args, [agent])
    t.equal(scanMsgpack(encoded), undefined, 'strictly valid')
  }
})

t.test('decodeEvent refuses what is not an event, with a reason', async (t) => {
  const cases: Array<[string, string, 'undecodable' | 'wrong_shape', RegExp]> = [
    ['empty', '', 'undecodable', /./],
    ['reserved byte', 'c1', 'undecodable', /./],
    ['an int', '01', 'wrong_shape', /expected a map, got an int/],
    ['an array', '9101', 'wrong_shape', /expected a map, got an array/],
    ['no event_name', '81a46172677390', 'wrong_shape', /event_name must be a str, got nothing/],
    ['bin event_name', '83aa6576656e745f6e616d65c40178a86167656e745f6964a178a46172677390', 'wrong_shape', /event_name must be a str, got bin/],
    ['args not array', '83aa6576656e745f6e616d65a178a86167656e745f6964a178a461726773a178', 'wrong_shape', /args must be an array, got a str/],
    ['__proto__ key', '81a95f5f70726f746f5f5f01', 'undecodable', /__proto__/]
  ]
  for (const [name, h, reason, message] of cases) {
    t.throws(() => decodeEvent(bytes(h)), { name: 'CodecError', reason, message }, name)
  }
  // a repeated key: three distinct names, four entries
  t.throws(() => parseWireEvent(bytes('84aa6576656e745f6e616d65a178a86167656e745f6964a178a46172677390aa6576656e745f6e616d65a179')),
    { reason: 'wrong_shape', message: /exactly three entries/ })
  // lenient on the bus: an extra key is ignored…
  const extra = bytes('84aa6576656e745f6e616d65a178a86167656e745f6964a178a46172677390a178c0')
  t.equal(decodeEvent(extra).event_name, 'x')
  // …strict for what is offered to the bus
  t.throws(() => parseWireEvent(extra), { reason: 'wrong_shape', message: /unexpected key "x"/ })
})

t.test('scanMsgpack: what Python would refuse, or what is incomplete', async (t) => {
  const valid = '83aa6576656e745f6e616d65a178a86167656e745f6964a178a46172677390'
  t.equal(scanMsgpack(bytes(valid)), undefined)
  t.match(scanMsgpack(bytes(valid + '00')), /1 bytes left over/)
  t.match(scanMsgpack(bytes(valid.slice(0, -2))), /truncated/)
  t.match(scanMsgpack(bytes('a2c328')), /not valid UTF-8/, 'invalid UTF-8 in a fixstr')
  t.match(scanMsgpack(bytes('81 01 02'.replaceAll(' ', ''))), /map key .* is not a str/)
  t.match(scanMsgpack(bytes('81c0c0')), /map key .* is not a str/)
  t.match(scanMsgpack(bytes('c1')), /0xc1/)
  t.match(scanMsgpack(bytes('dd7fffffff')), /truncated/, 'an array32 claiming more items than bytes')
  t.match(scanMsgpack(bytes('db00010000' + '61'.repeat(10))), /truncated/, 'a str32 longer than the body')
  t.equal(scanMsgpack(bytes('db00000003616263')), undefined, 'str32')
  t.equal(scanMsgpack(bytes('c600000002abcd')), undefined, 'bin32')
  t.equal(scanMsgpack(bytes('dd00000002c0c3')), undefined, 'array32')
  t.equal(scanMsgpack(bytes('df00000001a161c0')), undefined, 'map32')
  t.equal(scanMsgpack(bytes('c9000000020501ff')), undefined, 'ext32')
  t.equal(scanMsgpack(bytes('d8' + '01' + '00'.repeat(16))), undefined, 'fixext16')
  t.equal(scanMsgpack(bytes('d6ff00000001')), undefined, 'timestamp32')
  t.equal(scanMsgpack(bytes('d7ff' + 'ee6b27fc' + '00000001')), undefined, 'timestamp64, 999999999 ns')
  t.match(scanMsgpack(bytes('d7ff' + 'ee6b2800' + '00000001')), /nanoseconds out of range/, 'timestamp64, 10^9 ns')
  t.match(scanMsgpack(bytes('c70cff' + '3b9aca00' + '0000000000000001')), /nanoseconds out of range/, 'timestamp96, 10^9 ns')
  t.match(scanMsgpack(bytes('d5ff0001')), /2 bytes; 4, 8 or 12/, 'a timestamp of the wrong size')
  t.equal(scanMsgpack(bytes('d5ff0001'), false), undefined, 'lenient scans do not judge extensions')
  t.equal(scanMsgpack(bytes('cf' + 'ff'.repeat(8))), undefined, 'uint64')
  t.equal(scanMsgpack(bytes('cb' + '00'.repeat(8))), undefined, 'float64')
  t.match(scanMsgpack(bytes('cb' + '00'.repeat(7))), /truncated/)
  t.equal(scanMsgpack(bytes('91'.repeat(MAX_DEPTH) + 'c0')), undefined, `${MAX_DEPTH} levels`)
  t.match(scanMsgpack(bytes('91'.repeat(MAX_DEPTH + 1) + 'c0')), /nested deeper/)
  // a megabyte of nesting must not blow the stack
  t.match(scanMsgpack(new Uint8Array(1 << 20).fill(0x91)), /nested deeper/)
})

t.test('parseWireEvent reports its failures as CodecError', async (t) => {
  t.throws(() => parseWireEvent(bytes('a2c328')), CodecError)
  t.throws(() => parseWireEvent(bytes('83aa6576656e745f6e616d65a178a86167656e745f6964a178a46172677391d6ff0000')), { reason: 'undecodable', message: /./ })
})

t.test('hexPreview is short', async (t) => {
  t.equal(hexPreview(bytes('0102')), '0102')
  t.equal(hexPreview(new Uint8Array(100), 4), '00000000… (100 bytes)')
})
