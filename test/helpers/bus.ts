import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
import type { Consumer } from '../../src/engines/engine.js'
import type { RedisServer } from './redis.js'

export interface BusNames {
  pubsubChannel: string
  prodconsKey: string
  keyPrefix: string
}

/** Channel and list names of one test, so tests sharing a Redis never see each other's events. */
export function uniqueNames (): BusNames {
  const id = randomUUID()
  return { pubsubChannel: `t.${id}.pubsub`, prodconsKey: `t.${id}.prodcons`, keyPrefix: `t.${id}.busgate:` }
}

/** Watches both keys with plain Redis clients, as another manager would. */
export async function watchBus (redis: RedisServer, names: BusNames, db = 0): Promise<{
  published: Buffer[]
  queued: () => Promise<Buffer[]>
  waitPublished: (n: number) => Promise<Buffer[]>
}> {
  const sub: Redis = redis.connect(db)
  const list: Redis = db === 0 ? redis.client : redis.connect(db)
  const published: Buffer[] = []
  sub.on('messageBuffer', (_channel: Buffer, message: Buffer) => published.push(message))
  await sub.subscribe(names.pubsubChannel)
  return {
    published,
    queued: async () => await list.lrangeBuffer(names.prodconsKey, 0, -1),
    waitPublished: async (n) => {
      for (let i = 0; i < 300 && published.length < n; i++) await sleep(10)
      return published
    }
  }
}

/** One message claimed the way most tests want it: the message, or null when none came in time. */
export async function claimOne (consumer: Consumer, timeoutMs: number): Promise<Buffer | null> {
  return (await consumer.claim(timeoutMs))[0] ?? null
}
