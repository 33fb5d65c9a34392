import type { Engine, EngineOptions, EngineState } from './engine.js'
import { MemoryBus } from './memory-bus.js'
import { MemoryKeyspace } from './memory-keyspace.js'
import { MemoryStore } from './memory-store.js'
import { MemoryWorkQueue } from './memory-work-queue.js'

/**
 * The embedded engine: the seed's semantics inside one process, nothing kept on restart.
 * Subscribers hear messages on a later tick, as they would from Redis; blocked consumers are
 * served first come, first served, as BLPOP serves them.
 */
export class MemoryEngine implements Engine {
  readonly kind = 'memory'
  readonly #keyspace = new MemoryKeyspace()
  readonly bus: MemoryBus
  readonly queue: MemoryWorkQueue
  readonly store: MemoryStore

  constructor (options: EngineOptions) {
    this.bus = new MemoryBus(this.#keyspace, options)
    this.queue = new MemoryWorkQueue(this.#keyspace)
    this.store = new MemoryStore(this.#keyspace)
  }

  get state (): EngineState {
    return this.#keyspace.closed ? 'closed' : 'ready'
  }

  async connect (): Promise<void> {}

  async ping (): Promise<void> {
    this.#keyspace.assertOpen()
  }

  async close (): Promise<void> {
    this.#keyspace.close()
    this.bus.close()
  }
}
