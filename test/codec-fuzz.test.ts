import fc from 'fast-check'
import t, { type Test } from 'tap'
import { encode } from '@msgpack/msgpack'
import { CodecError, decodeEvent, parseWireEvent, scanMsgpack, toJsonEvent, type JsonValue } from '../src/codec.js'
import { packJsonEvents } from '../src/json-packer.js'

// Each property runs until it has tried RUNS inputs or TIME_MS has passed, whichever comes
// first: a bounded share of CI, a fresh seed each run (printed on failure; BUSGATE_FUZZ_SEED replays it).
const RUNS = 50_000
const TIME_MS = Number(process.env.BUSGATE_FUZZ_MS ?? 2500)
const SEED = process.env.BUSGATE_FUZZ_SEED === undefined ? undefined : Number(process.env.BUSGATE_FUZZ_SEED)

function holds<Ts> (t: Test, name: string, property: fc.IProperty<Ts>): void {
  const started = performance.now()
  const details = fc.check(property, { numRuns: RUNS, interruptAfterTimeLimit: TIME_MS, seed: SEED })
  const ms = Math.round(performance.now() - started)
  if (details.failed) {
    t.fail(`${name}: ${fc.defaultReportMessage(details) ?? 'failed'}`)
  } else {
    t.ok(details.numRuns >= 200, `${name}: ${details.numRuns} inputs in ${ms} ms`)
  }
}

const base64 = (b: Uint8Array): string => Buffer.from(b).toString('base64')
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

/** JSON.stringify's text must read back as itself, and hold no string UTF-8 cannot carry. */
function checkJson (value: unknown): string {
  const text = JSON.stringify(value)
  if (JSON.stringify(JSON.parse(text)) !== text) throw new Error(`JSON does not round-trip: ${text.slice(0, 200)}`)
  const wellFormed = (v: unknown): boolean => typeof v === 'string'
    ? v.isWellFormed()
    : typeof v !== 'object' || v === null || Object.entries(v).every(([k, x]) => k.isWellFormed() && wellFormed(x))
  if (!wellFormed(value)) throw new Error('a lone surrogate in the JSON')
  return text
}

/** Decodes as the bus does: CodecError, or an event that maps to valid JSON. Anything else fails. */
function decodeOrCodecError (bytes: Uint8Array): string | CodecError {
  try {
    return checkJson(toJsonEvent(decodeEvent(bytes)))
  } catch (err) {
    if (err instanceof CodecError) return err
    throw err
  }
}

// --- A model of msgpack values, written byte by byte here so that every width of every format is used.

type Node =
  | { kind: 'nil' }
  | { kind: 'bool', value: boolean }
  | { kind: 'int', value: bigint, width: number }
  | { kind: 'f32', bits: number }
  | { kind: 'f64', bits: bigint }
  | { kind: 'str', bytes: Uint8Array, width: number } // any bytes: valid UTF-8 or not
  | { kind: 'bin', bytes: Uint8Array, width: number }
  | { kind: 'ext', type: number, bytes: Uint8Array, width: number }
  | { kind: 'array', items: Node[], width: number }
  | { kind: 'map', entries: Array<[Node, Node]>, width: number }

const INT_FORMATS: Array<{ min: bigint, max: bigint, write: (v: bigint, out: number[]) => void }> = [
  { min: 0n, max: 127n, write: (v, out) => out.push(Number(v)) },
  { min: -32n, max: -1n, write: (v, out) => out.push(Number(v) & 0xff) },
  ...([[0xcc, 1, false], [0xcd, 2, false], [0xce, 4, false], [0xcf, 8, false], [0xd0, 1, true], [0xd1, 2, true], [0xd2, 4, true], [0xd3, 8, true]] as const)
    .map(([head, size, signed]) => ({
      min: signed ? -(2n ** BigInt(size * 8 - 1)) : 0n,
      max: signed ? 2n ** BigInt(size * 8 - 1) - 1n : 2n ** BigInt(size * 8) - 1n,
      write: (v: bigint, out: number[]) => {
        out.push(head)
        const u = BigInt.asUintN(size * 8, v)
        for (let i = size - 1; i >= 0; i--) out.push(Number((u >> BigInt(i * 8)) & 0xffn))
      }
    }))
]

function writeUint (out: number[], value: number, size: number): void {
  for (let i = size - 1; i >= 0; i--) out.push(Math.floor(value / 2 ** (i * 8)) & 0xff)
}

