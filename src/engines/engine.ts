import type { Redis } from 'ioredis'
import type { Config } from '../config.js'
import type { Feed, HistoryMetrics } from './feed.js'
import { MAX_FRAMES_PER_PRODUCE } from './limits.js'

export { MAX_FRAMES_PER_PRODUCE }

export interface ProduceResult {
  /** clients that received the PUBLISH (other gateways, Backend.AI managers…) */
  subscribers: number
  /** length of the consumer list right after the push */
  queueLength: number
}

export type EngineState = 'connecting' | 'ready' | 'down' | 'closed'

/** Most bytes of the consumer list one matching claim reads (see ClaimOptions.take), besides its depth bound. */
export const SCAN_BYTES = 8 * 1024 * 1024

export type MessageHandler = (frame: Buffer) => void

/**
 * Hands a channel message to every handler. A handler that throws must take neither the others
 * nor the connection with it: the engines call this from their socket's read path.
 */
export function deliverMessage (handlers: Iterable<SubscriptionHandlers>, frame: Buffer, onError: (err: unknown) => void): void {
  for (const handler of handlers) {
    try {
      handler.message(frame)
    } catch (err) {
      onError(err)
    }
  }
}

export interface HistoryOptions {
  shared: boolean
  /** where the shared history's keys go */
  keyPrefix: string
  /** most entries and bytes of messages it keeps; the oldest go first */
  size: number
  bytes: number
  /** messages larger than this keep their place, not their bytes */
  maxMessageBytes: number
  metrics: HistoryMetrics
}

export interface SubscriptionHandlers {
  /** every message of the broadcast channel, in publish order */
  message: MessageHandler
  /** the subscription was lost and is back: messages published meanwhile were missed */
  gap?: () => void
}

export interface HashGuard {
  /** nothing changes while this field holds one of `values` */
  field: string
  values: readonly string[]
  /** nothing changes either when the hash holds a larger number in this field than `fields` brings */
  rising?: string
}

export interface ClaimOptions {
  max?: number
  sharers?: number
  done?: readonly Buffer[]
  /**
   * Values longer than `maxBytes` are not returned: they go, in the same step, to the end of the
   * list `key` (where the caller takes them in, see DeadLetterStore.adoptHeld), and `setAside`
   * hears how many. A value of any size a producer pushed must not travel to the gateway.
   */
  oversized?: { maxBytes: number, key: string, setAside: (count: number) => void }
  /**
   * Takes from the consumer list only messages whose event name one of `globs` matches, among
   * its first `depth` values (and SCAN_BYTES), leaving every other value where it is, in its
   * order; values it cannot read as a bus event, or longer than `oversized.maxBytes`, are left
   * too. No globs: nothing from the consumer list. Such a claim never waits: it returns at once.
   */
  take?: { globs: readonly string[], depth: number }
  /** Lists of envelopes (a subscriber webhook's copies) to take from too, after put-back ones. */
  sources?: readonly string[]
  /** Takes from `sources` before the consumer list; callers alternate, so neither starves the other. */
  sourcesFirst?: boolean
  /** Hears, after a `take` claim, how many values it looked at and how many of them it could not read. */
  scanned?: (looked: number, unreadable: number) => void
}

/**
 * One consumer of the consumer list, with its own processing list: a claimed message stays
 * there until acknowledged, so a crash of its holder loses nothing.
 */
export interface Consumer {
  /**
   * Moves messages to the processing list: first ones put back for retry (see `reclaim`) and
   * delayed ones that are due (see `delay`), else the oldest queued ones; waits up to timeoutMs
   * for one when none is there, and returns none when none came. Takes up to `max` (default 1), but no more than a fair share of what is
   * queued (`sharers` taking from it), so one taker does not hold what idle ones could deliver.
   * `done`, messages this consumer finished with, are acknowledged first, in the same round trip.
   */
  claim (timeoutMs: number, options?: ClaimOptions): Promise<Buffer[]>
  /** Removes claimed messages from the processing list. */
  ack (...frames: Buffer[]): Promise<void>
  /**
   * Hands claimed messages back untouched, in their order, ahead of everything queued: values
   * starting with `envelopePrefix` to the retry list, the others to the consumer list.
   */
  release (frames: readonly Buffer[], envelopePrefix: string): Promise<void>
  /**
   * Takes a claimed message out of the processing list and keeps `next` (its envelope, with its
   * retry state) aside for `delayMs` (by the bus's clock): then any consumer of the same delay
   * set claims it again, one due message per claim, before anything else. Nobody holds it
   * meanwhile, so a crash loses nothing.
   */
  delay (frame: Buffer, next: Buffer, delayMs: number): Promise<void>
  /**
   * Takes a claimed value out of the processing list and puts `frame` (the bare message it
   * holds) back at the head of the consumer list, in one step: a message taken for a webhook
   * that no longer wants it goes back to the other consumers.
   */
  giveBack (claimed: Buffer, frame: Buffer): Promise<void>
  /** How many claimed messages wait in the processing list. */
  pending (): Promise<number>
  close (): Promise<void>
}

