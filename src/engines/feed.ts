import { randomBytes } from 'node:crypto'
import type { Bus } from './engine.js'

/** An entry of the history: a message of the bus, or a break (`raw` undefined) where messages may be missing. */
export interface FeedEntry {
  id: string
  raw: Buffer | undefined
  /** set instead of `raw` for a message too large to keep: its size */
  tooLarge?: number
}

export interface FeedListener {
  /**
   * Called once, before anything else: the id just before what the listener hears. Shared:
   * the newest entry of the history then (a replay up to it joins the live messages). A
   * process's own: a break unless it is the first follow.
   */
  begin: (start: string) => void
  /** a message of the broadcast channel, in publish order, with its id in the history */
  message: (raw: Buffer, id: string) => void
  /** a message larger than the bound, set aside: it keeps its place (and id), not its bytes */
  setAside: (id: string, bytes: number) => void
  /** messages may be missing before the next one (nobody recorded them): `id` is the break's */
  gap: (id: string) => void
}

/** What the shared history tells about itself, for the metrics. */
export interface HistoryMetrics {
  /** entries this instance wrote: messages, and breaks where messages may be missing */
  recorded: (kind: 'message' | 'break', count: number) => void
  /** whether this instance records */
  recording: (yes: boolean) => void
}

export type IdKind = 'ours' | 'other_instance' | 'unknown_id'

/**
 * The broadcast channel as a history with ids: what the SSE hub streams and resumes from.
 * `shared`: kept in Redis, one for all instances (any of them resumes any id, a restart loses
 * nothing); otherwise this process's alone, and the hub's own memory is the whole history.
 */
export interface Feed {
  readonly shared: boolean
  /** Resolves once listening, with what stops it: every message published after that reaches the listener. */
  follow: (listener: FeedListener) => Promise<() => Promise<void>>
  /** Whether `id` is one this feed gives out (its syntax, and for a process's history its process). */
  kind: (id: string) => IdKind
  /** Orders two ids of this feed. */
  compare: (a: string, b: string) => number
  /**
   * Entries after `after` up to `until` (both ids of this feed), at most `max`, oldest first,
   * for a replay; `gone` when `after` is not in the history (any more): what followed it may be
   * lost. An empty answer means there is nothing more up to `until`.
   */
  read: (after: string, until: string, max: number) => Promise<FeedEntry[] | 'gone'>
  /** The id of the newest entry of the history ('0-0' or the like when empty). */
  newest: () => Promise<string>
  /** Whether what this process heard has reached its listener (a shared history writes and reads it back first). */
  caughtUp: () => boolean
  close: () => Promise<void>
}

const LOCAL_ID = /^([0-9a-f]{8}):(\d{1,15})$/

/**
 * A process's own feed over the bus's subscription: ids `<instance>:<n>`, counted here. Each
 * follow after the first starts at a break of its own (what came while nobody listened is not
 * here), and a lost subscription is one. It keeps nothing: the hub's memory is its history.
 */
export class LocalFeed implements Feed {
  readonly shared = false
  /** distinguishes this process's ids from any other's: an id of another instance cannot resume here */
  readonly instance = randomBytes(4).toString('hex')
  #n = 0
  #followed = false

  constructor (private readonly bus: Pick<Bus, 'subscribe'>) {}

  async follow (listener: FeedListener): Promise<() => Promise<void>> {
    const id = (): string => `${this.instance}:${++this.#n}`
    // Again: the start is a break of its own, which a replay from before it cannot cross.
    listener.begin(this.#followed ? id() : `${this.instance}:0`)
    this.#followed = true
    return await this.bus.subscribe({
      message: (raw) => listener.message(raw, id()),
      gap: () => listener.gap(id())
    })
  }

  kind (id: string): IdKind {
    const match = LOCAL_ID.exec(id)
    if (match === null) return 'unknown_id'
    return match[1] === this.instance ? 'ours' : 'other_instance'
  }

  compare (a: string, b: string): number {
    return localSeq(a) - localSeq(b)
  }

  async read (): Promise<'gone'> {
    return 'gone'
  }

  async newest (): Promise<string> {
    return `${this.instance}:${this.#n}`
  }

  caughtUp (): boolean {
    return true
  }

  async close (): Promise<void> {}
}

function localSeq (id: string): number {
  return Number(LOCAL_ID.exec(id)?.[2] ?? Number.NaN)
}
