import type { ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyBaseLogger } from 'fastify'
import { CodecError, decodeEvent, hexPreview, toJsonEvent, type BusEvent } from './codec.js'
import type { Feed, FeedEntry } from './engines/feed.js'
import { globList } from './glob.js'
import { RingBuffer } from './ring-buffer.js'
import { SSE_HEARTBEAT, sseFrame } from './sse-frame.js'

/** Control events the gateway itself sends; bus events may not use this prefix. */
export const CONTROL_PREFIX = 'busgate.'
export const GAP_EVENT = `${CONTROL_PREFIX}gap`

export type GapReason = 'unknown_id' | 'too_old' | 'other_instance' | 'bus_reconnected' | 'overloaded'

export interface HubOptions {
  /** how long the subscription outlives the last stream, so that reconnects can resume */
  lingerMs: number
  historySize: number
  historyBytes: number
  maxBufferBytes: number
  heartbeatMs: number
  retryMs: number
  maxClients: number
  /** bus messages larger than this are set aside undecoded */
  maxMessageBytes: number
}

export interface HubMetrics {
  clients: (n: number) => void
  published: () => void
  delivered: (n: number) => void
  slowDisconnect: () => void
  resume: (result: 'hit' | GapReason) => void
  malformed: (reason: string) => void
}

/** The fields a stream can filter on. */
export type Filterable = Pick<BusEvent, 'event_name' | 'agent_id'>

/** What a stream wants: a compiled test over the two filterable fields; one per distinct filter. */
export interface Filter {
  key: string
  matches: (event: Filterable) => boolean
}

/**
 * A bus message as the hub keeps it for resumes. While no stream is open the hub only keeps
 * the raw bytes: decoding and framing every message nobody watches would cost the gateway as
 * much as producing it. Framed when first needed (live or for a replay): then the frame, shared
 * by every client that gets it, and what filters need replace the raw bytes.
 */
interface HistoryEntry extends Partial<Filterable> {
  seq: number
  /** its id in the feed (the SSE id) */
  id: string
  raw: Buffer | undefined
  frame: Buffer | undefined
  bytes: number
}

/**
 * A stream. What it misses while behind is a position in its group's backlog, shared with every
 * other client of the group that is behind: a client that stops reading costs a few numbers,
 * not a queued write per frame.
 *
 * | state      | fields                  | written                                                  |
 * |------------|-------------------------|----------------------------------------------------------|
 * | keeping up | behind = -1             | each flush writes the group's chunk to its socket        |
 * | behind     | behind >= 0, waiting    | when its socket drains: replay, own frames, backlog      |
 * | behind     | behind >= 0, deferred   | in a later turn, when the write budget lasts             |
 *
 * keeping up → behind: a write left the socket needing drain (owed from the next chunk on), the
 * turn's budget ran out before this chunk (owed from it), or a replay began. behind → keeping
 * up: #catchUp wrote all it was owed and the socket takes more. Any → gone: closed, ended, or
 * cut (owed more than the bound, see #tooFarBehind).
 */
interface Client {
  socket: Socket
  group: FilterGroup
  /** index in the group's backlog of the first chunk it still needs; -1 while it keeps up */
  behind: number
  /** the group's byte count when it fell behind: what it lacks of the backlog is the difference */
  behindBytes: number
  /**
   * The replay it asked for, read from the history as its socket takes it: the seq of the next
   * entry to look at (-1 when there is none) and of the last one. Asked for, so not lag.
   */
  replayNext: number
  replayLast: number
  /** the part of its replay older than this process's memory, read from the shared history first */
  remote: RemoteReplay | undefined
  /** frames for this client alone (its view's own events), sent after the replay and before its share of the backlog */
  own: Buffer[]
  ownBytes: number
  /** a drain listener is set: its socket has stopped taking bytes */
  waiting: boolean
  /** what it has come to be owed since its socket stopped taking bytes: its own slowness */
  sinceWaiting: number
  /** waits for a later turn's write budget */
  deferred: boolean
}

/** A replay from the shared history, a page at a time as the socket takes it. */
interface RemoteReplay {
  /** the id the client asked to resume from */
  asked: string
  /** the id of the last entry read (at first the one asked for) */
  after: string
  /** the newest id it reads: what is newer is in this process's memory */
  until: string
  page: FeedEntry[]
  index: number
  fetching: boolean
  /** the first page came: the id asked for is in the history */
  found: boolean
  /** the newest id streamed when it asked: where a gap sends its next resume */
  streamed: string
  /** how many entries the next read asks for */
  count: number
}

/** What one flush gives a group: the frames of a turn, with their size; joined once for a large group. */
interface Chunk {
  frames: Buffer[]
  bytes: number
  joined?: Buffer
}

interface FilterGroup {
  filter: Filter
  clients: Set<Client>
  /** frames of this turn of the event loop, written together when it ends */
  burst: Buffer[]
  burstBytes: number
  /** chunks written to the clients that kept up, kept for those behind; oldest first */
  backlog: Chunk[]
  /** the index of backlog[0] among every chunk the group has had */
  backlogStart: number
  /** bytes of every chunk the group has had */
  totalBytes: number
  /** clients behind */
  lagging: number
}

/** A gap to tell the streams of, in its place among the messages still to be delivered. */
interface PendingGap {
  gap: Buffer
}

/** A stream the caller writes to itself (a view other than the bus events), after `open`. */
export interface StreamHandle {
  /** Writes unless the client is too slow (then it is cut off, as every stream is). */
  write: (frame: Buffer) => void
  /** Writes a last frame and closes the stream. */
  end: (frame: Buffer) => void
}