/** Picks the `width`-th of the formats that fit `length` (the smallest first, as Python writes). */
function writeHeader (out: number[], length: number, width: number, fix: [number, number] | undefined, sized: [number, number, number]): void {
  const choices: Array<() => void> = []
  if (fix !== undefined && length < fix[1]) choices.push(() => out.push(fix[0] | length))
  sized.forEach((head, i) => {
    const size = [1, 2, 4][i] as number
    if (length < 2 ** (size * 8) && head !== 0) choices.push(() => { out.push(head); writeUint(out, length, size) })
  })
  ;(choices[width % choices.length] as () => void)()
}

function write (node: Node, out: number[]): void {
  switch (node.kind) {
    case 'nil': out.push(0xc0); break
    case 'bool': out.push(node.value ? 0xc3 : 0xc2); break
    case 'int': {
      const fits = INT_FORMATS.filter((f) => node.value >= f.min && node.value <= f.max)
      ;(fits[node.width % fits.length] as (typeof INT_FORMATS)[number]).write(node.value, out)
      break
    }
    case 'f32': out.push(0xca); writeUint(out, node.bits, 4); break
    case 'f64': out.push(0xcb); writeUint(out, Number(node.bits >> 32n), 4); writeUint(out, Number(node.bits & 0xffffffffn), 4); break
    case 'str': writeHeader(out, node.bytes.length, node.width, [0xa0, 32], [0xd9, 0xda, 0xdb]); out.push(...node.bytes); break
    case 'bin': writeHeader(out, node.bytes.length, node.width, undefined, [0xc4, 0xc5, 0xc6]); out.push(...node.bytes); break
    case 'ext': {
      const fixed = [1, 2, 4, 8, 16].indexOf(node.bytes.length)
      if (fixed >= 0 && node.width % 2 === 0) {
        out.push(0xd4 + fixed)
      } else {
        writeHeader(out, node.bytes.length, node.width, undefined, [0xc7, 0xc8, 0xc9])
      }
      out.push(node.type & 0xff, ...node.bytes)
      break
    }
    case 'array': writeHeader(out, node.items.length, node.width, [0x90, 16], [0, 0xdc, 0xdd]); for (const item of node.items) write(item, out); break
    case 'map':
      writeHeader(out, node.entries.length, node.width, [0x80, 16], [0, 0xde, 0xdf])
      for (const [k, v] of node.entries) { write(k, out); write(v, out) }
      break
  }
}

const f32 = (bits: number): number => new DataView(new Uint32Array([bits]).buffer).getFloat32(0, true)
const f64 = (bits: bigint): number => new DataView(new BigUint64Array([bits]).buffer).getFloat64(0, true)

class Refused extends Error {}

/**
 * What the README says busgate shows for a node, worked out from the model; throws Refused when
 * the bus decoder must refuse the message, and sets `problems.strict` when only the POST check
 * must. Python's unpackb is the yardstick for that: str keys only, valid timestamps.
 */
function expected (node: Node, problems: { strict: boolean }): JsonValue {
  switch (node.kind) {
    case 'nil': return null
    case 'bool': return node.value
    case 'int': return node.value >= -(2n ** 53n - 1n) && node.value <= 2n ** 53n - 1n ? Number(node.value) : node.value.toString()
    case 'f32':
    case 'f64': {
      const v = node.kind === 'f32' ? f32(node.bits) : f64(node.bits)
      return Number.isFinite(v) ? v : String(v)
    }
    case 'str': {
      try {
        return utf8.decode(node.bytes)
      } catch {
        throw new Refused()
      }
    }
    case 'bin': return { $base64: base64(node.bytes) }
    case 'ext': return node.type === -1 ? expectedTimestamp(node.bytes, problems) : { $ext: node.type, $base64: base64(node.bytes) }
    case 'array': return node.items.map((item) => expected(item, problems))
    case 'map': {
      const out: { [key: string]: JsonValue } = {}
      for (const [k, v] of node.entries) {
        if (k.kind !== 'str') problems.strict = true
        let key: string
        if (k.kind === 'str') key = expected(k, problems) as string
        else if (k.kind === 'int') key = k.value.toString()
        else if (k.kind === 'f32') key = String(f32(k.bits))
        else if (k.kind === 'f64') key = String(f64(k.bits))
        else throw new Refused()
        // As a JSON parser would hold it, "__proto__" too: an own key, the later value winning.
        Object.defineProperty(out, key, { value: expected(v, problems), enumerable: true, writable: true, configurable: true })
      }
      return out
    }
  }
}

