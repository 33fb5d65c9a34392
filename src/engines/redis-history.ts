import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyBaseLogger } from 'fastify'
import type { Redis, Result } from 'ioredis'
import type { SubscriptionHandlers } from './engine.js'
import { RingBuffer } from '../ring-buffer.js'
import type { Feed, FeedEntry, FeedListener, HistoryMetrics, IdKind } from './feed.js'

/** How long the recorder's lease lasts without a renewal: how long a crashed recorder leaves the history unwritten. */
export const LEASE_MS = 3000
/** How often the lease is renewed, and how often the others try to take it. */
const TICK_MS = 1000
/** What an instance keeps of what it heard, to take over where the recorder stopped (see #takeOver). */
const RECENT_MAX = 50_000
const RECENT_BYTES = 32 * 1024 * 1024
/** What waits to be recorded at most (a burst, a Redis that is slow or away); past it the oldest go, and a break takes their place. */
const WAITING_MAX = 200_000
const WAITING_BYTES = 64 * 1024 * 1024
/** How many of the newest entries a new recorder compares with what it heard. */
const TAIL = 32
/** How long a follow waits for its takeover's first write before it reads where the history ends. */
const FOLLOW_WAIT_MS = 5000
const RECORD_BATCH = 1024
const READ_COUNT = 1024
/**
 * The least the history keeps, whatever its bounds: a reader a moment behind (its process busy,
 * a burst) must still find what was recorded since it last read, or its streams get a gap.
 */
const KEPT_MIN = 4096
const KEPT_MIN_BYTES = 16 * 1024 * 1024
/** The history goes this long after its last write: nothing of a bus no gateway watches stays in Redis for ever. */
const HISTORY_TTL_MS = 24 * 60 * 60 * 1000

const STREAM_ID = /^(\d{1,15})-(\d{1,15})$/

export interface RedisHistoryKeys {
  /** the stream: entries {n, m: message} | {n, x: size of a message set aside} | {n, b: 1, a break} */
  stream: string
  /** who records: the token of one instance, with an expiry */
  lease: string
  /** the stream's counters: n (entries so far) and c (bytes of messages written so far); w, the last batch written, and l, its last entry */
  meta: string
}

// The recorder alone writes, and only while it holds the lease: a recorder that lost it (it
// stalled past LEASE_MS and another took over) is refused here, so the history has one order.
// Each entry is numbered (n: a reader that sees a number skipped knows it missed entries) and
// carries c, the bytes of messages written up to and including it, so what the history holds
// is c(newest) - c(oldest) + its size without reading it all. The count is trimmed as Redis
// trims cheaply (MAXLEN ~: whole nodes, never below `size`); the bytes, when over, from the
// oldest, a few entries read at a time (the newest always stays). A batch is named (w): one sent
// again because its answer came late (Redis ran it, the client gave up waiting) is not written twice.
const RECORD_LUA = `
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[3], 'w') == ARGV[5] then return {redis.call('HGET', KEYS[3], 'l')} end
local size, maxBytes = ARGV[2], tonumber(ARGV[3])
local n = tonumber(redis.call('HGET', KEYS[3], 'n') or '0')
local c = tonumber(redis.call('HGET', KEYS[3], 'c') or '0')
local ids = {}
for i = 6, #ARGV, 2 do
  n = n + 1
  local kind = ARGV[i]
  if kind == 'm' then c = c + #ARGV[i + 1] end
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', size, '*', 'n', n, 'c', c, kind, ARGV[i + 1])
end
redis.call('HSET', KEYS[3], 'n', n, 'c', c, 'w', ARGV[5], 'l', ids[#ids])
local function held (entry)
  local f, at, len = entry[2], 0, 0
  for j = 1, #f, 2 do
    if f[j] == 'c' then at = tonumber(f[j + 1]) elseif f[j] == 'm' then len = #f[j + 1] end
  end
  return c - at + len
end
for _ = 1, 1000 do
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 32)
  if #oldest < 2 or held(oldest[1]) <= maxBytes then break end
  local keep
  for k = 2, #oldest do
    if held(oldest[k]) <= maxBytes then keep = oldest[k][1] break end
  end
  if keep == nil then
    local after = redis.call('XRANGE', KEYS[1], '(' .. oldest[#oldest][1], '+', 'COUNT', 1)
    if #after == 0 then break end
    keep = after[1][1]
  end
  redis.call('XTRIM', KEYS[1], 'MINID', keep)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return ids
`

