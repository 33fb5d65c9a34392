import { isUtf8 } from 'node:buffer'
import { Decoder, Encoder, ExtData, ExtensionCodec, type DecoderOptions } from '@msgpack/msgpack'

/**
 * The wire format: a msgpack map with exactly these keys, in this order, as Backend.AI's
 * `msgpack.packb({'event_name': …, 'agent_id': …, 'args': …}, use_bin_type=True)` writes it.
 */
export interface BusEvent {
  event_name: string
  agent_id: string
  args: unknown[]
}

/** JSON as busgate shows events: see `toJsonValue` for the mapping. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue }

export interface JsonEvent {
  event_name: string
  agent_id: string
  args: JsonValue[]
}

/** Python's msgpack packer refuses to nest deeper than 511, so nothing real goes past this. */
export const MAX_DEPTH = 512

export type CodecFailure = 'undecodable' | 'wrong_shape' | 'too_large'

/**
 * Most values (every str, number, array, map…) one message may hold. Decoding and mapping cost
 * grows with them, a few microseconds each for maps with keys of their own: past this a single
 * message could stall the event loop for longer than any real event needs.
 */
export const MAX_VALUES = 65_536

export class CodecError extends Error {
  override name = 'CodecError'
  constructor (readonly reason: CodecFailure, message: string) {
    super(message)
  }
}

/**
 * A msgpack timestamp (extension -1) as sent: exact seconds (int64 on the wire), nanoseconds
 * below 10^9, and the extension's bytes, which are what JSON shows when Date cannot hold it.
 */
export class Timestamp {
  constructor (readonly seconds: bigint, readonly nanoseconds: number, readonly data: Uint8Array) {}
}

/**
 * Past 32 MiB a message's JSON could outgrow V8's longest string (2^29-24 characters; a 3-byte
 * fixext maps to the 31 characters of `{"$ext":-128,"$base64":"AA=="},`), and JSON.stringify
 * would throw where its callers catch nothing.
 */
export const MAX_MESSAGE_BYTES = 32 * 1024 * 1024

// The library's own timestamp decoder makes a Date: an Invalid Date past Date's ±8.64e15 ms
// (which Python's Timestamp holds), and a silently wrong one for nanoseconds of 10^9 or more.
const extensionCodec = new ExtensionCodec()
extensionCodec.register({ type: -1, encode: () => null, decode: decodeTimestamp })

function decodeTimestamp (data: Uint8Array): Timestamp | ExtData {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
  let seconds: bigint
  let nanoseconds: number
  if (data.byteLength === 4) {
    seconds = BigInt(view.getUint32(0))
    nanoseconds = 0
  } else if (data.byteLength === 8) {
    const head = view.getUint32(0)
    seconds = BigInt((head & 3) * 2 ** 32 + view.getUint32(4))
    nanoseconds = head >>> 2
  } else if (data.byteLength === 12) {
    seconds = view.getBigInt64(4)
    nanoseconds = view.getUint32(0)
  } else {
    return new ExtData(-1, data)
  }
  // Not a timestamp to Python either (the POST check refuses it): on the bus, shown as the bytes it is.
  if (nanoseconds >= 1e9) return new ExtData(-1, data)
  return new Timestamp(seconds, nanoseconds, data)
}

/**
 * Where Python reads any int or float key (`strict_map_key=False`), a JS object holds its
 * decimal text; uint64/int64 keys (bigints here) get the same. Other keys have no JSON form.
 */
function mapKeyConverter (key: unknown): string | number {
  if (typeof key === 'string' || typeof key === 'number') return key
  if (typeof key === 'bigint') return key.toString()
  throw new Error(`a map key is ${describe(key)}; only str and number keys can be shown as JSON`)
}

/**
 * Python reads the key "__proto__" like any other; the library refuses it, as in its plain-object
 * maps that name is the prototype's setter. When the scan finds one, this decoder renames it to
 * PROTO_KEY, which no decoded str equals (it holds a lone surrogate, and every str is valid
 * UTF-8), and toJsonValue names it back. The library's key cache is only for the common path.
 */
