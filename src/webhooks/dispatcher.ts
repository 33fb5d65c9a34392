import { randomBytes } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { CodecError, decodeEvent, eventNameOf, toJsonEvent, type BusEvent } from '../codec.js'
import type { WebhookTake } from '../config.js'
import type { ClaimOptions, Consumer, Engine } from '../engines/engine.js'
import type { LaneWork } from './delivery-lane.js'
import { globList } from '../glob.js'
import type { AttemptLog } from './attempt-log.js'
import type { DeadLetter, DeadLetters } from './dead-letters.js'
import type { StoredWebhook, WebhookRegistry } from './registry.js'
import { ENVELOPE_PREFIX, EnvelopeSealer, looksSealed, type Envelope } from './envelope.js'
import { DeliveryLane } from './delivery-lane.js'
import type { HealthBook } from './health-book.js'
import { WebhookLimits } from './limits.js'
import { RoundRobin } from './round-robin.js'
import { WebhookSender, type Attempt } from './sender.js'
import { SubscriberRecorder, type RecorderMetrics } from './subscriber-recorder.js'

/** most lanes (processing lists, each with a connection of its own for BLMOVE) per instance */
export const MAX_LANES = 4
/** deliveries in flight per lane below which one more lane is not worth its connection */
const LANE_MIN = 64
const ATTEMPT_FLUSH_MS = 250
/** most subscriber lists one claim looks at; the dispatcher goes round them */
const SOURCES_PER_CLAIM = 16
/** after a broadcast woke a loop, when another looks, for a message pushed just after its publish */
const RELOOK_MS = 10

export interface DispatcherOptions {
  keyPrefix: string
  concurrency: number
  timeoutMs: number
  maxAttempts: number
  maxAgeMs: number
  backoffMs: number
  backoffMaxMs: number
  /** for the log line of a webhook disabled for failing: the health book decides */
  disableAfterMs: number
  instanceTtlMs: number
  allowPrivate: boolean
  /** larger messages are dead-lettered (too_large) undecoded */
  maxMessageBytes: number
  take: WebhookTake
  scanDepth: number
  pollMs: number
  subscriberQueueMax: number
}

export interface DispatcherMetrics {
  delivery: (outcome: 'delivered' | 'failed' | 'gone' | 'throttled', seconds: number) => void
  /** `dropped`: how many of the oldest letters made room for it */
  deadLettered: (reason: DeadLetter['reason'], dropped: number) => void
  /** a webhook failing for longer than BUSGATE_WEBHOOK_DISABLE_AFTER_MS was disabled */
  disabled: () => void
  /** what the last matching claim saw of the consumer list's head */
  scanned: (looked: number, unreadable: number) => void
  /** messages taken for a consumer webhook that no longer wanted them, given back to the list */
  givenBack: () => void
  /** a subscriber webhook's copy dropped because the webhook is gone */
  orphaned: () => void
  /** the subscription was lost while subscriber webhooks wanted it: what was published meanwhile is missed */
  subscriberGap: () => void
  recorder: RecorderMetrics
}

/**
 * Delivers to the registered webhooks. Consumer webhooks take from the consumer list (with
 * `take: matching`, only what an available one matches, the rest staying for the other
 * consumers); subscriber webhooks get copies of broadcast events, which the recorder writes to a
 * list per webhook. Up to `concurrency` deliveries are in flight at once, spread over a few
 * lanes (DeliveryLane); what a lane claimed sits in a processing list of this instance until a
 * receiver answered 2xx or the message was dead-lettered. A message whose round failed waits for its next one in the delay set, held by
 * nobody, and any lane of any instance takes it when it is due. An instance that dies leaves its
 * lists to be reclaimed by any other (or by itself restarted) once its liveness key expires.
 * With no enabled, available webhook the lanes take nothing, so messages wait in Redis. Whether a
 * webhook is available (its circuit, a Retry-After) is the shared HealthBook's.
 */
