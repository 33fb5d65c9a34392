import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
import { BulkScript } from './bulk-script.js'
import { Errors } from '../errors.js'
import { LocalFeed, type Feed } from './feed.js'
import { RedisHistory } from './redis-history.js'
import type { RedisLink } from './redis-link.js'
import { MAX_FRAMES_PER_PRODUCE, checkFrameCount, deliverMessage, type Bus, type HistoryOptions, type ProduceResult, type SubscriptionHandlers } from './engine.js'

// RPUSH first: if it fails (wrong type, out of memory) the script stops before PUBLISH, so a
// failed produce leaves nothing behind. A script is atomic, and one command pipelines well.
const PRODUCE_LUA = `
local n = redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
local s = 0
for i = 2, #ARGV do
  s = redis.call('PUBLISH', ARGV[1], ARGV[i])
end
return {s, n}
`
const PRODUCE = new BulkScript(PRODUCE_LUA, 1)

/** A produce that would take a waiting group past this sends that group first, and starts the next. */
const GROUP_BYTES = 4 * 1024 * 1024

interface PendingProduce {
  frames: Buffer[]
  resolve: (result: ProduceResult) => void
  reject: (err: Error) => void
}

/** The bus on Redis: produces grouped into one script call per event-loop turn (and WAITed for, if asked), one subscription per process, the history. */
export class RedisBus implements Bus {
  /** produces, when they WAIT for replicas */
  readonly #producer: Redis | undefined
  #subscriber: Redis | undefined
  readonly #handlers = new Set<SubscriptionHandlers>()
  #group: { members: PendingProduce[], frames: number, bytes: number } = { members: [], frames: 0, bytes: 0 }
  #flushScheduled = false
  /** Groups waiting for the WAIT in flight to answer (BUSGATE_REDIS_WAIT_REPLICAS only). */
  readonly #backlog: Array<{ members: PendingProduce[] }> = []
  #waiting = false

