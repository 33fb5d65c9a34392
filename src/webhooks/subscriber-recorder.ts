import { createHash } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { HeardEvent, WorkQueue } from '../engines/engine.js'
import type { EnvelopeSealer } from './envelope.js'

/** How long a heard event is remembered in Redis, so that the other instances hearing it too record it no more. */
export const HEARD_TTL_MS = 30_000
/** Most distinct events this instance remembers having heard (for the occurrence count); the oldest are forgotten first. */
const REMEMBERED_MAX = 200_000
/** Most events one write records. */
const RECORD_BATCH = 256
/** Most events (and bytes) waiting here for a Redis that does not answer; past it the newest heard are dropped and counted. */
const WAITING_MAX = 10_000
const WAITING_BYTES = 64 * 1024 * 1024

export interface RecorderMetrics {
  /** `recorded` here, `duplicate` (another instance recorded it), `dropped` (could not be kept) */
  heard: (outcome: 'recorded' | 'duplicate' | 'dropped', count: number) => void
  /** copies the per-webhook bound dropped, the oldest first */
  trimmed: (count: number) => void
}

export interface Heard {
  frame: Buffer
  /** the subscriber webhooks it is for */
  webhooks: readonly string[]
  /** the message id receivers see, the same for every webhook */
  id: string
}

/**
 * Turns the broadcast events this instance hears into durable copies, one per matching
 * subscriber webhook, in each webhook's list in Redis. Every instance hears every event; the
 * first to record one for a webhook marks it (by its bytes' digest and how many times this
 * instance has heard them), so each event reaches each webhook once however many instances run. Writes are batched: what
 * waits for a write is lost if this process dies before it (a few milliseconds' worth); once
 * written, a copy waits in Redis until delivered or dead-lettered.
 */
export class SubscriberRecorder {
  readonly #heardCount = new Map<string, { n: number, at: number }>()
  #waiting: Array<Heard & { seenKey: string, occurrence: number }> = []
  #waitingBytes = 0
  #writing: Promise<void> | undefined

  constructor (
    private readonly engine: Pick<WorkQueue, 'recordHeard'>,
    private readonly sealer: () => Promise<EnvelopeSealer>,
    private readonly listKey: (webhookId: string) => string,
    private readonly options: { keyPrefix: string, queueMax: number },
    private readonly metrics: RecorderMetrics,
    private readonly onRecorded: (count: number) => void,
    private readonly log: FastifyBaseLogger
  ) {}

  /** Queues an event for its webhooks; written at once unless a write is under way. */
  hear (heard: Heard): void {
    if (this.#waiting.length >= WAITING_MAX || this.#waitingBytes + heard.frame.byteLength > WAITING_BYTES) {
      this.metrics.heard('dropped', 1)
      return
    }
    const seenKey = `${this.options.keyPrefix}heard:${createHash('sha1').update(heard.frame).digest('base64url')}`
    this.#waiting.push({ ...heard, seenKey, occurrence: this.#occurrence(seenKey, Date.now()) })
    this.#waitingBytes += heard.frame.byteLength
    this.#write()
  }

  /** Resolves once everything heard so far has been written or given up on. */
  async flush (): Promise<void> {
    while (this.#writing !== undefined) await this.#writing
  }

  #write (): void {
    this.#writing ??= this.#writeAll().finally(() => {
      this.#writing = undefined
      if (this.#waiting.length > 0) this.#write()
    })
  }

  async #writeAll (): Promise<void> {
    // One turn first, so events heard in one read of the socket share a write.
    await new Promise((resolve) => setImmediate(resolve))
    while (this.#waiting.length > 0) {
      const batch = this.#waiting.splice(0, RECORD_BATCH)
      const bytes = batch.reduce((n, h) => n + h.frame.byteLength, 0)
      try {
        const sealer = await this.sealer()
        const now = Date.now()
        const events: HeardEvent[] = batch.map((h) => ({
          seenKey: h.seenKey,
          occurrence: h.occurrence,
          copies: h.webhooks.map((webhook) => ({
            webhook,
            list: this.listKey(webhook),
            value: sealer.seal({ id: h.id, first_seen: now, attempts: 0, rounds: 0, webhook }, h.frame)
          }))
        }))
        const { recorded, dropped } = await this.engine.recordHeard(events, HEARD_TTL_MS, this.options.queueMax)
        const written = recorded.filter(Boolean).length
        this.#waitingBytes -= bytes
        this.metrics.heard('recorded', written)
        this.metrics.heard('duplicate', recorded.length - written)
        if (dropped > 0) {
          this.metrics.trimmed(dropped)
          this.log.warn({ dropped, max: this.options.queueMax }, 'a subscriber webhook has BUSGATE_WEBHOOK_SUBSCRIBER_QUEUE_MAX copies waiting: the oldest were dropped')
        }
        if (written > 0) this.onRecorded(written)
      } catch (err) {
        // Kept for the next try, ahead of what came since, while the bounds allow.
        this.#waiting.unshift(...batch)
        this.log.warn({ err: { message: (err as Error).message }, waiting: this.#waiting.length }, 'could not record broadcast events for subscriber webhooks; retrying')
        await new Promise((resolve) => setTimeout(resolve, 500).unref())
        return
      }
    }
  }

  /**
   * How many times this instance has heard these bytes within HEARD_TTL_MS, this time included.
   * Instances hear the channel in one order, so the n-th time is the same event for all of them;
   * an instance that subscribed between two identical events counts one fewer, and so skips the
   * later one if no other instance records it (the README says so).
   */
  #occurrence (key: string, now: number): number {
    for (const [k, seen] of this.#heardCount) {
      if (seen.at > now - HEARD_TTL_MS && this.#heardCount.size < REMEMBERED_MAX) break
      this.#heardCount.delete(k)
    }
    const n = (this.#heardCount.get(key)?.n ?? 0) + 1
    this.#heardCount.delete(key)
    this.#heardCount.set(key, { n, at: now })
    return n
  }
}
