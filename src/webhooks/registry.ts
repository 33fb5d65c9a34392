import { randomBytes } from 'node:crypto'
import type { Store } from '../engines/engine.js'

export interface WebhookSecret {
  value: string
  /** null for the current secret; when the previous one stops being used to sign */
  expires_at: string | null
}

/** A webhook as stored: in Redis, so every gateway instance sees the same set. */
export interface StoredWebhook {
  id: string
  url: string
  event_names: string[]
  description: string
  enabled: boolean
  created_at: string
  updated_at: string
  secrets: WebhookSecret[]
}

/** What the API shows: never a secret. */
export type PublicWebhook = Omit<StoredWebhook, 'secrets'>

export interface WebhookFields {
  url: string
  event_names: string[]
  description: string
  enabled: boolean
}

/** A Standard Webhooks secret: `whsec_` and 24 random bytes in base64. */
export function newSecret (): string {
  return `whsec_${randomBytes(24).toString('base64')}`
}

export function toPublic ({ secrets: _secrets, ...rest }: StoredWebhook): PublicWebhook {
  return rest
}

/** The secrets still valid at `now`: the current one, and a rotated-out one within its overlap. */
export function activeSecrets (webhook: StoredWebhook, now = Date.now()): string[] {
  return webhook.secrets.filter((s) => s.expires_at === null || Date.parse(s.expires_at) > now).map((s) => s.value)
}

/** The webhook registry, on the engine's store under the key prefix. */
export class WebhookRegistry {
  readonly #key: string

  constructor (private readonly store: Store, keyPrefix: string) {
    this.#key = `${keyPrefix}webhooks`
  }

  async list (): Promise<StoredWebhook[]> {
    const all = await this.store.hashGetAll(this.#key)
    return Object.values(all).map((json) => JSON.parse(json) as StoredWebhook)
      .sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id))
  }

  async get (id: string): Promise<StoredWebhook | undefined> {
    const json = await this.store.hashGet(this.#key, id)
    return json === null ? undefined : JSON.parse(json) as StoredWebhook
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
    await this.#save(webhook)
    return webhook
  }

  async update (id: string, changes: Partial<WebhookFields>): Promise<StoredWebhook | undefined> {
    const webhook = await this.get(id)
    if (webhook === undefined) return undefined
    const updated: StoredWebhook = { ...webhook, ...changes, updated_at: new Date().toISOString() }
    await this.#save(updated)
    return updated
  }

  async delete (id: string): Promise<boolean> {
    return await this.store.hashDelete(this.#key, id)
  }

  /** A new current secret; the old one keeps signing (beside the new) for `overlapMs`. */
  async rotateSecret (id: string, overlapMs: number): Promise<{ webhook: StoredWebhook, secret: string, previousExpiresAt: string } | undefined> {
    const webhook = await this.get(id)
    if (webhook === undefined) return undefined
    const now = Date.now()
    const previousExpiresAt = new Date(now + overlapMs).toISOString()
    const secret = newSecret()
    const kept = webhook.secrets
      .filter((s) => s.expires_at === null || Date.parse(s.expires_at) > now)
      .map((s) => (s.expires_at === null ? { ...s, expires_at: previousExpiresAt } : s))
    const updated: StoredWebhook = { ...webhook, secrets: [{ value: secret, expires_at: null }, ...kept], updated_at: new Date(now).toISOString() }
    await this.#save(updated)
    return { webhook: updated, secret, previousExpiresAt }
  }

  async #save (webhook: StoredWebhook): Promise<void> {
    await this.store.hashSet(this.#key, webhook.id, JSON.stringify(webhook))
  }
}