const PROTO_KEY = '\udc00__proto__'
const PROTO_BYTES = Buffer.from('__proto__')
const utf8 = new TextDecoder()
const protoKeyDecoder: NonNullable<DecoderOptions['keyDecoder']> = {
  canBeCached: (byteLength) => byteLength === PROTO_BYTES.length,
  decode: (bytes, offset, byteLength) =>
    isProtoKey(bytes, offset) ? PROTO_KEY : utf8.decode(bytes.subarray(offset, offset + byteLength))
}

function isProtoKey (bytes: Uint8Array, offset: number): boolean {
  for (let i = 0; i < PROTO_BYTES.length; i++) {
    if (bytes[offset + i] !== PROTO_BYTES[i]) return false
  }
  return true
}

const decoder = new Decoder({ useBigInt64: true, extensionCodec, mapKeyConverter })
const protoDecoder = new Decoder({ useBigInt64: true, extensionCodec, mapKeyConverter, keyDecoder: protoKeyDecoder })
// Without useBigInt64: with it, the encoder writes safe integers of 2^32 and more as float64,
// where Python writes uint64/int64. Events encoded here come from JSON, which holds no bigints.
const encoder = new Encoder({ maxDepth: MAX_DEPTH + 1 })

/** The frame's fixed bytes, in Backend.AI's key order: the map header and each key as a str. */
export const KEY_EVENT_NAME = Buffer.from('83aa6576656e745f6e616d65', 'hex') // fixmap(3), "event_name"
export const KEY_AGENT_ID = Buffer.from('a86167656e745f6964', 'hex') // "agent_id"
export const KEY_ARGS = Buffer.from('a461726773', 'hex') // "args"

function strHeaderSize (byteLength: number): number {
  return byteLength < 32 ? 1 : byteLength < 0x100 ? 2 : byteLength < 0x10000 ? 3 : 5
}

/** UTF-8 length; names are short and ASCII, where a loop beats a call into C++. */
function utf8Length (value: string): number {
  if (value.length > 64) return Buffer.byteLength(value)
  for (let i = 0; i < value.length; i++) {
    if (value.charCodeAt(i) > 0x7f) return Buffer.byteLength(value)
  }
  return value.length
}

function writeStr (out: Buffer, pos: number, value: string, byteLength: number): number {
  if (byteLength < 32) {
    out[pos++] = 0xa0 | byteLength
  } else if (byteLength < 0x100) {
    out[pos++] = 0xd9
    out[pos++] = byteLength
  } else if (byteLength < 0x10000) {
    out[pos++] = 0xda
    pos = out.writeUInt16BE(byteLength, pos)
  } else {
    out[pos++] = 0xdb
    pos = out.writeUInt32BE(byteLength, pos)
  }
  if (byteLength === value.length && byteLength <= 64) {
    for (let i = 0; i < byteLength; i++) out[pos + i] = value.charCodeAt(i)
    return pos + byteLength
  }
  return pos + out.write(value, pos, 'utf8')
}

/**
 * The map's frame is written directly (its keys never change; str headers follow msgpack's
 * smallest-fit rule, as Python's packer does); only `args` goes through the generic encoder.
 */
export function encodeEvent (event: BusEvent): Buffer {
  const args = encoder.encodeSharedRef(event.args)
  const nameBytes = utf8Length(event.event_name)
  const agentBytes = utf8Length(event.agent_id)
  const out = Buffer.allocUnsafe(KEY_EVENT_NAME.length + strHeaderSize(nameBytes) + nameBytes +
    KEY_AGENT_ID.length + strHeaderSize(agentBytes) + agentBytes + KEY_ARGS.length + args.byteLength)
  let pos = KEY_EVENT_NAME.copy(out, 0)
  pos = writeStr(out, pos, event.event_name, nameBytes)
  pos += KEY_AGENT_ID.copy(out, pos)
  pos = writeStr(out, pos, event.agent_id, agentBytes)
  pos += KEY_ARGS.copy(out, pos)
  out.set(args, pos)
  return out
}

