import { isIP } from 'node:net'
import type { FastifyBaseLogger } from 'fastify'
import { Cluster, Redis, type RedisOptions } from 'ioredis'
import { describeRedis, type RedisTarget } from '../config.js'
import type { EngineOptions, EngineState } from './engine.js'

const DEMOTED = /(?:^|-)READONLY\b|WAIT cannot be used with replica|^UNBLOCKED\b/

/**
 * How the Redis engine's connections are made and watched: a standalone server, the master a
 * set of sentinels names, or a Redis Cluster. The engine above it does not tell them apart.
 */
export class RedisConnections {
  constructor (
    private readonly options: EngineOptions & { redis: RedisTarget },
    private readonly log: FastifyBaseLogger,
    private readonly isClosed: () => boolean
  ) {}

  /**
   * A connection of one role. With Redis Cluster it is a cluster client, which routes each
   * command (and each script, by its keys, all in one slot: see inCluster) to the node of its
   * slot and follows MOVED and failovers; it has the same commands, so the rest of the engine
   * does not tell them apart.
   */
  open (role: string, extra: RedisOptions): Redis {
    const { cluster } = this.options.redis
    if (cluster === undefined) return new Redis({ ...this.#baseOptions(role), ...extra })
    const { host: _host, port: _port, db: _db, ...node } = { ...this.#baseOptions(role), ...extra }
    const client = new Cluster(cluster.nodes, {
      redisOptions: node,
      enableOfflineQueue: extra.enableOfflineQueue ?? true,
      lazyConnect: extra.lazyConnect ?? false,
      maxRedirections: 16,
      clusterRetryStrategy: (times) => Math.min(100 * 2 ** Math.min(times - 1, 5), 2000),
      slotsRefreshTimeout: this.options.redisTimeoutMs
    })
    return client as unknown as Redis
  }

  #baseOptions (role: string): RedisOptions {
    const { host, port, db, username, password, tls, sentinel } = this.options.redis
    // With Sentinel every connection asks the sentinels for the master, again after each
    // disconnect, and hears of a failover from them (failoverDetector) rather than by a timeout.
    const where: RedisOptions = sentinel === undefined
      ? { host, port, tls: tls ? (isIP(host) === 0 ? { servername: host } : {}) : undefined }
      : {
          sentinels: sentinel.hosts,
          name: sentinel.name,
          role: 'master',
          sentinelPassword: this.options.redisSentinelPassword,
          sentinelMaxConnections: 3,
          failoverDetector: true,
          sentinelRetryStrategy: (times) => Math.min(100 * 2 ** Math.min(times - 1, 5), 2000)
        }
    return {
      ...where,
      db,
      username,
      password,
      // RESP2 is what every Redis a Backend.AI cluster may run understands.
      protocol: 2,
      connectionName: `busgate:${role}`,
      connectTimeout: this.options.redisTimeoutMs,
      retryStrategy: (times) => Math.min(100 * 2 ** Math.min(times - 1, 5), 2000),
      // A demoted master: READONLY (inside a script: "ERR Error running script … -READONLY …"),
      // WAIT refused on a replica, a BLMOVE unblocked by the role change. Reconnect (Sentinel
      // then names the new master) and send the command again: nothing was written.
      reconnectOnError: (err) => (DEMOTED.test(err.message) ? 2 : false)
    }
  }

  // One line when a connection goes down and one when it is back: a dead Redis must not flood the log.
  watch (conn: Redis, role: string, onState?: (state: EngineState) => void): void {
    let up = false
    let reported = false
    const target = describeRedis(this.options.redis)
    conn.on('ready', () => {
      up = true
      reported = false
      onState?.('ready')
      this.log.info({ redis: target, connection: role }, 'redis connected')
    })
    conn.on('error', (err: Error) => {
      if (reported) return
      reported = true
      this.log.warn({ redis: target, connection: role, err: { message: err.message } }, 'redis connection failed; retrying')
    })
    conn.on('close', () => {
      if (conn.status === 'end' || this.isClosed()) return
      onState?.('down')
      if (up) this.log.warn({ redis: target, connection: role }, 'redis connection lost; reconnecting')
      up = false
    })
  }

  /** The connections that hold keys, for a SCAN: the one server, or each master of a cluster. */
  masters (conn: Redis): Redis[] {
    const client: unknown = conn
    return client instanceof Cluster ? client.nodes('master') : [conn]
  }
}
