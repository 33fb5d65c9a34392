import { setTimeout as sleep } from 'node:timers/promises'
import { ReplyError, type Redis, type RedisOptions } from 'ioredis'
import type { FastifyBaseLogger } from 'fastify'
import type { RedisTarget } from '../config.js'
import { Errors, outcomeUnknown } from '../errors.js'
import { RedisConnections } from './redis-connections.js'
import type { EngineOptions, EngineState } from './engine.js'

// Redis answers these while it cannot serve for now; a retry may succeed. Inside a script
// (Redis 6.2) they arrive wrapped: "ERR Error running script … -OOM …".
const TRANSIENT_REPLY = /(?:^|-)(LOADING|BUSY|MASTERDOWN|READONLY|OOM|TRYAGAIN|CLUSTERDOWN|NOREPLICAS)\b/

export type RedisLinkOptions = EngineOptions & { redis: RedisTarget }

export interface OpenOptions {
  /** the engine is ready only while this connection is (the subscription, the WAIT producer) */
  counts?: boolean
  /** a ping of the engine pings it too (produces go through it) */
  pinged?: boolean
  /** hears each state it goes through */
  onState?: (state: EngineState) => void
}

/**
 * The Redis engine's connections, which its parts (bus, work queue, store) share: the commands
 * connection every part's scripts are defined on, and the others each part opens for itself
 * (a subscription, blocking reads). It knows how errors read (`call`) and when the engine is
 * ready; how a connection is made (standalone, Sentinel, Cluster) is RedisConnections' alone.
 */
export class RedisLink {
  readonly commands: Redis
  #closed = false
  readonly #states = new Map<Redis, EngineState>()
  readonly #pinged = new Set<Redis>()
  readonly #others = new Set<Redis>()
  readonly #connections: RedisConnections

  constructor (readonly options: RedisLinkOptions, readonly log: FastifyBaseLogger) {
    this.#connections = new RedisConnections(options, log, () => this.#closed)
    this.commands = this.#connections.open('commands', {
      // A produce must fail fast rather than wait for a reconnect, and must never be replayed
      // behind the client's back after it was answered 503.
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
      commandTimeout: options.redisTimeoutMs
      // No auto-pipelining: the bus already sends one produce per event-loop turn.
    })
    this.#states.set(this.commands, 'connecting')
    this.#connections.watch(this.commands, 'commands', (state) => { this.#states.set(this.commands, state) })
  }

  get closed (): boolean {
    return this.#closed
  }

  /** The commands connection's state first, then each other one that counts, in the order they were opened. */
  get state (): EngineState {
    if (this.#closed) return 'closed'
    for (const state of this.#states.values()) if (state !== 'ready') return state
    return 'ready'
  }

  /** A connection of the engine's own, closed with it (or earlier, by `release`). */
  open (role: string, extra: RedisOptions, { counts = false, pinged = false, onState }: OpenOptions = {}): Redis {
    const conn = this.#connections.open(role, extra)
    if (counts) this.#states.set(conn, 'connecting')
    if (pinged) this.#pinged.add(conn)
    this.#connections.watch(conn, role, (state) => {
      if (counts) this.#states.set(conn, state)
      onState?.(state)
    })
    this.#others.add(conn)
    conn.once('end', () => this.#forget(conn))
    return conn
  }

  /** Closes one connection `open` made. */
  async release (conn: Redis): Promise<void> {
    this.#forget(conn)
    await this.#quit(conn)
  }

  /** The connections that hold keys, for a SCAN: the one server, or each master of a cluster. */
  masters (): Redis[] {
    return this.#connections.masters(this.commands)
  }

  /** Runs a command, its failure told as the gateway answers it: 503-coded when trying again may help. */
  async call<T> (command: () => Promise<T>): Promise<T> {
    try {
      return await command()
    } catch (err) {
      throw this.translate(err)
    }
  }

  translate (err: unknown): Error {
    const message = (err as Error).message ?? ''
    if (err instanceof ReplyError) {
      const transient = TRANSIENT_REPLY.exec(message)
      // Anything else is a bug or a misconfiguration (WRONGTYPE…): a 500. A new Error, because
      // ioredis hangs the whole command, every frame of it, on its own, and that must not be logged.
      if (transient === null) return new Error(`Redis refused the command: ${message}`)
      return new Errors.RedisUnavailable(`Redis cannot serve right now (${transient[1] ?? 'error'})`)
    }
    // Timed out, or cut off with the connection (flushed by maxRetriesPerRequest, aborted at the
    // reconnect, or closed: see bulk-script.ts for Cluster): Redis may have run it. Refused
    // before it was sent: the offline queue is off.
    if (/timed out/i.test(message)) return outcomeUnknown(new Errors.RedisUnavailable('Redis did not answer in time; the write may still have happened'))
    if (/max retries per request|Connection is closed|aborted due to connection close/i.test(message)) return outcomeUnknown(new Errors.RedisUnavailable('the connection to Redis dropped before it answered; the write may still have happened'))
    return new Errors.RedisUnavailable('Redis is not reachable')
  }

  async connect (): Promise<void> {
    if (this.commands.status === 'ready') return
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        this.commands.off('ready', done)
        resolve()
      }
      const timer = setTimeout(done, this.options.redisTimeoutMs)
      this.commands.on('ready', done)
    })
  }

  async ping (): Promise<void> {
    await this.call(async () => await Promise.all([this.commands.ping(), ...[...this.#pinged].map(async (conn) => await conn.ping())]))
  }

  async close (): Promise<void> {
    this.#closed = true
    const all = [this.commands, ...this.#others]
    this.#others.clear()
    await Promise.all(all.map(async (conn) => await this.#quit(conn)))
  }

  #forget (conn: Redis): void {
    this.#others.delete(conn)
    this.#states.delete(conn)
    this.#pinged.delete(conn)
  }

  // QUIT lets pending replies arrive; a Redis that does not answer is cut off after the bound.
  async #quit (conn: Redis): Promise<void> {
    if (conn.status === 'ready') {
      await Promise.race([conn.quit().catch(() => undefined), sleep(this.options.redisTimeoutMs)])
    }
    conn.disconnect()
  }
}