/**
 * Decodes a message read from the bus. Lenient where other producers may differ harmlessly
 * (extra keys are ignored), strict where a consumer would break (types of the three keys).
 */
export function decodeEvent (bytes: Uint8Array): BusEvent {
  if (bytes.byteLength > MAX_MESSAGE_BYTES) {
    throw new CodecError('too_large', `a message of ${bytes.byteLength} bytes is larger than busgate shows as JSON (${MAX_MESSAGE_BYTES})`)
  }
  // Completeness, depth (the JSON mapping recurses) and UTF-8 here; types and extensions are the
  // mapping's to show, as a foreign producer may send anything.
  const scanned = scan(bytes, false)
  if (typeof scanned === 'string') throw new CodecError('undecodable', scanned)
  return checkShape(decode(bytes, scanned), false)
}

/** The event name of a bus message, or undefined when it is none (see decodeEvent). */
export function eventNameOf (bytes: Uint8Array): string | undefined {
  try {
    return decodeEvent(bytes).event_name
  } catch {
    return undefined
  }
}

/**
 * Checks msgpack bytes offered for the bus (a `POST /events` body) as strictly as the
 * strictest consumer: Python's `unpackb(raw=False, strict_map_key=True)` must read them,
 * and the map must hold the three keys and nothing else.
 */
export function parseWireEvent (bytes: Uint8Array): BusEvent {
  const scanned = scan(bytes, true)
  if (typeof scanned === 'string') throw new CodecError('undecodable', scanned)
  return checkWireEvent(bytes, scanned)
}

function checkWireEvent (bytes: Uint8Array, protoKey: boolean): BusEvent {
  const event = checkShape(decode(bytes, protoKey), true)
  // A repeated key collapses in the decoded object, while another decoder may keep the other value.
  if (mapCount(bytes) !== 3) throw new CodecError('wrong_shape', 'the map must hold exactly three entries: event_name, agent_id and args')
  return event
}

/**
 * The count and first element's offset of a msgpack array header at the start of `bytes`, or
 * undefined when the bytes do not start with one (complete).
 */
export function msgpackArrayHead (bytes: Uint8Array): { count: number, start: number } | undefined {
  const b = bytes[0] ?? 0
  if (bytes.byteLength >= 1 && b >= 0x90 && b <= 0x9f) return { count: b & 0x0f, start: 1 }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (b === 0xdc && bytes.byteLength >= 3) return { count: view.getUint16(1), start: 3 }
  if (b === 0xdd && bytes.byteLength >= 5) return { count: view.getUint32(1), start: 5 }
  return undefined
}

/**
 * One element of a msgpack array of events (a `POST /events/batch` body), from byte `start`:
 * checked as parseWireEvent checks a whole body, and its exact bytes (a view into `bytes`, not a
 * copy, never re-encoded). Byte offsets in errors count from the start of `bytes`.
 */
export function parseWireEventAt (bytes: Uint8Array, start: number): { event: BusEvent, bytes: Uint8Array } {
  const walked = walk(bytes, start, true)
  if (typeof walked === 'string') throw new CodecError('undecodable', walked)
  const element = bytes.subarray(start, walked.end)
  return { event: checkWireEvent(element, walked.protoKey), bytes: element }
}

function mapCount (bytes: Uint8Array): number {
  const b = bytes[0] ?? 0
  if (b >= 0x80 && b <= 0x8f) return b & 0x0f
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (b === 0xde && bytes.byteLength >= 3) return view.getUint16(1)
  if (b === 0xdf && bytes.byteLength >= 5) return view.getUint32(1)
  return -1
}

