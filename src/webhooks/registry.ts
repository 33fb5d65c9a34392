import { randomBytes } from 'node:crypto'
import { Type, type Static } from '@sinclair/typebox'
import type { Store } from '../engines/engine.js'
import { storedRecordCheck } from '../validation.js'

/**
 * `consumer`: takes its share of the consumer list, competing with Backend.AI's managers;
 * `subscriber`: gets a copy of every broadcast event it matches, as each Backend.AI subscriber does.
 */
export const WebhookRoleSchema = Type.Union([Type.Literal('consumer'), Type.Literal('subscriber')])
export type WebhookRole = Static<typeof WebhookRoleSchema>

const WebhookSecretSchema = Type.Object({
  value: Type.String({ minLength: 1 }),
  /** null for the current secret; when a rotated-out one stops being used to sign */
  expires_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()])
})
export type WebhookSecret = Static<typeof WebhookSecretSchema>

/**
 * A webhook as stored, in Redis, so every gateway instance sees the same set. Records an
 * older version wrote have no `role`: they are consumers. Fields a later version adds are let through.
 */
const StoredWebhookSchema = Type.Object({
  id: Type.String({ pattern: '^wh_[A-Za-z0-9_-]{16}$' }),
  url: Type.String({ minLength: 1 }),
  event_names: Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }),
  description: Type.String(),
  enabled: Type.Boolean(),
  role: Type.Optional(WebhookRoleSchema),
  max_in_flight: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Null()])),
  rate_limit: Type.Optional(Type.Union([Type.Number({ exclusiveMinimum: 0 }), Type.Null()])),
  created_at: Type.String(),
  updated_at: Type.String(),
  secrets: Type.Array(WebhookSecretSchema, { minItems: 1 })
})
type StoredRecord = Static<typeof StoredWebhookSchema>
const isStored = storedRecordCheck(StoredWebhookSchema)

export type StoredWebhook = StoredRecord & { role: WebhookRole }

/** What the API shows: never a secret; every limit, null where there is none. */
export type PublicWebhook = Omit<StoredWebhook, 'secrets' | 'max_in_flight' | 'rate_limit'> & { max_in_flight: number | null, rate_limit: number | null }

export interface WebhookFields {
  url: string
  event_names: string[]
  description: string
  enabled: boolean
  role: WebhookRole
  max_in_flight?: number | null
  rate_limit?: number | null
}

/** A Standard Webhooks secret: `whsec_` and 24 random bytes in base64. */
export function newSecret (): string {
  return `whsec_${randomBytes(24).toString('base64')}`
}

export function toPublic ({ secrets: _secrets, ...rest }: StoredWebhook): PublicWebhook {
  return { ...rest, max_in_flight: rest.max_in_flight ?? null, rate_limit: rest.rate_limit ?? null }
}

/** The secrets still valid at `now`: the current one, and a rotated-out one within its overlap. */
export function activeSecrets (webhook: StoredWebhook, now = Date.now()): string[] {
  return webhook.secrets.filter((s) => s.expires_at === null || Date.parse(s.expires_at) > now).map((s) => s.value)
}

/** How often an instance looks whether another one changed the registry (one GET). */
export const REGISTRY_POLL_MS = 50
/** How often it reads the whole registry all the same: a hand edit in Redis changes no counter. */
const REGISTRY_FULL_READ_MS = 10_000
/** Tries of one change against others made meanwhile (each try reads the record again). */
const SWAP_TRIES = 20
/** Longest a change waits for the other live instances to have read it (one that is frozen, say). */
export const REGISTRY_ACK_MS = 250
/** How often an instance says it is alive beside what it has read, and for how long that holds. */
const SEEN_EVERY_MS = 1000
const SEEN_TTL_MS = 5000

export class RegistryConflictError extends Error {}

/**
 * The webhook registry, on the engine's store under the key prefix: one hash of JSON records,
 * and a counter every change increments. Each change is a compare-and-set of the whole record,
 * tried again on what another writer left, so two changes at once (a PATCH and a 410's disable,
 * a rotation) both hold. The snapshot is what the dispatcher reads: a change made here is in it
 * before the call returns; one made by another instance is in it within REGISTRY_POLL_MS and a read.
 */
export class WebhookRegistry {
  readonly #key: string
  readonly #counterKey: string
  /** a hash: instance → "<the counter its snapshot reflects> <until when it says it is alive (ms)>" */
  readonly #seenKey: string
  #instance = ''
  #toldAt = 0
  #snapshot = new Map<string, StoredWebhook>()
  #ordered: StoredWebhook[] = []
  #counter = -1
  #readAt = 0
  #timer: NodeJS.Timeout | undefined
  #refreshing: Promise<void> | undefined
  /** changes made here: a read that began before one must not undo it in the snapshot */
  #writes = 0
  /** ids (and the bytes they held) already reported as not checking: once each */
  readonly #reported = new Map<string, string>()
  readonly #listeners = new Set<() => unknown>()