function expectedTimestamp (data: Uint8Array, problems: { strict: boolean }): JsonValue {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
  let seconds: bigint
  let nanoseconds: number
  if (data.length === 4) {
    seconds = BigInt(view.getUint32(0))
    nanoseconds = 0
  } else if (data.length === 8) {
    nanoseconds = view.getUint32(0) >>> 2
    seconds = (BigInt(view.getUint32(0) & 3) << 32n) + BigInt(view.getUint32(4))
  } else if (data.length === 12) {
    nanoseconds = view.getUint32(0)
    seconds = view.getBigInt64(4)
  } else {
    problems.strict = true
    return { $ext: -1, $base64: base64(data) }
  }
  if (nanoseconds >= 1e9) {
    problems.strict = true
    return { $ext: -1, $base64: base64(data) }
  }
  // Whole milliseconds, towards the past; Date holds ±8.64e15 of them.
  const ms = seconds * 1000n + BigInt(Math.floor(nanoseconds / 1e6))
  if (ms < -8_640_000_000_000_000n || ms > 8_640_000_000_000_000n) return { $ext: -1, $base64: base64(data) }
  return new Date(Number(ms)).toISOString()
}

// --- Arbitraries for the model.

const width = fc.nat({ max: 15 })
const edgeInts = [0n, 1n, -1n, 127n, 128n, -32n, -33n, 255n, 256n, -128n, -129n, 65535n, 65536n, -32768n, -32769n, 2n ** 32n - 1n, 2n ** 32n,
  -(2n ** 31n), -(2n ** 31n) - 1n, 2n ** 53n - 1n, 2n ** 53n, -(2n ** 53n - 1n), -(2n ** 53n), 2n ** 63n - 1n, 2n ** 63n, -(2n ** 63n), 2n ** 64n - 1n]
const intValue = fc.oneof(fc.constantFrom(...edgeInts), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }), fc.integer({ min: -200, max: 300 }).map(BigInt))
const intNode = fc.record({ kind: fc.constant('int' as const), value: intValue, width })
const floatNode = fc.oneof(
  fc.float().map((v) => ({ kind: 'f32' as const, bits: new Uint32Array(new Float32Array([v]).buffer)[0] as number })),
  fc.nat({ max: 0xffffffff }).map((bits) => ({ kind: 'f32' as const, bits })), // NaN payloads among them
  fc.double().map((v) => ({ kind: 'f64' as const, bits: new BigUint64Array(new Float64Array([v]).buffer)[0] as bigint })),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map((bits) => ({ kind: 'f64' as const, bits }))
)
const text = fc.oneof(
  { weight: 10, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 5, arbitrary: fc.string({ unit: 'grapheme', maxLength: 10 }) },
  { weight: 5, arbitrary: fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf', '', '0', '1', 'event_name', '$base64', '$ext') },
  { weight: 1, arbitrary: fc.constantFrom(31, 32, 255, 256).map((n) => 'x'.repeat(n)) } // around the header sizes; width picks wider ones
)
const strNode = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('str' as const), bytes: text.map((s) => new Uint8Array(Buffer.from(s))), width }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('str' as const), bytes: fc.uint8Array({ maxLength: 12 }), width }) }
)
const binNode = fc.record({ kind: fc.constant('bin' as const), bytes: fc.uint8Array({ maxLength: 300 }), width })

