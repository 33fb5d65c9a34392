import type { Store } from '../engines/engine.js'
import { storedRecordCheck } from '../validation.js'
import { HEALTHY, Outcomes, StoredHealthSchema, allowsDelivery, applyOutcomes, asideForMs, viewHealth, type HealthRules, type HealthView, type Outcome, type StoredHealth } from './health.js'

/** How often outcomes are written (summed up per webhook), and the others' read. */
export const HEALTH_FLUSH_MS = 250
const HEALTH_READ_MS = 1000
/** Tries of one write against others made meanwhile (each try reads the record again). */
const SWAP_TRIES = 20
const isStoredHealth = storedRecordCheck(StoredHealthSchema)

export interface HealthEvents {
  /** this instance now sees the webhook's circuit open (or closed) */
  circuit: (webhookId: string, open: boolean) => void
  /** the outcomes written here opened the circuit: once, whichever instance saw it */
  setAside: (webhookId: string) => void
  /** failing for longer than the rules allow */
  disable: (webhookId: string) => void
  /** a stored record that does not check: taken as healthy */
  invalid: (webhookId: string) => void
}

/**
 * Every webhook's health, shared by all instances: one hash `<prefix>health` of JSON records,
 * each written by compare-and-set, so outcomes summed up on two instances at once both count.
 * An instance sees its own outcomes at once (they are applied to what it last read) and the
 * others' within a read, so all agree within about a second whether a webhook is set aside.
 */
export class HealthBook {
  readonly #key: string
  readonly #changesKey: string
  #shared = new Map<string, StoredHealth>()
  #pending = new Map<string, Outcomes>()
  /** what current() gave, until the next outcome or read: it is asked on every claim and delivery */
  readonly #known = new Map<string, StoredHealth>()
  readonly #open = new Set<string>()
  #timers: NodeJS.Timeout[] = []
  #flushing: Promise<void> | undefined
  readonly #reported = new Set<string>()

  constructor (private readonly store: Store, keyPrefix: string, private readonly rules: HealthRules, private readonly events: HealthEvents) {
    this.#key = `${keyPrefix}health`
    this.#changesKey = `${keyPrefix}health:changes`
  }

  async start (): Promise<void> {
    await this.read().catch(() => undefined)
    const flush = setInterval(() => { this.flush().catch(() => undefined) }, HEALTH_FLUSH_MS)
    const read = setInterval(() => { this.read().catch(() => undefined) }, HEALTH_READ_MS)
    for (const timer of [flush, read]) timer.unref()
    this.#timers = [flush, read]
  }

  async stop (): Promise<void> {
    for (const timer of this.#timers) clearInterval(timer)
    await this.flush().catch(() => undefined)
  }

  record (webhookId: string, outcome: Outcome): void {
    const outcomes = this.#pending.get(webhookId) ?? new Outcomes()
    this.#pending.set(webhookId, outcomes.add(outcome))
    this.#known.delete(webhookId)
    this.#seen(webhookId)
  }

  /** As this instance knows it now: what it last read, and its own outcomes since. */
  current (webhookId: string, now = Date.now()): StoredHealth {
    const known = this.#known.get(webhookId)
    if (known !== undefined) return known
    const shared = this.#shared.get(webhookId) ?? HEALTHY
    const pending = this.#pending.get(webhookId)
    const current = pending === undefined ? shared : applyOutcomes(shared, pending, this.rules, now).record
    this.#known.set(webhookId, current)
    return current
  }

  allows (webhookId: string, now = Date.now()): boolean {
    return allowsDelivery(this.current(webhookId, now), now)
  }

  /** How long until the webhook takes deliveries again, as far as this instance knows (0: it does). */
  asideFor (webhookId: string, now = Date.now()): number {
    return asideForMs(this.current(webhookId, now), now)
  }

  view (webhookId: string, enabled: boolean, now = Date.now()): HealthView {
    return viewHealth(this.current(webhookId, now), enabled, now)
  }

  /** Reads every record again (the API calls it before it shows health). */
  async read (): Promise<void> {
    const all = await this.store.hashGetAll(this.#key)
    const shared = new Map<string, StoredHealth>()
    for (const [id, raw] of Object.entries(all)) shared.set(id, this.#parse(id, raw))
    this.#shared = shared
    this.#known.clear()
    for (const id of new Set([...shared.keys(), ...this.#open])) this.#seen(id)
  }

  /** Writes the outcomes summed up since the last flush, one compare-and-set per webhook. */
  async flush (): Promise<void> {
    while (this.#flushing !== undefined) await this.#flushing
    const pending = this.#pending
    if (pending.size === 0) return
    this.#pending = new Map()
    this.#known.clear()
    this.#flushing = Promise.all([...pending].map(async ([id, outcomes]) => { await this.#write(id, outcomes) }))
      .then(() => undefined)
      .finally(() => { this.#flushing = undefined })
    await this.#flushing
  }

  /**
   * Starts a webhook's health afresh (it was enabled again): what other instances still hold of
   * attempts that ended before now does not count when they write it.
   */
  async reset (webhookId: string): Promise<void> {
    const record = { ...HEALTHY, reset_at: Date.now() }
    this.#pending.delete(webhookId)
    this.#known.delete(webhookId)
    this.#shared.set(webhookId, record)
    await this.store.hashSet(this.#key, webhookId, JSON.stringify(record))
    this.#seen(webhookId)
  }

  /** Forgets a deleted webhook's health. */
  async forget (webhookId: string): Promise<void> {
    this.#pending.delete(webhookId)
    this.#known.delete(webhookId)
    this.#shared.delete(webhookId)
    await this.store.hashDelete(this.#key, webhookId)
    this.#seen(webhookId)
  }

  async #write (id: string, outcomes: Outcomes): Promise<void> {
    for (let i = 0; i < SWAP_TRIES; i++) {
      const raw = await this.store.hashGet(this.#key, id)
      const now = Date.now()
      const applied = applyOutcomes(raw === null ? HEALTHY : this.#parse(id, raw), outcomes, this.rules, now)
      if (await this.store.hashSwap(this.#key, id, raw, JSON.stringify(applied.record), this.#changesKey) === 0) continue
      this.#shared.set(id, applied.record)
      this.#known.delete(id)
      this.#seen(id)
      if (applied.opened) this.events.setAside(id)
      if (applied.disable) this.events.disable(id)
      return
    }
    // Others wrote it every time: these outcomes wait for the next flush rather than being lost.
    const later = this.#pending.get(id)
    this.#pending.set(id, later === undefined ? outcomes : outcomes.merge(later))
    this.#known.delete(id)
  }

  #parse (id: string, raw: string): StoredHealth {
    let value: unknown
    try {
      value = JSON.parse(raw)
    } catch {}
    if (isStoredHealth(value)) return value
    if (!this.#reported.has(id)) {
      this.#reported.add(id)
      this.events.invalid(id)
    }
    return HEALTHY
  }

  /** Tells when this instance's view of a circuit changes. */
  #seen (id: string): void {
    const open = this.current(id).failures >= this.rules.circuitFailures
    if (open === this.#open.has(id)) return
    if (open) this.#open.add(id)
    else this.#open.delete(id)
    this.events.circuit(id, open)
  }
}
