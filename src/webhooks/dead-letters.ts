import { randomBytes } from 'node:crypto'
import type { Store } from '../engines/engine.js'

/** A message that could not be delivered, kept with why, until redelivered or deleted. */
export interface DeadLetter {
  id: string
  message_id: string
  reason: 'malformed' | 'no_matching_webhook' | 'delivery_failed' | 'too_large'
  error: string
  event_name: string | null
  agent_id: string | null
  /** the message's bytes as they were on the bus, base64 */
  frame: string
  attempts: number
  first_seen: string
  dead_at: string
}

export type NewDeadLetter = Omit<DeadLetter, 'id' | 'dead_at'>

/** The dead-letter list: newest first, bounded; the oldest go when it is full. */
export class DeadLetters {
  readonly #key: string

  constructor (private readonly store: Store, keyPrefix: string, private readonly max: number) {
    this.#key = `${keyPrefix}dead-letters`
  }

  /** Adds one; returns false when the list was full and its oldest letter was dropped. */
  async add (letter: NewDeadLetter): Promise<boolean> {
    const full: DeadLetter = { id: `dl_${randomBytes(12).toString('base64url')}`, ...letter, dead_at: new Date().toISOString() }
    return (await this.store.listPushCapped(this.#key, JSON.stringify(full), this.max)) <= this.max
  }

  async list (offset: number, limit: number): Promise<{ deadLetters: DeadLetter[], total: number }> {
    const [raw, total] = await Promise.all([this.store.listRange(this.#key, offset, offset + limit - 1), this.store.listLength(this.#key)])
    return { deadLetters: raw.map((json) => JSON.parse(json) as DeadLetter), total }
  }

  async count (): Promise<number> {
    return await this.store.listLength(this.#key)
  }

  async get (id: string): Promise<DeadLetter | undefined> {
    return (await this.#find(id))?.letter
  }

  /** Removes one; the caller has already done what it took it for. */
  async remove (id: string): Promise<DeadLetter | undefined> {
    const found = await this.#find(id)
    if (found === undefined) return undefined
    return (await this.store.listRemove(this.#key, found.json)) > 0 ? found.letter : undefined
  }

  async all (): Promise<DeadLetter[]> {
    return (await this.list(0, this.max)).deadLetters
  }

  async #find (id: string): Promise<{ letter: DeadLetter, json: string } | undefined> {
    for (const json of await this.store.listRange(this.#key, 0, -1)) {
      const letter = JSON.parse(json) as DeadLetter
      if (letter.id === id) return { letter, json }
    }
    return undefined
  }
}