  constructor (private readonly store: Store, keyPrefix: string, private readonly onInvalid: (id: string, why: string) => void = () => {}) {
    this.#key = `${keyPrefix}webhooks`
    this.#counterKey = `${keyPrefix}webhooks:changes`
    this.#seenKey = `${keyPrefix}webhooks:seen`
  }

  /**
   * Reads the registry now, then follows changes until `stop`, telling the others (as `instance`)
   * what it has read, and that it is alive, every second. Never throws: a bus that is down is
   * read again later.
   */
  async start (instance: string): Promise<void> {
    this.#instance = instance
    await this.refresh(true).catch(() => undefined)
    this.#timer = setInterval(() => { this.refresh().catch(() => undefined) }, REGISTRY_POLL_MS)
    this.#timer.unref()
  }

  /** Stops following; the others no longer wait for this instance to read their changes. */
  async stop (): Promise<void> {
    clearInterval(this.#timer)
    await this.#refreshing?.catch(() => undefined)
    if (this.#instance !== '') await this.store.hashDelete(this.#seenKey, this.#instance).catch(() => false)
  }

  /** Called after the snapshot changed; a change made here returns once its listeners' promises have settled. */
  onChange (listener: () => unknown): void {
    this.#listeners.add(listener)
  }

  /** Every webhook, oldest first, as last read or changed here; no round trip. */
  snapshot (): readonly StoredWebhook[] {
    return this.#ordered
  }

  current (id: string): StoredWebhook | undefined {
    return this.#snapshot.get(id)
  }

  /** Reads the whole registry when another writer changed it, or when `force`, or now and then. */
  async refresh (force = false): Promise<void> {
    this.#refreshing ??= (async () => {
      const writes = this.#writes
      const counter = await this.store.increment(this.#counterKey, 0)
      if (!force && counter === this.#counter && Date.now() - this.#readAt < REGISTRY_FULL_READ_MS) return
      const all = await this.list()
      if (writes !== this.#writes) return // read again at the next poll, the counter having moved
      this.#readAt = Date.now()
      const moved = counter !== this.#counter
      this.#counter = counter
      await this.#replace(all)
      // Told once the snapshot (and what follows from it: subscriptions) is in effect here.
      if (moved) await this.#tell()
    })().finally(() => { this.#refreshing = undefined })
    await this.#refreshing
    if (Date.now() - this.#toldAt > SEEN_EVERY_MS) await this.#tell()
  }

  /** What this instance has read, and that it is alive for SEEN_TTL_MS more (wall clocks: instances' clocks must agree within that). */
  async #tell (): Promise<void> {
    if (this.#instance === '' || this.#counter < 0) return
    this.#toldAt = Date.now()
    await this.store.hashSet(this.#seenKey, this.#instance, `${this.#counter} ${Date.now() + SEEN_TTL_MS}`)
  }

  /** The other instances that said lately they are alive, with the change each has read. */
  async #peers (): Promise<Array<{ instance: string, counter: number }>> {
    const now = Date.now()
    const peers: Array<{ instance: string, counter: number }> = []
    for (const [instance, value] of Object.entries(await this.store.hashGetAll(this.#seenKey))) {
      const [counter, until] = value.split(' ').map(Number)
      if (instance === this.#instance) continue
      if ((until ?? 0) > now) peers.push({ instance, counter: counter ?? 0 })
      // Gone for a minute: its entry goes too.
      else if ((until ?? 0) < now - 60_000) await this.store.hashDelete(this.#seenKey, instance)
    }
    return peers
  }

  async list (): Promise<StoredWebhook[]> {
    const all = await this.store.hashGetAll(this.#key)
    const webhooks: StoredWebhook[] = []
    for (const [id, json] of Object.entries(all)) {
      const webhook = this.#decode(id, json)
      if (webhook !== undefined) webhooks.push(webhook)
    }
    return webhooks.sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id))
  }

  async get (id: string): Promise<StoredWebhook | undefined> {
    const json = await this.store.hashGet(this.#key, id)
    return json === null ? undefined : this.#decode(id, json)
  }

  async create (fields: WebhookFields): Promise<StoredWebhook> {
    const now = new Date().toISOString()
    const webhook: StoredWebhook = {
      id: `wh_${randomBytes(12).toString('base64url')}`,
      ...fields,
      created_at: now,
      updated_at: now,
      secrets: [{ value: newSecret(), expires_at: null }]
    }
    const counter = await this.store.hashSwap(this.#key, webhook.id, null, JSON.stringify(webhook), this.#counterKey)
    if (counter === 0) throw new RegistryConflictError(`webhook id ${webhook.id} is taken`)
    await this.#applied(webhook.id, webhook, counter)
    return webhook
  }

  /** Applies the changes to the record as it is now: fields not named keep what others set meanwhile. */
  async update (id: string, changes: Partial<WebhookFields>): Promise<StoredWebhook | undefined> {
    return await this.#change(id, (webhook) => ({ ...webhook, ...changes, updated_at: new Date().toISOString() }))
  }

  async delete (id: string): Promise<boolean> {
    for (let i = 0; i < SWAP_TRIES; i++) {
      const json = await this.store.hashGet(this.#key, id)
      if (json === null) return false
      const counter = await this.store.hashSwap(this.#key, id, json, null, this.#counterKey)
      if (counter > 0) {
        await this.#applied(id, undefined, counter)
        return true
      }
    }
    throw new RegistryConflictError(`webhook ${id} kept changing; not deleted`)
  }

  /** A new current secret; the old one keeps signing (beside the new) for `overlapMs`. */
  async rotateSecret (id: string, overlapMs: number): Promise<{ webhook: StoredWebhook, secret: string, previousExpiresAt: string } | undefined> {
    const secret = newSecret()
    let previousExpiresAt = ''
    const webhook = await this.#change(id, (current) => {
      const now = Date.now()
      previousExpiresAt = new Date(now + overlapMs).toISOString()
      const kept = current.secrets
        .filter((s) => s.expires_at === null || Date.parse(s.expires_at) > now)
        .map((s) => (s.expires_at === null ? { ...s, expires_at: previousExpiresAt } : s))
      return { ...current, secrets: [{ value: secret, expires_at: null }, ...kept], updated_at: new Date(now).toISOString() }
    })
    return webhook === undefined ? undefined : { webhook, secret, previousExpiresAt }
  }

  /** Read, change, compare-and-set; again on what another writer left, until it holds. */
  async #change (id: string, next: (webhook: StoredWebhook) => StoredWebhook): Promise<StoredWebhook | undefined> {
    for (let i = 0; i < SWAP_TRIES; i++) {
      const json = await this.store.hashGet(this.#key, id)
      if (json === null) return undefined
      const webhook = this.#decode(id, json)
      if (webhook === undefined) return undefined
      const updated = next(webhook)
      const counter = await this.store.hashSwap(this.#key, id, json, JSON.stringify(updated), this.#counterKey)
      if (counter > 0) {
        await this.#applied(id, updated, counter)
        return updated
      }
    }
    throw new RegistryConflictError(`webhook ${id} kept changing; not changed`)
  }

  /**
   * In effect here at once; then, before the change returns, on every other live instance: each
   * says which change it has read, and this waits (up to REGISTRY_ACK_MS) until all have read
   * this one, so no instance makes a new attempt to a webhook after its delete has answered.
   */
  async #applied (id: string, webhook: StoredWebhook | undefined, counter: number): Promise<void> {
    this.#writes++
    const all = new Map(this.#snapshot)
    if (webhook === undefined) all.delete(id)
    else all.set(id, webhook)
    await this.#replace([...all.values()])
    const deadline = performance.now() + REGISTRY_ACK_MS
    try {
      while (performance.now() < deadline) {
        if ((await this.#peers()).every((p) => p.counter >= counter)) return
        await new Promise((resolve) => setTimeout(resolve, 5))
      }
    } catch {
      // The change holds; others take it up within REGISTRY_POLL_MS once they can read it.
    }
  }

  async #replace (webhooks: StoredWebhook[]): Promise<void> {
    this.#snapshot = new Map(webhooks.map((w) => [w.id, w]))
    this.#ordered = [...webhooks].sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id))
    // A listener that fails (a subscription the bus refused) must not fail the change, which holds.
    await Promise.allSettled([...this.#listeners].map(async (listener) => await listener()))
  }

  /** A record that does not check is reported (once) and left out: never trusted, never fatal. */
  #decode (id: string, json: string): StoredWebhook | undefined {
    let record: unknown
    let why = ''
    try {
      record = JSON.parse(json)
    } catch (err) {
      why = `not JSON: ${(err as Error).message}`
    }
    if (why === '' && isStored(record)) {
      if (record.id === id) return { ...record, role: record.role ?? 'consumer' }
      why = `holds the id ${record.id}`
    }
    if (why === '') why = 'does not match the webhook record schema'
    if (this.#reported.get(id) !== json) {
      if (this.#reported.size > 1000) this.#reported.clear()
      this.#reported.set(id, json)
      this.onInvalid(id, why)
    }
    return undefined
  }
}
