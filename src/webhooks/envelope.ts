import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { Type, type Static } from '@sinclair/typebox'
import { storedRecordCheck } from '../validation.js'

/**
 * Marks a value of busgate's processing lists, retry list or delay set that is an envelope (a
 * message with its retry state), not a bare message. v1 envelopes carried no seal.
 */
export const ENVELOPE_PREFIX = 'busgate-envelope:v2:'
const PREFIX = Buffer.from(ENVELOPE_PREFIX)

/** A message's retry state: its id for receivers, when it was first taken, attempts and rounds so far. */
export const EnvelopeState = Type.Object({
  id: Type.String({ maxLength: 200 }),
  first_seen: Type.Number(),
  attempts: Type.Integer({ minimum: 0 }),
  rounds: Type.Integer({ minimum: 0 }),
  last_error: Type.Optional(Type.String()),
  /** a subscriber webhook's copy: the webhook it is for (a consumer list message has none) */
  webhook: Type.Optional(Type.String({ maxLength: 64 }))
})
export type Envelope = Static<typeof EnvelopeState>

/** As stored: the state and the message's bytes, base64. Fields a later version adds are let through. */
const StoredEnvelope = Type.Object({ ...EnvelopeState.properties, frame: Type.String() })
const isStored = storedRecordCheck(StoredEnvelope)

const MAC_LENGTH = 43 // base64url of a SHA-256 HMAC
export const KEY_BYTES = 32

/** Whether `value` starts like an envelope: it may still not be one (see EnvelopeSealer.open). */
export function looksSealed (value: Buffer): boolean {
  return value.byteLength > PREFIX.length && value.subarray(0, PREFIX.length).equals(PREFIX)
}

/**
 * Seals envelopes with an HMAC under a key only busgate instances hold (in Redis, beside their
 * other keys), and opens only sealed ones. Anyone can put a value starting with the prefix on the
 * consumer list; without the seal it is read as the plain message it is, so it can neither choose
 * the webhook-id receivers see nor be retried for ever as an envelope that does not parse.
 */
export class EnvelopeSealer {
  constructor (private readonly key: Buffer) {
    // A key cut short by a hand edit would seal with little or nothing.
    if (key.byteLength < KEY_BYTES) throw new RangeError(`an envelope key has ${KEY_BYTES} bytes, not ${key.byteLength}`)
  }

  static newKey (): string {
    return randomBytes(KEY_BYTES).toString('base64')
  }

  seal (envelope: Envelope, frame: Buffer): Buffer {
    const json = Buffer.from(JSON.stringify({ ...envelope, frame: frame.toString('base64') }))
    return Buffer.concat([PREFIX, Buffer.from(this.#mac(json)), Buffer.from(':'), json])
  }

  /** The state and bytes of an envelope busgate sealed; undefined for anything else. */
  open (value: Buffer): { envelope: Envelope, frame: Buffer } | undefined {
    if (!looksSealed(value) || value.byteLength < PREFIX.length + MAC_LENGTH + 1 || value[PREFIX.length + MAC_LENGTH] !== 0x3a) return undefined // ':'
    const mac = value.subarray(PREFIX.length, PREFIX.length + MAC_LENGTH)
    const json = value.subarray(PREFIX.length + MAC_LENGTH + 1)
    if (!timingSafeEqual(mac, Buffer.from(this.#mac(json)))) return undefined
    let stored: unknown
    try {
      stored = JSON.parse(json.toString('utf8'))
    } catch {
      return undefined
    }
    // Sealed by busgate, so well-formed unless another version wrote it: checked all the same.
    if (!isStored(stored)) return undefined
    const { frame, ...envelope } = stored
    return { envelope, frame: Buffer.from(frame, 'base64') }
  }

  #mac (bytes: Buffer): string {
    return createHmac('sha256', this.key).update(bytes).digest('base64url')
  }
}