/** The timestamp extension as msgpack-python's Timestamp accepts it: 4, 8 or 12 bytes, nanoseconds below 10^9. */
function checkTimestamp (view: DataView, pos: number, length: number): string | undefined {
  const nanoseconds = length === 8 ? view.getUint32(pos) >>> 2 : length === 12 ? view.getUint32(pos) : length === 4 ? 0 : -1
  if (nanoseconds < 0) return `timestamp extension at byte ${pos} has ${length} bytes; 4, 8 or 12 are allowed`
  if (nanoseconds >= 1e9) return `timestamp extension at byte ${pos} has nanoseconds out of range`
  return undefined
}

function decode (bytes: Uint8Array, protoKey: boolean): unknown {
  try {
    return (protoKey ? protoDecoder : decoder).decode(bytes)
  } catch (err) {
    throw new CodecError('undecodable', (err as Error).message)
  }
}

function checkShape (value: unknown, exact: boolean): BusEvent {
  if (!isPlainObject(value)) throw new CodecError('wrong_shape', `expected a map, got ${describe(value)}`)
  const { event_name: name, agent_id: agent, args } = value
  if (typeof name !== 'string') throw new CodecError('wrong_shape', `event_name must be a str, got ${describe(name)}`)
  if (typeof agent !== 'string') throw new CodecError('wrong_shape', `agent_id must be a str, got ${describe(agent)}`)
  if (!Array.isArray(args)) throw new CodecError('wrong_shape', `args must be an array, got ${describe(args)}`)
  if (exact) {
    const extra = Object.keys(value).filter((k) => k !== 'event_name' && k !== 'agent_id' && k !== 'args')
    if (extra.length > 0) {
      const key = extra[0] === PROTO_KEY ? '__proto__' : extra[0]
      throw new CodecError('wrong_shape', `unexpected key ${JSON.stringify(key)}: the map holds event_name, agent_id and args only`)
    }
  }
  return value as unknown as BusEvent
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) &&
    !(value instanceof Uint8Array) && !(value instanceof Timestamp) && !(value instanceof ExtData)
}

function describe (value: unknown): string {
  if (value === undefined) return 'nothing'
  if (value === null) return 'nil'
  if (Array.isArray(value)) return 'an array'
  if (value instanceof Uint8Array) return 'bin'
  if (value instanceof Timestamp) return 'a timestamp'
  if (value instanceof ExtData) return 'an extension'
  if (typeof value === 'bigint') return 'an int'
  if (typeof value === 'number') return Number.isInteger(value) ? 'an int' : 'a float'
  if (typeof value === 'string') return 'a str'
  if (typeof value === 'boolean') return 'a bool'
  return 'a map'
}

/**
 * The one JSON mapping for events leaving busgate (SSE, webhooks, dashboard):
 * bin → `{"$base64": "…"}`; integers beyond ±(2^53-1) → decimal strings; NaN and ±Infinity →
 * the strings "NaN", "Infinity", "-Infinity"; a msgpack timestamp → an ISO-8601 string, or
 * `{"$ext": -1, "$base64": "…"}` where Date cannot hold it; other extensions → `{"$ext": type,
 * "$base64": "…"}`; everything else as is. Never throws for what decodeEvent returns.
 */
export function toJsonValue (value: unknown): JsonValue {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value
    case 'number':
      return Number.isFinite(value) ? value : String(value)
    case 'bigint':
      return value >= Number.MIN_SAFE_INTEGER && value <= Number.MAX_SAFE_INTEGER ? Number(value) : value.toString()
    case 'object':
      if (value === null) return null
      if (Array.isArray(value)) return value.map(toJsonValue)
      if (value instanceof Uint8Array) return { $base64: base64(value) }
      if (value instanceof Timestamp) return timestampJson(value)
      if (value instanceof ExtData) return { $ext: value.type, $base64: value.data instanceof Uint8Array ? base64(value.data) : '' }
      // fromEntries makes "__proto__" an own key, where assigning it would set the prototype.
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k === PROTO_KEY ? '__proto__' : k, toJsonValue(v)]))
    default:
      return null
  }
}

function base64 (bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64')
}

const DATE_LIMIT_MS = 8_640_000_000_000_000n

