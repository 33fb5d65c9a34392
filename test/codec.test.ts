import { readFileSync } from 'node:fs'
import { encode } from '@msgpack/msgpack'
import t from 'tap'
import {
  CodecError, MAX_DEPTH, MAX_MESSAGE_BYTES, MAX_VALUES, Timestamp, decodeEvent, encodeEvent, hexPreview, msgpackArrayHead, parseWireEvent, parseWireEventAt, scanMsgpack, toJsonEvent, toJsonValue
} from '../src/codec.js'
import { packJsonEvents } from '../src/json-packer.js'

interface Fixture { name: string, hex: string, json: unknown, reencodable: boolean }
const fixtures = (JSON.parse(readFileSync(new URL('./fixtures/python-msgpack.json', import.meta.url), 'utf8')) as { cases: Fixture[] }).cases

const bytes = (hex: string): Uint8Array => new Uint8Array(Buffer.from(hex, 'hex'))
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')
const packArgs = (args: unknown): Buffer => packJsonEvents([{ event_name: 'a', agent_id: 'b', args }], 'unused', () => '')[0] as Buffer

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
    const encoded = packJsonEvents([json], 'unused', () => '')[0] as Buffer
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

t.test('timestamps packed by Python map as documented, the one that crashed busgate among them', async (t) => {
  const f = fixtures.find((x) => x.name === 'timestamps')
  const args = decodeEvent(bytes(f!.hex)).args
  t.ok(args.every((a) => a instanceof Timestamp), 'all valid timestamps')
  t.same(args[7], new Timestamp(2n ** 62n, 0, bytes('000000004000000000000000')))
  t.same(toJsonValue(args[7]), { $ext: -1, $base64: 'AAAAAEAAAAAAAAAA' })
  t.equal(toJsonValue(args[1]), '2023-11-14T22:13:20.123Z')
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
  t.equal(toJsonValue(12n), 12)
  t.equal(toJsonValue(-(2n ** 53n)), '-9007199254740992')
  // timestamp extension -1 and an unknown extension 5, packed by hand
  const ts = decodeEvent(bytes('83aa6576656e745f6e616d65a178a86167656e745f6964a178a46172677391d6ff00000001')).args[0]
  t.equal(toJsonValue(ts), '1970-01-01T00:00:01.000Z')
  const ext = decodeEvent(bytes('83aa6576656e745f6e616d65a178a86167656e745f6964a178a46172677391d5050102')).args[0]
  t.same(toJsonValue(ext), { $ext: 5, $base64: 'AQI=' })
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
    ['only a __proto__ key', '81a95f5f70726f746f5f5f01', 'wrong_shape', /event_name must be a str, got nothing/]
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

// The frame of an event named "x" from agent "x", up to the args array's header.
const HEAD = '83aa6576656e745f6e616d65a178a86167656e745f6964a178a461726773'
const argsOf = (argsHex: string): unknown[] => decodeEvent(bytes(HEAD + argsHex)).args
const jsonArgsOf = (argsHex: string): unknown => JSON.parse(JSON.stringify(toJsonEvent(decodeEvent(bytes(HEAD + argsHex))).args))

t.test('a timestamp beyond what Date holds maps to the extension form, not a crash', async (t) => {
  // The attack: seconds = 2^62, which Python's unpackb reads as Timestamp(seconds=4611686018427387904).
  const attack = bytes('83aa6576656e745f6e616d65ae6b65726e656c5f73746172746564a86167656e745f6964a161a4617267739' +
    '1c70cff000000004000000000000000')
  const event = decodeEvent(attack)
  t.ok(event.args[0] instanceof Timestamp)
  t.same(toJsonEvent(event).args, [{ $ext: -1, $base64: 'AAAAAEAAAAAAAAAA' }])
  t.same(parseWireEvent(attack), event, 'a valid timestamp: accepted as a POST body too')

  const ts = (hex: string): unknown => (jsonArgsOf('91' + hex) as unknown[])[0]
  const max = (8_640_000_000_000n).toString(16).padStart(16, '0') // Date's last second, 8.64e15 ms
  const min = (2n ** 64n - 8_640_000_000_000n).toString(16) // -8.64e12 s, two's complement
  t.equal(ts('c70cff' + '00000000' + max), '+275760-09-13T00:00:00.000Z', 'the last instant Date holds')
  t.same(ts('c70cff' + '000f4240' + max), { $ext: -1, $base64: Buffer.from('000f4240' + max, 'hex').toString('base64') }, 'one millisecond later')
  t.equal(ts('c70cff' + '000f423f' + max), '+275760-09-13T00:00:00.000Z', 'less than a millisecond later is still in range')
  t.equal(ts('c70cff' + '00000000' + min), '-271821-04-20T00:00:00.000Z', 'the first instant Date holds')
  const beforeMin = (2n ** 64n - 8_640_000_000_001n).toString(16)
  t.same(ts('c70cff' + '3b9ac9ff' + beforeMin), { $ext: -1, $base64: Buffer.from('3b9ac9ff' + beforeMin, 'hex').toString('base64') },
    'a millisecond before, by a nanosecond')
  t.match(ts('c70cff' + '3b9ac9ff' + '7fffffffffffffff'), { $ext: -1 }, 'the largest timestamp96')
  t.match(ts('c70cff' + '00000000' + '8000000000000000'), { $ext: -1 }, 'the smallest')
})

t.test('timestamps in range keep their ISO-8601 form, to the millisecond', async (t) => {
  const ts = (hex: string): unknown => (jsonArgsOf('91' + hex) as unknown[])[0]
  t.equal(ts('d6ff00000001'), '1970-01-01T00:00:01.000Z', 'timestamp32')
  t.equal(ts('d6ffffffffff'), '2106-02-07T06:28:15.000Z', 'timestamp32, the largest')
  t.equal(ts('d7ff' + (123456789 * 4).toString(16).padStart(8, '0') + '6553f100'), '2023-11-14T22:13:20.123Z', 'timestamp64: finer digits are dropped')
  t.equal(ts('d7ff' + 'ee6b27ff' + 'ffffffff'), '2514-05-30T01:53:03.999Z', 'timestamp64, the largest')
  t.equal(ts('c7' + '0cff' + '0007a120' + 'ffffffffffffffff'), '1969-12-31T23:59:59.000Z', 'before 1970, half a millisecond past a second: floored')
  t.equal(ts('c7' + '0cff' + '00000000' + '0000000000000001'), '1970-01-01T00:00:01.000Z', 'timestamp96')
  t.equal(ts('c704ff00000001'), '1970-01-01T00:00:01.000Z', 'a timestamp32 in an ext8')
  const value = argsOf('91d6ff00000001')[0]
  t.ok(value instanceof Timestamp)
  t.same(value, new Timestamp(1n, 0, new Uint8Array([0, 0, 0, 1])))
})

t.test('an ext -1 that is no timestamp is an extension like any other on the bus, and refused as a POST body', async (t) => {
  const cases: Array<[string, string]> = [
    ['d7ff' + 'ee6b2800' + '00000001', 'timestamp64, 10^9 ns'],
    ['d7ff' + 'ffffffff' + 'ffffffff', 'timestamp64, 2^30-1 ns'],
    ['c70cff' + '3b9aca00' + '0000000000000001', 'timestamp96, 10^9 ns'],
    ['d4ff00', '1 byte'],
    ['d5ff0001', '2 bytes'],
    ['c700ff', 'no bytes'],
    ['d8ff' + '00'.repeat(16), '16 bytes']
  ]
  for (const [hex, name] of cases) {
    const data = Buffer.from(hex.slice(hex.startsWith('c7') ? 6 : 4), 'hex')
    t.same(jsonArgsOf('91' + hex), [{ $ext: -1, $base64: data.toString('base64') }], name)
    t.throws(() => parseWireEvent(bytes(HEAD + '91' + hex)), { name: 'CodecError', reason: 'undecodable' }, `${name}: Python's unpackb refuses it`)
  }
})

t.test('keys Python reads: __proto__, constructor, toString', async (t) => {
  // {"__proto__": {"polluted": 1}, "constructor": 2, "toString": 3}, as Python packs it
  const map = '83' + 'a95f5f70726f746f5f5f' + '81a8706f6c6c7574656401' + 'ab636f6e7374727563746f72' + '02' + 'a8746f537472696e67' + '03'
  const frame = bytes(HEAD + '91' + map)
  const event = decodeEvent(frame)
  const json = JSON.stringify(toJsonEvent(event).args)
  t.equal(json, '[{"__proto__":{"polluted":1},"constructor":2,"toString":3}]', 'the keys reach JSON as sent')
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype is untouched')
  const arg = event.args[0] as object
  t.equal(Object.getPrototypeOf(arg), Object.prototype, 'the decoded map keeps its prototype')
  t.equal(Object.getPrototypeOf(toJsonValue(arg)), Object.prototype, 'so does its JSON')
  t.same(JSON.parse(json), [JSON.parse('{"__proto__":{"polluted":1},"constructor":2,"toString":3}')])
  t.same(parseWireEvent(frame), event, 'accepted as a POST body: Python reads it')
  t.equal(JSON.stringify(jsonArgsOf('9181a95f5f70726f746f5f5f81a95f5f70726f746f5f5fc0')), '[{"__proto__":{"__proto__":null}}]', 'nested')
  // at the top of the frame, an extra key, named as sent
  const top = bytes('84aa6576656e745f6e616d65a178a86167656e745f6964a178a46172677390a95f5f70726f746f5f5fc0')
  t.equal(decodeEvent(top).event_name, 'x')
  t.throws(() => parseWireEvent(top), { reason: 'wrong_shape', message: /unexpected key "__proto__"/ })
})

t.test('map keys that are not str, on the bus', async (t) => {
  t.same(jsonArgsOf('91820102a16103'), [{ 1: 2, a: 3 }], 'an int key: its decimal text')
  t.same(jsonArgsOf('9181cf000000000000000102'), [{ 1: 2 }], 'a uint64 key too')
  t.same(jsonArgsOf('9181d3800000000000000002'), [{ '-9223372036854775808': 2 }], 'an int64 key beyond 2^53')
  t.same(jsonArgsOf('9181cb3ff800000000000002'), [{ 1.5: 2 }], 'a float key')
  for (const [hex, name] of [['c40161', 'bin'], ['c0', 'nil'], ['c3', 'bool'], ['80', 'map'], ['90', 'array'], ['d6ff00000001', 'timestamp'], ['d40501', 'ext']]) {
    t.throws(() => decodeEvent(bytes(HEAD + '9181' + hex + '02')), { name: 'CodecError', reason: 'undecodable' }, `a ${name} key`)
  }
})

t.test('invalid UTF-8 in a str is undecodable on the bus too, never mangled', async (t) => {
  const cases: Array<[string, string]> = [
    ['a2c328', 'a bad continuation'],
    ['a3eda080', 'an encoded surrogate'],
    ['a2c0af', 'an overlong "/"'],
    ['a1e0', 'a sequence cut short'],
    ['a4f4908080', 'past U+10FFFF'],
    ['d9' + 'ff' + '61'.repeat(254) + 'ff', 'a long str (another decoder path in the library)']
  ]
  for (const [hex, name] of cases) {
    t.throws(() => decodeEvent(bytes(HEAD + '91' + hex)), { name: 'CodecError', reason: 'undecodable', message: /not valid UTF-8/ }, name)
    t.throws(() => decodeEvent(bytes(HEAD + '9181' + hex + 'c0')), { name: 'CodecError', reason: 'undecodable', message: /not valid UTF-8/ }, `${name}, as a key`)
  }
  // "__proto__" with an overlong "p": the library's own decoder would read it as __proto__
  t.throws(() => decodeEvent(bytes(HEAD + '9181aa5f5fc1b0726f746f5f5fc0')), { name: 'CodecError', message: /not valid UTF-8/ })
  t.same(jsonArgsOf('91a4f09f8e89'), ['🎉'], 'valid four-byte sequences are fine')
})

t.test('a message too large to show as JSON is refused as too large, not a crash of JSON.stringify', async (t) => {
  const big = Buffer.concat([bytes(HEAD + '91c6'), Buffer.from((MAX_MESSAGE_BYTES).toString(16).padStart(8, '0'), 'hex'), Buffer.alloc(MAX_MESSAGE_BYTES)])
  t.throws(() => decodeEvent(big), { name: 'CodecError', reason: 'too_large', message: /larger than/ })
})

t.test('past MAX_VALUES a message is too large to decode, on the bus and in a POST body alike', async (t) => {
  const within = encode({ event_name: 'a', agent_id: 'b', args: Array.from({ length: MAX_VALUES - 8 }, () => 0) })
  t.equal(decodeEvent(within).args.length, MAX_VALUES - 8, 'the map, its keys and values, args and its items: all within')
  const past = encode({ event_name: 'a', agent_id: 'b', args: Array.from({ length: MAX_VALUES }, () => []) })
  t.throws(() => decodeEvent(past), { name: 'CodecError', reason: 'too_large' })
  t.throws(() => parseWireEvent(past), { name: 'CodecError', reason: 'too_large' })
  t.throws(() => packArgs(Array.from({ length: MAX_VALUES }, () => ({}))), { name: 'CodecError', reason: 'too_large' })
  t.doesNotThrow(() => packArgs(Array.from({ length: MAX_VALUES - 8 }, () => 1)))
  // JSON and msgpack count alike, keys included: what a POST accepts, the bus reads.
  for (const n of [MAX_VALUES / 2 - 8, MAX_VALUES / 2 - 3, MAX_VALUES / 2]) {
    const args = [Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i]))]
    const json = (() => { try { packArgs(args); return 'ok' } catch (err) { return (err as CodecError).reason } })()
    const wire = (() => { try { decodeEvent(encode({ event_name: 'a', agent_id: 'b', args })); return 'ok' } catch (err) { return (err as CodecError).reason } })()
    t.equal(json, wire, `a map of ${n} keys: ${wire} both ways`)
  }
  const started = performance.now()
  t.throws(() => decodeEvent(encode({ event_name: 'a', agent_id: 'b', args: Array.from({ length: 10 * MAX_VALUES }, () => ({})) })))
  t.ok(performance.now() - started < 1000, 'refused by the scan, before anything is built')
})

