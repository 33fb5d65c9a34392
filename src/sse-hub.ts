import { randomBytes } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyBaseLogger } from 'fastify'
import { CodecError, decodeEvent, hexPreview, toJsonEvent, type BusEvent } from './codec.js'
import type { Engine } from './engines/engine.js'
import { globList } from './glob.js'
import { RingBuffer } from './ring-buffer.js'

/** Control events the gateway itself sends; bus events may not use this prefix. */
export const CONTROL_PREFIX = 'busgate.'
export const GAP_EVENT = `${CONTROL_PREFIX}gap`

export type GapReason = 'unknown_id' | 'too_old' | 'other_instance' | 'bus_reconnected'

export interface HubOptions {
  /** how long the subscription outlives the last stream, so that reconnects can resume */
  lingerMs: number
  historySize: number
  historyBytes: number
  maxBufferBytes: number
  heartbeatMs: number
  retryMs: number
  maxClients: number
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
  raw: Buffer | undefined
  frame: Buffer | undefined
  bytes: number
}

interface Client {
  socket: Socket
  group: FilterGroup
  /** unsent bytes allowed before the cut-off: the bound, plus what a replay queued at once */
  allowance: number
}

interface FilterGroup {
  filter: Filter
  clients: Set<Client>
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

const HEARTBEAT = Buffer.from(':\n\n')

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
 * bound is cut off, so a slow reader never holds memory or delays the others.
 */
export class SseHub {
  /** Distinguishes this process's ids from any other's: an id of another instance cannot resume here. */
  readonly instance = randomBytes(4).toString('hex')
  #seq = 0
  readonly #history: RingBuffer<HistoryEntry>
  #historyBytes = 0
  readonly #groups = new Map<string, FilterGroup>()
  #clientCount = 0
  #heartbeat: NodeJS.Timeout | undefined
  #subscription: Promise<() => Promise<void>> | undefined
  #linger: NodeJS.Timeout | undefined
  /**
   * The seq at which the hub last stopped hearing the channel (unsubscribed, or lost the
   * subscription): a client whose last id is this or older may have missed what came next.
   */
  #coveredAfter = -1
  #everSubscribed = false
  /** streams between their request and their attach: they count as users of the subscription */
  #opening = 0
  /** users of the subscription other than streams (see `hold`) */
  #holds = 0
  readonly #listeners = new Set<BusListener>()
  #closing = false
  #malformedLogged = 0
  #listenerFailures = 0

  constructor (
    private readonly engine: Engine,
    private readonly options: HubOptions,
    private readonly metrics: HubMetrics,
    private readonly log: FastifyBaseLogger
  ) {
    this.#history = new RingBuffer(options.historySize)
  }

  get clientCount (): number {
    return this.#clientCount
  }

  get lastId (): string {
    return this.#id(this.#seq)
  }

