import { isUtf8 } from 'node:buffer'
import { Decoder, Encoder, ExtData } from '@msgpack/msgpack'

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

export type CodecFailure = 'undecodable' | 'wrong_shape'

export class CodecError extends Error {
  override name = 'CodecError'
  constructor (readonly reason: CodecFailure, message: string) {
    super(message)
  }
}

const decoder = new Decoder({ useBigInt64: true })
// Without useBigInt64: with it, the encoder writes safe integers of 2^32 and more as float64,
// where Python writes uint64/int64. Events encoded here come from JSON, which holds no bigints.
const encoder = new Encoder({ maxDepth: MAX_DEPTH + 1 })

const KEY_EVENT_NAME = Buffer.from('83aa6576656e745f6e616d65', 'hex') // fixmap(3), "event_name"
const KEY_AGENT_ID = Buffer.from('a86167656e745f6964', 'hex') // "agent_id"
const KEY_ARGS = Buffer.from('a461726773', 'hex') // "args"

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
  // Only completeness and depth here: the JSON mapping recurses, and a foreign producer may nest anything.
  const problem = scanMsgpack(bytes, false)
  if (problem !== undefined) throw new CodecError('undecodable', problem)
  return checkShape(decode(bytes), false)
}

/**
 * Checks msgpack bytes offered for the bus (a `POST /events` body) as strictly as the
 * strictest consumer: Python's `unpackb(raw=False, strict_map_key=True)` must read them,
 * and the map must hold the three keys and nothing else.
 */
export function parseWireEvent (bytes: Uint8Array): BusEvent {
  const problem = scanMsgpack(bytes)
  if (problem !== undefined) throw new CodecError('undecodable', problem)
  const event = checkShape(decode(bytes), true)
  // A repeated key collapses in the decoded object, while another decoder may keep the other value.
  if (mapCount(bytes) !== 3) throw new CodecError('wrong_shape', 'the map must hold exactly three entries: event_name, agent_id and args')
  return event
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

function decode (bytes: Uint8Array): unknown {
  try {
    return decoder.decode(bytes)
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
    if (extra.length > 0) throw new CodecError('wrong_shape', `unexpected key ${JSON.stringify(extra[0])}: the map holds event_name, agent_id and args only`)
  }
  return value as unknown as BusEvent
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) &&
    !(value instanceof Uint8Array) && !(value instanceof Date) && !(value instanceof ExtData)
}

function describe (value: unknown): string {
  if (value === undefined) return 'nothing'
  if (value === null) return 'nil'
  if (Array.isArray(value)) return 'an array'
  if (value instanceof Uint8Array) return 'bin'
  if (typeof value === 'bigint') return 'an int'
  if (typeof value === 'number') return Number.isInteger(value) ? 'an int' : 'a float'
  if (typeof value === 'string') return 'a str'
  if (typeof value === 'boolean') return 'a bool'
  return 'a map'
}

/**
 * The one JSON mapping for events leaving busgate (SSE, webhooks, dashboard):
 * bin → `{"$base64": "…"}`; integers beyond ±(2^53-1) → decimal strings; NaN and ±Infinity →
 * the strings "NaN", "Infinity", "-Infinity"; the msgpack timestamp extension → an ISO-8601
 * string; other extensions → `{"$ext": type, "$base64": "…"}`; everything else as is.
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
      if (value instanceof Uint8Array) return { $base64: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64') }
      if (value instanceof Date) return value.toISOString()
      if (value instanceof ExtData) {
        const data = value.data instanceof Uint8Array ? value.data : new Uint8Array(0)
        return { $ext: value.type, $base64: Buffer.from(data).toString('base64') }
      }
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJsonValue(v)]))
    default:
      return null
  }
}

export function toJsonEvent (event: BusEvent): JsonEvent {
  return { event_name: event.event_name, agent_id: event.agent_id, args: event.args.map(toJsonValue) }
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/

/**
 * The inverse for events entering as JSON: `{"$base64": "…"}` (that one key alone) becomes
 * bin. Integers JSON cannot carry exactly (2^53 to 2^64) are refused rather than rounded; so is nesting past
 * MAX_DEPTH. Throws CodecError with a message naming the path.
 */
