import { CodecError, KEY_AGENT_ID, KEY_ARGS, KEY_EVENT_NAME, isBase64, MAX_DEPTH, MAX_VALUES, tooManyValues } from './codec.js'

/**
 * Events that enter as JSON, written straight to the wire format: one walk over each parsed
 * value both checks it (the refusals README's "Producing events" lists, each naming its path) and
 * writes its msgpack, where a check, a converted copy and a generic encoder each walked it before.
 *
 * The bytes are what `@msgpack/msgpack` (and Python's `packb(..., use_bin_type=True)`) write for
 * the same values: the smallest format that holds each int, str, bin, array and map, float64 for
 * every other number, keys in the object's own order. test/codec-fuzz.test.ts holds it to that.
 *
 * A batch is written into one scratch buffer and copied out once: each frame a view of that copy.
 */

export interface JsonEventInput {
  event_name: string
  agent_id?: string
  args?: unknown
}

/** The scratch buffer grows for a large batch; past this it is dropped afterwards, not kept. */
const KEEP_SCRATCH_BYTES = 1024 * 1024
const INITIAL_SCRATCH_BYTES = 64 * 1024
/** Up to this many UTF-16 units, an ASCII str is copied by a loop (str8 at most). */
const SHORT_STR = 128
const TWO_32 = 2 ** 32
const TWO_64 = 2 ** 64

class Packer {
  buf = Buffer.allocUnsafe(INITIAL_SCRATCH_BYTES)
  pos = 0
  values = 0
  /** The path below `args`, joined only for a refusal. */
  readonly path: Array<string | number> = []
  /** Which event of the batch is being written, and how refusals name it: built only for one. */
  index = 0
  where: (index: number) => string = () => ''