  start (): void {
    this.#heartbeat = setInterval(() => this.#broadcast(HEARTBEAT), this.options.heartbeatMs)
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
    const group = this.#groups.get(filter.key) ?? { filter, clients: new Set<Client>() }
    this.#groups.set(filter.key, group)
    const client: Client = { socket, group, allowance: this.options.maxBufferBytes }
    group.clients.add(client)
    this.#clientCount++
    this.metrics.clients(this.#clientCount)
    res.once('close', () => this.#detach(client))

    this.#write(client, this.#retryFrame)
    if (lastEventId !== undefined) this.#resume(client, lastEventId)
    return {
      write: (frame) => this.#write(client, frame),
      end: (frame) => {
        // Detached first: nothing of the hub's (a heartbeat, the shutdown) writes after the end.
        this.#detach(client)
        if (!socket.destroyed) socket.end(frame)
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
    return Buffer.from(`retry: ${this.options.retryMs}\n\n`)
  }

  async #watch (): Promise<void> {
    clearTimeout(this.#linger)
    this.#linger = undefined
    if (this.#subscription === undefined && !this.#closing) {
      if (this.#everSubscribed) this.#markBreak()
      this.#everSubscribed = true
      this.#subscription = this.engine.subscribe({
        message: (frame) => this.#onMessage(frame),
        gap: () => this.#onBusGap()
      })
    }
    await this.#subscription
  }

  async #unwatch (): Promise<void> {
    const subscription = this.#subscription
    this.#subscription = undefined
    if (subscription !== undefined) await (await subscription)()
  }

  /**
   * The hub stopped hearing the channel for a while (unsubscribed, or the subscription was
   * lost). The break takes a seq of its own, holding nothing: a resume from before it is a
   * gap, and the gap event's id (the break's seq or later) resumes cleanly.
   */
  #markBreak (): void {
    this.#coveredAfter = this.#seq
    this.#remember({ seq: ++this.#seq, raw: undefined, frame: undefined, bytes: 0 })
  }

  get full (): boolean {
    return this.#clientCount + this.#opening >= this.options.maxClients
  }

  #resume (client: Client, lastEventId: string): void {
    const match = /^([0-9a-f]{8}):(\d{1,15})$/.exec(lastEventId)
    const seq = Number(match?.[2])
    let reason: GapReason | undefined
    if (match === null) {
      reason = 'unknown_id'
    } else if (match[1] !== this.instance) {
      reason = 'other_instance'
    } else if (seq > this.#seq) {
      reason = 'unknown_id'
    } else {
      // Resumable from the oldest event held, and only from after the last break.
      const oldest = this.#history.at(0)?.seq ?? this.#seq + 1
      if (seq < oldest - 1 || seq <= this.#coveredAfter) reason = 'too_old'
    }
    if (reason !== undefined) {
      this.metrics.resume(reason)
      this.#write(client, this.#gapFrame(reason, lastEventId))
      return
    }
    this.metrics.resume('hit')
    // The history is ordered by seq: skip what the client has, send the rest that matches.
    // Written without the cut-off: the backlog the client asked for is not slowness; it
    // raises this client's allowance instead, so it has to drain before more counts against it.
    const { socket } = client
    const start = this.#history.length - (this.#seq - seq)
    for (let i = Math.max(start, 0); i < this.#history.length; i++) {
      const entry = this.#history.at(i) as HistoryEntry
      this.#frame(entry)
      if (entry.frame !== undefined && client.group.filter.matches(entry as Filterable) && !socket.destroyed) socket.write(entry.frame)
    }
    client.allowance = this.options.maxBufferBytes + socket.writableLength
    this.#trim()
  }

  #gapFrame (reason: GapReason, lastEventId: string | undefined): Buffer {
    const data = JSON.stringify({ reason, last_event_id: lastEventId ?? null, resume_from: this.lastId })
    // The gap carries the newest id, so the client's next reconnect does not ask for the lost range again.
    return Buffer.from(`id: ${this.lastId}\nevent: ${GAP_EVENT}\ndata: ${data}\n\n`)
  }

  #detach (client: Client): void {
    const { group } = client
    if (!group.clients.delete(client)) return
    this.#clientCount--
    this.metrics.clients(this.#clientCount)
    if (group.clients.size === 0) this.#groups.delete(group.filter.key)
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

  #onMessage (raw: Buffer): void {
    const entry: HistoryEntry = { seq: ++this.#seq, raw, frame: undefined, bytes: raw.byteLength }
    if (this.#clientCount === 0 && this.#holds === 0) {
      // The subscriber's buffer may be shared with other messages: keep a copy of our own.
      entry.raw = Buffer.from(raw)
      this.#remember(entry)
      return
    }
    this.#remember(entry)
    const event = this.#frame(entry)
    this.#trim()
    if (event === undefined) return
    const frame = entry.frame as Buffer
    for (const listener of this.#listeners) {
      try {
        listener.event(event)
      } catch (err) {
        if (this.#listenerFailures++ % 1000 === 0) this.log.error({ err, seen: this.#listenerFailures }, 'a bus event listener failed')
      }
    }

    let delivered = 0
    for (const group of this.#groups.values()) {
      if (!group.filter.matches(event)) continue
      for (const client of group.clients) {
        this.#write(client, frame)
        delivered++
      }
    }
    if (delivered > 0) this.metrics.delivered(delivered)
  }

  /**
   * Decodes and frames a message once; returns the event the first time, for live delivery.
   * A malformed message is counted and marked, and never framed.
   */
  #frame (entry: HistoryEntry): BusEvent | undefined {
    if (entry.raw === undefined) return undefined
    const raw = entry.raw
    entry.raw = undefined
    let event: BusEvent
    try {
      event = decodeEvent(raw)
      const unsafe = unsafeName(event.event_name)
      if (unsafe !== undefined) throw new CodecError('wrong_shape', unsafe)
    } catch (err) {
      this.#resize(entry, 0)
      this.#malformed(raw, err)
      return undefined
    }
    const json = JSON.stringify(toJsonEvent(event))
    entry.frame = Buffer.from(`id: ${this.#id(entry.seq)}\nevent: ${event.event_name}\ndata: ${json}\n\n`)
    entry.event_name = event.event_name
    entry.agent_id = event.agent_id
    this.#resize(entry, entry.frame.byteLength)
    this.metrics.published()
    return event
  }

  #remember (entry: HistoryEntry): void {
    this.#historyBytes += entry.bytes
    const dropped = this.#history.push(entry)
    if (dropped !== undefined) this.#historyBytes -= dropped.bytes
    this.#trim()
  }