function bytesOf (size: number, fill: (view: DataView) => void): Uint8Array {
  const out = new Uint8Array(size)
  fill(new DataView(out.buffer))
  return out
}
const nanos = fc.oneof(fc.constantFrom(0, 1, 999_999, 1_000_000, 999_999_999, 1e9, 2 ** 30 - 1), fc.nat({ max: 2 ** 30 - 1 }))
const nanos32 = fc.oneof(nanos, fc.nat({ max: 0xffffffff }))
const DATE_S = 8_640_000_000_000n
const seconds64 = fc.oneof(
  fc.constantFrom(0n, -1n, 1n, DATE_S, DATE_S + 1n, -DATE_S, -DATE_S - 1n, 2n ** 62n, 2n ** 63n - 1n, -(2n ** 63n)),
  fc.bigInt({ min: -DATE_S - 2n, max: DATE_S + 2n }),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n })
)
const timestampData = fc.oneof(
  fc.nat({ max: 0xffffffff }).map((s) => bytesOf(4, (v) => v.setUint32(0, s))),
  fc.tuple(nanos, fc.nat({ max: 3 }), fc.nat({ max: 0xffffffff })).map(([ns, high, low]) => bytesOf(8, (v) => { v.setUint32(0, ((ns << 2) | high) >>> 0); v.setUint32(4, low) })),
  fc.tuple(nanos32, seconds64).map(([ns, s]) => bytesOf(12, (v) => { v.setUint32(0, ns); v.setBigInt64(4, s) })),
  fc.uint8Array({ maxLength: 20 }) // every other size, and 4/8/12 bytes of anything
)
const extNode = fc.oneof(
  fc.record({ kind: fc.constant('ext' as const), type: fc.constant(-1), bytes: timestampData, width }),
  fc.record({ kind: fc.constant('ext' as const), type: fc.integer({ min: -128, max: 127 }), bytes: fc.uint8Array({ maxLength: 20 }), width })
)
const leaf: fc.Arbitrary<Node> = fc.oneof(
  fc.constant({ kind: 'nil' as const }),
  fc.boolean().map((value) => ({ kind: 'bool' as const, value })),
  intNode, floatNode, strNode, binNode, extNode
)
const { node } = fc.letrec<{ node: Node, array: Node, map: Node }>((tie) => ({
  node: fc.oneof({ depthSize: 'small', maxDepth: 5 }, leaf, tie('array'), tie('map')),
  array: fc.record({ kind: fc.constant('array' as const), items: fc.array(tie('node'), { maxLength: 6 }), width }),
  map: fc.record({
    kind: fc.constant('map' as const),
    entries: fc.array(fc.tuple(fc.oneof({ weight: 5, arbitrary: strNode }, { weight: 1, arbitrary: tie('node') }), tie('node')), { maxLength: 5 }),
    width
  })
}))

interface EventModel { name: Node, agent: Node, args: Node, extra: Array<[Node, Node]> }
const KEY = (s: string): Node => ({ kind: 'str', bytes: new Uint8Array(Buffer.from(s)), width: 0 })
const eventModel: fc.Arbitrary<EventModel> = fc.record({
  name: strNode,
  agent: strNode,
  args: fc.record({ kind: fc.constant('array' as const), items: fc.array(node, { maxLength: 5 }), width }),
  extra: fc.oneof({ weight: 5, arbitrary: fc.constant<Array<[Node, Node]>>([]) }, { weight: 1, arbitrary: fc.array(fc.tuple(fc.constantFrom('x', 'event_names', 'argz').map(KEY), node), { maxLength: 1 }) })
})

function writeEvent (m: EventModel): Uint8Array {
  const out: number[] = []
  write({ kind: 'map', entries: [[KEY('event_name'), m.name], [KEY('agent_id'), m.agent], [KEY('args'), m.args], ...m.extra], width: 0 }, out)
  return new Uint8Array(out)
}

/** The whole event's JSON, or Refused. The values of extra top-level keys must decode too. */
function expectedEvent (m: EventModel, problems: { strict: boolean }): string {
  const json = { event_name: expected(m.name, problems), agent_id: expected(m.agent, problems), args: expected(m.args, problems) }
  for (const [, v] of m.extra) expected(v, problems)
  return JSON.stringify(json)
}

t.test('(a) any bytes decode to CodecError or to an event whose JSON round-trips', async (t) => {
  holds(t, 'random bytes', fc.property(fc.uint8Array({ maxLength: 64 }), (b) => { decodeOrCodecError(b) }))
  const head = Buffer.from('83aa6576656e745f6e616d65a178a86167656e745f6964a178a461726773', 'hex')
  holds(t, 'an event frame, then random bytes', fc.property(fc.uint8Array({ maxLength: 64 }), (b) => {
    decodeOrCodecError(new Uint8Array(Buffer.concat([head, b])))
  }))
  holds(t, 'an event frame, an args array, then random bytes', fc.property(fc.integer({ min: 0x90, max: 0x9f }), fc.uint8Array({ maxLength: 64 }), (h, b) => {
    decodeOrCodecError(new Uint8Array(Buffer.concat([head, Buffer.from([h]), b])))
  }))
  const mutation = fc.record({ at: fc.nat(), op: fc.constantFrom('set', 'insert', 'delete'), byte: fc.nat({ max: 255 }) })
  holds(t, 'valid events with bytes changed, inserted, deleted, or cut off', fc.property(eventModel, fc.array(mutation, { minLength: 1, maxLength: 4 }), fc.option(fc.nat()), (m, changes, cut) => {
    const b = [...writeEvent(m)]
    for (const { at, op, byte } of changes) {
      const i = at % (b.length + 1)
      if (op === 'set') b[i] = byte
      else if (op === 'insert') b.splice(i, 0, byte)
      else b.splice(i, 1)
    }
    decodeOrCodecError(new Uint8Array(cut === null ? b : b.slice(0, cut % (b.length + 1))))
  }))
})

