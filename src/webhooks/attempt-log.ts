import type { Store } from '../engines/engine.js'
import { Attempt } from '../../schemas/dead-letter.js'
import { RingBuffer } from '../ring-buffer.js'
import { storedRecordCheck } from '../validation.js'

/** Lines kept per webhook, newest first. */
export const ATTEMPT_LOG_MAX = 100
const isAttempt = storedRecordCheck(Attempt)

/**
 * The latest delivery attempts of each webhook, for people: a capped list per webhook. Lines are
 * written in batches (one write per webhook per flush), so a delivery never waits on its log.
 */
export class AttemptLog {
  /** the newest lines of each webhook since the last flush, serialized only when written */
  #pending = new Map<string, RingBuffer<Attempt>>()

  constructor (private readonly store: Store, private readonly keyPrefix: string, private readonly onInvalid: (webhookId: string) => void = () => {}) {}

  #key (webhookId: string): string {
    return `${this.keyPrefix}attempts:${webhookId}`
  }

  record (webhookId: string, attempt: Attempt): void {
    let lines = this.#pending.get(webhookId)
    if (lines === undefined) {
      lines = new RingBuffer<Attempt>(ATTEMPT_LOG_MAX)
      this.#pending.set(webhookId, lines)
    }
    lines.push(attempt)
  }

  /** Writes what waits; lines of webhooks `exists` no longer knows (deleted meanwhile) are dropped, not left behind. */
  async flush (exists: (webhookId: string) => boolean = () => true): Promise<void> {
    const pending = this.#pending
    this.#pending = new Map()
    await Promise.all([...pending].filter(([webhookId]) => exists(webhookId)).map(async ([webhookId, lines]) => {
      const json = Array.from({ length: lines.length }, (_, i) => JSON.stringify(lines.at(i)))
      await this.store.listPushCapped(this.#key(webhookId), json, ATTEMPT_LOG_MAX)
    }))
  }

  /** Newest first; a line that does not check (a hand edit, another version) is left out and reported. */
  async read (webhookId: string): Promise<Attempt[]> {
    const attempts: Attempt[] = []
    let invalid = 0
    for (const json of await this.store.listRange(this.#key(webhookId), 0, ATTEMPT_LOG_MAX - 1)) {
      let line: unknown
      try {
        line = JSON.parse(json)
      } catch {}
      if (isAttempt(line)) attempts.push(line)
      else invalid++
    }
    if (invalid > 0) this.onInvalid(webhookId)
    return attempts
  }

  async remove (webhookId: string): Promise<void> {
    this.#pending.delete(webhookId)
    await this.store.deleteKeys(this.#key(webhookId))
  }
}