  ensure (bytes: number): void {
    if (this.pos + bytes <= this.buf.length) return
    const grown = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + bytes))
    this.buf.copy(grown, 0, 0, this.pos)
    this.buf = grown
  }

  refuse (what: string): CodecError {
    const path = this.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${p}`)).join('')
    return new CodecError('wrong_shape', `${this.where(this.index)}args${path}${what}`)
  }

  count (): void {
    if (++this.values > MAX_VALUES) throw tooManyValues(this.where(this.index))
  }

  /** A str the caller has checked for lone surrogates. */
  str (value: string): void {
    const length = value.length
    // Short ASCII, the usual case (names, ids, uuids): one loop that checks as it copies, no
    // call into C++. Its header is one byte below 32 units and two up to SHORT_STR, so the
    // bytes go in place at once; a unit past ASCII leaves what was copied to be overwritten.
    if (length <= SHORT_STR) {
      this.ensure(2 + length)
      const buf = this.buf
      const start = this.pos
      let pos = start + (length < 32 ? 1 : 2)
      let i = 0
      for (; i < length; i++) {
        const unit = value.charCodeAt(i)
        if (unit > 0x7f) break
        buf[pos++] = unit
      }
      if (i === length) {
        this.strHead(length)
        this.pos = pos
        return
      }
    }
    const bytes = Buffer.byteLength(value, 'utf8')
    this.ensure(5 + bytes)
    this.strHead(bytes)
    this.pos += this.buf.write(value, this.pos, bytes, 'utf8')
  }

  strHead (bytes: number): void {
    if (bytes < 32) this.buf[this.pos++] = 0xa0 | bytes
    else this.sized(bytes, 0xd9)
  }

  number (value: number): void {
    this.ensure(9)
    const buf = this.buf
    if (Number.isSafeInteger(value)) {
      if (value >= 0) { // -0 too, as 0
        if (value < 0x80) {
          buf[this.pos++] = value
        } else if (value < 0x100) {
          buf[this.pos++] = 0xcc
          buf[this.pos++] = value
        } else if (value < 0x10000) {
          buf[this.pos++] = 0xcd
          this.pos = buf.writeUInt16BE(value, this.pos)
        } else if (value < TWO_32) {
          buf[this.pos++] = 0xce
          this.pos = buf.writeUInt32BE(value, this.pos)
        } else {
          buf[this.pos++] = 0xcf
          this.pos = buf.writeUInt32BE(Math.floor(value / TWO_32), this.pos)
          this.pos = buf.writeUInt32BE(value >>> 0, this.pos)
        }
      } else if (value >= -0x20) {
        buf[this.pos++] = 0xe0 | (value + 0x20)
      } else if (value >= -0x80) {
        buf[this.pos++] = 0xd0
        this.pos = buf.writeInt8(value, this.pos)
      } else if (value >= -0x8000) {
        buf[this.pos++] = 0xd1
        this.pos = buf.writeInt16BE(value, this.pos)
      } else if (value >= -0x80000000) {
        buf[this.pos++] = 0xd2
        this.pos = buf.writeInt32BE(value, this.pos)
      } else {
        const high = Math.floor(value / TWO_32)
        buf[this.pos++] = 0xd3
        this.pos = buf.writeInt32BE(high, this.pos)
        this.pos = buf.writeUInt32BE(value - high * TWO_32, this.pos)
      }
      return
    }
    // JSON.parse reads 1e400 as Infinity; written as float64 infinity it would come back as no JSON at all.
    if (!Number.isFinite(value)) throw this.refuse(' is not a finite number (JSON numbers past ±1.8e308 read as Infinity)')
    // Between 2^53 and 2^64 a JSON number may be an int64 already rounded by the parser; past
    // 2^64 no msgpack int exists, so it can only be a float and is kept as one.
    if (Number.isInteger(value) && Math.abs(value) < TWO_64) {
      throw this.refuse(
        ' is an integer beyond ±(2^53-1), which JSON numbers cannot carry exactly; send it as a string or post application/msgpack')
    }
    buf[this.pos++] = 0xcb
    this.pos = buf.writeDoubleBE(value, this.pos)
  }

  bin (base64: string): void {
    // isBase64 allows only padded text: its length says the decoded size exactly.
    const padding = base64.endsWith('==') ? 2 : base64.endsWith('=') ? 1 : 0
    const bytes = base64.length / 4 * 3 - padding
    this.ensure(5 + bytes)
    this.sized(bytes, 0xc4)
    this.pos += this.buf.write(base64, this.pos, bytes, 'base64')
  }

  /** The header of a str or bin past its fixed form: the 8-, 16- and 32-bit codes follow `eight`. */
  sized (bytes: number, eight: number): void {
    const buf = this.buf
    if (bytes < 0x100) {
      buf[this.pos++] = eight
      buf[this.pos++] = bytes
    } else if (bytes < 0x10000) {
      buf[this.pos++] = eight + 1
      this.pos = buf.writeUInt16BE(bytes, this.pos)
    } else {
      buf[this.pos++] = eight + 2
      this.pos = buf.writeUInt32BE(bytes, this.pos)
    }
  }

  head (count: number, fix: number, sixteen: number): void {
    this.ensure(5)
    const buf = this.buf
    if (count < 16) {
      buf[this.pos++] = fix | count
    } else if (count < 0x10000) {
      buf[this.pos++] = sixteen
      this.pos = buf.writeUInt16BE(count, this.pos)
    } else {
      buf[this.pos++] = sixteen + 1
      this.pos = buf.writeUInt32BE(count, this.pos)
    }
  }

  value (value: unknown): void {
    this.count()
    switch (typeof value) {
      case 'string':
        // JSON can carry a lone surrogate ("\ud800"); UTF-8 cannot, and Python would refuse the message.
        if (!value.isWellFormed()) throw this.refuse(' holds a lone UTF-16 surrogate, which UTF-8 cannot carry')
        this.str(value)
        return
      case 'number':
        this.number(value)
        return
      case 'boolean':
        this.ensure(1)
        this.buf[this.pos++] = value ? 0xc3 : 0xc2
        return
      case 'object':
        if (value === null) break
        // The event map is level 1 and `args` level 2: counted as the msgpack scanner counts.
        if (this.path.length + 2 > MAX_DEPTH) throw this.refuse(` is nested deeper than ${MAX_DEPTH} levels`)
        if (Array.isArray(value)) this.array(value)
        else this.map(value as Record<string, unknown>)
        return
      default:
        break // JSON holds nothing else; undefined is nil, as the library writes it
    }
    this.ensure(1)
    this.buf[this.pos++] = 0xc0
  }

  array (value: unknown[]): void {
    this.head(value.length, 0x90, 0xdc)
    for (let i = 0; i < value.length; i++) {
      this.path.push(i)
      this.value(value[i])
      this.path.pop()
    }
  }

  map (value: Record<string, unknown>): void {
    const keys = Object.keys(value)
    if (keys.length === 1 && keys[0] === '$base64') {
      const text = value.$base64
      if (typeof text !== 'string' || !isBase64(text)) throw this.refuse('.$base64 must be a padded base64 string')
      this.bin(text)
      return
    }
    this.head(keys.length, 0x80, 0xde)
    for (const key of keys) {
      this.path.push(key)
      if (!key.isWellFormed()) throw this.refuse(': the key holds a lone UTF-16 surrogate')
      // A key is a value of its own in msgpack.
      this.count()
      this.str(key)
      this.value(value[key])
      this.path.pop()
    }
  }

  /** A few fixed bytes: a loop, where Buffer#copy would be a call into C++ for each. */
  constant (bytes: Buffer): void {
    this.ensure(bytes.length)
    const buf = this.buf
    let pos = this.pos
    for (let i = 0; i < bytes.length; i++) buf[pos++] = bytes[i] as number
    this.pos = pos
  }

  event (input: JsonEventInput, defaultAgentId: string): void {
    const agentId = input.agent_id ?? defaultAgentId
    if (!agentId.isWellFormed()) throw new CodecError('wrong_shape', `${this.where(this.index)}agent_id holds a lone UTF-16 surrogate`)
    this.constant(KEY_EVENT_NAME)
    this.str(input.event_name)
    this.constant(KEY_AGENT_ID)
    this.str(agentId)
    this.constant(KEY_ARGS)
    // Counted as the msgpack scan counts the whole event: the map, its three keys, two strs, then args.
    this.values = 6
    this.path.length = 0
    this.value(input.args ?? [])
  }
}

const packer = new Packer()

/** What the packer wrote, copied out of the scratch (which the next call reuses). */
function copyOut (): Buffer {
  const out = Buffer.allocUnsafe(packer.pos)
  packer.buf.copy(out, 0, 0, packer.pos)
  return out
}

function shrinkScratch (): void {
  if (packer.buf.length > KEEP_SCRATCH_BYTES) packer.buf = Buffer.allocUnsafe(INITIAL_SCRATCH_BYTES)
}

/** Called with each frame's size once it is packed, before the next: throws to refuse it. */
export type FrameCheck = (index: number, bytes: number) => void

/**
 * The wire frame of one event that entered as JSON; `where` prefixes the path in a refusal
 * (`body/`), and `checkFrame` may refuse the frame by its size.
 */
export function packJsonEvent (input: JsonEventInput, defaultAgentId: string, where: (index: number) => string, checkFrame?: FrameCheck): Buffer {
  packer.pos = 0
  packer.where = where
  packer.index = 0
  try {
    packer.event(input, defaultAgentId)
    checkFrame?.(0, packer.pos)
    return copyOut()
  } finally {
    shrinkScratch()
  }
}

/**
 * The wire frames of events that entered as JSON, in order, each a view of one buffer.
 * `where(i)` prefixes the path in a refusal (`body/3/`); throws CodecError (or what `checkFrame`
 * throws), with the first refusal in the order written.
 */
export function packJsonEvents (inputs: readonly JsonEventInput[], defaultAgentId: string, where: (index: number) => string, checkFrame?: FrameCheck): Buffer[] {
  // One event (every POST /events) skips the batch's bookkeeping.
  if (inputs.length === 1) return [packJsonEvent(inputs[0] as JsonEventInput, defaultAgentId, where, checkFrame)]
  const ends: number[] = []
  packer.pos = 0
  packer.where = where
  let out: Buffer
  try {
    for (let i = 0; i < inputs.length; i++) {
      packer.index = i
      const start = packer.pos
      packer.event(inputs[i] as JsonEventInput, defaultAgentId)
      checkFrame?.(i, packer.pos - start)
      ends.push(packer.pos)
    }
    out = copyOut()
  } finally {
    shrinkScratch()
  }
  const frames: Buffer[] = []
  let start = 0
  for (const end of ends) {
    frames.push(out.subarray(start, end))
    start = end
  }
  return frames
}
