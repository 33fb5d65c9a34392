import { Type, type Static } from '@sinclair/typebox'

/**
 * A webhook's health as every instance shares it (one JSON record per webhook in Redis). Times
 * are ms since the epoch, by the clock of the instance that wrote them.
 */
export const StoredHealthSchema = Type.Object({
  /** failed attempts since the last success */
  failures: Type.Integer({ minimum: 0 }),
  /** the first of them; null while the last attempt succeeded */
  failing_since: Type.Union([Type.Number(), Type.Null()]),
  last_attempt_at: Type.Union([Type.Number(), Type.Null()]),
  last_status: Type.Union([Type.Integer(), Type.Null()]),
  /** the circuit is open until then: no delivery, then one probe */
  set_aside_until: Type.Number(),
  /** a 429/503 Retry-After: no delivery before then */
  not_before: Type.Number(),
  /** when it was last started afresh (enabled again): outcomes from before then do not count */
  reset_at: Type.Number(),
  /** when failing too long disabled it (0: not since the last reset): the write that sets it, alone, disables */
  disabled_at: Type.Number()
})
export type StoredHealth = Static<typeof StoredHealthSchema>

export const HEALTHY: StoredHealth = { failures: 0, failing_since: null, last_attempt_at: null, last_status: null, set_aside_until: 0, not_before: 0, reset_at: 0, disabled_at: 0 }

export interface HealthRules {
  /** consecutive failures that open the circuit */
  circuitFailures: number
  circuitCooldownMs: number
  /** failing for this long without a success disables the webhook */
  disableAfterMs: number
}

/** What an attempt came to, as health counts it. */
export type Outcome =
  | { kind: 'delivered', at: number, status: number | null }
  | { kind: 'failed', at: number, status: number | null }
  /** 429/503 with Retry-After: a pause, not a failure */
  | { kind: 'throttled', at: number, status: number | null, untilMs: number }

/**
 * The outcomes of some attempts in their order, summed up so that they can be applied to the
 * shared record in one step, whatever other instances applied meanwhile.
 */
export class Outcomes {
  succeededAt: number | null = null
  /** failures after the last success here (all of them when none succeeded) */
  failures = 0
  firstFailureAt: number | null = null
  lastAt: number | null = null
  lastStatus: number | null = null
  notBefore = 0

  add (outcome: Outcome): this {
    if (outcome.kind === 'delivered') {
      this.succeededAt = outcome.at
      this.failures = 0
      this.firstFailureAt = null
    } else if (outcome.kind === 'failed') {
      this.failures++
      this.firstFailureAt ??= outcome.at
    } else {
      this.notBefore = Math.max(this.notBefore, outcome.untilMs)
    }
    if (this.lastAt === null || outcome.at >= this.lastAt) {
      this.lastAt = outcome.at
      this.lastStatus = outcome.status
    }
    return this
  }

  /** These outcomes, then `later`'s. */
  merge (later: Outcomes): this {
    if (later.succeededAt !== null) {
      this.succeededAt = later.succeededAt
      this.failures = later.failures
      this.firstFailureAt = later.firstFailureAt
    } else {
      this.failures += later.failures
      this.firstFailureAt ??= later.firstFailureAt
    }
    this.notBefore = Math.max(this.notBefore, later.notBefore)
    if (later.lastAt !== null && (this.lastAt === null || later.lastAt >= this.lastAt)) {
      this.lastAt = later.lastAt
      this.lastStatus = later.lastStatus
    }
    return this
  }
}

export interface Applied {
  record: StoredHealth
  /** the circuit opened, or closed, with these outcomes */
  opened: boolean
  closed: boolean
  /** failing for longer than the rules allow: the webhook is to be disabled (once: the record now says it was) */
  disable: boolean
}

/** The record after `outcomes`, at `now`. Pure: the same on every instance. */
export function applyOutcomes (before: StoredHealth, outcomes: Outcomes, rules: HealthRules, now: number): Applied {
  const record = { ...before }
  // Attempts that ended before the webhook was started afresh (another instance's, flushed late).
  if (outcomes.lastAt === null || outcomes.lastAt < before.reset_at) return { record, opened: false, closed: false, disable: false }
  if (outcomes.succeededAt !== null) {
    record.failures = outcomes.failures
    record.failing_since = outcomes.firstFailureAt
    if (outcomes.failures < rules.circuitFailures) record.set_aside_until = 0
  } else {
    record.failures += outcomes.failures
    record.failing_since ??= outcomes.firstFailureAt
  }
  // Every failure past the threshold sets it aside again: after the cooldown one probe may try.
  if (outcomes.failures > 0 && record.failures >= rules.circuitFailures) record.set_aside_until = Math.max(record.set_aside_until, now + rules.circuitCooldownMs)
  record.not_before = Math.max(record.not_before, outcomes.notBefore)
  if (outcomes.lastAt !== null && (record.last_attempt_at === null || outcomes.lastAt >= record.last_attempt_at)) {
    record.last_attempt_at = outcomes.lastAt
    record.last_status = outcomes.lastStatus
  }
  const wasOpen = before.failures >= rules.circuitFailures
  const isOpen = record.failures >= rules.circuitFailures
  const disable = record.failing_since !== null && now - record.failing_since >= rules.disableAfterMs && record.disabled_at <= record.reset_at
  if (disable) record.disabled_at = Math.max(now, record.reset_at + 1)
  return { record, opened: !wasOpen && isOpen, closed: wasOpen && !isOpen, disable }
}

/** Whether a delivery may be tried now. */
export function allowsDelivery (record: StoredHealth, now: number): boolean {
  return asideForMs(record, now) === 0
}

/** How long until it allows deliveries again (0: it does now). */
export function asideForMs (record: StoredHealth, now: number): number {
  return Math.max(0, record.set_aside_until - now, record.not_before - now)
}

export type HealthState = 'healthy' | 'failing' | 'set_aside' | 'disabled'

/** What the API shows of it. */
export interface HealthView {
  state: HealthState
  consecutive_failures: number
  last_attempt_at: string | null
  last_status: number | null
  set_aside_until: string | null
}

export function viewHealth (record: StoredHealth, enabled: boolean, now: number): HealthView {
  const asideUntil = Math.max(record.set_aside_until, record.not_before)
  const state: HealthState = !enabled ? 'disabled' : asideUntil > now ? 'set_aside' : record.failures > 0 ? 'failing' : 'healthy'
  return {
    state,
    consecutive_failures: record.failures,
    last_attempt_at: record.last_attempt_at === null ? null : new Date(record.last_attempt_at).toISOString(),
    last_status: record.last_status,
    set_aside_until: asideUntil > now ? new Date(asideUntil).toISOString() : null
  }
}
