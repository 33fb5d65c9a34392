import { readFileSync } from 'node:fs'
import { encode } from '@msgpack/msgpack'
import fc from 'fast-check'
import t from 'tap'
import { decodeEvent, toJsonEvent } from '../../src/codec.js'

// The dashboard's decoder (a browser module; Node has the same TextDecoder, DataView and atob)
// must show a dead letter's bytes exactly as the gateway maps them for the stream.
interface BrowserMsgpack {
  decodeMsgpack: (bytes: Uint8Array) => unknown
  fromBase64: (text: string) => Uint8Array
  DecodeError: new () => Error
}
const { decodeMsgpack, fromBase64, DecodeError } = await import(new URL('../../src/ui/msgpack.js', import.meta.url).href) as BrowserMsgpack

interface Fixture { name: string, hex: string }
const fixtures = (JSON.parse(readFileSync(new URL('../fixtures/python-msgpack.json', import.meta.url), 'utf8')) as { cases: Fixture[] }).cases
const bytes = (hex: string): Uint8Array => new Uint8Array(Buffer.from(hex, 'hex'))
const gateway = (b: Uint8Array): unknown => toJsonEvent(decodeEvent(b))

// An event whose only argument is the raw msgpack value `value` (hex), for formats no encoder here writes.
const withArg = (value: string): Uint8Array => bytes(`83aa${Buffer.from('event_name').toString('hex')}a178a8${Buffer.from('agent_id').toString('hex')}a161a4${Buffer.from('args').toString('hex')}91${value}`)

t.test('events packed by Python msgpack read as the gateway reads them', async (t) => {
  t.ok(fixtures.length >= 20)
  for (const f of fixtures) t.same(decodeMsgpack(bytes(f.hex)), gateway(bytes(f.hex)), f.name)
})

t.test('timestamps, extensions, non-finite floats, big integers and odd map keys map as the gateway maps them', async (t) => {
  const cases = {
    'timestamp 32': 'd6ff00000001',
    'timestamp 64': `d7ff${((123_000_000n << 34n) | 1_700_000_000n).toString(16).padStart(16, '0')}`,
    'timestamp 96, before 1970': 'c70cff07735940ffffffffffffffff',
    'timestamp past Date': 'c70cff000000007fffffffffffffff',
    'nanoseconds of 10^9: no timestamp': `d7ff${(1_000_000_000n << 34n).toString(16).padStart(16, '0')}`,
    'timestamp of 5 bytes: no timestamp': 'c705ff0102030405',
    'extension 5': 'd40501',
    'ext 8 of 3 bytes': 'c70302aabbcc',
    NaN: 'cb7ff8000000000000',
    '-Infinity (float32)': 'caff800000',
    'uint64 max': 'cfffffffffffffffff',
    'int64 min': 'd38000000000000000',
    '2^53 - 1': 'cf001fffffffffffff',
    'int and float keys': '82cd0400a178cb3ff8000000000000a179',
    '__proto__ key': `81a9${Buffer.from('__proto__').toString('hex')}01`,
    'negative fixint and int8': '92e0d080',
    'bin 16': 'c50003000102'
  }
  for (const [name, value] of Object.entries(cases)) t.same(decodeMsgpack(withArg(value)), gateway(withArg(value)), name)
  const proto = decodeMsgpack(withArg(cases['__proto__ key'])) as { args: Array<Record<string, unknown>> }
  t.ok(Object.hasOwn(proto.args[0]!, '__proto__'), '"__proto__" is a key like any other, not a prototype')
})

t.test('random values read as the gateway reads them', async (t) => {
  const value = fc.letrec((tie) => ({
    any: fc.oneof({ depthSize: 'small' }, fc.jsonValue({ maxDepth: 2 }), fc.string({ unit: 'grapheme' }), fc.bigInt(-(2n ** 63n), 2n ** 64n - 1n),
      fc.uint8Array({ maxLength: 40 }), fc.double(), fc.array(tie('any'), { maxLength: 4 }),
      fc.dictionary(fc.string({ unit: 'grapheme' }), tie('any'), { maxKeys: 4 }))
  })).any
  fc.assert(fc.property(value, (arg) => {
    const frame = encode({ event_name: 'x', agent_id: 'a', args: [arg] }, { useBigInt64: true })
    t.same(decodeMsgpack(frame), gateway(frame))
  }), { numRuns: 500 })
})

t.test('bytes that are no msgpack end in a DecodeError, never a hang or another error', async (t) => {
  const refused = (b: Uint8Array): boolean => {
    try {
      decodeMsgpack(b)
      return false
    } catch (err) {
      return err instanceof DecodeError
    }
  }
  for (const f of fixtures) {
    const whole = bytes(f.hex)
    const cut = [1, 2, whole.length >> 1, whole.length - 1].every((n) => refused(whole.subarray(0, n)))
    t.ok(cut, `${f.name}: every cut short of the end is refused`)
  }
  t.ok(refused(bytes('c1')), 'the byte msgpack never uses')
  t.ok(refused(bytes('a2c328')), 'a str that is not UTF-8')
  t.ok(refused(bytes('9001')), 'bytes after the value')
  t.ok(refused(bytes('81c400c0')), 'a bin map key')
  const started = performance.now()
  t.ok(refused(bytes('dfffffffff')), 'a map that claims 4 billion pairs')
  t.ok(refused(bytes('ddffffffff00')), 'an array that claims 4 billion values')
  t.ok(refused(bytes('c6ffffffff00')), 'a bin that claims 4 GiB')
  t.ok(refused(new Uint8Array(100_000).fill(0x91)), '100,000 levels of nesting')
  t.ok(performance.now() - started < 1000, 'each at once')
  t.same(fromBase64('AP8='), new Uint8Array([0, 255]))
})
