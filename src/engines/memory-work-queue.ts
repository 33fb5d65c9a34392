import { checkFrameCount, type Consumer, type DeadLetterStore, type HeardEvent, type WorkQueue } from './engine.js'
import { memoryDeadLetters } from './memory-dead-letters.js'
import type { Delayed, MemoryKeyspace } from './memory-keyspace.js'

/** The work queue in one process: consumers with their processing lists, retry lists and delay sets, on the engine's keyspace. */
export class MemoryWorkQueue implements WorkQueue {
  readonly #keyspace: MemoryKeyspace

  constructor (keyspace: MemoryKeyspace) {
    this.#keyspace = keyspace
  }

  async enqueue (frames: readonly Uint8Array[]): Promise<number> {
    this.#keyspace.assertOpen()
    checkFrameCount(frames)
    const queue = this.#keyspace.consumerList
    for (const f of frames) queue.push(Buffer.from(f))
    const length = queue.length
    queue.serveWaiters()
    return length
  }

  async delayedLength (delayKey: string): Promise<number> {
    return this.#keyspace.delayed.get(delayKey)?.length ?? 0
  }

  deadLetterStore (base: string, retryKey: string): DeadLetterStore {
    return memoryDeadLetters(this.#keyspace, base, retryKey)
  }

  async recordHeard (events: readonly HeardEvent[], ttlMs: number, max: number): Promise<{ recorded: boolean[], dropped: number }> {
    const keyspace = this.#keyspace
    keyspace.assertOpen()
    const { seen } = keyspace
    const now = Date.now()
    // Expired marks go first, as Redis's expiry would take them; the map keeps them in expiry order.
    for (const [key, mark] of seen) {
      if (mark.until > now) break
      seen.delete(key)
    }
    let dropped = 0
    const recorded = events.map((event) => {
      const held = seen.get(event.seenKey)?.webhooks ?? new Map<string, number>()
      seen.delete(event.seenKey)
      seen.set(event.seenKey, { until: now + ttlMs, webhooks: held })
      let any = false
      for (const { webhook, list, value } of event.copies) {
        if ((held.get(webhook) ?? 0) >= event.occurrence) continue
        held.set(webhook, event.occurrence)
        any = true
        const values = keyspace.retryList(list)
        values.push(Buffer.from(value))
        if (values.length > max) dropped += values.splice(0, values.length - max).length
      }
      return any
    })
    return { recorded, dropped }
  }

  async reclaim (processingKey: string, retryKey: string, envelopePrefix: string): Promise<number> {
    const processing = this.#keyspace.processing.get(processingKey) ?? []
    const moved = processing.splice(0)
    this.#putBack(moved, envelopePrefix, this.#keyspace.retryList(retryKey))
    return moved.length
  }

  /** Back ahead of everything queued, in their order: envelopes to the retry list, the rest to the queue. */
  #putBack (values: readonly Buffer[], envelopePrefix: string, retry: Buffer[]): void {
    const queue = this.#keyspace.consumerList
    const prefix = Buffer.from(envelopePrefix)
    const isEnvelope = (v: Buffer): boolean => v.subarray(0, prefix.length).equals(prefix)
    retry.unshift(...values.filter(isEnvelope))
    const back = values.filter((v) => !isEnvelope(v))
    for (let i = back.length - 1; i >= 0; i--) queue.unshiftOne(back[i] as Buffer)
    queue.serveWaiters()
  }

  consumer (processingKey: string, retryKey?: string, delayKey?: string): Consumer {
    const keyspace = this.#keyspace
    const queue = keyspace.consumerList
    const processing = keyspace.processing.get(processingKey) ?? []
    keyspace.processing.set(processingKey, processing)
    // A consumer without a retry list or a delay set looks at ones that nothing fills, as in Redis.
    const retry = keyspace.retryList(retryKey ?? `${processingKey}:retry`)
    const delayed = keyspace.delaySet(delayKey ?? `${processingKey}:delayed`)
    const remove = (frame: Buffer): boolean => {
      const i = processing.findIndex((f) => f.equals(frame))
      if (i >= 0) processing.splice(i, 1)
      return i >= 0
    }
    return {
      claim: async (timeoutMs, { max = 1, sharers = 1, done = [], oversized, take, sources = [], sourcesFirst = false, scanned } = {}) => {
        keyspace.assertOpen()
        for (const frame of done) remove(frame)
        const deadline = performance.now() + timeoutMs
        for (;;) {
          const now = performance.now()
          // One due message joins the retry list per claim, as in the script.
          if (max > 0 && delayed.length > 0 && (delayed[0] as Delayed).dueAt <= now) retry.push((delayed.shift() as Delayed).value)
          let taken = retry.splice(0, max)
          const fromSources = (): void => {
            for (const key of sources) {
              const list = keyspace.retries.get(key)
              if (list !== undefined) taken.push(...list.splice(0, max - taken.length))
              if (list?.length === 0) keyspace.retries.delete(key)
            }
          }
          const fromList = (): void => {
            const share = Math.min(max, Math.max(1, Math.floor(queue.length / sharers)))
            if (take === undefined) {
              for (let frame = queue.take(); frame !== undefined; frame = taken.length < share ? queue.take() : undefined) taken.push(frame)
            } else if (take.globs.length > 0) {
              const { found, looked, unreadable } = queue.scan(take.globs, take.depth, share, oversized?.maxBytes ?? 0)
              scanned?.(looked, unreadable)
              taken.push(...queue.removeQueued(found, looked))
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
            keyspace.heldList(oversized.key).push(...aside)
            oversized.setAside(aside.length)
          }
          processing.push(...taken)
          // produce() hands messages to blocked consumers at once, so a queued message means none
          // waits; a matching claim never waits (its caller does).
          if (taken.length > 0 || aside.length > 0 || max === 0 || take !== undefined) return taken
          const until = Math.min(deadline, delayed[0]?.dueAt ?? Infinity)
          const frame = await queue.wait(processing, Math.max(1, until - now))
          if (frame !== null) return [frame]
          if (performance.now() >= deadline || keyspace.closed) return []
        }
      },
      release: async (frames, envelopePrefix) => {
        // As LREM count 1 per frame: each copy given takes one copy held, if there is one.
        this.#putBack(frames.filter(remove), envelopePrefix, retry)
      },
      ack: async (...frames) => { for (const frame of frames) remove(frame) },
      giveBack: async (claimed, frame) => {
        if (!remove(claimed)) return
        queue.unshiftOne(Buffer.from(frame))
        queue.serveWaiters()
      },
      delay: async (frame, next, delayMs) => {
        keyspace.assertOpen()
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
}
