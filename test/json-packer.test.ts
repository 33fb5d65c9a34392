import { encode } from '@msgpack/msgpack'
import t from 'tap'
import { CodecError, MAX_DEPTH, MAX_VALUES, decodeEvent, parseWireEvent, scanMsgpack, toJsonEvent } from '../src/codec.js'
import { packJsonEvent, packJsonEvents } from '../src/json-packer.js'

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')
const pack = (args: unknown, where = ''): Buffer => packJsonEvents([{ event_name: 'a', agent_id: 'b', args }], 'unused', () => where)[0] as Buffer
const argsOf = (args: unknown): unknown[] => decodeEvent(pack(args)).args

t.test('$base64, unsafe integers, depth', async (t) => {
  const out = argsOf([{ $base64: 'AAE=' }, { $base64: 'x', other: 1 }, 'plain'])
  t.ok(out[0] instanceof Uint8Array, '{"$base64"} alone is bin')
  t.same([...(out[0] as Uint8Array)], [0, 1])
  t.same(out[1], { $base64: 'x', other: 1 }, 'an object with other keys stays a map')
  t.throws(() => pack([{ $base64: 'not base64!' }]), { reason: 'wrong_shape', message: /args\[0\]\.\$base64 must be a padded base64 string/ })
  t.throws(() => pack([{ $base64: 'AAE' }]), /padded base64/)
  t.throws(() => pack([1, { a: 2 ** 60 }]), /args\[1\]\.a is an integer beyond/)
  t.same(argsOf([1e300]), [1e300], 'past 2^64 a number can only be a float, and stays one')
  t.equal(hex(pack([1e300])).slice(-18), 'cb7e37e43c8800759c', 'as float64')
  t.throws(() => pack([2 ** 53]), /beyond/)
  t.throws(() => pack([-(2 ** 63)]), /beyond/)
  let deep: unknown = 1
  for (let i = 0; i < MAX_DEPTH + 1; i++) deep = [deep]
  t.throws(() => pack(deep), /nested deeper than 512/)
})

t.test('every width of int, str, bin, array and map: the bytes @msgpack/msgpack writes', async (t) => {
  const values: unknown[] = [
    0, -0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1,
    -1, -32, -33, -128, -129, -32768, -32769, -(2 ** 31), -(2 ** 31) - 1, -(2 ** 53 - 1),
    0.5, -1.25, 1e300, true, false, null,
    '', 'x'.repeat(31), 'x'.repeat(32), 'x'.repeat(255), 'x'.repeat(256), 'x'.repeat(65535), 'x'.repeat(65536),
    'é', 'é'.repeat(15), 'é'.repeat(16), '日本'.repeat(50), '🎉'.repeat(20000),
    // ASCII up to a unit past it, at the short-str copy's edges (its header of one byte or two, and its end)
    ...[1, 30, 31, 32, 127, 128, 129].flatMap((n) => ['x'.repeat(n - 1) + 'é', 'é' + 'x'.repeat(n - 1), 'x'.repeat(n - 1) + '\u007f']),
    Array.from({ length: 15 }, (_, i) => i), Array.from({ length: 16 }, (_, i) => i), Array.from({ length: 60_000 }, () => 0), // array32 would hold more than MAX_VALUES
    Object.fromEntries(Array.from({ length: 15 }, (_, i) => [`k${i}`, i])), Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`k${i}`, i]))
  ]
  for (const value of values) {
    const want = Buffer.concat([Buffer.from('83aa6576656e745f6e616d65a161a86167656e745f6964a162a461726773', 'hex'), encode([value])])
    const label = typeof value === 'string' ? `a str of ${value.length} units` : Array.isArray(value) ? `an array of ${value.length}` : JSON.stringify(value)?.slice(0, 40) ?? String(value)
    t.equal(hex(pack([value])), hex(want), label)
  }
  for (const size of [0, 1, 255, 256, 65535, 65536]) {
    const bytes = Buffer.alloc(size, 7)
    const want = Buffer.concat([Buffer.from('83aa6576656e745f6e616d65a161a86167656e745f6964a162a461726773', 'hex'), encode([new Uint8Array(bytes)])])
    t.equal(hex(pack([{ $base64: bytes.toString('base64') }])), hex(want), `bin of ${size} bytes`)
  }
})

t.test('a $base64 of megabytes is checked in linear time, without recursion', async (t) => {
  const bytes = Buffer.alloc(3_400_000, 0x5a)
  const text = bytes.toString('base64')
  const started = performance.now()
  const packed = pack([{ $base64: text }])
  const ms = performance.now() - started
  t.ok(ms < 2000, `packed in ${Math.round(ms)} ms: well within a second or two even on a slow machine`)
  const arg = decodeEvent(packed).args[0]
  t.ok(arg instanceof Uint8Array && Buffer.from(arg).equals(bytes), 'bin32, whole')
  t.throws(() => pack([{ $base64: 'A'.repeat(4_500_000) + '=' }]), /padded base64/, 'refused, not a RangeError')
})

