import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { Type, type Static } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'

/**
 * Marks a value of busgate's processing lists, retry list or delay set that is an envelope (a
 * message with its retry state), not a bare message. v1 envelopes carried no seal.
 */
export const ENVELOPE_PREFIX = 'busgate-envelope:v2:'

/** A message's retry state: its id for receivers, when it was first taken, attempts and rounds so far. */
export const EnvelopeState = Type.Object({
  id: Type.String({ maxLength: 200 }),
  first_seen: Type.Number(),
  attempts: Type.Integer({ minimum: 0 }),
  rounds: Type.Integer({ minimum: 0 }),
  last_error: Type.Optional(Type.String())
})
export type Envelope = Static<typeof EnvelopeState>

/** As stored: the state and the message's bytes, base64. */
const StoredEnvelope = Type.Intersect([EnvelopeState, Type.Object({ frame: Type.String() })])
const isStored = TypeCompiler.Compile(StoredEnvelope)

const MAC_LENGTH = 43 // base64url of a SHA-256 HMAC

/**
 * Seals envelopes with an HMAC under a key only busgate instances hold (in Redis, beside their
 * other keys), and opens only sealed ones. Anyone can put a value starting with the prefix on the
 * consumer list; without the seal it is read as the plain message it is, so it can neither choose
 * the webhook-id receivers see nor be retried for ever as an envelope that does not parse.
 */
export class EnvelopeSealer {
  constructor (private readonly key: Buffer) {}

  static newKey (): string {
    return randomBytes(32).toString('base64')
  }

  seal (envelope: Envelope, frame: Buffer): Buffer {
    const json = JSON.stringify({ ...envelope, frame: frame.toString('base64') })
    return Buffer.from(`${ENVELOPE_PREFIX}${this.#mac(json)}:${json}`)
  }

  /** The state and bytes of an envelope busgate sealed; undefined for anything else. */
  open (value: Buffer): { envelope: Envelope, frame: Buffer } | undefined {
    if (value.byteLength < ENVELOPE_PREFIX.length + MAC_LENGTH + 1 ||
      value.subarray(0, ENVELOPE_PREFIX.length).toString('latin1') !== ENVELOPE_PREFIX) return undefined
    const mac = value.subarray(ENVELOPE_PREFIX.length, ENVELOPE_PREFIX.length + MAC_LENGTH)
    if (value[ENVELOPE_PREFIX.length + MAC_LENGTH] !== 0x3a) return undefined // ':'
    const json = value.subarray(ENVELOPE_PREFIX.length + MAC_LENGTH + 1).toString('utf8')
    const expected = Buffer.from(this.#mac(json))
    if (!timingSafeEqual(mac, expected)) return undefined
    let stored: unknown
    try {
      stored = JSON.parse(json)
    } catch {
      return undefined
    }
    // Sealed by busgate, so well-formed unless a future version wrote it: checked all the same.
    if (!isStored.Check(stored)) return undefined
    const { frame, ...envelope } = stored
    return { envelope, frame: Buffer.from(frame, 'base64') }
  }

  #mac (json: string): string {
    return createHmac('sha256', this.key).update(json).digest('base64url')
  }
}