/**
 * busgate's own state (webhook registry, dead letters, attempt logs, counters): a few Redis
 * primitives, on keys under BUSGATE_KEY_PREFIX, that both engines provide.
 */
export interface Store {
  hashGet (key: string, field: string): Promise<string | null>
  hashGetAll (key: string): Promise<Record<string, string>>
  hashSet (key: string, field: string, value: string): Promise<void>
  /**
   * In one step, unless `guard` says no (then nothing changes and it returns false): sets `fields`, sets each of `defaults` only where the hash has
   * no such field, and makes the whole hash expire `ttlMs` from now.
   */
  hashMerge (key: string, fields: Record<string, string>, defaults: Record<string, string>, ttlMs: number, guard?: HashGuard): Promise<boolean>
  /** true when the field existed */
  hashDelete (key: string, field: string): Promise<boolean>
  /**
   * Compare and set, in one step: when the field holds `expected` (null: no such field), sets it
   * to `value` (null: deletes it), increments the counter `counterKey` and returns its new value;
   * otherwise changes nothing and returns 0.
   */
  hashSwap (key: string, field: string, expected: string | null, value: string | null, counterKey: string): Promise<number>
  /** Deletes keys; what is not there is no error. */
  deleteKeys (...keys: string[]): Promise<void>
  /** SET with an expiry: liveness keys. */
  setExpiring (key: string, value: string, ttlMs: number): Promise<void>
  exists (key: string): Promise<boolean>
  /** Stores the value unless the key holds one already; returns what the key holds then (SET NX, GET). */
  setIfAbsent (key: string, value: string): Promise<string>
  /** Every key matching a glob pattern (SCAN). */
  keys (pattern: string): Promise<string[]>
  /** Adds at the head (several: the last ends first, as LPUSH) and keeps the newest `max`; returns the length before trimming. */
  listPushCapped (key: string, value: string | readonly string[], max: number): Promise<number>
  /** Newest first, as LRANGE after LPUSH. */
  listRange (key: string, start: number, stop: number): Promise<string[]>
  /** Removes every copy of the value; returns how many. */
  listRemove (key: string, value: string): Promise<number>
  listLength (key: string): Promise<number>
  /** INCRBY: returns the new value */
  increment (key: string, by?: number): Promise<number>
  /** HINCRBY: returns the field's new value */
  hashIncrement (key: string, field: string, by: number): Promise<number>
  /**
   * A place under shared limits, in one step: unless the sorted set `inFlightKey` holds
   * `maxInFlight` live tokens (0: no bound) or the rate kept in `rateKey` allows no delivery yet
   * (`perSecond` deliveries a second, evenly spaced; 0: no bound), takes one: adds `token`,
   * live for `ttlMs` (so a holder that dies frees it), and moves the rate on. Returns 0 when it
   * took one, how many ms until the rate allows one, or -1 when all places are held.
   */
  slotAcquire (inFlightKey: string, rateKey: string, token: string, maxInFlight: number, perSecond: number, ttlMs: number): Promise<number>
  /** Gives back a place `slotAcquire` took. */
  slotRelease (inFlightKey: string, token: string): Promise<void>
}

/**
 * A dead letter's bytes as read under a bound: they are what a hostile producer put on the bus,
 * of any size, so a reader gets them only when they are within the bound it gives, and their
 * size always.
 */
export interface LetterBytes {
  /** the message's bytes as they were on the bus; null when there are none (`frameBytes` 0) or more than the bound */
  frame: Buffer | null
  /** how many bytes it keeps; 0 when it keeps none */
  frameBytes: number
}

/** A dead letter as an engine keeps it. Hand-edited state may lack either part: then null (no bytes: `frameBytes` 0 too). */
export interface StoredLetter extends LetterBytes {
  id: string
  /** its description, JSON the engine does not read */
  meta: string | null
}

