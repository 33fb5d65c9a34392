import { eventNameOf } from '../codec.js'
import { Errors } from '../errors.js'
import { globList } from '../glob.js'
import { SCAN_BYTES, type ImportedLetter } from './engine.js'
import { RankedList, type Ranked } from './ranked-list.js'

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

interface Waiter {
  processing: Buffer[]
  resolve: (frame: Buffer | null) => void
  timer: NodeJS.Timeout
}

/**
 * The consumer list: its messages with their bytes (what produce's bound counts), and the claims
 * blocked on it. Blocked claims are served first come, first served, as BLPOP serves them.
 */
export class ConsumerList {
  readonly #queue = new Fifo<Buffer>()
  // Insertion-ordered, so the first is the longest waiting; a waiter that times out leaves at once.
  readonly #waiters = new Set<Waiter>()
  #bytes = 0

  get length (): number {
    return this.#queue.length
  }

  get bytes (): number {
    return this.#bytes
  }

  /** Appends at the end; serveWaiters hands them to blocked claims. */
  push (...frames: Buffer[]): void {
    this.#queue.push(...frames)
    for (const frame of frames) this.#bytes += frame.byteLength
  }

  /** Puts a message back at the head. */
  unshiftOne (frame: Buffer): void {
    this.#queue.unshiftOne(frame)
    this.#bytes += frame.byteLength
  }

  take (): Buffer | undefined {
    const frame = this.#queue.shift()
    if (frame !== undefined) this.#bytes -= frame.byteLength
    return frame
  }

  /** The first `depth` queued messages (and SCAN_BYTES) a matching claim may take, as the script finds them. */
  scan (globs: readonly string[], depth: number, most: number, maxBytes: number): { found: Buffer[], looked: number, unreadable: number } {
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
  removeQueued (frames: readonly Buffer[], within: number): Buffer[] {
    const wanted = new Set(frames)
    const removed = this.#queue.removeWhere(within, (f) => wanted.has(f))
    for (const frame of removed) this.#bytes -= frame.byteLength
    return removed
  }

  /** Hands queued messages to blocked claims, the longest waiting first, onto their processing lists. */
  serveWaiters (): void {
    for (const waiter of this.#waiters) {
      const frame = this.take()
      if (frame === undefined) return
      this.#waiters.delete(waiter)
      clearTimeout(waiter.timer)
      waiter.processing.push(frame)
      waiter.resolve(frame)
    }
  }

  /** Blocks a claim for up to `ms`: the message serveWaiters hands it (already on `processing`), or null. */
  wait (processing: Buffer[], ms: number): Promise<Buffer | null> {
    return new Promise<Buffer | null>((resolve) => {
      const waiter: Waiter = {
        processing,
        resolve,
        timer: setTimeout(() => {
          this.#waiters.delete(waiter)
          resolve(null)
        }, ms)
      }
      this.#waiters.add(waiter)
    })
  }

  /** Ends every blocked claim with nothing. */
  cancelWaits (): void {
    for (const w of this.#waiters) {
      clearTimeout(w.timer)
      w.resolve(null)
    }
    this.#waiters.clear()
  }
}

export interface Delayed {
  dueAt: number
  value: Buffer
}

export type Letter = ImportedLetter

/** One set of dead letters: by id, and in their order (the key of each is its sequence number). */
export interface Letters {
  seq: number
  byId: Map<string, Ranked<Letter>>
  order: RankedList<Letter>
}

/**
 * Everything the memory engine keeps, nothing of it on restart: one keyspace its bus, work
 * queue and store share, as the Redis engine's parts share Redis's (the store deletes and lists
 * keys the work queue fills, dead letters go back onto the consumer list…).
 */
export class MemoryKeyspace {
  #closed = false
  readonly consumerList = new ConsumerList()
  readonly processing = new Map<string, Buffer[]>()
  /** Lists of bytes: retry lists, subscriber copies (see WorkQueue.recordHeard). */
  readonly retries = new Map<string, Buffer[]>()
  readonly delayed = new Map<string, Delayed[]>()
  /** Lists of values set aside by claims (see ClaimOptions.oversized), by key. */
  readonly held = new Map<string, Buffer[]>()
  /** when keys expire: hashes (see Store.hashMerge) and liveness keys (see Store.setExpiring) */
  readonly expiring = new Map<string, number>()
  readonly hashes = new Map<string, Map<string, string>>()
  /** Lists of text: the store's. */
  readonly lists = new Map<string, string[]>()
  readonly counters = new Map<string, number>()
  readonly strings = new Map<string, string>()
  /** places under shared limits (see Store.slotAcquire): token to until when it holds, by key */
  readonly slots = new Map<string, Map<string, number>>()
  /** when a rate next allows one (ms), by key */
  readonly rates = new Map<string, number>()
  /** the dead letters, by base (see WorkQueue.deadLetterStore) */
  readonly letters = new Map<string, Letters>()
  /** by seen key: until when it is kept, and the occurrence recorded for each webhook */
  readonly seen = new Map<string, { until: number, webhooks: Map<string, number> }>()

  get closed (): boolean {
    return this.#closed
  }

  assertOpen (): void {
    if (this.#closed) throw new Errors.ShuttingDown()
  }

  /** A hash, unless it has expired: then it is dropped. */
  hash (key: string): Map<string, string> | undefined {
    const at = this.expiring.get(key)
    if (at !== undefined && at <= Date.now() && this.hashes.has(key)) {
      this.expiring.delete(key)
      this.hashes.delete(key)
    }
    return this.hashes.get(key)
  }

  retryList (key: string): Buffer[] {
    const list = this.retries.get(key) ?? []
    this.retries.set(key, list)
    return list
  }

  heldList (key: string): Buffer[] {
    const list = this.held.get(key) ?? []
    this.held.set(key, list)
    return list
  }

  delaySet (key: string): Delayed[] {
    const set = this.delayed.get(key) ?? []
    this.delayed.set(key, set)
    return set
  }

  letterSet (base: string): Letters {
    const letters = this.letters.get(base) ?? { seq: 0, byId: new Map(), order: new RankedList<Letter>() }
    this.letters.set(base, letters)
    return letters
  }

  /** From now on every step that needs the bus refuses; blocked claims end with nothing. */
  close (): void {
    this.#closed = true
    this.consumerList.cancelWaits()
  }
}
