import { randomBytes } from 'node:crypto'
import { isIP } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyBaseLogger } from 'fastify'
import { Agent, request } from 'undici'
import { CodecError, decodeEvent, toJsonEvent, type BusEvent } from '../codec.js'
import type { ClaimOptions, Consumer, Engine } from '../engines/engine.js'
import { globList } from '../glob.js'
import type { DeadLetter, DeadLetters } from './dead-letters.js'
import { activeSecrets, type StoredWebhook, type WebhookRegistry } from './registry.js'
import { ENVELOPE_PREFIX, EnvelopeSealer, looksSealed, type Envelope } from './envelope.js'
import { signatureHeader } from './signing.js'
import { guardedLookup, isPrivateAddress, urlHost } from './ssrf.js'

const RR_BLOCK = 64
/** most messages one delivery loop claims at a time */
export const CLAIM_MAX = 8
const ATTEMPT_LOG_MAX = 100
const ATTEMPT_FLUSH_MS = 250

export interface DispatcherOptions {
  keyPrefix: string
  concurrency: number
  timeoutMs: number
  maxAttempts: number
  maxAgeMs: number
  backoffMs: number
  backoffMaxMs: number
  circuitFailures: number
  circuitCooldownMs: number
  instanceTtlMs: number
  allowPrivate: boolean
  /** larger messages are dead-lettered (too_large) undecoded */
  maxMessageBytes: number
}

export interface DispatcherMetrics {
  delivery: (outcome: 'delivered' | 'failed' | 'gone' | 'throttled', seconds: number) => void
  /** `dropped`: how many of the oldest letters made room for it */
  deadLettered: (reason: DeadLetter['reason'], dropped: number) => void
  circuit: (webhookId: string, open: boolean) => void
}

interface Circuit {
  failures: number
  openUntil: number
  /** a 429/503 Retry-After: no delivery before then */
  notBefore: number
}

interface Attempt {
  ok: boolean
  status: number | null
  error: string | null
  retryAfterMs: number | null
}

/**
 * Consumes the consumer list for the registered webhooks. Each of `concurrency` loops delivers
 * one message at a time; what it claimed sits in a processing list of this instance until a
 * receiver answered 2xx or the message was dead-lettered. A message whose round failed waits
 * for its next one in the delay set, held by nobody, and any loop of any instance takes it when
 * it is due. An instance that dies leaves its lists to be reclaimed by any other (or by itself
 * restarted) once its liveness key expires. With no enabled, available webhook the loops take
 * nothing, so messages wait in Redis.
 */
export class WebhookDispatcher {
  readonly instance = randomBytes(6).toString('hex')
  #stopping = false
  /** messages held for delivery right now */
  inFlight = 0
  readonly #stop = new AbortController()
  readonly #loops: Array<Promise<void>> = []
  readonly #consumers: Consumer[] = []
  #timers: NodeJS.Timeout[] = []
  #webhooks: StoredWebhook[] = []
  #webhooksAt = 0
  readonly #matchers = new Map<string, (name: string) => boolean>()
  /** parsed URLs, and whether each is a private IP literal, by URL string */
  readonly #targets = new Map<string, { url: URL, privateLiteral: boolean }>()
  readonly #circuits = new Map<string, Circuit>()
  #sequence = 0
  /** positions of the shared round-robin sequence reserved by this instance, not yet used */
  #rrNext = 0
  #rrEnd = 0
  #rrRefill: Promise<void> | undefined
  readonly #agent: Agent
  /** attempt-log lines waiting to be written, by webhook: one write per webhook per flush */
  #attempts = new Map<string, string[]>()
  #sealer: Promise<EnvelopeSealer> | undefined
  /** when the envelope key was last read again because a value would not open (performance.now()) */
  #keyReadAt = 0
  #unopened = 0