/** A dead letter being added, or moved in from the old list layout. */
export interface ImportedLetter {
  id: string
  meta: string
  frame: Buffer
  /**
   * What a redelivery appends to the retry list instead of putting `frame` on the consumer
   * list: a subscriber webhook's copy, sealed for its webhook, which must reach it alone.
   */
  returns?: Buffer
}

/**
 * Most bytes of letters one read (a page, the bytes of a filtered page) brings into the gateway,
 * or `maxFrameBytes` if that is more: a thousand letters of a megabyte each would make a JSON
 * answer past V8's longest string. Letters past it are shown by their size, as ones too large.
 */
export const READ_FRAME_BUDGET = 16 * 1024 * 1024

/** Most of the oldest letters one add drops: a lowered BUSGATE_DEAD_LETTER_MAX is caught up with over several adds, not in one long step. */
export const LETTER_TRIM_MAX = 1000

/**
 * The dead letters, kept in the order they came (each has a sequence number, rising, that says
 * so), each findable by id, bounded. Every method is one atomic step of the engine. Letters go
 * back onto the engine's consumer list in the same step that takes them out, so none can be
 * both redelivered and kept, or redelivered twice.
 */
export interface DeadLetterStore {
  /** Adds a letter as the newest and drops the oldest past `max` (at most LETTER_TRIM_MAX); returns how many it dropped. An id already there (an add sent again) changes nothing. */
  add (letter: ImportedLetter, max: number): Promise<number>
  count (): Promise<number>
  /** Its bytes only when they are at most `maxFrameBytes`, as in `page` and `frames`. */
  get (id: string, maxFrameBytes: number): Promise<StoredLetter | undefined>
  /** Newest first, by position (0: the newest), with how many there are. */
  page (offset: number, limit: number, maxFrameBytes: number): Promise<{ total: number, letters: StoredLetter[] }>
  /** Newest first, descriptions only: up to `count` letters whose sequence is below `before` (Infinity: from the newest). */
  scan (before: number, count: number): Promise<Array<{ id: string, seq: number, meta: string | null }>>
  /** The bytes of these letters, in their order; for one that is gone, no frame and 0 bytes. */
  frames (ids: readonly string[], maxFrameBytes: number): Promise<LetterBytes[]>
  /** true when it was there */
  remove (id: string): Promise<boolean>
  /** Appends its bytes to the consumer list (or its `returns` to the retry list) and takes it out, in one step; false when it is gone or has no bytes. */
  redeliver (id: string): Promise<boolean>
  /**
   * The same for the oldest letters whose sequence is above `after` (-Infinity: from the oldest)
   * and at most `upto`, up to `count` of them and READ_FRAME_BUDGET bytes (one at least), oldest first: how many moved, and the sequence of
   * the last one looked at (null when none was), where the next call goes on.
   */
  redeliverOldest (after: number, upto: number, count: number): Promise<{ moved: number, last: number | null }>
  /** The sequence of the newest letter; 0 when there is none. */
  newest (): Promise<number>
  /**
   * Moves the last values of the list `listKey` (an LPUSHed list: its oldest last, as `tail`
   * gives them) in, in one step, and only while the list still ends with exactly `tail`:
   * otherwise nothing changes and it returns false. `letters[i]` is what `tail[i]` holds, or
   * null when it holds none: that value goes unchanged to the end of the list `<base>:unreadable`.
   * A letter whose id is already kept is not added again. The oldest past `max` go, as in `add`.
   */
  importTail (listKey: string, tail: readonly string[], letters: ReadonlyArray<ImportedLetter | null>, max: number): Promise<boolean>
  /**
   * Takes the oldest value of the list `listKey` (values a claim set aside, see
   * ClaimOptions.oversized) in as the letter `letter` describes, its bytes moving inside the
   * engine, in one step; the oldest past `max` go, as in `add`. Returns the value's size and how
   * many letters the bound dropped, or null when the list is empty.
   */
  adoptHeld (listKey: string, letter: { id: string, meta: string }, max: number): Promise<{ bytes: number, dropped: number } | null>
}

/** A broadcast event one instance heard, with the copies it makes of it (see Engine.recordHeard). */
export interface HeardEvent {
  /**
   * Names the event among what every instance hears: its bytes' digest and how many times this
   * instance has heard those bytes (1 the first time), so identical events published twice stay two.
   */
  seenKey: string
  occurrence: number
  /** what to append, to which list, for which webhook */
  copies: ReadonlyArray<{ webhook: string, list: string, value: Buffer }>
}