  /** Drops the oldest entries past the byte bound; framing can grow an entry several times over. */
  #trim (): void {
    while (this.#historyBytes > this.options.historyBytes && this.#history.length > 0) {
      this.#historyBytes -= (this.#history.shift() as HistoryEntry).bytes
    }
  }

  #resize (entry: HistoryEntry, bytes: number): void {
    // Only entries still held count: a dropped entry framed late must not change the total.
    if (this.#history.length > 0 && (this.#history.at(0) as HistoryEntry).seq <= entry.seq) this.#historyBytes += bytes - entry.bytes
    entry.bytes = bytes
  }

  #onBusGap (): void {
    // What was published while the subscription was down is not in the history either.
    this.#markBreak()
    this.log.warn('the bus subscription was lost and is back: telling stream clients that events may be missing')
    const gap = this.#gapFrame('bus_reconnected', undefined)
    // Streams of bus events get the gap event; the others' owners learn of it below.
    for (const group of this.#groups.values()) {
      if (group.filter === NO_EVENTS) continue
      for (const client of group.clients) this.#write(client, gap)
    }
    for (const listener of this.#listeners) listener.gap?.()
  }

  // Counted every time; logged the first time and then once per thousand, so a broken
  // producer cannot flood the log.
  #malformed (raw: Buffer, err: unknown): void {
    const reason = err instanceof CodecError ? err.reason : 'undecodable'
    this.metrics.malformed(reason)
    if (this.#malformedLogged++ % 1000 === 0) {
      this.log.warn({ reason: (err as Error).message, preview: hexPreview(raw), seen: this.#malformedLogged },
        'malformed message on the broadcast channel, not streamed')
    }
  }

  // Checked before adding: a client still behind by more than the bound is cut off, so one
  // large frame never cuts off a client that keeps up, and a stalled one holds at most the
  // bound plus one frame.
  #write (client: Client, frame: Buffer): void {
    const { socket } = client
    if (socket.destroyed) return
    if (socket.writableLength > client.allowance) {
      this.metrics.slowDisconnect()
      this.log.info({ buffered: socket.writableLength }, 'stream client too slow: disconnected')
      socket.destroy()
      return
    }
    socket.write(frame)
  }

  #broadcast (frame: Buffer): void {
    for (const group of this.#groups.values()) {
      for (const client of group.clients) this.#write(client, frame)
    }
  }

  #id (seq: number): string {
    return `${this.instance}:${seq}`
  }

  /** Ends every stream with a retry hint, so clients reconnect (to another instance) promptly. */
  async close (): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    clearInterval(this.#heartbeat)
    clearTimeout(this.#linger)
    const bye = this.#retryFrame
    for (const group of [...this.#groups.values()]) {
      for (const { socket } of [...group.clients]) {
        // A client with a backlog would hold the close until it drained: it is cut off.
        if (socket.writableLength > 0) socket.destroy()
        else if (!socket.destroyed) socket.end(bye)
      }
    }
    await this.#unwatch()
  }
}
