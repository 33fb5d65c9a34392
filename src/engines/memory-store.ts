import type { HashGuard, Store } from './engine.js'
import type { MemoryKeyspace } from './memory-keyspace.js'

/** busgate's own state in one process, on the engine's keyspace. */
export class MemoryStore implements Store {
  readonly #keyspace: MemoryKeyspace
  #merges = 0

  constructor (keyspace: MemoryKeyspace) {
    this.#keyspace = keyspace
  }

  async hashGet (key: string, field: string): Promise<string | null> {
    return this.#keyspace.hash(key)?.get(field) ?? null
  }

  async hashGetAll (key: string): Promise<Record<string, string>> {
    return Object.fromEntries(this.#keyspace.hash(key) ?? [])
  }

  async hashSet (key: string, field: string, value: string): Promise<void> {
    const hash = this.#keyspace.hash(key) ?? new Map<string, string>()
    this.#keyspace.hashes.set(key, hash.set(field, value))
  }

  async hashMerge (key: string, fields: Record<string, string>, defaults: Record<string, string>, ttlMs: number, guard?: HashGuard): Promise<boolean> {
    const found = this.#keyspace.hash(key)
    if (guard !== undefined && guard.values.includes(found?.get(guard.field) as string)) return false
    if (guard?.rising !== undefined && fields[guard.rising] !== undefined && found?.has(guard.rising) === true) {
      const held = Number(found.get(guard.rising))
      const brought = Number(fields[guard.rising])
      if (Number.isFinite(held) && Number.isFinite(brought) && brought < held) return false
    }
    const hash = found ?? new Map<string, string>()
    for (const [field, value] of Object.entries(fields)) hash.set(field, value)
    for (const [field, value] of Object.entries(defaults)) if (!hash.has(field)) hash.set(field, value)
    this.#keyspace.hashes.set(key, hash)
    this.#keyspace.expiring.set(key, Date.now() + ttlMs)
    // Expired hashes nobody asks for again are swept now and then, so they cannot pile up.
    if (++this.#merges % 1000 === 0) for (const k of [...this.#keyspace.expiring.keys()]) this.#keyspace.hash(k)
    return true
  }

  async hashDelete (key: string, field: string): Promise<boolean> {
    return this.#keyspace.hash(key)?.delete(field) ?? false
  }

  async hashSwap (key: string, field: string, expected: string | null, value: string | null, counterKey: string): Promise<number> {
    const { counters } = this.#keyspace
    const hash = this.#keyspace.hash(key) ?? new Map<string, string>()
    if ((hash.get(field) ?? null) !== expected) return 0
    if (value === null) hash.delete(field)
    else this.#keyspace.hashes.set(key, hash.set(field, value))
    const counter = (counters.get(counterKey) ?? 0) + 1
    counters.set(counterKey, counter)
    return counter
  }

  async deleteKeys (...keys: string[]): Promise<void> {
    const { hashes, lists, strings, counters, expiring, retries, slots, rates } = this.#keyspace
    for (const key of keys) {
      for (const map of [hashes, lists, strings, counters, expiring, retries, slots, rates]) map.delete(key)
    }
  }

  async setExpiring (key: string, _value: string, ttlMs: number): Promise<void> {
    this.#keyspace.expiring.set(key, Date.now() + ttlMs)
  }

  async exists (key: string): Promise<boolean> {
    const { expiring, lists, strings } = this.#keyspace
    return (expiring.get(key) ?? 0) > Date.now() || this.#keyspace.hash(key) !== undefined || lists.has(key) || strings.has(key)
  }

  async setIfAbsent (key: string, value: string): Promise<string> {
    const { strings } = this.#keyspace
    if (!strings.has(key)) strings.set(key, value)
    return strings.get(key) as string
  }

  // Patterns are a literal or `prefix*`: what busgate asks for.
  async keys (pattern: string): Promise<string[]> {
    const { processing, hashes, lists, retries, expiring, strings } = this.#keyspace
    const prefix = pattern.endsWith('*') ? pattern.slice(0, -1) : pattern
    const all = [...processing.keys(), ...hashes.keys(), ...lists.keys(), ...retries.keys(), ...expiring.keys(), ...strings.keys()]
    return [...new Set(all)].filter((k) => (pattern.endsWith('*') ? k.startsWith(prefix) : k === pattern))
  }

  async listPushCapped (key: string, value: string | readonly string[], max: number): Promise<number> {
    const list = this.#keyspace.lists.get(key) ?? []
    this.#keyspace.lists.set(key, list)
    for (const v of typeof value === 'string' ? [value] : value) list.unshift(v)
    const length = list.length
    list.length = Math.min(list.length, max)
    return length
  }

  async listRange (key: string, start: number, stop: number): Promise<string[]> {
    const list = this.#keyspace.lists.get(key) ?? []
    return list.slice(start, stop < 0 ? list.length + stop + 1 : stop + 1)
  }

  async listRemove (key: string, value: string): Promise<number> {
    const list = this.#keyspace.lists.get(key) ?? []
    const kept = list.filter((v) => v !== value)
    this.#keyspace.lists.set(key, kept)
    return list.length - kept.length
  }

  // Lists of bytes (retry, subscriber copies) are kept apart from those of text: either is a list.
  async listLength (key: string): Promise<number> {
    return this.#keyspace.lists.get(key)?.length ?? this.#keyspace.retries.get(key)?.length ?? 0
  }

  async increment (key: string, by = 1): Promise<number> {
    const { counters } = this.#keyspace
    const next = (counters.get(key) ?? 0) + by
    counters.set(key, next)
    return next
  }

  async slotAcquire (inFlightKey: string, rateKey: string, token: string, maxInFlight: number, perSecond: number, ttlMs: number): Promise<number> {
    const now = Date.now()
    const held = this.#keyspace.slots.get(inFlightKey) ?? new Map<string, number>()
    if (maxInFlight > 0) {
      for (const [t, until] of held) if (until <= now) held.delete(t)
      if (held.size >= maxInFlight) return -1
    }
    if (perSecond > 0) {
      const free = this.#keyspace.rates.get(rateKey) ?? 0
      if (free > now) return Math.ceil(free - now)
      this.#keyspace.rates.set(rateKey, now + 1000 / perSecond)
    }
    if (maxInFlight > 0) this.#keyspace.slots.set(inFlightKey, held.set(token, now + ttlMs))
    return 0
  }

  async slotRelease (inFlightKey: string, token: string): Promise<void> {
    this.#keyspace.slots.get(inFlightKey)?.delete(token)
  }

  async hashIncrement (key: string, field: string, by: number): Promise<number> {
    const hash = this.#keyspace.hash(key) ?? new Map<string, string>()
    const next = Number(hash.get(field) ?? 0) + by
    this.#keyspace.hashes.set(key, hash.set(field, String(next)))
    return next
  }
}
