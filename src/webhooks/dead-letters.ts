import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyBaseLogger } from 'fastify'
import { DEAD_LETTER_ID, DeadLetter, DeadLetterRecord, OldDeadLetter } from '../../schemas/dead-letter.js'
import { isBase64 } from '../codec.js'
import { isOutcomeUnknown } from '../errors.js'
import type { DeadLetterStore, Engine, ImportedLetter, LetterBytes, StoredLetter } from '../engines/engine.js'
import { storedRecordCheck } from '../validation.js'

export type { DeadLetter, DeadLetterRecord }

/** `returns`: a subscriber's copy, sealed for its webhook, that a redelivery puts on the retry list (see ImportedLetter). */
export type NewDeadLetter = Omit<DeadLetterRecord, 'dead_at'> & { frame: Buffer, returns?: Buffer }

export interface DeadLetterFilter {
  reason?: DeadLetter['reason'] | undefined
  /** exactly this name */
  event_name?: string | undefined
}

const isRecord = storedRecordCheck(DeadLetterRecord)
// Older busgate versions kept whole letters, bytes in base64, in one list.
const isOldLetter = storedRecordCheck(OldDeadLetter)
const LETTER_ID = new RegExp(DEAD_LETTER_ID)

/** Letters per step when redelivering all, filtering or migrating: no step holds Redis for long, or much memory here. */
const CHUNK = 500
/** How often an add whose outcome is unknown is sent, and how far apart. */
const ADD_TRIES = 3
const ADD_RETRY_MS = 200
/** Migration steps in a row that found the old list changed under them before giving up for now. */
const MIGRATION_RETRIES = 100

function matches (record: DeadLetterRecord, filter: DeadLetterFilter): boolean {
  return (filter.reason === undefined || record.reason === filter.reason) &&
    (filter.event_name === undefined || record.event_name === filter.event_name)
}

function newLetterId (): string {
  return `dl_${randomBytes(12).toString('base64url')}`
}

// No bytes at all (a hand edit) is no letter; bytes past the bound are one, shown by its size.
function hasBytes ({ frame, frameBytes }: LetterBytes): boolean {
  return frame !== null || frameBytes > 0
}

function toLetter (id: string, record: DeadLetterRecord, { frame, frameBytes }: LetterBytes): DeadLetter {
  return { id, ...record, webhook_id: record.webhook_id ?? null, frame: frame === null ? null : frame.toString('base64'), frame_bytes: frameBytes }
}

/** How many letters are kept, and the most bytes of one letter a read brings into the gateway. */
export interface DeadLetterLimits {
  /** BUSGATE_DEAD_LETTER_MAX */
  max: number
  /**
   * BUSGATE_BUS_MAX_MESSAGE_BYTES: a letter keeps its message's bytes whatever their size (a
   * producer chooses it); past this one is shown without them, and its bytes stay in the engine.
   */
  maxFrameBytes: number
}

/**
 * The dead letters: newest first, bounded (the oldest go when it is full), each read, deleted
 * or redelivered by id in one step of the engine. A stored value that is not a letter (left by
 * a hand edit) is skipped when reading and logged once, with its id, so it can be deleted; it
 * is still counted, and its bytes, if it has any, are redelivered like any letter's.
 */
export class DeadLetters {
  readonly #store: DeadLetterStore
  readonly #oldKey: string
  readonly #reported = new Set<string>()

  constructor (private readonly engine: Pick<Engine, 'store' | 'queue'>, keyPrefix: string, private readonly limits: DeadLetterLimits,
    private readonly log?: FastifyBaseLogger) {
    this.#oldKey = `${keyPrefix}dead-letters`
    this.#store = engine.queue.deadLetterStore(this.#oldKey, `${keyPrefix}retry`)
  }

  /** Adds one as the newest; returns how many of the oldest it pushed out (the bound). */
  async add ({ frame, returns, ...letter }: NewDeadLetter): Promise<number> {
    const record: DeadLetterRecord = { ...letter, dead_at: new Date().toISOString() }
    const stored: ImportedLetter = { id: newLetterId(), meta: JSON.stringify(record), frame, ...(returns === undefined ? {} : { returns }) }
    // An add whose answer was lost may have been written: sent again under the same id, which
    // the store writes once, rather than failing the claim, whose message would be claimed and
    // buried again under a new id (two letters for one message). Once one try's outcome is
    // unknown the next ones go whatever they meet: a dropped connection is often still coming
    // back 200 ms later.
    let unknown = false
    for (let tries = 1; ; tries++) {
      try {
        return await this.#store.add(stored, this.limits.max)
      } catch (err) {
        unknown ||= isOutcomeUnknown(err)
        if (tries >= ADD_TRIES || !unknown) throw err
        await sleep(ADD_RETRY_MS)
      }
    }
  }

  /**
   * Takes in, as letters (`too_large`), the values claims set aside in `listKey` for being larger
   * than `maxBytes`: their bytes move inside the engine and never reach the gateway. Returns, for
   * each, how many of the oldest letters it pushed out.
   */
  async adoptOversized (listKey: string, maxBytes: number): Promise<number[]> {
    const dropped: number[] = []
    for (;;) {
      const now = new Date().toISOString()
      const record: DeadLetterRecord = {
        message_id: `msg_${randomBytes(9).toString('base64url')}`,
        reason: 'too_large',
        error: `more than BUSGATE_BUS_MAX_MESSAGE_BYTES (${maxBytes} bytes): set aside as it was claimed, never decoded`,
        event_name: null,
        agent_id: null,
        attempts: 0,
        first_seen: now,
        dead_at: now
      }
      const adopted = await this.#store.adoptHeld(listKey, { id: newLetterId(), meta: JSON.stringify(record) }, this.limits.max)
      if (adopted === null) return dropped
      dropped.push(adopted.dropped)
    }
  }