/** The filter of streams that take no bus events: the caller writes to them through their handle. */
export const NO_EVENTS: Filter = { key: '\u0000none', matches: () => false }

export type EventListener = (event: BusEvent) => void

/** What listens to the bus beside the streams: each event, and each time events may have been missed. */
export interface BusListener {
  event: EventListener
  /** the subscription was lost and is back: what was published meanwhile never came */
  gap?: () => void
}

const HEARTBEAT = Buffer.from(SSE_HEARTBEAT)
/**
 * Most bytes one write to a stream gathers: a client far behind is fed in pieces, as its socket
 * drains, and one that stops reading holds no more than this (and the socket's own 16 KiB).
 */
const WRITE_BYTES = 128 * 1024
/** Bursts are kept in chunks of about this size, so a write can take a few of them and stop. */
const CHUNK_BYTES = 32 * 1024
/**
 * How long the hub works in one turn of the event loop (decoding, matching filters, writing)
 * before it lets the rest of the gateway run, and goes on in the next turn. A burst of heavy
 * messages, or writes to thousands of sockets whose clients do not read (each still takes
 * megabytes into the kernel before it pushes back), would otherwise hold /healthz, the produce
 * routes and the bus itself for seconds.
 */
const SLICE_MS = 8
/**
 * A client behind because the hub ran out of time for it, not because its socket pushes back,
 * is not slow: it is cut only this many times further behind than BUSGATE_SSE_MAX_BUFFER_BYTES.
 */
const DEFERRED_SLACK = 16
/**
 * Most bytes of messages heard and not yet decoded. Past it the hub cannot keep up with the
 * channel: what waits is not decoded for the streams (it stays in the history, raw), and they
 * are told with a gap event (`overloaded`), rather than the backlog growing without bound.
 */
const PENDING_MAX_BYTES = 16 * 1024 * 1024
/**
 * Groups of this many clients or more write one joined copy of each chunk to every client that
 * keeps up. Backlogs hold the frames themselves (shared with the history and every other group):
 * many filters, or many clients behind, do not mean many copies.
 */
const JOIN_MIN = 4
/** Event names and agent ids whose matching groups are remembered: a producer may send any number of them. */
const MATCH_CACHE_MAX = 1024
/** How long a resume from the shared history waits for this process to have read what it held then (see #heardUpTo). */
const CATCH_UP_WAIT_MS = 1000
/**
 * Entries of the shared history read at once for a replay: at most this many, and about
 * REPLAY_PAGE_BYTES of them (sized by the last page; the first is small), so a client that
 * resumes holds one page, not a share of the history's bytes, whatever its messages weigh.
 */
const REPLAY_PAGE = 256
const REPLAY_PAGE_FIRST = 16
const REPLAY_PAGE_BYTES = 256 * 1024

export function makeFilter (eventNames: string | undefined, agentIds: string | undefined): Filter {
  const names = eventNames === undefined || eventNames === '*' ? undefined : globList(eventNames)
  const agents = agentIds === undefined || agentIds === '*' ? undefined : globList(agentIds)
  return {
    key: `${eventNames ?? '*'}\u0000${agentIds ?? '*'}`,
    matches: (e) => (names === undefined || names(e.event_name)) && (agents === undefined || agents(e.agent_id))
  }
}

/** SSE field values end at CR or LF, so a name holding one could forge fields. */
function unsafeName (name: string): string | undefined {
  if (name === '') return 'empty event_name'
  if (/[\r\n\0]/.test(name)) return 'event_name with a line break or NUL'
  if (name.startsWith(CONTROL_PREFIX)) return `event_name in the reserved ${CONTROL_PREFIX} namespace`
  return undefined
}

/**
 * Fans the broadcast channel out to SSE clients: one subscription per process, each message
 * decoded, mapped to JSON and framed once, and the same bytes written to every client whose
 * filter matches. Keeps a bounded history for resumes. A client whose unsent bytes pass the
 * bound is cut off, so a slow reader never holds memory or delays the others. Its work is done
 * in slices of SLICE_MS a turn, so no burst, heavy message or crowd of streams holds the process.
 */
export class SseHub {
  #seq = 0
  /** the newest seq delivered to the streams (decoded, matched, queued); later ones are pending */
  #deliveredSeq = 0
  #history: RingBuffer<HistoryEntry>
  #historyBytes = 0
  /** the id before the oldest entry held: the history holds everything after it */
  #base = ''
  readonly #groups = new Map<string, FilterGroup>()
  /** which groups take an event of this name and agent: the filters are tested once per pair */
  readonly #matching = new Map<string, FilterGroup[]>()
  #clientCount = 0
  #heartbeat: NodeJS.Timeout | undefined
  #subscription: Promise<() => Promise<void>> | undefined
  #linger: NodeJS.Timeout | undefined
  /**
   * The id of the newest entry before the hub last stopped hearing the channel (unsubscribed,
   * or lost the subscription): a client whose last id is this or older may have missed what came next.
   */
  #coveredAfter: string | undefined
  /** streams between their request and their attach: they count as users of the subscription */
  #opening = 0
  /** users of the subscription other than streams (see `hold`) */
  #holds = 0
  readonly #listeners = new Set<BusListener>()
  #closing = false
  #malformedLogged = 0
  #gapsLogged = 0
  /** failures by kind, so that each kind is logged the first time and then once in a thousand */
  readonly #failures = new Map<string, number>()
  /** heard, remembered, not yet delivered: messages in order, and gaps in their place */
  #pending: Array<HistoryEntry | PendingGap> = []
  #pendingHead = 0
  #pendingBytes = 0
  #processing: NodeJS.Immediate | undefined
  #sending = false
  #flushing: NodeJS.Immediate | undefined
  /** when the current slice of work ends (performance.now()) */
  #sliceEnds = 0
  /** clients owed bytes that a turn's slice did not cover, in the order they were put off */
  readonly #deferred = new Set<Client>()
  #serving: NodeJS.Immediate | undefined