t.test('parseWireEventAt walks an array of events element by element, each its exact bytes', async (t) => {
  const accepted = fixtures.filter((f) => { try { parseWireEvent(bytes(f.hex)); return true } catch { return false } })
  t.ok(accepted.length >= 20)
  // array16 header, then every fixture as Python packed it
  const count = accepted.length.toString(16).padStart(4, '0')
  const body = bytes(`dc${count}${accepted.map((f) => f.hex).join('')}`)
  const head = msgpackArrayHead(body)
  t.same(head, { count: accepted.length, start: 3 })
  let pos = 3
  for (const f of accepted) {
    const element = parseWireEventAt(body, pos)
    t.equal(hex(element.bytes), f.hex, `${f.name}: its bytes`)
    t.same(element.event, parseWireEvent(bytes(f.hex)), `${f.name}: as parseWireEvent reads it`)
    pos += element.bytes.byteLength
  }
  t.equal(pos, body.byteLength)
  t.equal(msgpackArrayHead(bytes('81a161a162')), undefined, 'a map is no array')
  t.equal(msgpackArrayHead(bytes('dc00')), undefined, 'nor a cut header')
  t.same(msgpackArrayHead(bytes('90')), { count: 0, start: 1 })
  // Offsets in errors count from the start of the whole body.
  t.throws(() => parseWireEventAt(bytes('9283aa6576656e745f6e616d65a2c328'), 1), { reason: 'undecodable', message: /str at byte 14 is not valid UTF-8/ })
  t.throws(() => parseWireEventAt(bytes('91a161'), 1), { reason: 'wrong_shape', message: /expected a map/ })
})
