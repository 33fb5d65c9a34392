import type { Store } from '../engines/engine.js'
import type { StoredWebhook } from './registry.js'

/** how soon a webhook whose places are all held is asked again (sooner when one here is given back) */
const FULL_RETRY_MS = 50
/** waits up to this long are waited out here, holding the message; longer ones in the delay set */
const HOLD_MAX_MS = 1000
/** deliveries of one webhook that wait here at once; more wait in the delay set */
const WAITERS_MAX = 64

export type Slot = { release: () => void } | { waitMs: number }

/** One webhook's deliveries waiting for a place here, first come first served; only the first asks Redis. */
interface Queue {
  turns: Array<() => void>
  /** wakes the first when a place here was given back */
  nudge: (() => void) | undefined
}

/**
 * The per-webhook limits every instance shares: `max_in_flight` (a sorted set of the places
 * held, `<prefix>inflight:<id>`, each live for a delivery's bound and a little, so a holder that
 * dies frees it) and `rate_limit` (when the next delivery is allowed, `<prefix>rate:<id>`, by
 * Redis's clock). A delivery that finds its webhook at the limit waits for a place, here when
 * the wait is short (at most HOLD_MAX_MS, WAITERS_MAX of them), else it is told how long to wait
 * and the webhook is noted as at its limit until then, so claims leave its messages alone.
 */
export class WebhookLimits {
  readonly #until = new Map<string, number>()
  readonly #queues = new Map<string, Queue>()
  #sequence = 0

  constructor (
    private readonly store: Store,
    private readonly keyPrefix: string,
    private readonly instance: string,
    private readonly holdMs: number,
    private readonly signal: AbortSignal
  ) {}

  /**
   * A place for one delivery, or how long to wait for one (at once while the webhook is noted as
   * at its limit). No limits: at once, without a round trip.
   */
  async acquire (webhook: StoredWebhook): Promise<Slot> {
    const known = this.waitMs(webhook.id)
    if (known > 0) return { waitMs: known }
    const max = webhook.max_in_flight ?? 0
    const rate = webhook.rate_limit ?? 0
    if (max === 0 && rate === 0) return { release: () => {} }
    const queue = this.#queues.get(webhook.id) ?? { turns: [], nudge: undefined }
    this.#queues.set(webhook.id, queue)
    if (queue.turns.length >= WAITERS_MAX) return this.#wait(webhook.id, FULL_RETRY_MS)
    const first = queue.turns.length === 0
    let myTurn!: () => void
    const turn = new Promise<void>((resolve) => { myTurn = resolve })
    queue.turns.push(myTurn)
    if (first) myTurn()
    await turn
    try {
      for (;;) {
        const key = `${this.keyPrefix}inflight:${webhook.id}`
        const token = `${this.instance}:${++this.#sequence}`
        const got = await this.store.slotAcquire(key, `${this.keyPrefix}rate:${webhook.id}`, token, max, rate, this.holdMs)
        if (got === 0) {
          this.#until.delete(webhook.id)
          return {
            release: () => {
              this.store.slotRelease(key, token).then(() => this.#queues.get(webhook.id)?.nudge?.(), () => undefined)
            }
          }
        }
        const waitMs = got < 0 ? FULL_RETRY_MS : got
        if (waitMs > HOLD_MAX_MS || this.signal.aborted) return this.#wait(webhook.id, waitMs)
        await this.#pause(queue, waitMs)
      }
    } finally {
      queue.turns.shift()
      queue.turns[0]?.()
      if (queue.turns.length === 0) this.#queues.delete(webhook.id)
    }
  }

  /** How long until the webhook may take a delivery, as far as this instance last heard (0: now). */
  waitMs (webhookId: string, now = Date.now()): number {
    const until = this.#until.get(webhookId)
    if (until === undefined) return 0
    if (until > now) return until - now
    this.#until.delete(webhookId)
    return 0
  }

  /** What a deleted webhook leaves. */
  async forget (webhookId: string): Promise<void> {
    this.#until.delete(webhookId)
    await this.store.deleteKeys(`${this.keyPrefix}inflight:${webhookId}`, `${this.keyPrefix}rate:${webhookId}`)
  }

  #wait (webhookId: string, waitMs: number): Slot {
    this.#until.set(webhookId, Date.now() + waitMs)
    return { waitMs }
  }

  /** Until `ms` have passed, a place here was given back, or the dispatcher stops. */
  async #pause (queue: Queue, ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        queue.nudge = undefined
        this.signal.removeEventListener('abort', done)
        resolve()
      }
      const timer = setTimeout(done, ms)
      queue.nudge = done
      this.signal.addEventListener('abort', done)
    })
  }
}