t.test('(b) msgpack of any values decodes and maps as the README says; the POST check refuses exactly what Python would', async (t) => {
  holds(t, 'model events', fc.property(eventModel, (m) => {
    const bytes = writeEvent(m)
    const problems = { strict: false }
    let want: string | Refused
    try {
      want = expectedEvent(m, problems)
    } catch (err) {
      if (!(err instanceof Refused)) throw err
      want = err
    }
    const got = decodeOrCodecError(bytes)
    if (want instanceof Refused) {
      if (!(got instanceof CodecError)) throw new Error(`decoded what must be refused: ${got.slice(0, 300)}`)
      if (got.reason !== 'undecodable') throw new Error(`refused for the wrong reason: ${got.message}`)
    } else {
      if (got instanceof CodecError) throw new Error(`refused: ${got.message}`)
      if (got !== want) throw new Error(`maps to\n${got.slice(0, 500)}\nexpected\n${want.slice(0, 500)}`)
    }
    let strict: string | CodecError
    try {
      strict = JSON.stringify(toJsonEvent(parseWireEvent(bytes)))
    } catch (err) {
      if (!(err instanceof CodecError)) throw err
      strict = err
    }
    // The scanner judges the bytes; a fourth key is the shape check's to refuse.
    const scanOk = !(want instanceof Refused) && !problems.strict
    if ((scanMsgpack(bytes) === undefined) !== scanOk) throw new Error(`scanMsgpack says ${String(scanMsgpack(bytes))}`)
    const strictOk = scanOk && m.extra.length === 0
    if (strictOk && strict instanceof CodecError) throw new Error(`POST check refuses what Python reads: ${strict.message}`)
    if (!strictOk && !(strict instanceof CodecError)) throw new Error('POST check accepts what Python refuses, or a fourth key')
    if (strictOk && strict !== want) throw new Error('the POST check decodes otherwise')
  }))
})

// --- JSON values as a POST body holds them (JSON.parse's objects: __proto__ an own key).

type Json = null | boolean | number | string | Json[] | { [key: string]: Json }
const loneSurrogate = fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c))
const jsonText = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: 'binary', maxLength: 20 }) },
  { weight: 1, arbitrary: fc.string({ unit: fc.oneof(fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), loneSurrogate), maxLength: 6 }) },
  { weight: 2, arbitrary: fc.constantFrom('__proto__', 'constructor', 'toString', '$base64', '$ext', '') }
)
const jsonNumber = fc.oneof(
  fc.double(), // NaN and ±Infinity among them: 1e400 and -1e400 parse to the latter
  fc.integer(),
  // every int width about equally often: magnitudes spread over 2^0 to 2^53
  fc.integer({ min: 0, max: 53 }).chain((bits) => fc.integer({ min: -(2 ** bits), max: 2 ** bits })).filter((n) => Number.isSafeInteger(n)),
  fc.constantFrom(2 ** 53 - 1, 2 ** 53, -(2 ** 53), 2 ** 63, 2 ** 64, -(2 ** 64), 2 ** 64 * 2, 1e300, -0, 5e-324, Number.MAX_VALUE),
  fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n }).map(Number)
)
const base64Object = fc.oneof(
  fc.uint8Array({ maxLength: 20 }).map((b): Json => ({ $base64: base64(b) })),
  fc.string({ maxLength: 8 }).map((s): Json => ({ $base64: s })),
  fc.constantFrom<Json>({ $base64: 1 }, { $base64: null }, { $base64: 'AB==' }, { $base64: 'AAA=' }, { $base64: '' })
)
const { json } = fc.letrec<{ json: Json, array: Json, object: Json }>((tie) => ({
  json: fc.oneof({ depthSize: 'small', maxDepth: 5 }, fc.constant(null), fc.boolean(), jsonNumber, jsonText, base64Object, tie('array'), tie('object')),
  array: fc.array(tie('json'), { maxLength: 5 }),
  object: fc.array(fc.tuple(jsonText, tie('json')), { maxLength: 5 }).map((entries) => {
    const out: { [key: string]: Json } = {}
    for (const [k, v] of entries) Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true })
    return out
  })
}))

