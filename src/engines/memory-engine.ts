import { Errors } from '../errors.js'
import type { Consumer, Engine, EngineOptions, EngineState, MessageHandler, ProduceResult, SubscriptionHandlers } from './engine.js'

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
  done: boolean
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
  readonly #handlers = new Set<MessageHandler>()
  readonly #waiters = new Fifo<Waiter>()

  constructor (private readonly options: EngineOptions) {}

  get state (): EngineState {
    return this.#state
  }

  async connect (): Promise<void> {}

  async produce (frames: readonly Uint8Array[]): Promise<ProduceResult> {
    this.#assertOpen()
    if (this.#queue.length + frames.length > this.options.memoryQueueMax) {
      throw new Errors.QueueFull(this.options.memoryQueueMax)
    }
    // Copies: the caller may reuse its buffers, and every reader must see the bytes as written.
    const copies = frames.map((f) => Buffer.from(f))
    this.#queue.push(...copies)
    const subscribers = this.#handlers.size
    if (subscribers > 0) {
      const handlers = [...this.#handlers]
      setImmediate(() => {
        for (const frame of copies) for (const handler of handlers) handler(frame)
      })
    }
    const queueLength = this.#queue.length
    this.#serveWaiters()
    return { subscribers, queueLength }
  }

  // In one process nothing is ever missed, so there is no gap to report.
  async subscribe ({ message }: SubscriptionHandlers): Promise<() => Promise<void>> {
    this.#assertOpen()
    this.#handlers.add(message)
    return async () => { this.#handlers.delete(message) }
  }

  async queueLength (): Promise<number> {
    return this.#queue.length
  }

  async ping (): Promise<void> {
    this.#assertOpen()
  }

  consumer (processingKey: string): Consumer {
    const processing = this.#processing.get(processingKey) ?? []
    this.#processing.set(processingKey, processing)
    return {
      claim: async (timeoutMs) => {
        this.#assertOpen()
        // Consumers already blocked come first, as with BLPOP.
        this.#serveWaiters()
        const frame = this.#queue.shift()
        if (frame !== undefined) {
          processing.push(frame)
          return frame
        }
        return await new Promise<Buffer | null>((resolve) => {
          const waiter: Waiter = {
            done: false,
            processing,
            resolve,
            timer: setTimeout(() => {
              waiter.done = true
              resolve(null)
            }, timeoutMs)
          }
          this.#waiters.push(waiter)
        })
      },
      ack: async (frame) => {
        const i = processing.findIndex((f) => f.equals(frame))
        if (i >= 0) processing.splice(i, 1)
      },
      close: async () => {}
    }
  }

  async close (): Promise<void> {
    this.#state = 'closed'
    for (let w = this.#waiters.shift(); w !== undefined; w = this.#waiters.shift()) {
      clearTimeout(w.timer)
      if (!w.done) w.resolve(null)
    }
    this.#handlers.clear()
  }

  #serveWaiters (): void {
    while (this.#queue.length > 0) {
      const waiter = this.#waiters.shift()
      if (waiter === undefined) return
      if (waiter.done) continue
      waiter.done = true
      clearTimeout(waiter.timer)
      const frame = this.#queue.shift() as Buffer
      waiter.processing.push(frame)
      waiter.resolve(frame)
    }
  }

  #assertOpen (): void {
    if (this.#state === 'closed') throw new Errors.ShuttingDown()
  }
}
