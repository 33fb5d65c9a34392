import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyBaseLogger } from 'fastify'
import type { ClaimOptions, Consumer } from '../engines/engine.js'

/** most messages one claim takes: more in flight take more claims, each reply stays small */
export const CLAIM_MAX = 64
/** How many claimed messages a lane of `capacity` holds ready besides those in flight: a claim's worth, at least 16. */
export function readyBatch (capacity: number): number {
  return Math.min(CLAIM_MAX, Math.max(16, capacity))
}

/** a delivery done while no claim is coming is acknowledged within this */
const ACK_MS = 100

/** What a lane needs of the dispatcher. */
export interface LaneWork {
  /**
   * What a claim may take now: whether it may wait in Redis (BLMOVE), and the rest of its
   * options; null when nothing can be delivered for now.
   */
  plan: () => { blocking: boolean, options: Omit<ClaimOptions, 'max' | 'done'> } | null
  /** One round for one message; returns it when it is to be acknowledged. */
  handle: (claimed: Buffer, consumer: Consumer) => Promise<Buffer | undefined>
  /** How many a claim that did not wait in Redis brought (pacing for idle looks). */
  claimed: (count: number) => void
  /** Waits to be woken (or stopped); at most `ms`. */
  rest: (ms: number) => Promise<void>
  /** Wakes up to `n` lanes that rest. */
  wake: (n: number) => void
  /** Hands back everything the lane's processing list holds. */
  reclaim: () => Promise<void>
  /** what starts the values release() sends to the retry list, not the consumer list */
  envelopePrefix: string
  stopping: () => boolean
  /** aborted when the dispatcher stops */
  signal: AbortSignal
}

/**
 * One delivery lane: a processing list of this instance, and up to `capacity` deliveries from it
 * in flight at once. Besides those it holds a few claimed ones ready (up to a batch: CLAIM_MAX,
 * or the capacity if smaller), so that a delivery that ends starts the next at once and claims
 * go a batch at a time (a claim per delivery would cost a round trip each); it claims again once
 * half of them have started, its fair share, and acknowledges what it finished in the same round
 * trip, or within ACK_MS when no claim comes. Claimed messages wait in the processing list until
 * then, so a crash loses none of them; it means a redelivery of those done but not yet
 * acknowledged: with those in flight, at most `capacity` and a batch (what is in flight and what
 * waits to be acknowledged are never more together: each claim acknowledges what is done, and a
 * claim comes once half a batch has started).
 */
export class DeliveryLane {
  inFlight = 0
  /** claimed, not started: waiting for room */
  #ready: Buffer[] = []
  #done: Buffer[] = []
  #roomMade: (() => void) | undefined
  #ackTimer: NodeJS.Timeout | undefined
  /** a round failed in a way that leaves unknown what reached Redis */
  #unsure = false

  constructor (
    private readonly consumer: Consumer,
    private readonly capacity: number,
    private readonly work: LaneWork,
    private readonly log: FastifyBaseLogger
  ) {}

  async run (): Promise<void> {
    const { work } = this
    while (!work.stopping()) {
      try {
        if (this.#unsure) {
          // After a failure the lane cannot tell what reached Redis (a claim whose answer was
          // lost, a release half done): once what is in flight has ended, it hands back all its
          // list holds. A message done but not acknowledged is then sent again, better than lost.
          await this.#drained()
          this.#done = []
          this.#ready = []
          await work.reclaim()
          this.#unsure = false
        }
        this.#startReady()
        const batch = readyBatch(this.capacity)
        const room = this.capacity + batch - this.inFlight - this.#ready.length
        if (this.#ready.length > batch / 2 || room <= 0) {
          await this.#deliveryEnd()
          continue
        }
        const plan = work.plan()
        if (plan === null) {
          // Nothing can be delivered for now: what is ready goes back for others, what is done
          // is acknowledged, and the lane waits.
          const ready = this.#ready
          this.#ready = []
          await this.consumer.release(ready, work.envelopePrefix)
          await this.consumer.ack(...this.#takeDone())
          await work.rest(500)
          continue
        }
        const max = Math.min(CLAIM_MAX, room)
        // Waiting in Redis for a message would leave the ready ones waiting too.
        const blocking = plan.blocking && this.#ready.length === 0
        const claimed = await this.consumer.claim(blocking ? 1000 : 0, { ...plan.options, max, done: this.#takeDone() })
        // A full claim means more may wait: one more lane gets to look.
        if (claimed.length >= max) work.wake(1)
        if (!plan.blocking) work.claimed(claimed.length)
        this.#ready.push(...claimed)
        this.#startReady()
        if (claimed.length > 0 || blocking) continue
        // Nothing more to claim for now: the ready ones start as deliveries end; with none
        // ready, the lane rests until woken (a broadcast, a recorded copy, the poll).
        if (this.#ready.length > 0) await this.#deliveryEnd()
        else if (!plan.blocking) await work.rest(60_000)
      } catch (err) {
        if (work.stopping()) break
        this.log.warn({ err: { message: (err as Error).message } }, 'webhook delivery lane: handing back what it holds, retrying in a second')
        this.#unsure = true
        await sleep(1000, undefined, { signal: work.signal }).catch(() => undefined)
      }
    }
    // Deliveries under way end (each within its timeout); what was claimed and not finished
    // stays in the processing list, which the dispatcher hands back.
    await this.#drained()
    clearTimeout(this.#ackTimer)
    await this.consumer.ack(...this.#takeDone()).catch(() => undefined)
  }

  #startReady (): void {
    while (this.inFlight < this.capacity && this.#ready.length > 0) this.#start(this.#ready.shift() as Buffer)
  }

  #start (claimed: Buffer): void {
    this.inFlight++
    this.work.handle(claimed, this.consumer).then((handled) => {
      if (handled === undefined) return
      this.#done.push(handled)
      this.#ackSoon()
    }, (err: unknown) => {
      this.log.warn({ err: { message: (err as Error).message } }, 'webhook delivery failed inside busgate: its lane hands back what it holds')
      this.#unsure = true
    }).finally(() => {
      this.inFlight--
      this.#roomMade?.()
    })
  }

  #takeDone (): Buffer[] {
    const done = this.#done
    this.#done = []
    clearTimeout(this.#ackTimer)
    this.#ackTimer = undefined
    return done
  }

  /** A lane that rests or waits in Redis claims nothing for a while: what is done is acknowledged on its own then. */
  #ackSoon (): void {
    this.#ackTimer ??= setTimeout(() => {
      this.#ackTimer = undefined
      const done = this.#takeDone()
      if (done.length === 0) return
      this.consumer.ack(...done).catch(() => { this.#unsure = true })
    }, ACK_MS)
  }

  /** Until a delivery ends (or the dispatcher stops). */
  async #deliveryEnd (): Promise<void> {
    if (this.inFlight === 0) return
    await new Promise<void>((resolve) => {
      const done = (): void => {
        this.#roomMade = undefined
        this.work.signal.removeEventListener('abort', done)
        resolve()
      }
      this.#roomMade = done
      this.work.signal.addEventListener('abort', done)
    })
  }

  async #drained (): Promise<void> {
    while (this.inFlight > 0) {
      await new Promise<void>((resolve) => { this.#roomMade = resolve })
      this.#roomMade = undefined
    }
  }
}
