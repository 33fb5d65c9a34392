import { randomBytes } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { eventNameOf } from '../codec.js'
import type { ClaimOptions, Consumer, Engine } from '../engines/engine.js'
import { globList } from '../glob.js'
import type { AttemptLog } from './attempt-log.js'
import type { DeadLetters } from './dead-letters.js'
import { DeliveryLane, type LaneWork } from './delivery-lane.js'
import { DeliveryRound, type RoundMetrics, type RoundOptions } from './delivery-round.js'
import { ENVELOPE_PREFIX } from './envelope.js'
import { EnvelopeKeys } from './envelope-keys.js'
import type { HealthBook } from './health-book.js'
import { WebhookLimits } from './limits.js'
import type { StoredWebhook, WebhookRegistry } from './registry.js'
import { RoundRobin } from './round-robin.js'
import { WebhookSender } from './sender.js'
import { SubscriberRecorder, type RecorderMetrics } from './subscriber-recorder.js'

/** most lanes (processing lists, each with a connection of its own for BLMOVE) per instance */
export const MAX_LANES = 4
/** deliveries in flight per lane below which one more lane is not worth its connection */
const LANE_MIN = 64
const ATTEMPT_FLUSH_MS = 250
/** most subscriber lists one claim looks at; the dispatcher goes round them */
const SOURCES_PER_CLAIM = 16
/** after a broadcast woke a lane, when another looks, for a message pushed just after its publish */
const RELOOK_MS = 10

export interface DispatcherOptions extends RoundOptions {
  keyPrefix: string
  concurrency: number
  timeoutMs: number
  /** for the log line of a webhook disabled for failing: the health book decides */
  disableAfterMs: number
  instanceTtlMs: number
  allowPrivate: boolean
  scanDepth: number
  pollMs: number
  subscriberQueueMax: number
}

export interface DispatcherMetrics extends RoundMetrics {
  /** a webhook failing for longer than BUSGATE_WEBHOOK_DISABLE_AFTER_MS was disabled */
  disabled: () => void
  /** what the last matching claim saw of the consumer list's head */
  scanned: (looked: number, unreadable: number) => void
  /** the subscription was lost while subscriber webhooks wanted it: what was published meanwhile is missed */
  subscriberGap: () => void
  recorder: RecorderMetrics
}

/**
 * Delivers to the registered webhooks. Consumer webhooks take from the consumer list (with
 * `take: matching`, only what an available one matches, the rest staying for the other
 * consumers); subscriber webhooks get copies of broadcast events, which the recorder writes to a
 * list per webhook. Up to `concurrency` deliveries are in flight at once, spread over a few
 * lanes (DeliveryLane), each message's round its own (DeliveryRound); what a lane claimed sits in
 * a processing list of this instance until a receiver answered 2xx or the message was
 * dead-lettered. A message whose round failed waits for its next one in the delay set, held by
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
  readonly #limits: WebhookLimits
  readonly #sender: WebhookSender
  readonly #keys: EnvelopeKeys
  readonly #round: DeliveryRound
  /** lanes waiting for work, the longest waiting first */
  #idle: Array<() => void> = []
  /**
   * Idle looks at the list are paced, since each reads up to the scan bound inside Redis: after
   * one that found nothing, a broadcast wakes a lane no sooner than a poll later (it is noted
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
    // A place is held for a delivery's whole bound, and a little: one that dies frees it then.
    this.#limits = new WebhookLimits(engine.store, options.keyPrefix, this.instance, options.timeoutMs + 5000, this.#stop.signal)
    this.#sender = new WebhookSender({ timeoutMs: options.timeoutMs, allowPrivate: options.allowPrivate, connections: options.concurrency })
    this.#keys = new EnvelopeKeys(engine.store, options.keyPrefix, log)
    this.#round = new DeliveryRound({
      registry,
      deadLetters,
      attempts,
      health,
      limits: this.#limits,
      roundRobin: new RoundRobin(engine.store, `${options.keyPrefix}rr:sets`),
      sender: this.#sender,
      keys: this.#keys,
      metrics,
      log,
      messageId: () => this.#messageId(),
      matches: (webhook, name) => this.#matches(webhook, name),
      stopping: () => this.#stopping
    }, options)
    this.#recorder = new SubscriberRecorder(engine.queue, async () => await this.#keys.sealer(), (id) => this.subscriberList(id),
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
    this.#round.disable(webhookId, 'webhook has failed without a success for BUSGATE_WEBHOOK_DISABLE_AFTER_MS: disabled', { afterMs: this.options.disableAfterMs })
  }

  #processingKey (n: number, instance = this.instance): string {
    return `${this.options.keyPrefix}processing:${instance}:${n}`
  }

  #liveKey (instance: string): string {
    return `${this.options.keyPrefix}instance:${instance}`
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
        handle: async (claimed, c) => await this.#round.handle(claimed, c),
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
}

/** Lanes for `concurrency` deliveries in flight: one per LANE_MIN of them, at most MAX_LANES. */
export function laneCount (concurrency: number): number {
  return Math.max(1, Math.min(MAX_LANES, Math.ceil(concurrency / LANE_MIN)))
}
