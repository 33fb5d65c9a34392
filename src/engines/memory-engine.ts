import { eventNameOf } from '../codec.js'
import { Errors } from '../errors.js'
import { globList } from '../glob.js'
import {
  LETTER_TRIM_MAX, READ_FRAME_BUDGET, SCAN_BYTES, checkFrameCount, deliverMessage, type Consumer, type DeadLetterStore, type Engine, type EngineOptions, type EngineState, type HeardEvent, type ImportedLetter,
  type LetterBytes, type ProduceResult, type Store, type StoredLetter, type SubscriptionHandlers
} from './engine.js'
import { RankedList, type Ranked } from './ranked-list.js'
import { LocalFeed, type Feed } from './feed.js'

/** A FIFO with O(1) push and shift: an array that is compacted once half of it is consumed. */
class Fifo<T> {
  #items: T[] = []
  #head = 0

  get length (): number {
    return this.#items.length - this.#head
  }

  push (...items: T[]): void {
    this.#items.push(...items)
  }

  /** Puts an item back at the front. */
  unshiftOne (item: T): void {
    if (this.#head > 0) this.#items[--this.#head] = item
    else this.#items.unshift(item)
  }

  /** The first `n` items, oldest first, without taking them. */
  * first (n: number): Generator<T> {
    for (let i = this.#head; i < this.#items.length && i - this.#head < n; i++) yield this.#items[i] as T
  }

  /** Takes out the items among the first `n` that `pick` chooses; the others keep their order. */
  removeWhere (n: number, pick: (item: T) => boolean): T[] {
    const removed: T[] = []
    const kept: T[] = []
    for (let item = this.shift(); item !== undefined; item = removed.length + kept.length < n ? this.shift() : undefined) {
      if (pick(item)) removed.push(item)
      else kept.push(item)
    }
    for (let i = kept.length - 1; i >= 0; i--) this.unshiftOne(kept[i] as T)
    return removed
  }

  shift (): T | undefined {
    if (this.#head >= this.#items.length) return undefined
    const item = this.#items[this.#head]
    this.#items[this.#head++] = undefined as T
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head)
      this.#head = 0
    }
    return item
  }
}

interface Delayed {
  dueAt: number
  value: Buffer
}

type Letter = ImportedLetter

/** One set of dead letters: by id, and in their order (the key of each is its sequence number). */
interface Letters {
  seq: number
  byId: Map<string, Ranked<Letter>>
  order: RankedList<Letter>
}

interface Waiter {
  processing: Buffer[]
  resolve: (frame: Buffer | null) => void
  timer: NodeJS.Timeout
}

/**
 * The embedded engine: the seed's semantics inside one process, nothing kept on restart.
 * Subscribers hear messages on a later tick, as they would from Redis; blocked consumers are
 * served first come, first served, as BLPOP serves them.
 */
export class MemoryEngine implements Engine {
  readonly kind = 'memory'
  #state: EngineState = 'ready'
  readonly #queue = new Fifo<Buffer>()
  readonly #processing = new Map<string, Buffer[]>()
  readonly #retries = new Map<string, Buffer[]>()
  readonly #delayed = new Map<string, Delayed[]>()
  readonly #expiring = new Map<string, number>()
  readonly #handlers = new Set<SubscriptionHandlers>()
  // Insertion-ordered, so the first is the longest waiting; a waiter that times out leaves at once.
  readonly #waiters = new Set<Waiter>()
  #queuedBytes = 0

  constructor (private readonly options: EngineOptions) {}

  get state (): EngineState {
    return this.#state
  }

  async connect (): Promise<void> {}