/** Whether the JSON packer must refuse the value, worked out from README's "Producing events". */
function mustRefuse (v: Json): boolean {
  if (typeof v === 'number') return !Number.isFinite(v) || (Number.isInteger(v) && !Number.isSafeInteger(v) && Math.abs(v) < 2 ** 64)
  if (typeof v === 'string') return !v.isWellFormed()
  if (v === null || typeof v !== 'object') return false
  if (Array.isArray(v)) return v.some(mustRefuse)
  const keys = Object.keys(v)
  if (keys.length === 1 && keys[0] === '$base64') {
    const s = v.$base64
    return typeof s !== 'string' || s.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)
  }
  return keys.some((k) => !k.isWellFormed() || mustRefuse(v[k] as Json))
}

/** The JSON busgate shows for an accepted value: the same, with bin in canonical base64. */
function shown (v: Json): Json {
  if (v === null || typeof v !== 'object') return v
  if (Array.isArray(v)) return v.map(shown)
  const keys = Object.keys(v)
  if (keys.length === 1 && keys[0] === '$base64') return { $base64: Buffer.from(v.$base64 as string, 'base64').toString('base64') }
  const out: { [key: string]: Json } = {}
  for (const k of keys) Object.defineProperty(out, k, { value: shown(v[k] as Json), enumerable: true, writable: true, configurable: true })
  return out
}

/** What @msgpack/msgpack writes for an accepted value: the oracle of the packer's bytes. */
function librarysBytes (eventName: string, agentId: string, args: Json[]): Buffer {
  const convert = (v: Json): unknown => {
    if (v === null || typeof v !== 'object') return v
    if (Array.isArray(v)) return v.map(convert)
    const keys = Object.keys(v)
    if (keys.length === 1 && keys[0] === '$base64') return new Uint8Array(Buffer.from(v.$base64 as string, 'base64'))
    const out: Record<string, unknown> = {}
    for (const k of keys) Object.defineProperty(out, k, { value: convert(v[k] as Json), enumerable: true, writable: true, configurable: true })
    return out
  }
  return Buffer.from(encode({ event_name: eventName, agent_id: agentId, args: args.map(convert) }))
}

t.test('(c, d) JSON values: refused with CodecError, or packed into the bytes the library writes, which both decoders read back as the same JSON', async (t) => {
  const name = fc.string({ unit: 'binary', minLength: 1, maxLength: 20 })
  holds(t, 'JSON args', fc.property(name, name, fc.array(json, { maxLength: 5 }), (eventName, agentId, args) => {
    let bytes: Buffer
    try {
      bytes = packJsonEvents([{ event_name: eventName, agent_id: agentId, args }], 'unused', () => '')[0] as Buffer
    } catch (err) {
      if (!(err instanceof CodecError)) throw err
      if (!mustRefuse(args) && agentId.isWellFormed()) throw new Error(`refused: ${err.message}`)
      return
    }
    if (mustRefuse(args) || !agentId.isWellFormed()) throw new Error('accepted what must be refused')
    const library = librarysBytes(eventName, agentId, args)
    if (!bytes.equals(library)) throw new Error(`packed\n${bytes.toString('hex').slice(0, 400)}\nthe library writes\n${library.toString('hex').slice(0, 400)}`)
    const want = JSON.stringify({ event_name: eventName, agent_id: agentId, args: shown(args) })
    const strict = JSON.stringify(toJsonEvent(parseWireEvent(bytes))) // (d): never throws for what the packer made
    if (strict !== want) throw new Error(`the POST check reads\n${strict.slice(0, 500)}\nexpected\n${want.slice(0, 500)}`)
    const lenient = decodeOrCodecError(bytes)
    if (lenient !== want) throw new Error(`the bus decoder reads ${String(lenient).slice(0, 500)}`)
  }))
})