  constructor (
    private readonly feed: Feed,
    private readonly options: HubOptions,
    private readonly metrics: HubMetrics,
    private readonly log: FastifyBaseLogger
  ) {
    this.#history = new RingBuffer(options.historySize)
  }

  get clientCount (): number {
    return this.#clientCount
  }

  /** the newest id: of the newest entry held, or of where the history began */
  get lastId (): string {
    return this.#history.at(this.#history.length - 1)?.id ?? this.#base
  }

  start (): void {
    this.#heartbeat = setInterval(() => this.#heartbeatAll(), this.options.heartbeatMs)
    this.#heartbeat.unref()
  }

  /**
   * Opens a stream: once the hub is subscribed, `writeHead` sends the response head
   * (close-delimited, not chunked), so a client that sees the head sees every event after it.
   * The hub subscribes to the channel when the first stream opens and stays
   * subscribed until the last one has been gone `lingerMs` (so reconnects can resume): a
   * gateway nobody watches does not take in every message of the bus.
   * From here on frames go straight to the socket, which spares each delivery the chunk
   * framing and the response object's bookkeeping. What the client missed is replayed when
   * `lastEventId` is one of ours and still in the history; otherwise a gap event says so
   * before live events flow. Replay and attach happen in one turn of the event loop, so
   * nothing slips between them.
   */
  async open (res: ServerResponse, filter: Filter, lastEventId: string | undefined, writeHead: () => void): Promise<StreamHandle | undefined> {
    this.#opening++
    try {
      await this.#watch()
      if (lastEventId !== undefined) await this.#heardUpTo(lastEventId)
    } finally {
      this.#opening--
    }
    writeHead()
    const socket = res.socket
    if (socket === null || socket.destroyed) {
      this.#lingerIfIdle()
      return undefined
    }
    if (this.#closing) {
      socket.end(this.#retryFrame)
      return undefined
    }
    // What was delivered and not yet written goes out first: it is in the history up to
    // #deliveredSeq, so a replay would repeat it. What is still pending comes to this client live.
    this.#flush(true)
    let group = this.#groups.get(filter.key)
    if (group === undefined) {
      group = { filter, clients: new Set(), burst: [], burstBytes: 0, backlog: [], backlogStart: 0, totalBytes: 0, lagging: 0 }
      this.#groups.set(filter.key, group)
      this.#matching.clear()
    }
    const client: Client = { socket, group, behind: -1, behindBytes: 0, replayNext: -1, replayLast: -1, remote: undefined, own: [], ownBytes: 0, waiting: false, sinceWaiting: 0, deferred: false }
    group.clients.add(client)
    this.#clientCount++
    this.metrics.clients(this.#clientCount)
    res.once('close', () => this.#detach(client))

    this.#writeOwn(client, this.#retryFrame)
    if (lastEventId !== undefined) this.#resume(client, lastEventId)
    return {
      write: (frame) => this.#writeOwn(client, frame),
      end: (frame) => {
        // What waits for it goes first: the end must not overtake it. Then detached: nothing of
        // the hub's (a heartbeat, the shutdown) writes after the end.
        const owed = client.own
        this.#detach(client)
        if (socket.destroyed) return
        socket.end(owed.length > 0 ? Buffer.concat([...owed, frame]) : frame)
      }
    }
  }

  /**
   * Keeps the subscription, as an open stream does, until the returned release is called;
   * resolves once subscribed, so nothing published after it is missed. For listeners that
   * must hear the bus while no stream is open.
   */
  async hold (): Promise<() => void> {
    this.#holds++
    let released = false
    const release = (): void => {
      if (released) return
      released = true
      this.#holds--
      this.#lingerIfIdle()
    }
    try {
      await this.#watch()
    } catch (err) {
      release()
      throw err
    }
    return release
  }

  /**
   * Calls `listener` with every well-formed bus event heard while streams are open or the
   * subscription is held, and after each gap; returns what removes it.
   */
  listen (listener: BusListener): () => void {
    this.#listeners.add(listener)
    return () => { this.#listeners.delete(listener) }
  }

  get #retryFrame (): Buffer {
    return Buffer.from(sseFrame({ retry: this.options.retryMs }))
  }

  async #watch (): Promise<void> {
    clearTimeout(this.#linger)
    this.#linger = undefined
    if (this.#subscription === undefined && !this.#closing) {
      this.#subscription = this.feed.follow({
        begin: (start) => this.#begin(start),
        message: (raw, id) => this.#onMessage(raw, id),
        setAside: (id, bytes) => this.#onTooLarge(id, bytes),
        gap: (id) => this.#onBusGap(id)
      })
    }
    await this.#subscription
  }

  /**
   * Following (again) from `start`. A shared history has what came meanwhile: this process's
   * memory starts afresh there, and a resume from before it reads the shared one. A process's
   * own history lacks it: a break.
   */
  #begin (start: string): void {
    if (this.feed.shared || this.#base === '') {
      this.#history = new RingBuffer(this.options.historySize)
      this.#historyBytes = 0
      this.#base = start
      this.#coveredAfter = undefined
    } else {
      this.#markBreak(start)
    }
  }