export class WebhookDispatcher {
  readonly instance = randomBytes(6).toString('hex')
  #stopping = false
  readonly #stop = new AbortController()
  readonly #lanes: DeliveryLane[] = []
  readonly #runs: Array<Promise<void>> = []
  readonly #consumers: Consumer[] = []
  #timers: NodeJS.Timeout[] = []
  readonly #matchers = new Map<string, (name: string) => boolean>()
  #sequence = 0
  readonly #roundRobin: RoundRobin
  readonly #limits: WebhookLimits
  readonly #sender: WebhookSender
  #sealer: Promise<EnvelopeSealer> | undefined
  /** when the envelope key was last read again because a value would not open (performance.now()) */
  #keyReadAt = 0
  #unopened = 0
  /** lanes waiting for work, the longest waiting first */
  #idle: Array<() => void> = []
  /**
   * Idle looks at the list are paced, since each reads up to the scan bound inside Redis: after
   * one that found nothing, a broadcast wakes a loop no sooner than a poll later (it is noted
   * for the next poll meanwhile), and polls that find nothing come ever less often, up to ten
   * times BUSGATE_WEBHOOK_POLL_MS, until a claim brings something.
   */
  #emptyAt = -Infinity
  #relook: NodeJS.Timeout | undefined
  #hinted = false
  #pollEvery = 0
  #polledAt = 0
  /** where the next claim starts in the list of subscriber lists */
  #sourceTurn = 0
  readonly #recorder: SubscriberRecorder
  #unsubscribe: (() => Promise<void>) | undefined

  constructor (
    private readonly engine: Pick<Engine, 'bus' | 'queue' | 'store'>,
    private readonly registry: WebhookRegistry,
    private readonly deadLetters: DeadLetters,
    private readonly attempts: AttemptLog,
    private readonly health: HealthBook,
    private readonly options: DispatcherOptions,
    private readonly metrics: DispatcherMetrics,
    private readonly log: FastifyBaseLogger
  ) {
    this.#roundRobin = new RoundRobin(engine.store, `${options.keyPrefix}rr:sets`)
    // A place is held for a delivery's whole bound, and a little: one that dies frees it then.
    this.#limits = new WebhookLimits(engine.store, options.keyPrefix, this.instance, options.timeoutMs + 5000, this.#stop.signal)
    this.#sender = new WebhookSender({ timeoutMs: options.timeoutMs, allowPrivate: options.allowPrivate, connections: options.concurrency })
    this.#recorder = new SubscriberRecorder(engine.queue, async () => await this.#envelopes(), (id) => this.subscriberList(id),
      { keyPrefix: options.keyPrefix, queueMax: options.subscriberQueueMax }, metrics.recorder, (n) => this.#wake(n), log)
    // A change of the registry may make work for lanes that found none: one looks, and wakes
    // another when its claim comes back full (each look reads up to the scan bound in Redis).
    registry.onChange(() => this.#wake(1))
  }

  get #retryKey (): string {
    return `${this.options.keyPrefix}retry`
  }

