import type { FastifyBaseLogger } from 'fastify'
import { CodecError, decodeEvent, toJsonEvent, type BusEvent } from '../codec.js'
import type { WebhookTake } from '../config.js'
import type { Consumer } from '../engines/engine.js'
import type { AttemptLog } from './attempt-log.js'
import type { DeadLetter, DeadLetters } from './dead-letters.js'
import { looksSealed, type Envelope } from './envelope.js'
import type { EnvelopeKeys } from './envelope-keys.js'
import type { HealthBook } from './health-book.js'
import type { WebhookLimits } from './limits.js'
import type { StoredWebhook, WebhookRegistry } from './registry.js'
import type { RoundRobin } from './round-robin.js'
import type { Attempt, WebhookSender } from './sender.js'

export interface RoundMetrics {
  delivery: (outcome: 'delivered' | 'failed' | 'gone' | 'throttled', seconds: number) => void
  /** `dropped`: how many of the oldest letters made room for it */
  deadLettered: (reason: DeadLetter['reason'], dropped: number) => void
  /** messages taken for a consumer webhook that no longer wanted them, given back to the list */
  givenBack: () => void
  /** a subscriber webhook's copy dropped because the webhook is gone */
  orphaned: () => void
}

export interface RoundOptions {
  /** larger messages are dead-lettered (too_large) undecoded */
  maxMessageBytes: number
  maxAttempts: number
  maxAgeMs: number
  backoffMs: number
  backoffMaxMs: number
  take: WebhookTake
}

/** What a round needs of the dispatcher around it. */
export interface RoundParts {
  registry: WebhookRegistry
  deadLetters: DeadLetters
  attempts: AttemptLog
  health: HealthBook
  limits: WebhookLimits
  roundRobin: RoundRobin
  sender: WebhookSender
  keys: EnvelopeKeys
  metrics: RoundMetrics
  log: FastifyBaseLogger
  /** a new message id, unique among all instances */
  messageId: () => string
  matches: (webhook: StoredWebhook, eventName: string) => boolean
  stopping: () => boolean
}

/**
 * One message's delivery round: which webhook gets it (round-robin among those it matches that
 * are healthy and within their limits), the attempts, and what comes of them (acknowledged,
 * dead-lettered, given back, delayed for its next round or for a place under a limit).
 */
export class DeliveryRound {
  constructor (private readonly parts: RoundParts, private readonly options: RoundOptions) {}

