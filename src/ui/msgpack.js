// A msgpack decoder for the dashboard: the dead-letter API gives a letter's bytes, not its
// event, so the page reads them itself. Values come out in the gateway's JSON mapping (README,
// "The JSON mapping of msgpack values"), as the stream shows events. The bytes may be anything
// a producer pushed: every length is checked against what is left, and nesting is bounded, so
// hostile bytes cost at most a pass over them and end in a DecodeError.

const MAX_DEPTH = 512
// Beyond this Date cannot hold a time; the gateway then shows the extension's bytes.
const DATE_LIMIT_MS = 8_640_000_000_000_000n

export class DecodeError extends Error {}

export function base64 (bytes) {
  let binary = ''
  // In slices: String.fromCharCode takes its bytes as arguments, and there is a limit to those.
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000))
  return btoa(binary)
}

export function fromBase64 (text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0))
}

export function decodeMsgpack (bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const utf8 = new TextDecoder('utf-8', { fatal: true })
  let pos = 0

  function take (n) {
    if (n > bytes.length - pos) throw new DecodeError(`truncated: ${n} more bytes wanted at byte ${pos}`)
    pos += n
    return pos - n
  }
  const bin = (n) => bytes.subarray(take(n), pos)
  function str (n) {
    try {
      return utf8.decode(bin(n))
    } catch {
      throw new DecodeError(`a str that is not valid UTF-8 ends at byte ${pos}`)
    }
  }
  const int = (big) => big >= -BigInt(Number.MAX_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big.toString()
  const float = (n) => Number.isFinite(n) ? n : String(n)

  // A count past what is left ends at the first value missing: each value takes a byte at least.
  function array (n, depth) {
    const items = []
    for (let i = 0; i < n; i++) items.push(value(depth + 1))
    return items
  }

  function map (n, depth) {
    const entries = []
    for (let i = 0; i < n; i++) {
      const key = value(depth + 1)
      if (typeof key !== 'string' && typeof key !== 'number') throw new DecodeError(`a map key that is not a str or a number at byte ${pos}`)
      entries.push([String(key), value(depth + 1)])
    }
    // fromEntries makes "__proto__" an own key, where assigning it would set the prototype.
    return Object.fromEntries(entries)
  }

  function ext (n) {
    const type = view.getInt8(take(1))
    const data = bin(n)
    return type === -1 ? timestamp(data) : { $ext: type, $base64: base64(data) }
  }

  function timestamp (data) {
    const at = new DataView(data.buffer, data.byteOffset, data.byteLength)
    let seconds
    let nanoseconds
    if (data.length === 4) {
      seconds = BigInt(at.getUint32(0))
      nanoseconds = 0
    } else if (data.length === 8) {
      const word = at.getBigUint64(0)
      seconds = word & 0x3ffffffffn
      nanoseconds = Number(word >> 34n)
    } else if (data.length === 12) {
      nanoseconds = at.getUint32(0)
      seconds = at.getBigInt64(4)
    }
    if (seconds === undefined || nanoseconds >= 1e9) return { $ext: -1, $base64: base64(data) }
    // Whole milliseconds towards the past, as the gateway cuts them.
    const ms = seconds * 1000n + BigInt(Math.floor(nanoseconds / 1e6))
    return ms < -DATE_LIMIT_MS || ms > DATE_LIMIT_MS ? { $ext: -1, $base64: base64(data) } : new Date(Number(ms)).toISOString()
  }

  function value (depth) {
    if (depth > MAX_DEPTH) throw new DecodeError(`nested more than ${MAX_DEPTH} levels`)
    const type = bytes[take(1)]
    if (type <= 0x7f) return type
    if (type <= 0x8f) return map(type & 0x0f, depth)
    if (type <= 0x9f) return array(type & 0x0f, depth)
    if (type <= 0xbf) return str(type & 0x1f)
    if (type >= 0xe0) return type - 0x100
    switch (type) {
      case 0xc0: return null
      case 0xc2: return false
      case 0xc3: return true
      case 0xc4: return { $base64: base64(bin(view.getUint8(take(1)))) }
      case 0xc5: return { $base64: base64(bin(view.getUint16(take(2)))) }
      case 0xc6: return { $base64: base64(bin(view.getUint32(take(4)))) }
      case 0xc7: return ext(view.getUint8(take(1)))
      case 0xc8: return ext(view.getUint16(take(2)))
      case 0xc9: return ext(view.getUint32(take(4)))
      case 0xca: return float(view.getFloat32(take(4)))
      case 0xcb: return float(view.getFloat64(take(8)))
      case 0xcc: return view.getUint8(take(1))
      case 0xcd: return view.getUint16(take(2))
      case 0xce: return view.getUint32(take(4))
      case 0xcf: return int(view.getBigUint64(take(8)))
      case 0xd0: return view.getInt8(take(1))
      case 0xd1: return view.getInt16(take(2))
      case 0xd2: return view.getInt32(take(4))
      case 0xd3: return int(view.getBigInt64(take(8)))
      case 0xd4: return ext(1)
      case 0xd5: return ext(2)
      case 0xd6: return ext(4)
      case 0xd7: return ext(8)
      case 0xd8: return ext(16)
      case 0xd9: return str(view.getUint8(take(1)))
      case 0xda: return str(view.getUint16(take(2)))
      case 0xdb: return str(view.getUint32(take(4)))
      case 0xdc: return array(view.getUint16(take(2)), depth)
      case 0xdd: return array(view.getUint32(take(4)), depth)
      case 0xde: return map(view.getUint16(take(2)), depth)
      case 0xdf: return map(view.getUint32(take(4)), depth)
      default: throw new DecodeError(`byte 0x${type.toString(16)} at ${pos - 1} starts no msgpack value`)
    }
  }

  const decoded = value(0)
  if (pos !== bytes.length) throw new DecodeError(`${bytes.length - pos} bytes after the value`)
  return decoded
}