  get #delayKey (): string {
    return `${this.options.keyPrefix}delayed`
  }

  /** The list of copies waiting for a subscriber webhook. */
  subscriberList (webhookId: string): string {
    return `${this.options.keyPrefix}subscriber:${webhookId}`
  }

  /** Messages waiting for their next round, across every instance. */
  async delayed (): Promise<number> {
    return await this.engine.queue.delayedLength(this.#delayKey)
  }

  /** Messages held for delivery by this instance right now. */
  get inFlight (): number {
    return this.#lanes.reduce((sum, lane) => sum + lane.inFlight, 0)
  }

  /** What a deleted webhook leaves: its waiting copies (a subscriber's), its attempt log, its health. */
  async forget (webhookId: string): Promise<void> {
    await this.engine.store.deleteKeys(this.subscriberList(webhookId))
    await this.attempts.remove(webhookId)
    await this.health.forget(webhookId)
    await this.#limits.forget(webhookId)
  }

  /** Disables a webhook that has failed for longer than BUSGATE_WEBHOOK_DISABLE_AFTER_MS without a success. */
  disableFailing (webhookId: string): void {
    if (this.registry.current(webhookId)?.enabled !== true) return
    this.metrics.disabled()
    this.log.warn({ webhook: webhookId, afterMs: this.options.disableAfterMs }, 'webhook has failed without a success for BUSGATE_WEBHOOK_DISABLE_AFTER_MS: disabled')
    // A compare-and-set: a PATCH at the same moment keeps its change, and this one holds too.
    this.registry.update(webhookId, { enabled: false }).catch((err: unknown) => {
      this.log.warn({ webhook: webhookId, err: { message: (err as Error).message } }, 'could not disable a failing webhook')
    })
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
    // Lanes that found nothing wait to be woken; one of them looks again each poll, for
    // messages pushed without a broadcast and for delayed ones that came due.
    this.#pollEvery = this.options.pollMs
    const poll = setInterval(() => this.#poll(), this.options.pollMs)
    for (const timer of [beat, sweep, log, poll]) timer.unref()
    this.#timers = [beat, sweep, log, poll]
    this.registry.onChange(async () => await this.#follow())
    await this.#follow()
    const lanes = laneCount(this.options.concurrency)
    for (let n = 0; n < lanes; n++) {
      const processingKey = this.#processingKey(n)
      const consumer = this.engine.queue.consumer(processingKey, this.#retryKey, this.#delayKey)
      // The deliveries in flight, spread as evenly as they go over the lanes.
      const capacity = Math.floor(this.options.concurrency / lanes) + (n < this.options.concurrency % lanes ? 1 : 0)
      const lane = new DeliveryLane(consumer, capacity, {
        plan: () => this.#plan(lanes),
        handle: async (claimed, c) => await this.#handle(claimed, c),
        claimed: (count) => this.#claimed(count),
        rest: async (ms) => await this.#rest(ms),
        wake: (count) => this.#wake(count),
        reclaim: async () => { await this.engine.queue.reclaim(processingKey, this.#retryKey, ENVELOPE_PREFIX) },
        envelopePrefix: ENVELOPE_PREFIX,
        stopping: () => this.#stopping,
        signal: this.#stop.signal
      }, this.log)
      this.#consumers.push(consumer)
      this.#lanes.push(lane)
      this.#runs.push(lane.run())
    }
  }

  /** Stops taking messages, lets deliveries in progress end, and hands back what it holds. */
  async stop (): Promise<void> {
    if (this.#stopping) return
    this.#stopping = true
    this.#stop.abort()
    for (const timer of this.#timers) clearInterval(timer)
    clearTimeout(this.#relook)
    this.#wake(Infinity)
    await this.#following
    await this.#unsubscribe?.().catch(() => undefined)
    this.#unsubscribe = undefined
    await this.#recorder.flush()
    await Promise.all(this.#runs)
    await Promise.all(this.#consumers.map((c) => c.close()))
    for (let n = 0; n < this.#lanes.length; n++) {
      await this.engine.queue.reclaim(this.#processingKey(n), this.#retryKey, ENVELOPE_PREFIX).catch(() => 0)
    }
    await this.#flushAttempts().catch(() => undefined)
    await this.#sender.close()
  }

  /** Lines of webhooks deleted meanwhile are dropped, not written back under their id. */
  async #flushAttempts (): Promise<void> {
    await this.attempts.flush((id) => this.registry.current(id) !== undefined)
  }

  #following: Promise<void> | undefined
  #followAgain = false

  /**
   * Subscribes to the broadcast channel while an enabled webhook needs it: a subscriber, for its
   * copies, or a consumer under `matching`, whose idle lanes hear from it what is worth a look.
   * Otherwise the gateway takes in none of the channel's traffic for webhooks.
   */
  async #follow (): Promise<void> {
    if (this.#following !== undefined) {
      this.#followAgain = true
      // What this call asked for is done when the run under way has gone round again.
      while (this.#following !== undefined) await this.#following
      return
    }
    this.#following = (async () => {
      do {
        this.#followAgain = false
        const needed = !this.#stopping && this.registry.snapshot().some((w) => w.enabled && (w.role === 'subscriber' || this.options.take === 'matching'))
        if (needed && this.#unsubscribe === undefined) {
          this.#unsubscribe = await this.engine.bus.subscribe({
            message: (frame) => this.#heard(frame),
            gap: () => {
              if (this.registry.snapshot().some((w) => w.role === 'subscriber' && w.enabled)) {
                this.metrics.subscriberGap()
                this.log.warn('the bus subscription was lost and is back: subscriber webhooks miss what was published meanwhile')
              }
            }
          }).catch((err: unknown) => {
            this.log.warn({ err: { message: (err as Error).message } }, 'could not subscribe to the broadcast channel; subscriber webhooks get nothing until it is back')
            return undefined
          })
        } else if (!needed && this.#unsubscribe !== undefined) {
          const unsubscribe = this.#unsubscribe
          this.#unsubscribe = undefined
          await unsubscribe().catch(() => undefined)
        }
      } while (this.#followAgain)
    })().finally(() => { this.#following = undefined })
    await this.#following
  }

  /** A broadcast event: copies for the subscriber webhooks it matches; a wake for consumer lanes it may interest. */
  #heard (frame: Buffer): void {
    const webhooks = this.registry.snapshot()
    let subscribing = false
    let consuming = false
    for (const w of webhooks) {
      if (!w.enabled) continue
      if (w.role === 'subscriber') subscribing = true
      else consuming = true
    }
    // Lanes idle here (not in BLMOVE): `matching`, or `all` beside subscriber webhooks.
    const waiting = consuming && this.#idle.length > 0
    if (!subscribing && !waiting) return
    // Past the bound, nothing is decoded: a subscriber's copy could not be delivered anyway.
    if (frame.byteLength > this.options.maxMessageBytes) return
    const name = eventNameOf(frame)
    if (name === undefined) return
    const targets = subscribing ? webhooks.filter((w) => w.role === 'subscriber' && w.enabled && this.#matches(w, name)).map((w) => w.id) : []
    if (targets.length > 0) this.#recorder.hear({ frame, webhooks: targets, id: this.#messageId() })
    if (waiting && webhooks.some((w) => w.role === 'consumer' && w.enabled && this.#matches(w, name))) {
      if (performance.now() - this.#emptyAt >= this.options.pollMs) {
        this.#wake(1)
        // A producer that PUBLISHes before it pushes: one more look a moment later finds it.
        this.#relook ??= setTimeout(() => {
          this.#relook = undefined
          this.#wake(1)
        }, RELOOK_MS)
      } else {
        this.#hinted = true
      }
    }
  }

  #messageId (): string {
    return `msg_${this.instance}${(++this.#sequence).toString(36).padStart(6, '0')}`
  }

  #poll (): void {
    const now = performance.now()
    if (!this.#hinted && now - this.#polledAt < this.#pollEvery) return
    if (!this.#hinted) this.#pollEvery = Math.min(this.#pollEvery * 2, this.options.pollMs * 10)
    this.#hinted = false
    this.#polledAt = now
    this.#wake(1)
  }

  /** What a claim that did not wait in Redis brought: pacing for the next idle look. */
  #claimed (count: number): void {
    if (count > 0) {
      this.#pollEvery = this.options.pollMs
      this.#emptyAt = -Infinity
    } else {
      this.#emptyAt = performance.now()
    }
  }

  /** Wakes up to `n` lanes waiting for work. */
  #wake (n: number): void {
    for (; n > 0 && this.#idle.length > 0; n--) (this.#idle.shift() as () => void)()
  }

  /** Waits to be woken (or stopped); at most `ms`. */
  async #rest (ms: number): Promise<void> {
    if (this.#stopping) return
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        this.#idle = this.#idle.filter((w) => w !== done)
        resolve()
      }
      const timer = setTimeout(done, ms)
      this.#idle.push(done)
    })
  }

  async #heartbeat (): Promise<void> {
    await this.engine.store.setExpiring(this.#liveKey(this.instance), '1', this.options.instanceTtlMs)
  }

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

  /** Puts back what instances that stopped beating were holding. */
  async #reclaimOrphans (): Promise<void> {
    await this.#adoptOversized()
    const prefix = `${this.options.keyPrefix}processing:`
    for (const key of await this.engine.store.keys(`${prefix}*`)) {
      const instance = key.slice(prefix.length).split(':')[0] ?? ''
      if (instance === this.instance || await this.engine.store.exists(this.#liveKey(instance))) continue
      const moved = await this.engine.queue.reclaim(key, this.#retryKey, ENVELOPE_PREFIX)
      if (moved > 0) this.log.warn({ instance, moved }, 'reclaimed messages held by a gateway instance that stopped')
    }
  }

  /**
   * What a claim may take now, from the registry as this instance knows it (changes made here
   * are in it at once, others' within REGISTRY_POLL_MS): the event globs of the enabled,
   * available consumer webhooks, and the lists of the enabled, available subscriber webhooks
   * (some of them, in turns).
   */
  #wanted (): { globs: string[], sources: string[] } {
    const now = Date.now()
    const globs = new Set<string>()
    const sources: string[] = []
    for (const w of this.registry.snapshot()) {
      if (!w.enabled || !this.#allows(w.id, now)) continue
      if (w.role === 'subscriber') sources.push(this.subscriberList(w.id))
      else for (const glob of w.event_names) globs.add(glob)
    }
    if (sources.length > SOURCES_PER_CLAIM) {
      const start = this.#sourceTurn++ % sources.length
      return { globs: [...globs], sources: [...sources.slice(start), ...sources.slice(0, start)].slice(0, SOURCES_PER_CLAIM) }
    }
    return { globs: [...globs], sources }
  }

  /** Whether claims may take messages for this webhook now: its health, and its limits as last heard. */
  #allows (id: string, now: number): boolean {
    return this.health.allows(id, now) && this.#limits.waitMs(id, now) === 0
  }

  #matches (webhook: StoredWebhook, eventName: string): boolean {
    const key = webhook.event_names.join(',')
    let matcher = this.#matchers.get(key)
    if (matcher === undefined) {
      if (this.#matchers.size > 10_000) this.#matchers.clear()
      matcher = globList(key)
      this.#matchers.set(key, matcher)
    }
    return matcher(eventName)
  }

  /**
   * What a lane's next claim takes: nothing while no webhook can be delivered to (with `all`:
   * with `matching`, messages already taken, put back or delayed, are claimed even so, and one
   * that no webhook wants any more goes back to the list, for the other consumers).
   */
  #plan (lanes: number): ReturnType<LaneWork['plan']> {
    const { globs, sources } = this.#wanted()
    if (globs.length === 0 && sources.length === 0 && this.options.take === 'all') return null
    // Only a claim of `all` from the consumer list alone may wait in Redis (BLMOVE); any other
    // waits in the dispatcher, to be woken by a broadcast, a recorded copy or the poll.
    this.#sourcesFirst = !this.#sourcesFirst
    return {
      blocking: this.options.take === 'all' && sources.length === 0,
      options: {
        sharers: lanes,
        oversized: this.#oversized,
        ...(this.options.take === 'matching' ? { take: { globs, depth: this.options.scanDepth }, scanned: this.metrics.scanned } : {}),
        sources,
        sourcesFirst: this.#sourcesFirst
      }
    }
  }

  /** claims alternate: subscriber lists first, then the consumer list first */
  #sourcesFirst = false

  /**
   * One round for one message: delivered, dead-lettered (both: returns it, to be acknowledged),
   * given back to the consumer list or dropped (a copy for a webhook that is gone), or set aside
   * in the delay set until its next round is due (returns undefined). The loop goes on with
   * other messages meanwhile, so a receiver that keeps failing holds up no loop.
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
    let all: StoredWebhook[]
    if (envelope.webhook !== undefined) {
      // A subscriber's copy is for its webhook alone; with the webhook gone, so is the copy.
      const target = this.registry.current(envelope.webhook)
      if (target === undefined || target.role !== 'subscriber') {
        this.metrics.orphaned()
        return claimed
      }
      all = target.enabled ? [target] : []
    } else {
      all = this.registry.snapshot().filter((w) => w.role === 'consumer' && w.enabled && this.#matches(w, event.event_name))
      if (all.length === 0 && this.options.take === 'matching') {
        // Taken for a webhook that no longer wants it: back to the head of the list, for the others.
        await consumer.giveBack(claimed, frame)
        this.metrics.givenBack()
        return undefined
      }
      if (all.length === 0) {
        return await this.#bury(claimed, envelope, frame, 'no_matching_webhook', `no enabled webhook takes ${event.event_name}`, event)
      }
    }
    const now = Date.now()
    const candidates = all.filter((w) => this.health.allows(w.id, now))
    let tried = false
    /** the soonest one of them at its limit may take it */
    let limitedFor = Infinity
    if (candidates.length > 0) {
      const start = (await this.#roundRobin.position(all.map((w) => w.id))) % candidates.length
      for (let k = 0; k < candidates.length && !this.#stopping; k++) {
        // The registry as it is now: a webhook deleted or disabled meanwhile gets no new attempt.
        const webhook = this.registry.current((candidates[(start + k) % candidates.length] as StoredWebhook).id)
        if (webhook?.enabled !== true) continue
        const known = this.#limits.waitMs(webhook.id, now)
        const slot = known > 0 ? { waitMs: known } : await this.#limits.acquire(webhook)
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
    if (!tried && limitedFor < Infinity && !this.#stopping) {
      // Every webhook that could take it is at its limit: it waits for the soonest, held by
      // nobody, and no round is counted (it did not fail).
      await consumer.delay(claimed, sealer.seal(envelope, frame), limitedFor)
      return undefined
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

  async #deliver (webhook: StoredWebhook, id: string, body: string, event: BusEvent): Promise<Attempt> {
    const attempt = await this.#sender.send(webhook, id, body)
    this.#after(webhook, attempt)
    // The log is for people: written in batches, a delivery never waits on it.
    this.attempts.record(webhook.id, {
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
      this.metrics.delivery('delivered', attempt.seconds)
      this.health.record(webhook.id, { kind: 'delivered', at, status: attempt.status })
      return
    }
    if (attempt.status === 410) {
      this.metrics.delivery('gone', attempt.seconds)
      this.log.warn({ webhook: webhook.id }, 'webhook answered 410 Gone: disabled')
      // A compare-and-set: a PATCH at the same moment keeps its change, and this one holds too.
      this.registry.update(webhook.id, { enabled: false }).catch((err: unknown) => {
        this.log.warn({ webhook: webhook.id, err: { message: (err as Error).message } }, 'could not disable a webhook that answered 410')
      })
      return
    }
    if (attempt.retryAfterMs !== null && (attempt.status === 429 || attempt.status === 503)) {
      this.metrics.delivery('throttled', attempt.seconds)
      this.health.record(webhook.id, { kind: 'throttled', at, status: attempt.status, untilMs: at + attempt.retryAfterMs })
      return
    }
    this.metrics.delivery('failed', attempt.seconds)
    this.health.record(webhook.id, { kind: 'failed', at, status: attempt.status })
  }

  /** Moves a message to the dead letters; returns it, to be acknowledged. */
  async #bury (current: Buffer, envelope: Envelope, frame: Buffer, reason: DeadLetter['reason'], error: string,
    event: BusEvent | undefined): Promise<Buffer> {
    // A subscriber's copy, redelivered, must go to its webhook alone: it keeps a fresh envelope for it.
    const returns = envelope.webhook === undefined
      ? undefined
      : (await this.#envelopes()).seal({ id: envelope.id, first_seen: Date.now(), attempts: 0, rounds: 0, webhook: envelope.webhook }, frame)
    const dropped = await this.deadLetters.add({
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
    return { envelope: { id: this.#messageId(), first_seen: Date.now(), attempts: 0, rounds: 0 }, frame: claimed }
  }
}

/** Lanes for `concurrency` deliveries in flight: one per LANE_MIN of them, at most MAX_LANES. */
export function laneCount (concurrency: number): number {
  return Math.max(1, Math.min(MAX_LANES, Math.ceil(concurrency / LANE_MIN)))
}