  /**
   * One round for one message: delivered, dead-lettered (both: returns it, to be acknowledged),
   * given back to the consumer list or dropped (a copy for a webhook that is gone), or set aside
   * in the delay set until its next round is due (returns undefined). The lane goes on with
   * other messages meanwhile, so a receiver that keeps failing holds up no one.
   */
  async handle (claimed: Buffer, consumer: Consumer): Promise<Buffer | undefined> {
    const sealer = await this.parts.keys.sealer()
    // An envelope holds its message in base64: larger than that, it cannot be one busgate sealed.
    const opened = looksSealed(claimed) && claimed.byteLength <= this.options.maxMessageBytes * 4 / 3 + 4096
      ? await this.parts.keys.open(claimed, sealer)
      : undefined
    const { envelope, frame } = opened ?? this.#fresh(claimed)
    if (frame.byteLength > this.options.maxMessageBytes) {
      // Set aside before anything looks inside: decoding it alone could stall every delivery.
      return await this.#bury(claimed, envelope, frame, 'too_large',
        `${frame.byteLength} bytes, more than BUSGATE_BUS_MAX_MESSAGE_BYTES (${this.options.maxMessageBytes})`, undefined)
    }
    let event: BusEvent
    let body: string
    try {
      event = decodeEvent(frame)
      body = JSON.stringify(toJsonEvent(event))
    } catch (err) {
      const reason = err instanceof CodecError && err.reason === 'too_large' ? 'too_large' : 'malformed'
      return await this.#bury(claimed, envelope, frame, reason, (err as Error).message, undefined)
    }
    let all: StoredWebhook[]
    if (envelope.webhook !== undefined) {
      // A subscriber's copy is for its webhook alone; with the webhook gone, so is the copy.
      const target = this.parts.registry.current(envelope.webhook)
      if (target === undefined || target.role !== 'subscriber') {
        this.parts.metrics.orphaned()
        return claimed
      }
      all = target.enabled ? [target] : []
    } else {
      all = this.parts.registry.snapshot().filter((w) => w.role === 'consumer' && w.enabled && this.parts.matches(w, event.event_name))
      if (all.length === 0 && this.options.take === 'matching') {
        // Taken for a webhook that no longer wants it: back to the head of the list, for the others.
        await consumer.giveBack(claimed, frame)
        this.parts.metrics.givenBack()
        return undefined
      }
      if (all.length === 0) {
        return await this.#bury(claimed, envelope, frame, 'no_matching_webhook', `no enabled webhook takes ${event.event_name}`, event)
      }
    }
    const now = Date.now()
    const candidates = all.filter((w) => this.parts.health.allows(w.id, now))
    let tried = false
    /** the soonest one of them at its limit may take it */
    let limitedFor = Infinity
    /** the soonest one set aside takes deliveries again, when all are */
    const asideFor = candidates.length > 0 ? Infinity : Math.min(...all.map((w) => this.parts.health.asideFor(w.id, now)))
    if (candidates.length > 0) {
      const start = (await this.parts.roundRobin.position(all.map((w) => w.id))) % candidates.length
      for (let k = 0; k < candidates.length && !this.parts.stopping(); k++) {
        // The registry as it is now: a webhook deleted or disabled meanwhile gets no new attempt.
        const webhook = this.parts.registry.current((candidates[(start + k) % candidates.length] as StoredWebhook).id)
        if (webhook?.enabled !== true) continue
        const slot = await this.parts.limits.acquire(webhook)
        if ('waitMs' in slot) {
          limitedFor = Math.min(limitedFor, slot.waitMs)
          continue
        }
        tried = true
        envelope.attempts++
        let result: Attempt
        try {
          result = await this.#deliver(webhook, envelope.id, body, event)
        } finally {
          slot.release()
        }
        if (result.ok) return claimed
        envelope.last_error = `${webhook.id}: ${result.error ?? `HTTP ${result.status ?? '?'}`}`
      }
    }
    if (!tried && limitedFor < Infinity && !this.parts.stopping()) {
      // Every webhook that could take it is at its limit: it waits for the soonest, held by
      // nobody, and no round is counted (it did not fail).
      await consumer.delay(claimed, sealer.seal(envelope, frame), limitedFor)
      return undefined
    }
    if (!tried && asideFor > 0 && asideFor < Infinity && !this.parts.stopping() && Date.now() - envelope.first_seen < this.options.maxAgeMs) {
      // Every webhook that could take it is set aside: nothing was sent, so no round is counted
      // (a backoff that grew meanwhile would hold it long after the receiver recovers); it waits
      // for the soonest to be probed again, spread over a tenth of that so they do not all come at once.
      await consumer.delay(claimed, sealer.seal(envelope, frame), asideFor + Math.random() * Math.min(1000, asideFor / 10))
      return undefined
    }
    if (envelope.attempts >= this.options.maxAttempts || Date.now() - envelope.first_seen >= this.options.maxAgeMs) {
      return await this.#bury(claimed, envelope, frame, 'delivery_failed', envelope.last_error ?? 'no webhook was available', event)
    }
    // Stopping: it stays in the processing list, which stop() hands back for others at once.
    if (this.parts.stopping()) return undefined
    // The retry state goes with the message, so a crash loses neither it nor its id.
    const backoff = Math.min(this.options.backoffMaxMs, this.options.backoffMs * 2 ** envelope.rounds)
    envelope.rounds++
    await consumer.delay(claimed, sealer.seal(envelope, frame), backoff / 2 + Math.random() * backoff / 2)
    return undefined
  }

  async #deliver (webhook: StoredWebhook, id: string, body: string, event: BusEvent): Promise<Attempt> {
    const attempt = await this.parts.sender.send(webhook, id, body)
    this.#after(webhook, attempt)
    // The log is for people: written in batches, a delivery never waits on it.
    this.parts.attempts.record(webhook.id, {
      at: new Date().toISOString(),
      message_id: id,
      event_name: event.event_name,
      status: attempt.status,
      latency_ms: Math.round(attempt.seconds * 10_000) / 10,
      error: attempt.error
    })
    return attempt
  }

  /** What one answer means for the next ones: the shared health (circuit, Retry-After), and 410. */
  #after (webhook: StoredWebhook, attempt: Attempt): void {
    const at = Date.now()
    if (attempt.ok) {
      this.parts.metrics.delivery('delivered', attempt.seconds)
      this.parts.health.record(webhook.id, { kind: 'delivered', at, status: attempt.status })
      return
    }
    if (attempt.status === 410) {
      this.parts.metrics.delivery('gone', attempt.seconds)
      this.disable(webhook.id, 'webhook answered 410 Gone: disabled')
      return
    }
    if (attempt.retryAfterMs !== null && (attempt.status === 429 || attempt.status === 503)) {
      this.parts.metrics.delivery('throttled', attempt.seconds)
      this.parts.health.record(webhook.id, { kind: 'throttled', at, status: attempt.status, untilMs: at + attempt.retryAfterMs })
      return
    }
    this.parts.metrics.delivery('failed', attempt.seconds)
    this.parts.health.record(webhook.id, { kind: 'failed', at, status: attempt.status })
  }

  /**
   * Disables a webhook for every instance, logging `why`. A compare-and-set: a PATCH at the
   * same moment keeps its change, and this one holds too.
   */
  disable (webhookId: string, why: string, details: Record<string, unknown> = {}): void {
    this.parts.log.warn({ webhook: webhookId, ...details }, why)
    this.parts.registry.update(webhookId, { enabled: false }).catch((err: unknown) => {
      this.parts.log.warn({ webhook: webhookId, err: { message: (err as Error).message } }, 'could not disable the webhook')
    })
  }

  /** Moves a message to the dead letters; returns it, to be acknowledged. */
  async #bury (current: Buffer, envelope: Envelope, frame: Buffer, reason: DeadLetter['reason'], error: string,
    event: BusEvent | undefined): Promise<Buffer> {
    // A subscriber's copy, redelivered, must go to its webhook alone: it keeps a fresh envelope for it.
    const returns = envelope.webhook === undefined
      ? undefined
      : (await this.parts.keys.sealer()).seal({ id: envelope.id, first_seen: Date.now(), attempts: 0, rounds: 0, webhook: envelope.webhook }, frame)
    const dropped = await this.parts.deadLetters.add({
      message_id: envelope.id,
      reason,
      error,
      event_name: event?.event_name ?? null,
      agent_id: event?.agent_id ?? null,
      webhook_id: envelope.webhook ?? null,
      frame,
      ...(returns === undefined ? {} : { returns }),
      attempts: envelope.attempts,
      first_seen: new Date(envelope.first_seen).toISOString()
    })
    this.parts.metrics.deadLettered(reason, dropped)
    if (dropped > 0) this.parts.log.warn({ dropped }, 'the dead letters are at BUSGATE_DEAD_LETTER_MAX: the oldest were dropped')
    return current
  }

  /**
   * A plain message's first state. Only what busgate sealed is an envelope; anything else,
   * whatever it starts with, is a plain message. Its id stays the same across every retry: it
   * is kept in its envelope once the first round fails.
   */
  #fresh (claimed: Buffer): { envelope: Envelope, frame: Buffer } {
    return { envelope: { id: this.parts.messageId(), first_seen: Date.now(), attempts: 0, rounds: 0 }, frame: claimed }
  }
}