function timestampJson (value: Timestamp): JsonValue {
  // Whole milliseconds towards the past, as Python's isoformat(timespec='milliseconds') cuts them.
  const ms = value.seconds * 1000n + BigInt(Math.floor(value.nanoseconds / 1e6))
  if (ms < -DATE_LIMIT_MS || ms > DATE_LIMIT_MS) return { $ext: -1, $base64: base64(value.data) }
  return new Date(Number(ms)).toISOString()
}

export function toJsonEvent (event: BusEvent): JsonEvent {
  return { event_name: event.event_name, agent_id: event.agent_id, args: event.args.map(toJsonValue) }
}

const BASE64_TEXT = /^[A-Za-z0-9+/]*={0,2}$/

/**
 * Padded base64, as `{"$base64": …}` and stored bytes carry it. The length and one character
 * class say it in linear time: a regex repeating a four-character group recursed past V8's
 * stack on megabytes of text (a RangeError, not a refusal).
 */
export function isBase64 (text: string): boolean {
  return text.length % 4 === 0 && BASE64_TEXT.test(text)
}

/** A short hex view of a message for logs: enough to recognise it, never the whole thing. */
export function hexPreview (bytes: Uint8Array, max = 32): string {
  const head = Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, max)).toString('hex')
  return bytes.byteLength > max ? `${head}… (${bytes.byteLength} bytes)` : head
}

/**
 * Walks msgpack bytes without building values: one complete object, no trailing bytes, every
 * str valid UTF-8, nesting within MAX_DEPTH; strict, also every map key a str and every
 * timestamp one Python reads. Returns what is wrong, if anything; throws CodecError
 * (`too_large`) past MAX_VALUES, which is not wrong, only more than busgate takes.
 */
export function scanMsgpack (bytes: Uint8Array, strict = true): string | undefined {
  const scanned = scan(bytes, strict)
  return typeof scanned === 'string' ? scanned : undefined
}

/** `where` names the batch element, as refusals of JSON events do (`body/3/`). */
export function tooManyValues (where = ''): CodecError {
  return new CodecError('too_large', `${where}the event holds more than ${MAX_VALUES} values (strs, numbers, arrays, maps…)`)
}

/** Most strs are short and ASCII: for them a loop is cheaper than a view and a call into C++. */
function validUtf8 (bytes: Uint8Array, start: number, length: number): boolean {
  const end = start + length
  if (length <= 64) {
    let i = start
    while (i < end && (bytes[i] as number) < 0x80) i++
    if (i === end) return true
  }
  return isUtf8(bytes.subarray(start, end))
}

/** What is wrong, or (all well) whether some map key is "__proto__". */
function scan (bytes: Uint8Array, strict: boolean): string | boolean {
  const walked = walk(bytes, 0, strict)
  if (typeof walked === 'string') return walked
  if (walked.end !== bytes.byteLength) return `${bytes.byteLength - walked.end} bytes left over after the message`
  return walked.protoKey
}

/**
 * Walks one complete object from byte `start`: what is wrong, or where it ends (bytes may follow)
 * and whether some map key is "__proto__".
 */