// 2: taken now; 1: still ours (renewed); 0: another's (or, releasing, let go).
const LEASE_LUA = `
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  if ARGV[3] == 'release' then redis.call('DEL', KEYS[1]) return 0 end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder == false and ARGV[3] ~= 'release' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
`

declare module 'ioredis' {
  interface RedisCommander<Context> {
    busgateHistoryRecord: (stream: string, lease: string, meta: string, ...args: Array<string | number | Buffer>) => Result<Buffer[] | number, Context>
    busgateHistoryLease: (lease: string, token: string, ms: number, mode: 'take' | 'release') => Result<number, Context>
  }
}

/** What is heard: a message, one set aside for its size, or a break. */
type Heard = { kind: 'm', raw: Buffer } | { kind: 'x', size: number } | { kind: 'b' }

type StreamEntry = [id: Buffer, fields: Buffer[]]

/**
 * The broadcast channel's history in Redis, one for every instance: any instance resumes any
 * id, and a restart loses nothing of it. Every instance that follows it hears the channel; one
 * of them, the holder of a lease, records what it hears into a stream, and every follower
 * (that one too) streams what the stream gets, so all give the same ids in the same order,
 * whoever published. When the recorder goes (it stops following, or dies and its lease runs
 * out), another takes over where it stopped: it finds the recorder's newest entries among what
 * it heard itself and records what came after them; where it cannot, it records a break, which
 * streams and replays report as a gap. The cost is one XADD per message in Redis, batched, and
 * one extra round trip before a message is streamed.
 */
export class RedisHistory implements Feed {
  readonly shared = true
  readonly #token = randomBytes(9).toString('base64url')
  #listener: FeedListener | undefined
  #stopSubscription: (() => Promise<void>) | undefined
  #reader: Redis | undefined
  #tick: NodeJS.Timeout | undefined
  #leading = false
  #leadTry: Promise<void> | undefined
  /** what it heard, newest last, to take over from (see #takeOver) */
  #recent = new RingBuffer<Heard>(RECENT_MAX)
  #recentBytes = 0
  /** the recorder's: what waits to be written */
  #toRecord: Heard[] = []
  #toRecordBytes = 0
  #recording: Promise<void> | undefined
  #stopping: Promise<void> | undefined
  /** the id of the newest entry this instance wrote, and of the newest it read */
  #lastWritten: string | undefined
  #lastRead: string | undefined
  #failures = 0
  /** step-downs so far: a batch being written belongs to one turn as recorder (see #recordAll) */
  #turn = 0
  /** batches written so far: each is named by this and the token (see RECORD_LUA) */
  #batches = 0
  /** when a refused write last retook the lease at once (see #recordAll) */
  #retakenAt = 0
  /** the bounds the stream is trimmed to: the configured ones, never below the least kept */
  readonly #keep: { size: number, bytes: number }

  constructor (
    private readonly commands: Redis,
    private readonly openReader: () => Redis,
    private readonly subscribe: (handlers: SubscriptionHandlers) => Promise<() => Promise<void>>,
    private readonly keys: RedisHistoryKeys,
    private readonly options: { size: number, bytes: number, maxMessageBytes: number },
    private readonly metrics: HistoryMetrics,
    private readonly log: FastifyBaseLogger
  ) {
    this.#keep = { size: Math.max(KEPT_MIN, options.size), bytes: Math.max(KEPT_MIN_BYTES, options.bytes) }
    this.commands.defineCommand('busgateHistoryRecord', { numberOfKeys: 3, lua: RECORD_LUA })
    this.commands.defineCommand('busgateHistoryLease', { numberOfKeys: 1, lua: LEASE_LUA })
  }