export function fromJsonValue (value: unknown, path = 'args'): unknown {
  // Most events carry no bin: check first, and copy only when something must change.
  return needsConversion(value, [path]) ? convert(value) : value
}

function isBase64Object (value: object): value is { $base64: unknown } {
  let count = 0
  for (const key in value) {
    if (key !== '$base64' || ++count > 1) return false
  }
  return count === 1
}

/**
 * Validates the whole value (throwing CodecError naming the path) and says whether any
 * `$base64` object is inside. `path` is a stack of segments, joined only for an error.
 */
function needsConversion (value: unknown, path: Array<string | number>): boolean {
  if (typeof value === 'string') {
    // JSON can carry a lone surrogate ("\ud800"); UTF-8 cannot, and Python would refuse the message.
    if (!value.isWellFormed()) throw new CodecError('wrong_shape', `${formatPath(path)} holds a lone UTF-16 surrogate, which UTF-8 cannot carry`)
    return false
  }
  if (typeof value === 'number') {
    // Between 2^53 and 2^64 a JSON number may be an int64 already rounded by the parser; past
    // 2^64 no msgpack int exists, so it can only be a float and is kept as one.
    if (Number.isInteger(value) && !Number.isSafeInteger(value) && Math.abs(value) < 2 ** 64) {
      throw new CodecError('wrong_shape',
        `${formatPath(path)} is an integer beyond ±(2^53-1), which JSON numbers cannot carry exactly; send it as a string or post application/msgpack`)
    }
    return false
  }
  if (typeof value !== 'object' || value === null) return false
  // The event map is level 1 and `args` level 2: count as the msgpack scanner does.
  if (path.length + 1 > MAX_DEPTH) throw new CodecError('wrong_shape', `${formatPath(path)} is nested deeper than ${MAX_DEPTH} levels`)
  let found = false
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      path.push(i)
      if (needsConversion(value[i], path)) found = true
      path.pop()
    }
    return found
  }
  if (isBase64Object(value)) {
    if (typeof value.$base64 !== 'string' || !BASE64.test(value.$base64)) {
      throw new CodecError('wrong_shape', `${formatPath(path)}.$base64 must be a padded base64 string`)
    }
    return true
  }
  for (const key in value) {
    path.push(key)
    if (!key.isWellFormed()) throw new CodecError('wrong_shape', `${formatPath(path)}: the key holds a lone UTF-16 surrogate`)
    if (needsConversion((value as Record<string, unknown>)[key], path)) found = true
    path.pop()
  }
  return found
}

function formatPath (path: Array<string | number>): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? p : `.${p}`)).join('')
}

function convert (value: unknown): unknown {
  if (typeof value !== 'object' || value === null) return value
  if (Array.isArray(value)) return value.map(convert)
  if (isBase64Object(value)) return new Uint8Array(Buffer.from(value.$base64 as string, 'base64'))
  const out: Record<string, unknown> = {}
  for (const key in value) out[key] = convert((value as Record<string, unknown>)[key])
  return out
}

/** A short hex view of a message for logs: enough to recognise it, never the whole thing. */
export function hexPreview (bytes: Uint8Array, max = 32): string {
  const head = Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, max)).toString('hex')
  return bytes.byteLength > max ? `${head}… (${bytes.byteLength} bytes)` : head
}

/**
 * Walks msgpack bytes without building values: one complete object, no trailing bytes, every
 * str valid UTF-8, every map key a str, nesting within MAX_DEPTH. Returns what is wrong, if anything.
 */
export function scanMsgpack (bytes: Uint8Array, strict = true): string | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const end = bytes.byteLength
  let pos = 0
  // Each open container: how many items remain, and whether it is a map (keys at even positions).
  const remaining: number[] = []
  const isMap: boolean[] = []
  let items = 1

  const need = (n: number): boolean => pos + n <= end
  const truncated = (): string => `truncated at byte ${pos} of ${end}`

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
      if (strict && !isUtf8(bytes.subarray(pos, pos + strLen))) return `str at byte ${pos} is not valid UTF-8`
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
  if (pos !== end) return `${end - pos} bytes left over after the message`
  return undefined
}