  constructor (private readonly link: RedisLink) {
    // WAIT holds its connection until the replicas answer: produces get one of their own then,
    // so the other commands never queue behind it.
    if ((link.options.redisWaitReplicas ?? 0) > 0) {
      this.#producer = link.open('producer', {
        enableOfflineQueue: false,
        autoResendUnfulfilledCommands: false,
        maxRetriesPerRequest: 0,
        commandTimeout: link.options.redisTimeoutMs + (link.options.redisWaitTimeoutMs ?? 1000)
      }, { counts: true, pinged: true })
    }
  }

  /**
   * Produces are grouped: every produce that arrives before the event loop's next check phase
   * goes to Redis in one script call. The group is atomic as a whole, so each produce in it is
   * too, and their order in the group is their order in the list. One script call for many
   * events costs Redis a fraction of one call per event (the Lua call itself is most of it).
   */
  // Not async: a produce is settled by its group, and an async wrapper would add a turn to each.
  // What the executor throws (a wrong frame count) rejects the promise, as an async function's would.
  produce (frames: readonly Uint8Array[]): Promise<ProduceResult> {
    return new Promise<ProduceResult>((resolve, reject) => {
      checkFrameCount(frames)
      const buffers = frames.map((f) => (Buffer.isBuffer(f) ? f : Buffer.from(f.buffer, f.byteOffset, f.byteLength)))
      const bytes = buffers.reduce((sum, b) => sum + b.byteLength, 0)
      if (this.#group.frames + buffers.length > MAX_FRAMES_PER_PRODUCE || this.#group.bytes + bytes > GROUP_BYTES) this.#flush()
      this.#group.members.push({ frames: buffers, resolve, reject })
      this.#group.frames += buffers.length
      this.#group.bytes += bytes
      if (!this.#flushScheduled) {
        this.#flushScheduled = true
        setImmediate(() => {
          this.#flushScheduled = false
          this.#flush()
        })
      }
    })
  }

  #flush (): void {
    const group = this.#group
    if (group.members.length === 0) return
    this.#group = { members: [], frames: 0, bytes: 0 }
    // A WAIT holds the producer connection until the replicas answer: the next group goes when
    // it has, so none times out queued behind it (and is then written all the same).
    if (this.#waiting) {
      this.#backlog.push(group)
      return
    }
    this.#send(group.members)
  }

  #send (members: PendingProduce[]): void {
    const { prodconsKey, pubsubChannel, redisWaitReplicas: replicas = 0, redisWaitTimeoutMs: waitMs = 1000 } = this.link.options
    // A loop, not flatMap: the group's frames number thousands under load, and flatMap was a hot spot.
    const args: Array<string | Buffer> = [pubsubChannel]
    for (const member of members) for (const frame of member.frames) args.push(frame)
    const frameCount = args.length - 1
    const conn = this.#producer ?? this.link.commands
    let resent = false
    const produced = PRODUCE.call(conn, [prodconsKey], args, () => { resent = true }) as Promise<[subscribers: number, length: number]>
    const settle = ([subscribers, finalLength]: [number, number]): void => {
      let end = finalLength - frameCount
      for (const member of members) {
        end += member.frames.length
        member.resolve({ subscribers, queueLength: end })
      }
    }
    const fail = (err: unknown): void => {
      const translated = this.link.translate(err)
      for (const member of members) member.reject(translated)
    }
    if (replicas === 0) {
      // The usual case, kept to one step: this runs for every group.
      produced.then(settle, fail)
      return
    }
    // WAIT right behind the script on the same connection: it counts the replicas that hold
    // every write this connection made before it, this group's included.
    this.#waiting = true
    Promise.all([produced, conn.wait(replicas, waitMs)]).then(async ([result, acked]) => {
      // Sent again behind that WAIT (its Redis had forgotten the script): only a WAIT after it counts it.
      return [result, resent ? await conn.wait(replicas, waitMs) : acked] as const
    }).then(([result, acked]) => {
      if (acked < replicas) {
        const err = new Errors.ReplicationUnconfirmed(`${acked} of the ${replicas} replicas asked for confirmed it within ${waitMs} ms`)
        for (const member of members) member.reject(err)
        return
      }
      settle(result)
    }, fail).finally(() => {
      this.#waiting = false
      const next = this.#backlog.shift()
      if (next !== undefined) this.#send(next.members)
    })
  }

  async subscribe (handlers: SubscriptionHandlers): Promise<() => Promise<void>> {
    const subscriber = this.#subscriber ?? this.#createSubscriber()
    const { pubsubChannel, redisTimeoutMs } = this.link.options
    this.#handlers.add(handlers)
    if (this.#handlers.size === 1) {
      // Queued until the connection is up: a Redis that is down must not hold the caller.
      const subscribed = subscriber.subscribe(pubsubChannel).then(() => undefined, () => undefined)
      await Promise.race([subscribed, sleep(redisTimeoutMs)])
    }
    return async () => {
      if (!this.#handlers.delete(handlers) || this.#handlers.size > 0) return
      // Nobody listens: stop Redis sending every message to this process. The connection stays.
      // Bounded as the subscribe is: a connection that is reconnecting must not hold the caller (a registry change waits on this).
      await Promise.race([subscriber.unsubscribe(pubsubChannel).catch(() => undefined), sleep(redisTimeoutMs)])
    }
  }

  history (options: HistoryOptions): Feed {
    if (!options.shared) return new LocalFeed(this)
    const prefix = options.keyPrefix
    return new RedisHistory(this.link.commands,
      // A blocking read: no command timeout, and it waits through reconnects.
      () => this.link.open('history', { maxRetriesPerRequest: null }),
      async (handlers) => await this.subscribe(handlers),
      { stream: `${prefix}history`, lease: `${prefix}history:recorder`, meta: `${prefix}history:meta` },
      options, options.metrics, this.link.log)
  }

  // One connection for the whole process, whatever the number of handlers. ioredis
  // resubscribes by itself after a reconnect; what was published meanwhile is gone.
  #createSubscriber (): Redis {
    let lost = false
    const subscriber = this.link.open('subscriber', { maxRetriesPerRequest: null }, {
      counts: true,
      onState: (state) => {
        if (state === 'down') lost = true
        if (state === 'ready' && lost) {
          lost = false
          for (const h of this.#handlers) h.gap?.()
        }
      }
    })
    this.#subscriber = subscriber
    let failures = 0
    const onError = (err: unknown): void => {
      if (failures++ % 1000 === 0) this.link.log.error({ err, seen: failures }, 'a bus message handler failed')
    }
    subscriber.on('messageBuffer', (_channel: Buffer, message: Buffer) => {
      deliverMessage(this.#handlers, message, onError)
    })
    return subscriber
  }

  async queueLength (): Promise<number> {
    return await this.link.call(async () => await this.link.commands.llen(this.link.options.prodconsKey))
  }
}