  /**
   * Newest first. Without a filter a page costs its own size; with one, every description is
   * read (a chunk at a time: there is no index by reason or name), to count the matches.
   */
  async list (offset: number, limit: number, filter: DeadLetterFilter = {}): Promise<{ deadLetters: DeadLetter[], total: number }> {
    if (filter.reason === undefined && filter.event_name === undefined) {
      const { total, letters } = await this.#store.page(offset, limit, this.limits.maxFrameBytes)
      return { deadLetters: letters.flatMap((stored) => this.#read(stored) ?? []), total }
    }
    const found: Array<{ id: string, record: DeadLetterRecord }> = []
    let total = 0
    for (let before = Infinity; ;) {
      const batch = await this.#store.scan(before, CHUNK)
      for (const { id, meta } of batch) {
        const record = this.#record(id, meta)
        if (record === undefined || !matches(record, filter)) continue
        if (total >= offset && found.length < limit) found.push({ id, record })
        total++
      }
      const last = batch[batch.length - 1]
      if (last === undefined || batch.length < CHUNK) break
      before = last.seq
    }
    // A letter redelivered or deleted since it was read is left out.
    const frames = await this.#store.frames(found.map(({ id }) => id), this.limits.maxFrameBytes)
    const deadLetters = found.flatMap(({ id, record }, i) => {
      const bytes = frames[i]
      return bytes === undefined || !hasBytes(bytes) ? [] : [toLetter(id, record, bytes)]
    })
    return { deadLetters, total }
  }

  async count (): Promise<number> {
    return await this.#store.count()
  }

  async get (id: string): Promise<DeadLetter | undefined> {
    const stored = await this.#store.get(id, this.limits.maxFrameBytes)
    return stored === undefined ? undefined : this.#read(stored)
  }

  /** Drops one for good; false when there was none. */
  async remove (id: string): Promise<boolean> {
    return await this.#store.remove(id)
  }

  /**
   * Puts its bytes back at the end of the consumer list (a subscriber's copy: to the retry list,
   * for its webhook alone) and takes it out, in one step; false when there was none.
   */
  async redeliver (id: string): Promise<boolean> {
    return await this.#store.redeliver(id)
  }

  /**
   * Every letter there is when it starts, oldest first, a chunk per step, each step atomic: calls
   * at the same time move each letter once between them. Letters added meanwhile stay: one that
   * fails again at once (no webhook takes it) would otherwise come round for ever.
   */
  async redeliverAll (): Promise<number> {
    const upto = await this.#store.newest()
    let moved = 0
    for (let after = -Infinity; ;) {
      const step = await this.#store.redeliverOldest(after, upto, CHUNK)
      moved += step.moved
      if (step.last === null) return moved
      after = step.last
    }
  }

  /**
   * Moves the letters of the list older versions kept (`<prefix>dead-letters`, newest first) in,
   * oldest first, ids and all, a chunk per atomic step that also takes them off the list: a
   * crash, a second run or another gateway doing the same at once neither loses nor doubles
   * one. Values that are no letter go, unchanged, to `<prefix>dead-letters:unreadable`. The
   * list is gone once empty. Returns how many letters moved.
   */
  async migrate (): Promise<number> {
    let moved = 0
    for (let misses = 0; misses < MIGRATION_RETRIES;) {
      const tail = await this.engine.store.listRange(this.#oldKey, -CHUNK, -1)
      if (tail.length === 0) return moved
      const letters = tail.map((raw) => this.#fromOld(raw))
      if (await this.#store.importTail(this.#oldKey, tail, letters, this.limits.max)) {
        misses = 0
        moved += letters.filter((l) => l !== null).length
        const unreadable = letters.filter((l) => l === null).length
        if (unreadable > 0) this.log?.warn({ unreadable, key: `${this.#oldKey}:unreadable` }, 'old dead-letter list: values that are no dead letter were kept aside')
      } else {
        misses++
      }
    }
    throw new Error(`the old dead-letter list ${this.#oldKey} kept changing during ${MIGRATION_RETRIES} steps of its migration; will try again`)
  }

  #fromOld (raw: string): ImportedLetter | null {
    let parsed: unknown
    try {
      parsed = JSON.parse(raw)
    } catch {
      return null
    }
    if (!isOldLetter(parsed) || !LETTER_ID.test(parsed.id) || !isBase64(parsed.frame)) return null
    const { id, frame, ...record } = parsed
    return { id, meta: JSON.stringify(record), frame: Buffer.from(frame, 'base64') }
  }

  #read ({ id, meta, ...bytes }: StoredLetter): DeadLetter | undefined {
    const record = this.#record(id, meta)
    if (record === undefined) return undefined
    if (!hasBytes(bytes)) {
      this.#report(id, 'it has no bytes')
      return undefined
    }
    return toLetter(id, record, bytes)
  }

  #record (id: string, meta: string | null): DeadLetterRecord | undefined {
    if (meta === null) {
      this.#report(id, 'it has no description')
      return undefined
    }
    let parsed: unknown
    try {
      parsed = JSON.parse(meta)
    } catch {
      parsed = undefined
    }
    if (isRecord(parsed)) return parsed
    this.#report(id, 'its description is not one')
    return undefined
  }

  // Once per letter: a listing must not log the same one on every request.
  #report (id: string, problem: string): void {
    if (this.#reported.has(id)) return
    if (this.#reported.size >= 10_000) this.#reported.clear()
    this.#reported.add(id)
    this.log?.warn({ dead_letter: id, problem }, 'a stored dead letter cannot be read: it is skipped (DELETE /dead-letters/<id> drops it)')
  }
}