  /**
   * A resume from the shared history waits, a little, until this process has read what the
   * history held when it came (its reader may be a moment behind: what was there before the
   * client came back is replay, not live lag), and the id the client has (another instance may
   * have streamed it already).
   */
  async #heardUpTo (lastEventId: string): Promise<void> {
    const { feed } = this
    if (!feed.shared || feed.kind(lastEventId) !== 'ours') return
    const newest = await feed.newest().catch(() => lastEventId)
    const target = feed.compare(newest, lastEventId) > 0 ? newest : lastEventId
    for (let waited = 0; waited < CATCH_UP_WAIT_MS && (feed.compare(target, this.lastId) > 0 || !feed.caughtUp()); waited += 5) {
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
  }

  async #unwatch (): Promise<void> {
    const subscription = this.#subscription
    this.#subscription = undefined
    if (subscription !== undefined) await (await subscription)()
  }

  /**
   * The hub stopped hearing the channel for a while (unsubscribed, or the subscription was
   * lost). The break is an entry of its own, holding nothing: a resume from before it is a
   * gap, and the gap event's id (the break's or later) resumes cleanly.
   */
  #markBreak (id: string): void {
    this.#coveredAfter = this.lastId
    this.#remember({ seq: ++this.#seq, id, raw: undefined, frame: undefined, bytes: 0 })
  }

  get full (): boolean {
    return this.#clientCount + this.#opening >= this.options.maxClients
  }

  #resume (client: Client, lastEventId: string): void {
    const { feed } = this
    const kind = feed.kind(lastEventId)
    let reason: GapReason | undefined
    if (kind !== 'ours') {
      reason = kind
    } else if (feed.compare(lastEventId, this.lastId) > 0) {
      reason = 'unknown_id'
    } else if (this.#coveredAfter !== undefined && feed.compare(lastEventId, this.#coveredAfter) <= 0) {
      // From before the last break: what came between is not here.
      reason = 'too_old'
    } else if (!feed.shared && feed.compare(lastEventId, this.#base) < 0) {
      reason = 'too_old'
    }
    if (reason !== undefined) {
      this.metrics.resume(reason)
      this.#writeOwn(client, this.#gapFrame(reason, lastEventId))
      return
    }
    // Older than this process's memory: the shared history first (it says whether it has the id).
    const remote = feed.compare(lastEventId, this.#base) < 0
    if (remote) {
      const streamed = this.#entry(this.#deliveredSeq)?.id ?? this.#base
      client.remote = { asked: lastEventId, after: lastEventId, until: this.#base, page: [], index: 0, fetching: false, found: false, streamed, count: REPLAY_PAGE_FIRST }
    } else {
      this.metrics.resume('hit')
    }
    const next = remote ? (this.#history.at(0)?.seq ?? this.#seq + 1) : this.#seqAfter(lastEventId)
    // What is still pending reaches this client live, like every other.
    if (next <= this.#deliveredSeq) {
      client.replayNext = next
      client.replayLast = this.#deliveredSeq
    } else if (!remote) {
      return
    }
    // Read from the history as the socket drains, however long: a resume costs nothing up front,
    // and live events wait in the group's backlog behind it.
    if (client.behind < 0) this.#fallBehindNow(client)
    this.#catchUp(client)
  }

  /** The seq of the first entry held that is newer than `id` (one of the history's, not older than #base). */
  #seqAfter (id: string): number {
    let low = 0
    let high = this.#history.length
    while (low < high) {
      const mid = (low + high) >>> 1
      if (this.feed.compare((this.#history.at(mid) as HistoryEntry).id, id) <= 0) low = mid + 1
      else high = mid
    }
    return this.#history.at(low)?.seq ?? this.#seq + 1
  }

  /** The history entry of a seq, while it is held. */
  #entry (seq: number): HistoryEntry | undefined {
    return this.#history.at(this.#history.length - 1 - (this.#seq - seq))
  }

  #gapFrame (reason: GapReason, lastEventId: string | undefined, id = this.lastId): Buffer {
    const data = JSON.stringify({ reason, last_event_id: lastEventId ?? null, resume_from: id })
    // The gap carries the newest id, so the client's next reconnect does not ask for the lost range again.
    return Buffer.from(sseFrame({ id, event: GAP_EVENT, data }))
  }

  #detach (client: Client): void {
    const { group } = client
    if (!group.clients.delete(client)) return
    if (client.behind >= 0) this.#catchUpDone(client)
    this.#deferred.delete(client)
    client.own = []
    this.#clientCount--
    this.metrics.clients(this.#clientCount)
    if (group.clients.size === 0) {
      this.#groups.delete(group.filter.key)
      this.#matching.clear()
    }
    this.#lingerIfIdle()
  }

  #lingerIfIdle (): void {
    if (!this.#idle || this.#closing || this.#linger !== undefined) return
    this.#linger = setTimeout(() => {
      this.#linger = undefined
      // A stream may have opened since: only an idle hub lets go.
      if (this.#idle) this.#unwatch().catch(() => undefined)
    }, this.options.lingerMs)
    this.#linger.unref()
  }

  get #idle (): boolean {
    return this.#clientCount === 0 && this.#opening === 0 && this.#holds === 0
  }

  /** Called by the feed for every message of the channel: whatever it holds, nothing here may throw. */
  #onMessage (raw: Buffer, id: string): void {
    try {
      this.#take(raw, id)
    } catch (err) {
      this.#failed('message', err, { preview: hexPreview(raw) })
    }
  }

  /** A message set aside for its size (before anything looks inside: its decoding alone could stall every stream) keeps its place. */
  #onTooLarge (id: string, bytes: number, raw?: Buffer): void {
    const entry: HistoryEntry = { seq: ++this.#seq, id, raw: undefined, frame: undefined, bytes: 0 }
    this.#remember(entry)
    this.#malformed(raw, 'too_large', `${bytes} bytes, more than BUSGATE_BUS_MAX_MESSAGE_BYTES (${this.options.maxMessageBytes})`)
    this.#delivered(entry.seq)
  }

  /** Remembers a message and queues it for delivery: decoding waits for the hub's next slice. */
  #take (raw: Buffer, id: string): void {
    if (raw.byteLength > this.options.maxMessageBytes) {
      this.#onTooLarge(id, raw.byteLength, raw)
      return
    }
    const entry: HistoryEntry = { seq: ++this.#seq, id, raw, frame: undefined, bytes: raw.byteLength }
    if (this.#clientCount === 0 && this.#holds === 0) {
      // The subscriber's buffer may be shared with other messages: keep a copy of our own.
      entry.raw = Buffer.from(raw)
      this.#remember(entry)
      this.#delivered(entry.seq)
      return
    }
    this.#remember(entry)
    if (this.#pendingBytes + raw.byteLength > PENDING_MAX_BYTES) this.#overloaded()
    this.#pending.push(entry)
    this.#pendingBytes += raw.byteLength
    this.#processing ??= setImmediate(() => this.#process())
  }

  /** An entry of this seq has been dealt with, and every one before it. */
  #delivered (seq: number): void {
    if (this.#pendingHead === this.#pending.length) this.#deliveredSeq = seq
  }

  /**
   * The hub cannot keep up: what waits is left in the history undecoded (copied, so the
   * subscriber's buffers go), and the streams are told, in its place, that events are missing.
   */
  #overloaded (): void {
    let dropped = 0
    for (let i = this.#pendingHead; i < this.#pending.length; i++) {
      const item = this.#pending[i] as HistoryEntry | PendingGap
      if ('gap' in item || item.raw === undefined) continue
      item.raw = Buffer.from(item.raw)
      dropped++
    }
    this.#pending = [{ gap: this.#gapFrame('overloaded', undefined) }]
    this.#pendingHead = 0
    this.#pendingBytes = 0
    this.#failed('overloaded', new Error(`${dropped} messages heard faster than the hub decodes them were not streamed`))
  }

  /** Delivers what is pending, in order, for one slice of the turn; the rest in the next turns. */
  #process (): void {
    this.#processing = undefined
    this.#beginSlice()
    while (this.#pendingHead < this.#pending.length) {
      if (this.#outOfTime()) {
        this.#processing = setImmediate(() => this.#process())
        return
      }
      const item = this.#pending[this.#pendingHead++] as HistoryEntry | PendingGap
      try {
        if ('gap' in item) {
          this.#queueGap(item.gap)
          continue
        }
        this.#pendingBytes -= item.raw?.byteLength ?? 0
        this.#deliver(item)
      } catch (err) {
        this.#failed('deliver', err)
      }
    }
    this.#pending = []
    this.#pendingHead = 0
    this.#pendingBytes = 0
    this.#deliveredSeq = this.#seq
  }

  #deliver (entry: HistoryEntry): void {
    this.#deliveredSeq = entry.seq
    const event = this.#frame(entry)
    this.#trim()
    if (event === undefined) return
    const frame = entry.frame as Buffer
    for (const listener of this.#listeners) {
      try {
        listener.event(event)
      } catch (err) {
        this.#failed('listener', err)
      }
    }
    let delivered = 0
    for (const group of this.#groupsFor(event)) {
      this.#queue(group, frame)
      delivered += group.clients.size
    }
    if (delivered > 0) this.metrics.delivered(delivered)
  }

  /** The groups whose filter takes this event: tested once per name and agent while the groups stay the same. */
  #groupsFor (event: Filterable): FilterGroup[] {
    const key = `${event.event_name}\u0000${event.agent_id}`
    let found = this.#matching.get(key)
    if (found === undefined) {
      found = []
      for (const group of this.#groups.values()) if (group.clients.size > 0 && group.filter.matches(event)) found.push(group)
      if (this.#matching.size >= MATCH_CACHE_MAX) this.#matching.clear()
      this.#matching.set(key, found)
    }
    return found
  }

  /** Streams of bus events get a gap event after what they were sent before it; the others' owners learn of it from the listeners. */
  #queueGap (gap: Buffer): void {
    for (const group of this.#groups.values()) {
      if (group.filter !== NO_EVENTS && group.clients.size > 0) this.#queue(group, gap)
    }
  }

  /** Adds a frame to what the group's clients get at the end of this turn of the event loop. */
  #queue (group: FilterGroup, frame: Buffer): void {
    group.burst.push(frame)
    group.burstBytes += frame.byteLength
    this.#flushing ??= setImmediate(() => this.#flush(false))
  }

  /**
   * Writes each group's frames of this turn as one chunk: a burst of events costs one write per
   * client, not one per event and client, and the frames are the same bytes for the whole group
   * (and every other group that takes them). A group the turn's slice does not reach keeps its
   * frames for the next turn, unless `all` (a stream about to attach must not find frames of the
   * history still queued).
   */
  #flush (all: boolean): void {
    if (this.#flushing === undefined) return
    clearImmediate(this.#flushing)
    this.#flushing = undefined
    this.#beginSlice()
    for (const group of this.#groups.values()) {
      if (group.burst.length === 0) continue
      if (!all && this.#outOfTime()) {
        this.#flushing ??= setImmediate(() => this.#flush(false))
        continue
      }
      const frames = group.burst
      const bytes = group.burstBytes
      group.burst = []
      group.burstBytes = 0
      try {
        this.#send(group, frames, bytes)
      } catch (err) {
        this.#failed('send', err)
      }
    }
  }

  /**
   * A burst for every client of the group. It joins the backlog first, in chunks; then every
   * client that keeps up is owed it like any other and caught up at once (in one write, as far as
   * its socket takes it and the slice lasts); what no client behind still needs is dropped once
   * every client has been seen.
   */
  #send (group: FilterGroup, frames: Buffer[], bytes: number): void {
    const index = group.backlogStart + group.backlog.length
    const join = group.clients.size >= JOIN_MIN
    let chunk: Chunk = { frames: [], bytes: 0 }
    for (const frame of frames) {
      if (chunk.bytes > 0 && chunk.bytes + frame.byteLength > CHUNK_BYTES) {
        group.backlog.push(sealChunk(chunk, join))
        chunk = { frames: [], bytes: 0 }
      }
      chunk.frames.push(frame)
      chunk.bytes += frame.byteLength
    }
    group.backlog.push(sealChunk(chunk, join))
    group.totalBytes += bytes
    const newest = frames[frames.length - 1]?.byteLength ?? 0
    this.#sending = true
    try {
      for (const client of group.clients) {
        if (client.behind >= 0) {
          this.#tooFarBehind(client, bytes, newest)
          continue
        }
        if (client.socket.destroyed) continue
        this.#fallBehind(client, index, group.totalBytes - bytes)
        if (this.#outOfTime()) this.#defer(client)
        else this.#catchUp(client)
      }
    } finally {
      this.#sending = false
    }
    // Those behind catch up from the frames; the joined copies live on only in sockets' writes.
    for (let i = index - group.backlogStart; i < group.backlog.length; i++) delete (group.backlog[i] as Chunk).joined
    this.#trimBacklog(group)
  }

  /** Drops the chunks every client behind has had; all of them when none is behind. */
  #trimBacklog (group: FilterGroup): void {
    let oldest = group.backlogStart + group.backlog.length
    if (group.lagging > 0) {
      for (const client of group.clients) if (client.behind >= 0 && client.behind < oldest) oldest = client.behind
    }
    if (oldest > group.backlogStart) {
      group.backlog.splice(0, oldest - group.backlogStart)
      group.backlogStart = oldest
    }
  }

  /**
   * `added` more is owed to a client behind, `newest` the size of the last frame of it. It is
   * cut when more than the bound has come for it since its socket stopped taking bytes: that is
   * its own slowness. What it came to be owed while the hub itself held it back (its slices
   * were spent) is not, unless it passes DEFERRED_SLACK times the bound, which bounds memory
   * whatever the reason. The newest frame never counts: one large frame never cuts off a client
   * that reads. A replay it asked for is not owed.
   */
  #tooFarBehind (client: Client, added: number, newest: number): boolean {
    if (client.waiting) client.sinceWaiting += added
    const owed = client.ownBytes + client.group.totalBytes - client.behindBytes
    const bound = this.options.maxBufferBytes
    if (client.sinceWaiting - newest <= bound && owed - newest <= bound * DEFERRED_SLACK) return false
    this.#cut(client, `${owed} bytes behind, ${client.sinceWaiting} since its socket stopped taking them`)
    return true
  }

  #cut (client: Client, why: string): void {
    this.metrics.slowDisconnect()
    this.log.info({ why }, 'stream client too slow: disconnected')
    client.socket.destroy()
    this.#detach(client)
  }

  /** From now on the client is owed the backlog from chunk `behind` on (see Client's states). */
  #fallBehind (client: Client, behind: number, behindBytes: number): void {
    client.behind = behind
    client.behindBytes = behindBytes
    client.group.lagging++
  }

  /** Falls behind at the backlog's end: the client has had everything so far. */
  #fallBehindNow (client: Client): void {
    const { group } = client
    this.#fallBehind(client, group.backlogStart + group.backlog.length, group.totalBytes)
  }

  /**
   * Decoding, flushing and serving the streams put off each get a slice of their own in a turn,
   * so none of them starves the others. A socket that drains between them finds the slice
   * over, and is served with the put-off ones.
   */
  #beginSlice (): void {
    this.#sliceEnds = performance.now() + SLICE_MS
  }

  #outOfTime (): boolean {
    return performance.now() > this.#sliceEnds
  }

  #defer (client: Client): void {
    if (client.deferred) return
    client.deferred = true
    this.#deferred.add(client)
    this.#serving ??= setImmediate(() => {
      this.#serving = undefined
      this.#beginSlice()
      const due = [...this.#deferred]
      this.#deferred.clear()
      for (const c of due) {
        c.deferred = false
        try {
          this.#catchUp(c)
        } catch (err) {
          this.#failed('catch-up', err)
        }
      }
    })
  }

  #awaitDrain (client: Client): void {
    if (client.waiting) return
    client.waiting = true
    client.sinceWaiting = 0
    client.socket.once('drain', () => {
      client.waiting = false
      try {
        this.#catchUp(client)
      } catch (err) {
        this.#failed('catch-up', err)
      }
    })
  }

  /**
   * Writes what the client is owed, a piece at a time, while its socket takes it and the turn's
   * slice lasts: the replay, then its own frames, then the backlog. All of it written and the
   * socket still taking more, it keeps up again.
   */
  #catchUp (client: Client): void {
    const { socket, group } = client
    if (!group.clients.has(client) || socket.destroyed) return
    while (!socket.writableNeedDrain) {
      if (this.#outOfTime()) {
        this.#defer(client)
        return
      }
      const parts: Buffer[] = []
      let bytes = 0
      const { remote } = client
      if (remote !== undefined) {
        while (bytes < WRITE_BYTES && remote.index < remote.page.length && !this.#outOfTime()) {
          const frame = this.#remoteFrame(remote.page[remote.index++] as FeedEntry, group.filter, remote.asked)
          if (frame !== undefined) {
            parts.push(frame)
            bytes += frame.byteLength
          }
        }
        if (parts.length === 0 && remote.index >= remote.page.length) {
          // The next page; this goes on when it comes.
          this.#readPage(client, remote)
          return
        }
      }
      // Framing what nobody watched is decoding: a resume whose filter matches little must not
      // decode the whole history in one turn, so the slice is checked per entry.
      while (bytes < WRITE_BYTES && client.remote === undefined && client.replayNext >= 0 && !this.#outOfTime()) {
        if (client.replayNext > client.replayLast) {
          client.replayNext = -1
          break
        }
        const entry = this.#entry(client.replayNext++)
        if (entry === undefined) {
          // The history moved on past what it had not read yet: it is slower than the bus.
          this.#cut(client, 'its replay fell out of the history')
          return
        }
        this.#frame(entry)
        if (entry.frame !== undefined && group.filter.matches(entry as Filterable)) {
          parts.push(entry.frame)
          bytes += entry.frame.byteLength
        }
      }
      this.#trim()
      while (bytes < WRITE_BYTES && client.own.length > 0) {
        const frame = client.own.shift() as Buffer
        parts.push(frame)
        bytes += frame.byteLength
        client.ownBytes -= frame.byteLength
      }
      if (client.behind < group.backlogStart) {
        // Never meant to happen: the chunks it is owed are gone. Cut rather than skip them silently.
        this.#failed('backlog', new Error(`a stream owed chunk ${client.behind} of a backlog starting at ${group.backlogStart}`))
        this.#cut(client, 'its backlog was lost')
        return
      }
      const end = group.backlogStart + group.backlog.length
      while (bytes < WRITE_BYTES && client.behind < end) {
        const chunk = group.backlog[client.behind - group.backlogStart] as Chunk
        if (chunk.joined !== undefined) parts.push(chunk.joined)
        else parts.push(...chunk.frames)
        bytes += chunk.bytes
        client.behind++
        client.behindBytes += chunk.bytes
      }
      if (parts.length === 0) {
        if (client.replayNext >= 0) continue
        this.#catchUpDone(client)
        return
      }
      writeParts(socket, parts, bytes)
    }
    this.#awaitDrain(client)
  }

  /**
   * Reads the next page of a client's replay from the shared history. The first says whether
   * the id it asked for is there: if not, what followed it may be lost, and it gets a gap and
   * then what is live, as from any history. Later ones find the last entry written: if it is
   * gone, the history was trimmed past the client while it read (it is slower than the bus).
   */
  #readPage (client: Client, remote: RemoteReplay): void {
    if (remote.fetching) return
    remote.fetching = true
    const gone = (): boolean => !client.group.clients.has(client) || client.socket.destroyed
    this.feed.read(remote.after, remote.until, remote.count).then((page) => {
      remote.fetching = false
      if (gone()) return
      if (page === 'gone') {
        if (remote.found) {
          this.#cut(client, 'its replay fell out of the history')
          return
        }
        client.remote = undefined
        client.replayNext = -1
        this.metrics.resume('too_old')
        // Its id is what was streamed when it asked: what came since reaches it from its backlog.
        const gap = this.#gapFrame('too_old', remote.asked, remote.streamed)
        client.own.unshift(gap)
        client.ownBytes += gap.byteLength
      } else {
        if (!remote.found) this.metrics.resume('hit')
        remote.found = true
        if (page.length === 0) client.remote = undefined
        remote.page = page
        remote.index = 0
        remote.after = page[page.length - 1]?.id ?? remote.after
        const bytes = page.reduce((n, e) => n + (e.raw?.byteLength ?? 0), 0)
        remote.count = Math.max(1, Math.min(REPLAY_PAGE, Math.floor(REPLAY_PAGE_BYTES / Math.max(1, bytes / Math.max(1, page.length)))))
      }
      this.#beginSlice()
      this.#catchUp(client)
    }, (err: unknown) => {
      remote.fetching = false
      if (gone()) return
      // It reconnects and resumes from what it was sent: nothing is lost.
      this.#failed('replay', err)
      this.#cut(client, 'its replay could not be read from Redis')
    })
  }

  /** An entry of the shared history as a frame for one replay, or nothing (its filter does not take it, it is malformed or was set aside). */
  #remoteFrame (entry: FeedEntry, filter: Filter, asked: string): Buffer | undefined {
    if (entry.raw === undefined) {
      if (entry.tooLarge !== undefined) return undefined
      // A break: nobody recorded what came here, and the client goes on after it.
      return this.#gapFrame('too_old', asked, entry.id)
    }
    const held: HistoryEntry = { seq: -1, id: entry.id, raw: entry.raw, frame: undefined, bytes: 0 }
    this.#frame(held, false)
    return held.frame !== undefined && filter.matches(held as Filterable) ? held.frame : undefined
  }

  #catchUpDone (client: Client): void {
    const { group } = client
    client.behind = -1
    // In the middle of a send the chunk being sent may still be owed to a client further on.
    if (--group.lagging === 0 && !this.#sending) this.#trimBacklog(group)
  }

  /**
   * Decodes and frames a message once; returns the event the first time, for live delivery.
   * A malformed message is counted and marked, and never framed.
   */
  #frame (entry: HistoryEntry, counted = true): BusEvent | undefined {
    if (entry.raw === undefined) return undefined
    const raw = entry.raw
    entry.raw = undefined
    let event: BusEvent
    let json: string
    try {
      event = decodeEvent(raw)
      const unsafe = unsafeName(event.event_name)
      if (unsafe !== undefined) throw new CodecError('wrong_shape', unsafe)
      json = JSON.stringify(toJsonEvent(event))
    } catch (err) {
      this.#resize(entry, 0)
      if (counted) this.#malformed(raw, err instanceof CodecError ? err.reason : 'undecodable', (err as Error).message)
      return undefined
    }
    entry.frame = Buffer.from(sseFrame({ id: entry.id, event: event.event_name, data: json }))
    entry.event_name = event.event_name
    entry.agent_id = event.agent_id
    this.#resize(entry, entry.frame.byteLength)
    if (counted) this.metrics.published()
    return event
  }

  #remember (entry: HistoryEntry): void {
    this.#historyBytes += entry.bytes
    const dropped = this.#history.push(entry)
    if (dropped !== undefined) {
      this.#historyBytes -= dropped.bytes
      this.#base = dropped.id
    }
    this.#trim()
  }

  /** Drops the oldest entries past the byte bound; framing can grow an entry several times over. */
  #trim (): void {
    while (this.#historyBytes > this.options.historyBytes && this.#history.length > 0) {
      const dropped = this.#history.shift() as HistoryEntry
      this.#historyBytes -= dropped.bytes
      this.#base = dropped.id
    }
  }

  #resize (entry: HistoryEntry, bytes: number): void {
    // Only entries still held count: a dropped entry framed late must not change the total.
    if (this.#history.length > 0 && (this.#history.at(0) as HistoryEntry).seq <= entry.seq) this.#historyBytes += bytes - entry.bytes
    entry.bytes = bytes
  }

  #onBusGap (id: string): void {
    // What was published while the subscription was down is not in the history either.
    this.#markBreak(id)
    // Logged the first time, then once in a thousand: a history trimmed under a slow reader must not flood the log.
    if (this.#gapsLogged++ % 1000 === 0) {
      this.log.warn({ seen: this.#gapsLogged }, 'events may be missing (the bus subscription was lost, or the history has a break): telling stream clients')
    }
    // In its place: after every message heard before it.
    this.#pending.push({ gap: this.#gapFrame('bus_reconnected', undefined) })
    this.#processing ??= setImmediate(() => this.#process())
    for (const listener of this.#listeners) listener.gap?.()
  }

  // Counted every time; logged the first time and then once per thousand, so a broken
  // producer cannot flood the log.
  #malformed (raw: Buffer | undefined, reason: string, message: string): void {
    this.metrics.malformed(reason)
    if (this.#malformedLogged++ % 1000 === 0) {
      this.log.warn({ reason: message, preview: raw === undefined ? undefined : hexPreview(raw), seen: this.#malformedLogged },
        'malformed message on the broadcast channel, not streamed')
    }
  }

  /**
   * A frame for one client alone (its retry hint, a gap, a task view's event), after whatever
   * the client has been given or is owed.
   */
  #writeOwn (client: Client, frame: Buffer): void {
    const { socket } = client
    if (socket.destroyed) return
    if (client.behind < 0) {
      socket.write(frame)
      if (socket.writableNeedDrain) {
        this.#fallBehindNow(client)
        this.#awaitDrain(client)
      }
      return
    }
    client.own.push(frame)
    client.ownBytes += frame.byteLength
    this.#tooFarBehind(client, frame.byteLength, frame.byteLength)
  }

  /** Only to streams that have nothing in flight: the others are not idle. */
  #heartbeatAll (): void {
    for (const group of this.#groups.values()) {
      for (const client of group.clients) {
        if (client.behind < 0 && client.socket.writableLength === 0) this.#writeOwn(client, HEARTBEAT)
      }
    }
  }

  /** Logged the first time for each kind of failure, then once in a thousand: nothing here may flood the log. */
  #failed (kind: string, err: unknown, extra: Record<string, unknown> = {}): void {
    const seen = (this.#failures.get(kind) ?? 0) + 1
    this.#failures.set(kind, seen)
    if (seen % 1000 === 1) this.log.error({ err, kind, seen, ...extra }, 'stream hub: a step failed and was skipped')
  }

  /** Ends every stream with a retry hint, so clients reconnect (to another instance) promptly. */
  async close (): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    clearInterval(this.#heartbeat)
    clearTimeout(this.#linger)
    this.#flush(true)
    const bye = this.#retryFrame
    for (const group of [...this.#groups.values()]) {
      for (const { socket, behind } of [...group.clients]) {
        // A client with a backlog would hold the close until it drained: it is cut off.
        if (behind >= 0 || socket.writableLength > 0) socket.destroy()
        else if (!socket.destroyed) socket.end(bye)
      }
    }
    await this.#unwatch()
  }
}

/**
 * One write of at most WRITE_BYTES: all a socket that stops reading keeps. A few shared buffers
 * (a large group's joined chunks) go as they are, in one writev; many small frames are copied
 * into one buffer, which costs less than a queued entry per frame.
 */
function writeParts (socket: Socket, parts: readonly Buffer[], bytes: number): void {
  if (parts.length === 1) {
    socket.write(parts[0] as Buffer)
  } else if (parts.length <= 16) {
    socket.cork()
    for (const part of parts) socket.write(part)
    socket.uncork()
  } else {
    socket.write(Buffer.concat(parts, bytes))
  }
}

/** A chunk as kept: a large group's joined once, for all its clients. */
function sealChunk (chunk: Chunk, join: boolean): Chunk {
  if (join && chunk.frames.length > 1) chunk.joined = Buffer.concat(chunk.frames, chunk.bytes)
  return chunk
}