  constructor (
    private readonly engine: Engine,
    private readonly registry: WebhookRegistry,
    private readonly deadLetters: DeadLetters,
    private readonly options: DispatcherOptions,
    private readonly metrics: DispatcherMetrics,
    private readonly log: FastifyBaseLogger
  ) {
    // Keep-alive pools per origin; every connection's addresses pass the SSRF check again,
    // so a name that later resolves somewhere private (rebinding) is refused at connect time.
    this.#agent = new Agent({
      keepAliveTimeout: 30_000,
      connections: Math.max(4, options.concurrency),
      connect: { timeout: options.timeoutMs, ...(options.allowPrivate ? {} : { lookup: guardedLookup }) }
    })
  }

  get #retryKey (): string {
    return `${this.options.keyPrefix}retry`
  }

  get #delayKey (): string {
    return `${this.options.keyPrefix}delayed`
  }

  /** Messages waiting for their next round, across every instance. */
  async delayed (): Promise<number> {
    return await this.engine.delayedLength(this.#delayKey)
  }

  #processingKey (n: number, instance = this.instance): string {
    return `${this.options.keyPrefix}processing:${instance}:${n}`
  }

  #liveKey (instance: string): string {
    return `${this.options.keyPrefix}instance:${instance}`
  }

  /** The key every instance seals envelopes with: made by the first one, read by the others. */
  async #envelopes (): Promise<EnvelopeSealer> {
    const key = `${this.options.keyPrefix}envelope-key`
    this.#sealer ??= this.engine.store.setIfAbsent(key, EnvelopeSealer.newKey()).then((value) => {
      try {
        return new EnvelopeSealer(Buffer.from(value, 'base64'))
      } catch (err) {
        throw new Error(`${key} holds no valid envelope key (${(err as Error).message}): delete it, and busgate makes a new one`)
      }
    })
    // A bus that is down now must not leave a failed read behind for good.
    this.#sealer.catch(() => { this.#sealer = undefined })
    return await this.#sealer
  }

  /**
   * Opens a value that starts like an envelope. One that does not open may have been sealed
   * under a key that has changed since this instance read it (a Redis that lost its data, say):
   * the key is read again, at most once in ten seconds, before the value counts as a plain message.
   */
  async #openSealed (claimed: Buffer, sealer: EnvelopeSealer): Promise<{ envelope: Envelope, frame: Buffer } | undefined> {
    const opened = sealer.open(claimed)
    if (opened !== undefined || performance.now() - this.#keyReadAt < 10_000) return opened ?? this.#notOpened()
    this.#keyReadAt = performance.now()
    this.#sealer = undefined
    return (await this.#envelopes()).open(claimed) ?? this.#notOpened()
  }

  #notOpened (): undefined {
    if (this.#unopened++ % 1000 === 0) {
      this.log.warn({ seen: this.#unopened }, 'a value on the consumer list starts like an envelope but is not sealed with this bus\'s key: taken as a plain message')
    }
    return undefined
  }

  async start (): Promise<void> {
    // A bus that is down at start must not stop the gateway: the timers below retry.
    await this.#heartbeat().catch(() => undefined)
    await this.#reclaimOrphans().catch(() => undefined)
    const beat = setInterval(() => { this.#heartbeat().catch(() => undefined) }, Math.max(100, Math.floor(this.options.instanceTtlMs / 3)))
    const sweep = setInterval(() => { this.#reclaimOrphans().catch(() => undefined) }, Math.max(200, Math.floor(this.options.instanceTtlMs / 2)))
    const log = setInterval(() => { this.#flushAttempts().catch(() => undefined) }, ATTEMPT_FLUSH_MS)
    for (const timer of [beat, sweep, log]) timer.unref()
    this.#timers = [beat, sweep, log]
    for (let n = 0; n < this.options.concurrency; n++) {
      const consumer = this.engine.consumer(this.#processingKey(n), this.#retryKey, this.#delayKey)
      this.#consumers.push(consumer)
      this.#loops.push(this.#loop(consumer, this.#processingKey(n)))
    }
  }

  /** Stops taking messages, lets deliveries in progress end, and hands back what it holds. */
  async stop (): Promise<void> {
    if (this.#stopping) return
    this.#stopping = true
    this.#stop.abort()
    for (const timer of this.#timers) clearInterval(timer)
    await Promise.all(this.#loops)
    await Promise.all(this.#consumers.map((c) => c.close()))
    for (let n = 0; n < this.options.concurrency; n++) {
      await this.engine.reclaim(this.#processingKey(n), this.#retryKey, ENVELOPE_PREFIX).catch(() => 0)
    }
    await this.#flushAttempts().catch(() => undefined)
    await this.#agent.close()
  }

  async #flushAttempts (): Promise<void> {
    const pending = this.#attempts
    this.#attempts = new Map()
    await Promise.all([...pending].map(async ([webhookId, lines]) => {
      await this.engine.store.listPushCapped(`${this.options.keyPrefix}attempts:${webhookId}`, lines, ATTEMPT_LOG_MAX)
    }))
  }

  async #heartbeat (): Promise<void> {
    await this.engine.store.setExpiring(this.#liveKey(this.instance), '1', this.options.instanceTtlMs)
  }

  /** Puts back what instances that stopped beating were holding. */
  /**
   * Values a claim found larger than BUSGATE_BUS_MAX_MESSAGE_BYTES wait in `<prefix>oversized`,
   * never brought here (a producer may push any size): they become dead letters inside the engine.
   */
  get #oversized (): NonNullable<ClaimOptions['oversized']> {
    return {
      maxBytes: this.options.maxMessageBytes,
      key: `${this.options.keyPrefix}oversized`,
      setAside: () => { this.#adoptOversized().catch(() => undefined) }
    }
  }

  #adopting: Promise<void> | undefined

  /** One at a time; what a crash left in the list is taken in by the next one (the sweep runs it too). */
  async #adoptOversized (): Promise<void> {
    this.#adopting ??= this.deadLetters.adoptOversized(this.#oversized.key, this.options.maxMessageBytes).then((dropped) => {
      for (const n of dropped) this.metrics.deadLettered('too_large', n)
      if (dropped.length > 0) this.log.warn({ count: dropped.length, maxBytes: this.options.maxMessageBytes }, 'messages larger than BUSGATE_BUS_MAX_MESSAGE_BYTES on the consumer list: dead-lettered undecoded')
    }).finally(() => { this.#adopting = undefined })
    await this.#adopting
  }

  async #reclaimOrphans (): Promise<void> {
    await this.#adoptOversized()
    const prefix = `${this.options.keyPrefix}processing:`
    for (const key of await this.engine.store.keys(`${prefix}*`)) {
      const instance = key.slice(prefix.length).split(':')[0] ?? ''
      if (instance === this.instance || await this.engine.store.exists(this.#liveKey(instance))) continue
      const moved = await this.engine.reclaim(key, this.#retryKey, ENVELOPE_PREFIX)
      if (moved > 0) this.log.warn({ instance, moved }, 'reclaimed messages held by a gateway instance that stopped')
    }
  }

  /** The registry, read at most once a second: every loop asks before each message. */
  async #available (): Promise<StoredWebhook[]> {
    const now = Date.now()
    if (now - this.#webhooksAt > 1000) {
      this.#webhooks = (await this.registry.list()).sort((a, b) => a.id.localeCompare(b.id))
      this.#webhooksAt = now
    }
    return this.#webhooks.filter((w) => w.enabled && this.#allows(w.id, now))
  }

  #allows (id: string, now: number): boolean {
    const c = this.#circuits.get(id)
    return c === undefined || (c.openUntil <= now && c.notBefore <= now)
  }

  #matches (webhook: StoredWebhook, eventName: string): boolean {
    const key = webhook.event_names.join(',')
    let matcher = this.#matchers.get(key)
    if (matcher === undefined) {
      matcher = globList(key)
      this.#matchers.set(key, matcher)
    }
    return matcher(eventName)
  }

  /**
   * One delivery loop. While the list is long it claims several messages at a time (its fair
   * share, up to CLAIM_MAX) and acknowledges those it finished with in the same round trip as
   * the next claim: two Redis commands per message would cost more than the delivery itself.
   * Claimed messages wait in this instance's processing list, so a crash loses none of them; it
   * means a redelivery of those done but not yet acknowledged.
   */
  async #loop (consumer: Consumer, processingKey: string): Promise<void> {
    let done: Buffer[] = []
    let batch: Buffer[] = []
    // After a failure the loop cannot tell what reached Redis (a claim whose answer was lost, a
    // release half done): it hands back everything its list holds. A message done but not yet
    // acknowledged is then sent again, which is better than a loss.
    let unsure = false
    while (!this.#stopping) {
      try {
        if (unsure) {
          await this.engine.reclaim(processingKey, this.#retryKey, ENVELOPE_PREFIX)
          unsure = false
        }
        if ((await this.#available()).length === 0) {
          // Nothing can be delivered for now: what this loop holds goes back, so others may take it.
          await consumer.release(batch, ENVELOPE_PREFIX)
          batch = []
          await consumer.ack(...done)
          done = []
          await this.#pause(500)
          continue
        }
        if (batch.length === 0) {
          batch = await consumer.claim(1000, { max: CLAIM_MAX, sharers: this.options.concurrency, done, oversized: this.#oversized })
          done = []
          continue
        }
        const claimed = batch.shift() as Buffer
        this.inFlight++
        try {
          const handled = await this.#handle(claimed, consumer)
          if (handled !== undefined) done.push(handled)
        } finally {
          this.inFlight--
        }
      } catch (err) {
        if (this.#stopping) break
        this.log.warn({ err: { message: (err as Error).message } }, 'webhook dispatch loop: handing back what it holds, retrying in a second')
        batch = []
        done = []
        unsure = true
        await this.#pause(1000)
      }
    }
    // What was claimed but not started stays in the processing list, which stop() hands back.
    await consumer.ack(...done).catch(() => undefined)
  }

  async #pause (ms: number): Promise<void> {
    await sleep(ms, undefined, { signal: this.#stop.signal }).catch(() => undefined)
  }

  /**
   * One round for one message: delivered, dead-lettered (both: returns it, to be acknowledged),
   * or set aside in the delay set until its next round is due (returns undefined). The loop goes
   * on with other messages meanwhile, so a receiver that keeps failing holds up no loop.
   */
  async #handle (claimed: Buffer, consumer: Consumer): Promise<Buffer | undefined> {
    const sealer = await this.#envelopes()
    // An envelope holds its message in base64: larger than that, it cannot be one busgate sealed.
    const opened = looksSealed(claimed) && claimed.byteLength <= this.options.maxMessageBytes * 4 / 3 + 4096
      ? await this.#openSealed(claimed, sealer)
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
    const all = this.#webhooks.filter((w) => w.enabled && this.#matches(w, event.event_name))
    if (all.length === 0) {
      return await this.#bury(claimed, envelope, frame, 'no_matching_webhook', `no enabled webhook takes ${event.event_name}`, event)
    }
    const now = Date.now()
    const candidates = all.filter((w) => this.#allows(w.id, now))
    if (candidates.length > 0) {
      const start = (await this.#position()) % candidates.length
      for (let k = 0; k < candidates.length && !this.#stopping; k++) {
        const webhook = candidates[(start + k) % candidates.length] as StoredWebhook
        envelope.attempts++
        const result = await this.#deliver(webhook, envelope.id, body, event)
        if (result.ok) return claimed
        envelope.last_error = `${webhook.id}: ${result.error ?? `HTTP ${result.status ?? '?'}`}`
      }
    }
    if (envelope.attempts >= this.options.maxAttempts || Date.now() - envelope.first_seen >= this.options.maxAgeMs) {
      return await this.#bury(claimed, envelope, frame, 'delivery_failed', envelope.last_error ?? 'no webhook was available', event)
    }
    // Stopping: it stays in the processing list, which stop() hands back for others at once.
    if (this.#stopping) return undefined
    // The retry state goes with the message, so a crash loses neither it nor its id.
    const backoff = Math.min(this.options.backoffMaxMs, this.options.backoffMs * 2 ** envelope.rounds)
    envelope.rounds++
    await consumer.delay(claimed, sealer.seal(envelope, frame), backoff / 2 + Math.random() * backoff / 2)
    return undefined
  }

  /**
   * The next position in the round-robin sequence all instances share. Positions are reserved
   * in blocks, so choosing a webhook costs no round trip; each block is used in order, so every
   * instance still spreads its messages evenly, and so do all of them together.
   */
  async #position (): Promise<number> {
    while (this.#rrNext >= this.#rrEnd) {
      this.#rrRefill ??= this.engine.store.increment(`${this.options.keyPrefix}rr`, RR_BLOCK).then((end) => {
        this.#rrNext = end - RR_BLOCK
        this.#rrEnd = end
      }).finally(() => { this.#rrRefill = undefined })
      await this.#rrRefill
    }
    return this.#rrNext++
  }

  async #deliver (webhook: StoredWebhook, id: string, body: string, event: BusEvent): Promise<Attempt> {
    const started = performance.now()
    const timestamp = Math.floor(Date.now() / 1000)
    let attempt: Attempt
    try {
      const { url, privateLiteral } = this.#target(webhook.url)
      // An IP literal never goes through the connect-time lookup: checked here instead.
      if (!this.options.allowPrivate && privateLiteral) throw new Error(`${url.hostname} is a private address; refused`)
      // One bound for the whole answer, body included: a receiver that drips its body must not hold the attempt.
      const signal = AbortSignal.timeout(this.options.timeoutMs)
      const res = await request(url, {
        method: 'POST',
        dispatcher: this.#agent,
        signal,
        headers: {
          'content-type': 'application/json',
          'user-agent': 'busgate',
          'webhook-id': id,
          'webhook-timestamp': String(timestamp),
          'webhook-signature': signatureHeader(id, timestamp, body, activeSecrets(webhook))
        },
        body,
        headersTimeout: this.options.timeoutMs,
        bodyTimeout: this.options.timeoutMs,
      })
      // The receiver has answered: a body it then drips is cut at the bound, and a 2xx still
      // stands (failing it would deliver the message again to a receiver that took it).
      await res.body.dump({ limit: 64 * 1024, signal }).catch(() => undefined)
      const ok = res.statusCode >= 200 && res.statusCode < 300
      attempt = { ok, status: res.statusCode, error: ok ? null : `HTTP ${res.statusCode}`, retryAfterMs: retryAfter(res.headers['retry-after']) }
    } catch (err) {
      attempt = { ok: false, status: null, error: (err as Error).message, retryAfterMs: null }
    }
    const seconds = (performance.now() - started) / 1000
    this.#after(webhook, attempt, seconds)
    // The log is for people: written in batches, a delivery never waits on it.
    const lines = this.#attempts.get(webhook.id) ?? []
    this.#attempts.set(webhook.id, lines)
    lines.push(JSON.stringify({
      at: new Date().toISOString(),
      message_id: id,
      event_name: event.event_name,
      status: attempt.status,
      latency_ms: Math.round(seconds * 10_000) / 10,
      error: attempt.error
    }))
    if (lines.length > ATTEMPT_LOG_MAX) lines.splice(0, lines.length - ATTEMPT_LOG_MAX)
    return attempt
  }

  #target (raw: string): { url: URL, privateLiteral: boolean } {
    let target = this.#targets.get(raw)
    if (target === undefined) {
      const url = new URL(raw)
      const host = urlHost(url)
      target = { url, privateLiteral: isIP(host) !== 0 && isPrivateAddress(host) }
      if (this.#targets.size > 1000) this.#targets.clear()
      this.#targets.set(raw, target)
    }
    return target
  }

  /** The circuit breaker, 410 and Retry-After: what one answer means for the next ones. */
  #after (webhook: StoredWebhook, attempt: Attempt, seconds: number): void {
    const circuit = this.#circuits.get(webhook.id) ?? { failures: 0, openUntil: 0, notBefore: 0 }
    this.#circuits.set(webhook.id, circuit)
    if (attempt.ok) {
      if (circuit.failures >= this.options.circuitFailures) this.metrics.circuit(webhook.id, false)
      circuit.failures = 0
      this.metrics.delivery('delivered', seconds)
      return
    }
    if (attempt.status === 410) {
      this.metrics.delivery('gone', seconds)
      this.log.warn({ webhook: webhook.id }, 'webhook answered 410 Gone: disabled')
      this.registry.update(webhook.id, { enabled: false }).catch(() => undefined)
      webhook.enabled = false
      return
    }
    if (attempt.retryAfterMs !== null && (attempt.status === 429 || attempt.status === 503)) {
      circuit.notBefore = Date.now() + attempt.retryAfterMs
      this.metrics.delivery('throttled', seconds)
      return
    }
    this.metrics.delivery('failed', seconds)
    circuit.failures++
    if (circuit.failures >= this.options.circuitFailures) {
      // Set aside, then probed again: after the cooldown one delivery may try it.
      circuit.openUntil = Date.now() + this.options.circuitCooldownMs
      if (circuit.failures === this.options.circuitFailures) {
        this.metrics.circuit(webhook.id, true)
        this.log.warn({ webhook: webhook.id }, 'webhook keeps failing: set aside for a while')
      }
    }
  }

  /** Moves a message to the dead letters; returns it, to be acknowledged. */
  async #bury (current: Buffer, envelope: Envelope, frame: Buffer, reason: DeadLetter['reason'], error: string,
    event: BusEvent | undefined): Promise<Buffer> {
    const dropped = await this.deadLetters.add({
      message_id: envelope.id,
      reason,
      error,
      event_name: event?.event_name ?? null,
      agent_id: event?.agent_id ?? null,
      frame,
      attempts: envelope.attempts,
      first_seen: new Date(envelope.first_seen).toISOString()
    })
    this.metrics.deadLettered(reason, dropped)
    if (dropped > 0) this.log.warn({ dropped }, 'the dead letters are at BUSGATE_DEAD_LETTER_MAX: the oldest were dropped')
    return current
  }

  /**
   * A plain message's first state. Only what busgate sealed is an envelope; anything else,
   * whatever it starts with, is a plain message. Its id stays the same across every retry: it
   * is kept in its envelope once the first round fails.
   */
  #fresh (claimed: Buffer): { envelope: Envelope, frame: Buffer } {
    return { envelope: { id: `msg_${this.instance}${(++this.#sequence).toString(36).padStart(6, '0')}`, first_seen: Date.now(), attempts: 0, rounds: 0 }, frame: claimed }
  }
}

function retryAfter (value: string | string[] | undefined): number | null {
  const text = Array.isArray(value) ? value[0] : value
  if (text === undefined) return null
  if (/^\d+$/.test(text.trim())) return Math.min(Number(text.trim()) * 1000, 3_600_000)
  const at = Date.parse(text)
  return Number.isNaN(at) ? null : Math.min(Math.max(0, at - Date.now()), 3_600_000)
}