/**
 * The event bus busgate bridges: what producers, streams and the task view need. Both engines
 * keep the seed's semantics: `produce` writes one copy per event to the broadcast channel and
 * one to the consumer list, all or nothing.
 */
export interface Bus {
  /** Writes every frame (1 to MAX_FRAMES_PER_PRODUCE) to both keys, atomically; rejects with a 503-coded error when the bus is unavailable. */
  produce (frames: readonly Uint8Array[]): Promise<ProduceResult>
  /**
   * Receives every message of the broadcast channel, in publish order, until the returned
   * function is called. The bus subscription exists while at least one handler does.
   */
  subscribe (handlers: SubscriptionHandlers): Promise<() => Promise<void>>
  /**
   * The broadcast channel as a history with ids, for streams and their resumes: in Redis, one
   * for every instance, when `shared` (Redis only); otherwise this process's (see Feed).
   */
  history (options: HistoryOptions): Feed
  /** How many messages wait in the consumer list. */
  queueLength (): Promise<number>
}

/** The work queue the webhook dispatcher consumes: claims, acknowledgements, delays, reclaims, dead letters. */
export interface WorkQueue {
  /** Appends frames to the consumer list only (no broadcast): a redelivery. Returns the list's length. */
  enqueue (frames: readonly Uint8Array[]): Promise<number>
  /** How many messages wait in a delay set (see Consumer.delay). */
  delayedLength (delayKey: string): Promise<number>
  /**
   * A consumer with its own processing list; `retryKey` is the list it takes put-back messages
   * from first, `delayKey` the set of delayed ones it takes when they are due.
   */
  consumer (processingKey: string, retryKey?: string, delayKey?: string): Consumer
  /**
   * Empties the processing list of a consumer that is gone (its process died): values that
   * start with `envelopePrefix` go to the head of the retry list, bare messages back to the
   * head of the consumer list, in their order. Atomic. Returns how many moved.
   */
  reclaim (processingKey: string, retryKey: string, envelopePrefix: string): Promise<number>
  /**
   * For each copy of each event, in one step: unless some instance recorded this occurrence for
   * this webhook in the last `ttlMs` (the hash `seenKey` holds `occurrence` or more for it),
   * appends it and notes it. Instances whose registries differ for a moment (one has just
   * heard of a new webhook) thus add what the others did not. Each list keeps its newest `max`
   * values. Returns, per event, whether this call recorded any copy of it, and how many old
   * values the bound dropped.
   */
  recordHeard (events: readonly HeardEvent[], ttlMs: number, max: number): Promise<{ recorded: boolean[], dropped: number }>
  /** The dead letters kept under keys that start with `base` (see each engine); redelivered to the consumer list, or (see ImportedLetter.returns) to `retryKey`. */
  deadLetterStore (base: string, retryKey: string): DeadLetterStore
}

/**
 * The three parts over one set of connections (Redis) or one keyspace (memory): the bus, the
 * work queue and busgate's own store. Its users take the part they need: the SSE hub and the
 * producers the bus, the task view the store, the dispatcher the work queue and the store.
 */
export interface Engine {
  readonly kind: 'redis' | 'memory'
  /** `ready` only when every connection in use (commands, and the subscription once made) is */
  readonly state: EngineState
  readonly bus: Bus
  readonly queue: WorkQueue
  readonly store: Store
  /** Redis only: the commands connection, for a plugin that keeps its own few keys (the rate limiter) */
  readonly commands?: Redis
  /** Resolves when the bus is reachable or after the connect bound; never throws. */
  connect (): Promise<void>
  /** Rejects with a 503-coded error unless the bus answers within the configured bound. */
  ping (): Promise<void>
  close (): Promise<void>
}

export type EngineOptions = Pick<Config, 'redis' | 'pubsubChannel' | 'prodconsKey' | 'redisTimeoutMs' | 'memoryQueueMax' | 'memoryQueueMaxBytes'> &
  Partial<Pick<Config, 'redisSentinelPassword' | 'redisWaitReplicas' | 'redisWaitTimeoutMs'>>

/** Produce arguments every engine refuses alike. */
export function checkFrameCount (frames: readonly Uint8Array[]): void {
  if (frames.length === 0 || frames.length > MAX_FRAMES_PER_PRODUCE) {
    throw new RangeError(`a produce takes 1 to ${MAX_FRAMES_PER_PRODUCE} frames, not ${frames.length}`)
  }
}