  async follow (listener: FeedListener): Promise<() => Promise<void>> {
    // A follow right after a stop waits for it: the stop lets go of what the follow takes.
    while (this.#stopping !== undefined) await this.#stopping
    if (this.#listener !== undefined) throw new Error('the history is followed already')
    this.#listener = listener
    this.#stopSubscription = await this.subscribe({
      message: (raw) => this.#heard(raw),
      gap: () => this.#heardBreak()
    })
    await this.#tryLead()
    // Read after taking over: what the takeover wrote (a break first, where it could not find
    // where the last recorder stopped) was heard before this follow began. Waited for longer than
    // a tick: a break written after the read of the newest entry would reach this follower as a
    // gap (on a loaded machine the first write can take more than a second). Past the bound it
    // begins all the same: a gap said too often, never a loss unsaid.
    await this.#written(FOLLOW_WAIT_MS)
    const start = await this.#newest().catch(() => undefined)
    listener.begin(start?.id ?? '0-0')
    const reader = this.openReader()
    this.#reader = reader
    setImmediate(() => { this.#read(listener, reader, start).catch(() => undefined) })
    this.#tick = setInterval(() => { this.#tryLead().catch(() => undefined) }, TICK_MS)
    this.#tick.unref()
    return async () => { await this.#unfollow(listener) }
  }

  kind (id: string): IdKind {
    return STREAM_ID.test(id) ? 'ours' : 'unknown_id'
  }

  compare (a: string, b: string): number {
    const [am, as] = streamId(a)
    const [bm, bs] = streamId(b)
    return am !== bm ? am - bm : as - bs
  }

  async read (after: string, until: string, max: number): Promise<FeedEntry[] | 'gone'> {
    if (this.compare(after, until) >= 0) return []
    // From `after` itself: while it is still there, nothing after it has been trimmed.
    const page = await this.commands.xrangeBuffer(this.keys.stream, after, until, 'COUNT', max + 1) as StreamEntry[]
    if (page.length === 0 || page[0]![0].toString() !== after) return 'gone'
    return page.slice(1).map(([id, fields]) => {
      const { n: _n, ...entry } = toEntry(id.toString(), fields)
      return entry
    })
  }

  async newest (): Promise<string> {
    return (await this.#newest()).id
  }

  caughtUp (): boolean {
    if (!this.#leading) return true
    return this.#toRecord.length === 0 && this.#recording === undefined &&
      (this.#lastWritten === undefined || this.#lastRead === undefined || this.compare(this.#lastRead, this.#lastWritten) >= 0)
  }

  async close (): Promise<void> {
    if (this.#listener !== undefined) await this.#unfollow(this.#listener)
  }

  async #unfollow (listener: FeedListener): Promise<void> {
    if (this.#listener !== listener) return
    this.#listener = undefined
    this.#stopping = this.#stop().finally(() => { this.#stopping = undefined })
    await this.#stopping
  }

  async #stop (): Promise<void> {
    clearInterval(this.#tick)
    const stop = this.#stopSubscription
    this.#stopSubscription = undefined
    await stop?.()
    // What it heard is written before it lets go: the next recorder starts after it.
    await this.#leadTry
    await this.#written()
    if (this.#leading) {
      this.#leading = false
      this.metrics.recording(false)
      await this.commands.busgateHistoryLease(this.keys.lease, this.#token, LEASE_MS, 'release').catch(() => undefined)
    }
    this.#forgetRecent()
    this.#reader?.disconnect()
    this.#reader = undefined
  }

  #heard (raw: Buffer): void {
    // A copy: the subscriber's buffer may be shared with other messages.
    const heard: Heard = raw.byteLength > this.options.maxMessageBytes ? { kind: 'x', size: raw.byteLength } : { kind: 'm', raw: Buffer.from(raw) }
    // The recorder remembers too: if it loses the lease and takes it back, it goes on from where it (or the one between) stopped.
    this.#remember(heard)
    if (this.#leading) this.#record(heard)
  }

  /** The subscription was lost and is back: what came meanwhile nobody here heard. */
  #heardBreak (): void {
    this.#forgetRecent()
    if (this.#leading) this.#record({ kind: 'b' })
  }

  #forgetRecent (): void {
    this.#recent = new RingBuffer<Heard>(RECENT_MAX)
    this.#recentBytes = 0
  }

  #remember (heard: Heard): void {
    // A ring: a full array's shift() moves every element, for every message heard.
    const dropped = this.#recent.push(heard)
    this.#recentBytes += size(heard) - (dropped === undefined ? 0 : size(dropped))
    while (this.#recentBytes > RECENT_BYTES) this.#recentBytes -= size(this.#recent.shift()!)
  }

  async #tryLead (): Promise<void> {
    if (this.#leadTry !== undefined || this.#listener === undefined) return await this.#leadTry
    this.#leadTry = this.#lead().finally(() => { this.#leadTry = undefined })
    await this.#leadTry
  }

  async #lead (): Promise<void> {
    let held: number
    try {
      held = await this.commands.busgateHistoryLease(this.keys.lease, this.#token, LEASE_MS, 'take')
    } catch (err) {
      this.#failed('could not renew or take the history lease', err)
      return
    }
    if (held === 0) {
      if (this.#leading) this.#stepDown()
    } else if (!this.#leading && this.#listener !== undefined) {
      await this.#takeOver()
    }
  }

  /**
   * Now the recorder: find where the last one stopped (its newest entries, in the same order,
   * among what this one heard) and record what came after; if they are not there (it stopped
   * before this one listened, or what this one kept does not reach back so far), or match in
   * more than one place, a break goes first and then all this one heard.
   */
  async #takeOver (): Promise<void> {
    let tail: StreamEntry[]
    try {
      tail = await this.commands.xrevrangeBuffer(this.keys.stream, '+', '-', 'COUNT', TAIL) as StreamEntry[]
    } catch (err) {
      // Give the lease back: recording without knowing where to start could repeat or skip.
      await this.commands.busgateHistoryLease(this.keys.lease, this.#token, LEASE_MS, 'release').catch(() => undefined)
      this.#failed('could not read the history to take over its recording', err)
      return
    }
    const recent = Array.from({ length: this.#recent.length }, (_, i) => this.#recent.at(i) as Heard)
    const from = alignAfter(recent, tail.map(([, fields]) => toHeard(fields)))
    this.#leading = true
    this.metrics.recording(true)
    this.log.info({ continued: from !== undefined }, 'this instance records the stream history now')
    if (from === undefined) this.#record({ kind: 'b' })
    for (const heard of recent.slice(from ?? 0)) this.#record(heard)
  }

  #record (heard: Heard): void {
    this.#toRecord.push(heard)
    this.#toRecordBytes += size(heard)
    // Redis does not answer, or not as fast as the bus: the oldest go, and a break says so.
    if (this.#toRecord.length > WAITING_MAX || this.#toRecordBytes > WAITING_BYTES) {
      // A tenth at once: dropping one at a time would move the whole array for every message.
      let cut = Math.ceil(this.#toRecord.length / 10)
      let bytes = this.#toRecord.slice(0, cut).reduce((n, h) => n + size(h), 0)
      while (this.#toRecordBytes - bytes > WAITING_BYTES && cut < this.#toRecord.length - 1) bytes += size(this.#toRecord[cut++]!)
      this.#toRecord.splice(0, cut)
      this.#toRecordBytes -= bytes
      if (this.#toRecord[0]?.kind !== 'b') this.#toRecord.unshift({ kind: 'b' })
    }
    this.#recording ??= this.#recordAll().finally(() => { this.#recording = undefined })
  }

  async #recordAll (): Promise<void> {
    // One turn first, so what one read of the socket brought shares a write.
    await new Promise((resolve) => setImmediate(resolve))
    while (this.#toRecord.length > 0 && this.#leading) {
      const batch = this.#toRecord.splice(0, RECORD_BATCH)
      // What is being written no longer waits: the bound on what waits drops from what comes after it.
      this.#toRecordBytes -= batch.reduce((n, h) => n + size(h), 0)
      const args: Array<string | number | Buffer> = [this.#token, this.#keep.size, this.#keep.bytes, HISTORY_TTL_MS, `${this.#token}:${this.#batches++}`]
      for (const heard of batch) args.push(heard.kind, heard.kind === 'm' ? heard.raw : heard.kind === 'x' ? heard.size : 1)
      let written: Buffer[] | number | undefined
      // The same batch, under the same name, until Redis answers: a late answer may mean it was
      // written. Not after a step-down, even one followed by a takeover: the batch is then the
      // other recorder's to have written, and this one's takeover starts from what it finds.
      const turn = this.#turn
      while (written === undefined && this.#leading && turn === this.#turn) {
        try {
          written = await this.commands.busgateHistoryRecord(this.keys.stream, this.keys.lease, this.keys.meta, ...args)
        } catch (err) {
          this.#failed('could not record the stream history; retrying', err)
          await sleep(200)
        }
      }
      // Stepped down meanwhile: what a takeover since then queued is written by this same loop.
      if (written === undefined) continue
      if (typeof written === 'number') {
        this.#stepDown()
        // At once rather than at the next tick: a lease that is nobody's (a Redis restarted empty)
        // is taken back now. Once a tick at most: a lease lost again as soon as taken (evicted
        // under maxmemory) must not make a loop of takeovers at the speed of Redis.
        const now = Date.now()
        if (now - this.#retakenAt >= TICK_MS) {
          this.#retakenAt = now
          setImmediate(() => { this.#tryLead().catch(() => undefined) })
        }
        return
      }
      this.#lastWritten = written[written.length - 1]?.toString() ?? this.#lastWritten
      const breaks = batch.filter((h) => h.kind === 'b').length
      this.metrics.recorded('message', batch.length - breaks)
      if (breaks > 0) this.metrics.recorded('break', breaks)
    }
  }

  /**
   * Another took over (this one stalled past the lease, and was refused or found the lease
   * another's): it records from where this one stopped, so what waits here goes.
   */
  #stepDown (): void {
    this.#turn++
    this.#leading = false
    this.#toRecord = []
    this.#toRecordBytes = 0
    this.metrics.recording(false)
    this.log.warn('another instance records the stream history now')
  }

  /** Resolves once what waits to be recorded is written, or after `bound` (a tick unless said): a Redis that does not answer must hold nobody. */
  async #written (bound = TICK_MS): Promise<void> {
    if (this.#recording === undefined) return
    const drained = (async () => { while (this.#recording !== undefined) await this.#recording })()
    await Promise.race([drained, sleep(bound)])
  }

  /** The newest entry: where a follower starts. */
  async #newest (): Promise<{ id: string, n: number }> {
    const [entry] = await this.commands.xrevrangeBuffer(this.keys.stream, '+', '-', 'COUNT', 1) as StreamEntry[]
    if (entry === undefined) return { id: '0-0', n: 0 }
    return { id: entry[0].toString(), n: parse(entry[1]).n }
  }

  /**
   * Streams what the history gets, in order, from `start`. A number skipped (the history was
   * trimmed past this reader, or lost entries in a failover, or was emptied) is a gap.
   */
  async #read (listener: FeedListener, reader: Redis, start: { id: string, n: number } | undefined): Promise<void> {
    let last = start
    while (this.#listener === listener) {
      try {
        if (last === undefined) {
          // Where it began is unknown (Redis did not answer then): from the newest, after a gap.
          last = await this.#newest()
          listener.gap(last.id)
        }
        const reply = await reader.xreadBuffer('COUNT', READ_COUNT, 'BLOCK', TICK_MS, 'STREAMS', this.keys.stream, last.id) as Array<[Buffer, StreamEntry[]]> | null
        if (this.#listener !== listener) return
        for (const [idBytes, fields] of reply?.[0]?.[1] ?? []) {
          const id = idBytes.toString()
          const entry = toEntry(id, fields)
          const { n } = entry
          const isBreak = entry.raw === undefined && entry.tooLarge === undefined
          // Missing entries lie after the one before: a resume from it must not cross them.
          if (n !== last.n + 1 && !isBreak) listener.gap(last.id)
          last = { id, n }
          this.#lastRead = id
          if (entry.raw !== undefined) listener.message(entry.raw, id)
          else if (entry.tooLarge !== undefined) listener.setAside(id, entry.tooLarge)
          else listener.gap(id)
        }
      } catch (err) {
        if (this.#listener !== listener) return
        this.#failed('could not read the stream history; retrying', err)
        await sleep(100)
      }
    }
  }

  // Logged the first time and then once in a hundred: a Redis that is down must not flood the log.
  #failed (what: string, err: unknown): void {
    if (this.#failures++ % 100 === 0) this.log.warn({ err: { message: (err as Error).message }, seen: this.#failures }, what)
  }
}

function streamId (id: string): [number, number] {
  const match = STREAM_ID.exec(id)
  return match === null ? [Number.NaN, Number.NaN] : [Number(match[1]), Number(match[2])]
}

const N = 0x6e
const M = 0x6d
const X = 0x78

/** An entry's fields, read by their one-letter names (n, c, then m | x | b); other fields are ignored. */
function parse (fields: Buffer[]): { n: number, raw: Buffer | undefined, tooLarge: number | undefined } {
  let n = Number.NaN
  let raw: Buffer | undefined
  let tooLarge: number | undefined
  for (let i = 0; i < fields.length - 1; i += 2) {
    const name = fields[i]!
    if (name.length !== 1) continue
    if (name[0] === N) n = Number(fields[i + 1]!.toString())
    else if (name[0] === M) raw = fields[i + 1]
    else if (name[0] === X) tooLarge = Number(fields[i + 1]!.toString())
  }
  return { n, raw, tooLarge }
}

function toEntry (id: string, fields: Buffer[]): FeedEntry & { n: number } {
  const { n, raw, tooLarge } = parse(fields)
  if (raw !== undefined) return { id, n, raw }
  return tooLarge !== undefined ? { id, n, raw: undefined, tooLarge } : { id, n, raw: undefined }
}

function toHeard (fields: Buffer[]): Heard {
  const { raw, tooLarge } = parse(fields)
  if (raw !== undefined) return { kind: 'm', raw }
  return tooLarge !== undefined ? { kind: 'x', size: tooLarge } : { kind: 'b' }
}

function size (heard: Heard): number {
  return heard.kind === 'm' ? heard.raw.byteLength : 0
}

function same (a: Heard, b: Heard): boolean {
  if (a.kind === 'm') return b.kind === 'm' && a.raw.equals(b.raw)
  if (a.kind === 'x') return b.kind === 'x' && a.size === b.size
  return false
}

/**
 * Where in `recent` (oldest first) the history's newest entries (`tail`, newest first, up to
 * its newest break) end: the index after them, when they are found in one place only. Both
 * are compared as far as both reach.
 */
export function alignAfter (recent: readonly Heard[], tail: readonly Heard[]): number | undefined {
  const newest = tail.findIndex((h) => h.kind === 'b')
  const wanted = newest < 0 ? tail : tail.slice(0, newest)
  if (wanted.length === 0) return undefined
  let found: number | undefined
  for (let p = recent.length - 1; p >= 0; p--) {
    let k = 0
    while (k < wanted.length && p - k >= 0 && same(recent[p - k]!, wanted[k]!)) k++
    if (k < wanted.length && p - k >= 0) continue
    if (k === 0) continue
    if (found !== undefined) return undefined
    found = p + 1
  }
  return found
}