function walk (bytes: Uint8Array, start: number, strict: boolean): string | { end: number, protoKey: boolean } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const end = bytes.byteLength
  let pos = start
  // Each open container: how many items remain, and whether it is a map (keys at even positions).
  const remaining: number[] = []
  const isMap: boolean[] = []
  let items = 1

  const need = (n: number): boolean => pos + n <= end
  const truncated = (): string => `truncated at byte ${pos} of ${end}`
  let protoKey = false
  let values = 0

  while (items > 0 || remaining.length > 0) {
    if (items === 0) {
      items = remaining.pop() as number
      isMap.pop()
      continue
    }
    const depth = remaining.length
    const top = isMap.length - 1
    const atKey = top >= 0 && isMap[top] === true && items % 2 === 0
    items--
    if (++values > MAX_VALUES) throw tooManyValues()
    if (!need(1)) return truncated()
    const b = view.getUint8(pos++)
    let strLen = -1
    let skip = 0
    let container = -1
    let containerIsMap = false
    let extLen = -1

    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) {
      skip = 0
    } else if (b >= 0xa0 && b <= 0xbf) {
      strLen = b & 0x1f
    } else if (b >= 0x90 && b <= 0x9f) {
      container = b & 0x0f
    } else if (b >= 0x80 && b <= 0x8f) {
      container = b & 0x0f
      containerIsMap = true
    } else {
      switch (b) {
        case 0xc1: return `byte 0xc1 at ${pos - 1} is never used in msgpack`
        case 0xcc: case 0xd0: skip = 1; break
        case 0xcd: case 0xd1: skip = 2; break
        case 0xca: case 0xce: case 0xd2: skip = 4; break
        case 0xcb: case 0xcf: case 0xd3: skip = 8; break
        case 0xd4: extLen = 1; break
        case 0xd5: extLen = 2; break
        case 0xd6: extLen = 4; break
        case 0xd7: extLen = 8; break
        case 0xd8: extLen = 16; break
        case 0xd9: if (!need(1)) return truncated(); strLen = view.getUint8(pos); pos += 1; break
        case 0xda: if (!need(2)) return truncated(); strLen = view.getUint16(pos); pos += 2; break
        case 0xdb: if (!need(4)) return truncated(); strLen = view.getUint32(pos); pos += 4; break
        case 0xc4: if (!need(1)) return truncated(); skip = view.getUint8(pos) + 1; break
        case 0xc5: if (!need(2)) return truncated(); skip = view.getUint16(pos) + 2; break
        case 0xc6: if (!need(4)) return truncated(); skip = view.getUint32(pos) + 4; break
        case 0xc7: if (!need(1)) return truncated(); extLen = view.getUint8(pos); pos += 1; break
        case 0xc8: if (!need(2)) return truncated(); extLen = view.getUint16(pos); pos += 2; break
        case 0xc9: if (!need(4)) return truncated(); extLen = view.getUint32(pos); pos += 4; break
        case 0xdc: if (!need(2)) return truncated(); container = view.getUint16(pos); pos += 2; break
        case 0xdd: if (!need(4)) return truncated(); container = view.getUint32(pos); pos += 4; break
        case 0xde: if (!need(2)) return truncated(); container = view.getUint16(pos); pos += 2; containerIsMap = true; break
        case 0xdf: if (!need(4)) return truncated(); container = view.getUint32(pos); pos += 4; containerIsMap = true; break
      }
    }
    if (strict && atKey && strLen < 0) return `map key at byte ${pos - 1} is not a str (Python reads only str keys)`
    if (strLen >= 0) {
      if (!need(strLen)) return truncated()
      // On the bus too: Python's unpackb(raw=False) refuses the message, and the library's own
      // decoder would make up characters (or lone surrogates) from the bytes.
      if (!validUtf8(bytes, pos, strLen)) return `str at byte ${pos} is not valid UTF-8`
      if (atKey && strLen === PROTO_BYTES.length && isProtoKey(bytes, pos)) protoKey = true
      pos += strLen
    } else if (extLen >= 0) {
      if (!need(extLen + 1)) return truncated()
      if (strict && view.getInt8(pos) === -1) {
        const problem = checkTimestamp(view, pos + 1, extLen)
        if (problem !== undefined) return problem
      }
      pos += extLen + 1
    } else if (skip > 0) {
      if (!need(skip)) return truncated()
      pos += skip
    } else if (container >= 0) {
      if (depth + 1 > MAX_DEPTH) return `nested deeper than ${MAX_DEPTH} levels`
      const count = containerIsMap ? container * 2 : container
      // Each item takes at least one byte, so a count beyond the bytes left is a lie.
      if (count > end - pos) return truncated()
      remaining.push(items)
      isMap.push(containerIsMap)
      items = count
    }
  }
  return { end: pos, protoKey }
}
