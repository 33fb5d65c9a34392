import type { Redis } from 'ioredis'
import type { FastifyBaseLogger } from 'fastify'
import { RedisBus } from './redis-bus.js'
import { RedisLink, type RedisLinkOptions } from './redis-link.js'
import { RedisStore } from './redis-store.js'
import { RedisWorkQueue } from './redis-work-queue.js'
import type { Engine, EngineState } from './engine.js'

/**
 * The engine on Redis: its three parts over one set of connections (RedisLink). Standalone,
 * Sentinel and Cluster differ only in how those connections are made (RedisConnections).
 */
export class RedisEngine implements Engine {
  readonly kind = 'redis'
  readonly #link: RedisLink
  readonly bus: RedisBus
  readonly queue: RedisWorkQueue
  readonly store: RedisStore

  constructor (options: RedisLinkOptions, log: FastifyBaseLogger) {
    this.#link = new RedisLink(options, log)
    this.bus = new RedisBus(this.#link)
    this.queue = new RedisWorkQueue(this.#link)
    this.store = new RedisStore(this.#link)
  }

  get commands (): Redis {
    return this.#link.commands
  }

  get state (): EngineState {
    return this.#link.state
  }

  async connect (): Promise<void> {
    await this.#link.connect()
  }

  async ping (): Promise<void> {
    await this.#link.ping()
  }

  async close (): Promise<void> {
    await this.#link.close()
  }
}
