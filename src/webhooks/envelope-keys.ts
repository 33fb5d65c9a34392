import type { FastifyBaseLogger } from 'fastify'
import type { Store } from '../engines/engine.js'
import { EnvelopeSealer, type Envelope } from './envelope.js'

/**
 * The envelope key all instances share (`<prefix>envelope-key`), as this instance knows it, and
 * the opening of values that look sealed.
 */
export class EnvelopeKeys {
  #sealer: Promise<EnvelopeSealer> | undefined
  /** when the key was last read again because a value would not open (performance.now()) */
  #keyReadAt = 0
  #unopened = 0

  constructor (private readonly store: Store, private readonly keyPrefix: string, private readonly log: FastifyBaseLogger) {}

  /** The key every instance seals envelopes with: made by the first one, read by the others. */
  async sealer (): Promise<EnvelopeSealer> {
    const key = `${this.keyPrefix}envelope-key`
    if (this.#sealer === undefined) {
      const reading = this.store.setIfAbsent(key, EnvelopeSealer.newKey()).then((value) => {
        try {
          return new EnvelopeSealer(Buffer.from(value, 'base64'))
        } catch (err) {
          throw new Error(`${key} holds no valid envelope key (${(err as Error).message}): delete it, and busgate makes a new one`)
        }
      })
      this.#sealer = reading
      // A bus that is down now must not leave a failed read behind for good.
      reading.catch(() => { if (this.#sealer === reading) this.#sealer = undefined })
    }
    return await this.#sealer
  }

  /**
   * Opens a value that starts like an envelope. One that does not open may have been sealed
   * under a key that has changed since this instance read it (a Redis that lost its data, say):
   * the key is read again, at most once in ten seconds, before the value counts as a plain message.
   */
  async open (claimed: Buffer, sealer: EnvelopeSealer): Promise<{ envelope: Envelope, frame: Buffer } | undefined> {
    const opened = sealer.open(claimed)
    if (opened !== undefined || performance.now() - this.#keyReadAt < 10_000) return opened ?? this.#notOpened()
    this.#keyReadAt = performance.now()
    this.#sealer = undefined
    return (await this.sealer()).open(claimed) ?? this.#notOpened()
  }

  #notOpened (): undefined {
    if (this.#unopened++ % 1000 === 0) {
      this.log.warn({ seen: this.#unopened }, 'a value on the consumer list starts like an envelope but is not sealed with this bus\'s key: taken as a plain message')
    }
    return undefined
  }
}
