import { Errors } from '../errors.js'
import { checkFrameCount, deliverMessage, type Bus, type EngineOptions, type ProduceResult, type SubscriptionHandlers } from './engine.js'
import { LocalFeed, type Feed } from './feed.js'
import type { MemoryKeyspace } from './memory-keyspace.js'

/** The bus in one process: the consumer list, bounded, and its subscribers, who hear messages on a later tick, as they would from Redis. */
export class MemoryBus implements Bus {
  readonly #keyspace: MemoryKeyspace
  readonly #options: Pick<EngineOptions, 'memoryQueueMax' | 'memoryQueueMaxBytes'>
  readonly #handlers = new Set<SubscriptionHandlers>()

  constructor (keyspace: MemoryKeyspace, options: Pick<EngineOptions, 'memoryQueueMax' | 'memoryQueueMaxBytes'>) {
    this.#keyspace = keyspace
    this.#options = options
  }

  async produce (frames: readonly Uint8Array[]): Promise<ProduceResult> {
    this.#keyspace.assertOpen()
    checkFrameCount(frames)
    const queue = this.#keyspace.consumerList
    const bytes = frames.reduce((sum, f) => sum + f.byteLength, 0)
    if (queue.length + frames.length > this.#options.memoryQueueMax ||
      queue.bytes + bytes > this.#options.memoryQueueMaxBytes) {
      throw new Errors.QueueFull(`${this.#options.memoryQueueMax} messages or ${this.#options.memoryQueueMaxBytes} bytes`)
    }
    // Copies: the caller may reuse its buffers, and every reader must see the bytes as written.
    const copies = frames.map((f) => Buffer.from(f))
    queue.push(...copies)
    const subscribers = this.#handlers.size
    if (subscribers > 0) {
      const handlers = [...this.#handlers]
      setImmediate(() => {
        // A handler that throws must not stop the others; the hub logs its own failures.
        for (const frame of copies) deliverMessage(handlers, frame, () => undefined)
      })
    }
    const queueLength = queue.length
    queue.serveWaiters()
    return { subscribers, queueLength }
  }

  // In one process nothing is ever missed, so there is no gap to report.
  async subscribe (handlers: SubscriptionHandlers): Promise<() => Promise<void>> {
    this.#keyspace.assertOpen()
    this.#handlers.add(handlers)
    return async () => { this.#handlers.delete(handlers) }
  }

  /** This process's own: the memory engine is one process's bus. */
  history (): Feed {
    return new LocalFeed(this)
  }

  async queueLength (): Promise<number> {
    return this.#keyspace.consumerList.length
  }

  /** The engine closes: no subscriber hears anything more. */
  close (): void {
    this.#handlers.clear()
  }
}