  async produce (frames: readonly Uint8Array[]): Promise<ProduceResult> {
    this.#assertOpen()
    checkFrameCount(frames)
    const bytes = frames.reduce((sum, f) => sum + f.byteLength, 0)
    if (this.#queue.length + frames.length > this.options.memoryQueueMax ||
      this.#queuedBytes + bytes > this.options.memoryQueueMaxBytes) {
      throw new Errors.QueueFull(`${this.options.memoryQueueMax} messages or ${this.options.memoryQueueMaxBytes} bytes`)
    }
    // Copies: the caller may reuse its buffers, and every reader must see the bytes as written.
    const copies = frames.map((f) => Buffer.from(f))
    this.#queue.push(...copies)
    this.#queuedBytes += bytes
    const subscribers = this.#handlers.size
    if (subscribers > 0) {
      const handlers = [...this.#handlers]
      setImmediate(() => {
        // A handler that throws must not stop the others; the hub logs its own failures.
        for (const frame of copies) deliverMessage(handlers, frame, () => undefined)
      })
    }
    const queueLength = this.#queue.length
    this.#serveWaiters()
    return { subscribers, queueLength }
  }

  // In one process nothing is ever missed, so there is no gap to report.
  async enqueue (frames: readonly Uint8Array[]): Promise<number> {
    this.#assertOpen()
    checkFrameCount(frames)
    for (const f of frames) {
      this.#queue.push(Buffer.from(f))
      this.#queuedBytes += f.byteLength
    }
    const length = this.#queue.length
    this.#serveWaiters()
    return length
  }

  /** This process's own: the memory engine is one process's bus. */
  history (): Feed {
    return new LocalFeed(this)
  }

  async subscribe (handlers: SubscriptionHandlers): Promise<() => Promise<void>> {
    this.#assertOpen()
    this.#handlers.add(handlers)
    return async () => { this.#handlers.delete(handlers) }
  }

  async queueLength (): Promise<number> {
    return this.#queue.length
  }

  async delayedLength (delayKey: string): Promise<number> {
    return this.#delayed.get(delayKey)?.length ?? 0
  }

  readonly #hashes = new Map<string, Map<string, string>>()
  readonly #lists = new Map<string, string[]>()
  readonly #counters = new Map<string, number>()
  readonly #strings = new Map<string, string>()

  #merges = 0

  /** A hash, unless it has expired: then it is dropped. */
  #hash (key: string): Map<string, string> | undefined {
    const at = this.#expiring.get(key)
    if (at !== undefined && at <= Date.now() && this.#hashes.has(key)) {
      this.#expiring.delete(key)
      this.#hashes.delete(key)
    }
    return this.#hashes.get(key)
  }

  readonly store: Store = {
    hashGet: async (key, field) => this.#hash(key)?.get(field) ?? null,
    hashGetAll: async (key) => Object.fromEntries(this.#hash(key) ?? []),
    hashSet: async (key, field, value) => {
      const hash = this.#hash(key) ?? new Map<string, string>()
      this.#hashes.set(key, hash.set(field, value))
    },
    hashMerge: async (key, fields, defaults, ttlMs, guard) => {
      const found = this.#hash(key)
      if (guard !== undefined && guard.values.includes(found?.get(guard.field) as string)) return false
      if (guard?.rising !== undefined && fields[guard.rising] !== undefined && found?.has(guard.rising) === true) {
        const held = Number(found.get(guard.rising))
        const brought = Number(fields[guard.rising])
        if (Number.isFinite(held) && Number.isFinite(brought) && brought < held) return false
      }
      const hash = found ?? new Map<string, string>()
      for (const [field, value] of Object.entries(fields)) hash.set(field, value)
      for (const [field, value] of Object.entries(defaults)) if (!hash.has(field)) hash.set(field, value)
      this.#hashes.set(key, hash)
      this.#expiring.set(key, Date.now() + ttlMs)
      // Expired hashes nobody asks for again are swept now and then, so they cannot pile up.
      if (++this.#merges % 1000 === 0) for (const k of [...this.#expiring.keys()]) this.#hash(k)
      return true
    },
    hashDelete: async (key, field) => this.#hash(key)?.delete(field) ?? false,
    hashSwap: async (key, field, expected, value, counterKey) => {
      const hash = this.#hash(key) ?? new Map<string, string>()
      if ((hash.get(field) ?? null) !== expected) return 0
      if (value === null) hash.delete(field)
      else this.#hashes.set(key, hash.set(field, value))
      const counter = (this.#counters.get(counterKey) ?? 0) + 1
      this.#counters.set(counterKey, counter)
      return counter
    },
    deleteKeys: async (...keys) => {
      for (const key of keys) {
        for (const map of [this.#hashes, this.#lists, this.#strings, this.#counters, this.#expiring, this.#retries]) map.delete(key)
      }
    },
    setExpiring: async (key, _value, ttlMs) => { this.#expiring.set(key, Date.now() + ttlMs) },
    exists: async (key) => (this.#expiring.get(key) ?? 0) > Date.now() || this.#hash(key) !== undefined || this.#lists.has(key) ||
      this.#strings.has(key),
    setIfAbsent: async (key, value) => {
      if (!this.#strings.has(key)) this.#strings.set(key, value)
      return this.#strings.get(key) as string
    },
    // Patterns are a literal or `prefix*`: what busgate asks for.
    keys: async (pattern) => {
      const prefix = pattern.endsWith('*') ? pattern.slice(0, -1) : pattern
      const all = [...this.#processing.keys(), ...this.#hashes.keys(), ...this.#lists.keys(), ...this.#retries.keys(), ...this.#expiring.keys(),
        ...this.#strings.keys()]
      return [...new Set(all)].filter((k) => (pattern.endsWith('*') ? k.startsWith(prefix) : k === pattern))
    },
    listPushCapped: async (key, value, max) => {
      const list = this.#lists.get(key) ?? []
      this.#lists.set(key, list)
      for (const v of typeof value === 'string' ? [value] : value) list.unshift(v)
      const length = list.length
      list.length = Math.min(list.length, max)
      return length
    },
    listRange: async (key, start, stop) => {
      const list = this.#lists.get(key) ?? []
      return list.slice(start, stop < 0 ? list.length + stop + 1 : stop + 1)
    },
    listRemove: async (key, value) => {
      const list = this.#lists.get(key) ?? []
      const kept = list.filter((v) => v !== value)
      this.#lists.set(key, kept)
      return list.length - kept.length
    },
    // Lists of bytes (retry, subscriber copies) are kept apart from those of text: either is a list.
    listLength: async (key) => this.#lists.get(key)?.length ?? this.#retries.get(key)?.length ?? 0,
    increment: async (key, by = 1) => {
      const next = (this.#counters.get(key) ?? 0) + by
      this.#counters.set(key, next)
      return next
    }
  }

  readonly #letters = new Map<string, Letters>()

  /** Each call a synchronous step, so each is as atomic as a script is in Redis. */
  deadLetterStore (base: string, retryKey: string): DeadLetterStore {
    const letters = this.#letters.get(base) ?? { seq: 0, byId: new Map(), order: new RankedList<Letter>() }
    this.#letters.set(base, letters)
    const { byId, order } = letters
    // As the scripts read them: bytes past the bound, or past what one read brings in, stay where
    // they are; only their size goes out.
    const reader = (maxFrameBytes: number): (frame: Buffer) => LetterBytes => {
      let budget = Math.max(maxFrameBytes, READ_FRAME_BUDGET)
      return (frame) => {
        const shown = frame.byteLength <= maxFrameBytes && frame.byteLength <= budget
        if (shown) budget -= frame.byteLength
        return { frame: shown ? frame : null, frameBytes: frame.byteLength }
      }
    }
    const stored = ({ value: { id, meta, frame } }: Ranked<Letter>, read: (frame: Buffer) => LetterBytes): StoredLetter => ({ id, meta, ...read(frame) })
    const forget = (item: Ranked<Letter>): void => {
      order.remove(item)
      byId.delete(item.value.id)
    }
    const put = ({ id, meta, frame, returns }: ImportedLetter): void => {
      const same = byId.get(id)
      if (same !== undefined) forget(same)
      byId.set(id, order.push(++letters.seq, { id, meta, frame: Buffer.from(frame), ...(returns === undefined ? {} : { returns: Buffer.from(returns) }) }))
    }
    const trim = (max: number): number => {
      let dropped = 0
      for (; order.size > max && dropped < LETTER_TRIM_MAX; dropped++) forget(order.at(0) as Ranked<Letter>)
      return dropped
    }
    // As the script does it: the bytes onto the consumer list and the letters out, together.
    const move = (items: ReadonlyArray<Ranked<Letter>>): number => {
      this.#assertOpen()
      for (const item of items) {
        forget(item)
        if (item.value.returns !== undefined) {
          this.#retryList(retryKey).push(item.value.returns)
          continue
        }
        this.#queue.push(item.value.frame)
        this.#queuedBytes += item.value.frame.byteLength
      }
      this.#serveWaiters()
      return items.length
    }
    return {
      add: async (letter, max) => {
        put(letter)
        return trim(max)
      },
      count: async () => order.size,
      get: async (id, maxFrameBytes) => {
        const item = byId.get(id)
        return item === undefined ? undefined : stored(item, reader(maxFrameBytes))
      },
      page: async (offset, limit, maxFrameBytes) => {
        const found: StoredLetter[] = []
        const read = reader(maxFrameBytes)
        for (let rank = order.size - 1 - offset; rank >= 0 && found.length < limit; rank--) found.push(stored(order.at(rank) as Ranked<Letter>, read))
        return { total: order.size, letters: found }
      },
      scan: async (before, count) => {
        const found: Array<{ id: string, seq: number, meta: string }> = []
        for (let rank = order.countBelow(before) - 1; rank >= 0 && found.length < count; rank--) {
          const { key, value } = order.at(rank) as Ranked<Letter>
          found.push({ id: value.id, seq: key, meta: value.meta })
        }
        return found
      },
      frames: async (ids, maxFrameBytes) => {
        const read = reader(maxFrameBytes)
        return ids.map((id) => {
          const item = byId.get(id)
          return item === undefined ? { frame: null, frameBytes: 0 } : read(item.value.frame)
        })
      },
      remove: async (id) => {
        const item = byId.get(id)
        if (item !== undefined) forget(item)
        return item !== undefined
      },
      redeliver: async (id) => {
        const item = byId.get(id)
        return item !== undefined && move([item]) === 1
      },
      redeliverOldest: async (after, upto, count) => {
        const items: Array<Ranked<Letter>> = []
        // As the script: no more than READ_FRAME_BUDGET bytes in one step, one letter at least.
        let bytes = 0
        for (let rank = order.countBelow(after, true); items.length < count; rank++) {
          const item = order.at(rank)
          if (item === undefined || item.key > upto) break
          if (items.length > 0 && bytes + item.value.frame.byteLength > READ_FRAME_BUDGET) break
          items.push(item)
          bytes += item.value.frame.byteLength
        }
        return { moved: move(items), last: items[items.length - 1]?.key ?? null }
      },
      newest: async () => order.at(order.size - 1)?.key ?? 0,
      importTail: async (listKey, tail, imported, max) => {
        const list = this.#lists.get(listKey) ?? []
        const end = list.slice(list.length - tail.length)
        if (tail.length === 0 || list.length < tail.length || end.some((v, i) => v !== tail[i])) return false
        const unreadable = this.#lists.get(`${base}:unreadable`) ?? []
        // The tail's last value is the list's oldest: in first, so the order stays.
        for (let i = tail.length - 1; i >= 0; i--) {
          const letter = imported[i]
          if (letter === undefined || letter === null) unreadable.push(tail[i] as string)
          else if (!byId.has(letter.id)) put(letter)
        }
        if (unreadable.length > 0) this.#lists.set(`${base}:unreadable`, unreadable)
        list.length -= tail.length
        if (list.length === 0) this.#lists.delete(listKey)
        trim(max)
        return true
      },
      adoptHeld: async (listKey, { id, meta }, max) => {
        const frame = this.#held.get(listKey)?.shift()
        if (frame === undefined) return null
        put({ id, meta, frame })
        return { bytes: frame.byteLength, dropped: trim(max) }
      }
    }
  }

  /** by seen key: until when it is kept, and the occurrence recorded for each webhook */
  readonly #seen = new Map<string, { until: number, webhooks: Map<string, number> }>()

  async recordHeard (events: readonly HeardEvent[], ttlMs: number, max: number): Promise<{ recorded: boolean[], dropped: number }> {
    this.#assertOpen()
    const now = Date.now()
    // Expired marks go first, as Redis's expiry would take them; the map keeps them in expiry order.
    for (const [key, mark] of this.#seen) {
      if (mark.until > now) break
      this.#seen.delete(key)
    }
    let dropped = 0
    const recorded = events.map((event) => {
      const held = this.#seen.get(event.seenKey)?.webhooks ?? new Map<string, number>()
      this.#seen.delete(event.seenKey)
      this.#seen.set(event.seenKey, { until: now + ttlMs, webhooks: held })
      let any = false
      for (const { webhook, list, value } of event.copies) {
        if ((held.get(webhook) ?? 0) >= event.occurrence) continue
        held.set(webhook, event.occurrence)
        any = true
        const values = this.#retryList(list)
        values.push(Buffer.from(value))
        if (values.length > max) dropped += values.splice(0, values.length - max).length
      }
      return any
    })
    return { recorded, dropped }
  }

  async ping (): Promise<void> {
    this.#assertOpen()
  }

  async reclaim (processingKey: string, retryKey: string, envelopePrefix: string): Promise<number> {
    const processing = this.#processing.get(processingKey) ?? []
    const moved = processing.splice(0)
    this.#putBack(moved, envelopePrefix, this.#retryList(retryKey))
    return moved.length
  }

  /** Back ahead of everything queued, in their order: envelopes to the retry list, the rest to the queue. */
  #putBack (values: readonly Buffer[], envelopePrefix: string, retry: Buffer[]): void {
    const prefix = Buffer.from(envelopePrefix)
    const isEnvelope = (v: Buffer): boolean => v.subarray(0, prefix.length).equals(prefix)
    retry.unshift(...values.filter(isEnvelope))
    const back = values.filter((v) => !isEnvelope(v))
    for (let i = back.length - 1; i >= 0; i--) {
      this.#queue.unshiftOne(back[i] as Buffer)
      this.#queuedBytes += (back[i] as Buffer).byteLength
    }
    this.#serveWaiters()
  }

  #delaySet (key: string): Delayed[] {
    const set = this.#delayed.get(key) ?? []
    this.#delayed.set(key, set)
    return set
  }

  /** Lists of values set aside by claims (see ClaimOptions.oversized), by key. */
  readonly #held = new Map<string, Buffer[]>()

  #heldList (key: string): Buffer[] {
    const list = this.#held.get(key) ?? []
    this.#held.set(key, list)
    return list
  }

  #retryList (key: string): Buffer[] {
    const list = this.#retries.get(key) ?? []
    this.#retries.set(key, list)
    return list
  }

  consumer (processingKey: string, retryKey?: string, delayKey?: string): Consumer {
    const processing = this.#processing.get(processingKey) ?? []
    this.#processing.set(processingKey, processing)
    // A consumer without a retry list or a delay set looks at ones that nothing fills, as in Redis.
    const retry = this.#retryList(retryKey ?? `${processingKey}:retry`)
    const delayed = this.#delaySet(delayKey ?? `${processingKey}:delayed`)
    const remove = (frame: Buffer): boolean => {
      const i = processing.findIndex((f) => f.equals(frame))
      if (i >= 0) processing.splice(i, 1)
      return i >= 0
    }
    return {
      claim: async (timeoutMs, { max = 1, sharers = 1, done = [], oversized, take, sources = [], sourcesFirst = false, scanned } = {}) => {
        this.#assertOpen()
        for (const frame of done) remove(frame)
        const deadline = performance.now() + timeoutMs
        for (;;) {
          const now = performance.now()
          // One due message joins the retry list per claim, as in the script.
          if (max > 0 && delayed.length > 0 && (delayed[0] as Delayed).dueAt <= now) retry.push((delayed.shift() as Delayed).value)
          let taken = retry.splice(0, max)
          const fromSources = (): void => {
            for (const key of sources) {
              const list = this.#retries.get(key)
              if (list !== undefined) taken.push(...list.splice(0, max - taken.length))
              if (list?.length === 0) this.#retries.delete(key)
            }
          }
          const fromList = (): void => {
            const share = Math.min(max, Math.max(1, Math.floor(this.#queue.length / sharers)))
            if (take === undefined) {
              for (let frame = this.#take(); frame !== undefined; frame = taken.length < share ? this.#take() : undefined) taken.push(frame)
            } else if (take.globs.length > 0) {
              const { found, looked, unreadable } = this.#scan(take.globs, take.depth, share, oversized?.maxBytes ?? 0)
              scanned?.(looked, unreadable)
              taken.push(...this.#removeQueued(found, looked))
            }
          }
          if (taken.length === 0 && max > 0) {
            if (sourcesFirst) fromSources()
            if (taken.length === 0) fromList()
            if (!sourcesFirst && taken.length === 0) fromSources()
          }
          // As the script does: what is past the bound goes to its list, not to the caller.
          const aside = oversized === undefined ? [] : taken.filter((f) => f.byteLength > oversized.maxBytes)
          if (aside.length > 0 && oversized !== undefined) {
            taken = taken.filter((f) => f.byteLength <= oversized.maxBytes)
            this.#heldList(oversized.key).push(...aside)
            oversized.setAside(aside.length)
          }
          processing.push(...taken)
          // produce() hands messages to blocked consumers at once, so a queued message means none
          // waits; a matching claim never waits (its caller does).
          if (taken.length > 0 || aside.length > 0 || max === 0 || take !== undefined) return taken
          const until = Math.min(deadline, delayed[0]?.dueAt ?? Infinity)
          const frame = await new Promise<Buffer | null>((resolve) => {
            const waiter: Waiter = {
              processing,
              resolve,
              timer: setTimeout(() => {
                this.#waiters.delete(waiter)
                resolve(null)
              }, Math.max(1, until - now))
            }
            this.#waiters.add(waiter)
          })
          if (frame !== null) return [frame]
          if (performance.now() >= deadline || this.#state === 'closed') return []
        }
      },
      release: async (frames, envelopePrefix) => {
        // As LREM count 1 per frame: each copy given takes one copy held, if there is one.
        this.#putBack(frames.filter(remove), envelopePrefix, retry)
      },
      ack: async (...frames) => { for (const frame of frames) remove(frame) },
      giveBack: async (claimed, frame) => {
        if (!remove(claimed)) return
        this.#queue.unshiftOne(Buffer.from(frame))
        this.#queuedBytes += frame.byteLength
        this.#serveWaiters()
      },
      delay: async (frame, next, delayMs) => {
        this.#assertOpen()
        if (!remove(frame)) return
        const dueAt = performance.now() + Math.max(0, delayMs)
        // Kept in due order, and each value once, as a sorted set keeps its members.
        const same = delayed.findIndex((d) => d.value.equals(next))
        if (same >= 0) delayed.splice(same, 1)
        const at = delayed.findIndex((d) => d.dueAt > dueAt)
        delayed.splice(at < 0 ? delayed.length : at, 0, { dueAt, value: Buffer.from(next) })
      },
      pending: async () => processing.length,
      close: async () => {}
    }
  }

  async close (): Promise<void> {
    this.#state = 'closed'
    for (const w of this.#waiters) {
      clearTimeout(w.timer)
      w.resolve(null)
    }
    this.#waiters.clear()
    this.#handlers.clear()
  }

  /** The first `depth` queued messages (and SCAN_BYTES) a matching claim may take, as the script finds them. */
  #scan (globs: readonly string[], depth: number, most: number, maxBytes: number): { found: Buffer[], looked: number, unreadable: number } {
    const matches = globList(globs.join(','))
    const found: Buffer[] = []
    let looked = 0
    let unreadable = 0
    let bytes = 0
    for (const frame of this.#queue.first(depth)) {
      looked++
      bytes += frame.byteLength
      const name = maxBytes > 0 && frame.byteLength > maxBytes ? undefined : eventNameOf(frame)
      if (name === undefined) unreadable++
      else if (matches(name)) found.push(frame)
      if (found.length >= most || bytes > SCAN_BYTES) break
    }
    return { found, looked, unreadable }
  }

  /** Takes these messages, found among the first `within` queued, out, leaving the others in their order. */
  #removeQueued (frames: readonly Buffer[], within: number): Buffer[] {
    const wanted = new Set(frames)
    const removed = this.#queue.removeWhere(within, (f) => wanted.has(f))
    for (const frame of removed) this.#queuedBytes -= frame.byteLength
    return removed
  }

  #take (): Buffer | undefined {
    const frame = this.#queue.shift()
    if (frame !== undefined) this.#queuedBytes -= frame.byteLength
    return frame
  }

  #serveWaiters (): void {
    for (const waiter of this.#waiters) {
      const frame = this.#take()
      if (frame === undefined) return
      this.#waiters.delete(waiter)
      clearTimeout(waiter.timer)
      waiter.processing.push(frame)
      waiter.resolve(frame)
    }
  }

  #assertOpen (): void {
    if (this.#state === 'closed') throw new Errors.ShuttingDown()
  }
}
