import { createHash } from 'node:crypto'
import type { Store } from '../engines/engine.js'

/** positions one instance reserves at a time */
const BLOCK = 64
/** sets this instance keeps blocks for; past it they start again (a block's rest is skipped, no harm) */
const MAX_SETS = 10_000

/**
 * Round-robin positions all instances share, one sequence per set of webhooks (those an event
 * matches): each set's messages spread evenly over its webhooks, whatever other events go to
 * other sets meanwhile and in whatever order deliveries in flight get here. Positions are
 * reserved in blocks (one field of the hash `key` per set, HINCRBY), so choosing costs no round
 * trip but once per block; each block is used in order, so every instance spreads its messages
 * evenly, and so do all of them together.
 */
export class RoundRobin {
  /** by the set's ids: its field in the hash, and the block reserved */
  readonly #sets = new Map<string, { field: string, next: number, end: number, refill?: Promise<void> }>()

  constructor (private readonly store: Store, private readonly key: string) {}

  async position (webhookIds: readonly string[]): Promise<number> {
    const ids = webhookIds.length === 1 ? webhookIds[0] as string : [...webhookIds].sort().join(',')
    let set = this.#sets.get(ids)
    if (set === undefined) {
      if (this.#sets.size >= MAX_SETS) this.#sets.clear()
      set = { next: 0, end: 0, field: createHash('sha1').update(ids).digest('base64url') }
      this.#sets.set(ids, set)
    }
    const { field } = set
    while (set.next >= set.end) {
      const reserving = set
      reserving.refill ??= this.store.hashIncrement(this.key, field, BLOCK).then((end) => {
        reserving.next = end - BLOCK
        reserving.end = end
      }).finally(() => { reserving.refill = undefined })
      await reserving.refill
    }
    return set.next++
  }
}