t.test('strings UTF-8 cannot carry are refused, not mangled', async (t) => {
  t.throws(() => pack(['ok', 'lone \ud800 surrogate']), { reason: 'wrong_shape', message: /args\[1\] holds a lone UTF-16 surrogate/ })
  t.throws(() => pack([{ 'k\udc00': 1 }]), /the key holds a lone UTF-16 surrogate/)
  t.throws(() => pack(['x'.repeat(300) + '\ud83d']), /lone/, 'long strings too')
  t.same(argsOf(['pair \ud83d\ude00 ok']), ['pair 😀 ok'], 'a proper pair is fine')
  t.throws(() => packJsonEvents([{ event_name: 'a', agent_id: 'x\ud800', args: [] }], 'unused', () => 'body/'), /^body\/agent_id holds a lone UTF-16 surrogate/)
})

t.test('JSON nesting is bounded where the msgpack scanner bounds it', async (t) => {
  const nest = (levels: number): unknown => {
    let v: unknown = 'bottom'
    for (let i = 0; i < levels; i++) v = [v]
    return v
  }
  // args is level 2 of the frame; MAX_DEPTH levels in all.
  t.equal(scanMsgpack(pack([nest(MAX_DEPTH - 2)])), undefined, 'the deepest JSON accepted is a frame the scanner accepts')
  t.throws(() => pack([nest(MAX_DEPTH - 1)]), /nested deeper/)
})

t.test('numbers that are not finite are refused, named by their path', async (t) => {
  t.throws(() => pack([1, Infinity]), { name: 'CodecError', reason: 'wrong_shape', message: /args\[1\] is not a finite number/ })
  t.throws(() => pack([{ a: [-Infinity] }]), /args\[0\]\.a\[0\] is not a finite number/)
  t.throws(() => pack([{ $base64: 'AA==' }, Number.NaN]), /args\[1\] is not a finite number/)
  t.throws(() => pack(JSON.parse('{"x":[1e400]}'), 'body/'), /^body\/args\.x\[0\] is not a finite number/)
  t.same(argsOf([Number.MAX_VALUE, -Number.MAX_VALUE, 5e-324]), [Number.MAX_VALUE, -Number.MAX_VALUE, 5e-324])
})

t.test('a __proto__ key stays a key, beside bin', async (t) => {
  const value = JSON.parse('[{"__proto__":{"a":1},"b":{"$base64":"AA=="}}]') as unknown[]
  t.equal(JSON.stringify(toJsonEvent(parseWireEvent(pack(value))).args), '[{"__proto__":{"a":1},"b":{"$base64":"AA=="}}]')
})

t.test('a batch: frames in order, each its own view; a refusal names its element and the scratch is reused', async (t) => {
  const frames = packJsonEvents([
    { event_name: 'one', args: [1] },
    { event_name: 'two', agent_id: 'i-x', args: [{ $base64: 'AAE=' }] },
    { event_name: 'three' }
  ], 'manager', (i) => `body/${i}/`)
  t.same(frames.map((f) => decodeEvent(f)), [
    { event_name: 'one', agent_id: 'manager', args: [1] },
    { event_name: 'two', agent_id: 'i-x', args: [new Uint8Array([0, 1])] },
    { event_name: 'three', agent_id: 'manager', args: [] }
  ], 'agent_id defaults, args default to []')
  for (const f of frames) t.equal(scanMsgpack(f), undefined)
  const err = t.throws(() => packJsonEvents([{ event_name: 'ok', args: [] }, { event_name: 'bad', args: [{ deep: [2 ** 60] }] }], 'm', (i) => `body/${i}/`))
  t.ok(err instanceof CodecError)
  t.match((err as CodecError).message, /^body\/1\/args\[0\]\.deep\[0\] is an integer beyond/)
  t.throws(() => packJsonEvents([{ event_name: 'ok' }, { event_name: 'big', args: Array.from({ length: MAX_VALUES }, () => 0) }], 'm', (i) => `body/${i}/`),
    { name: 'CodecError', reason: 'too_large', message: /^body\/1\/the event holds more than 65536 values/ })
  // A refusal mid-batch leaves nothing behind for the next call.
  t.same(decodeEvent(pack(['after'])).args, ['after'])
  // A batch past the scratch's kept size still packs whole, and the next small one is right.
  const big = packJsonEvents(Array.from({ length: 40 }, () => ({ event_name: 'big', args: ['x'.repeat(60_000)] })), 'm', () => '')
  t.equal(big.length, 40)
  t.same(decodeEvent(big[39] as Buffer).args, ['x'.repeat(60_000)])
  t.same(decodeEvent(pack([1, 2])).args, [1, 2])
})

t.test('one event alone: the same bytes as in a batch, refused in the same words', async (t) => {
  const input = { event_name: 'one', args: ['6f0c9a3e-3f4e-4b3a-9d4c-2a7c1f0e5b11', { cpu: 2, mem: '4g' }, [1.5, -7, null, true]] }
  t.equal(hex(packJsonEvent(input, 'manager', () => 'body/')), hex(packJsonEvents([input, input], 'manager', () => 'body/')[1] as Buffer))
  t.throws(() => packJsonEvent({ event_name: 'bad', args: [2 ** 60] }, 'm', () => 'body/'), /^body\/args\[0\] is an integer beyond/)
  const big = packJsonEvent({ event_name: 'big', args: ['x'.repeat(2_000_000)] }, 'm', () => '')
  t.equal(decodeEvent(big).args[0], 'x'.repeat(2_000_000), 'past the scratch kept between calls')
  t.same(decodeEvent(packJsonEvent({ event_name: 'after' }, 'm', () => '')).args, [])
})
