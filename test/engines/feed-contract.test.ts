import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import { parseRedisUrl } from '../../src/config.js'
import type { Bus } from '../../src/engines/engine.js'
import type { Feed } from '../../src/engines/feed.js'
import { MemoryEngine } from '../../src/engines/memory-engine.js'
import { RedisEngine } from '../../src/engines/redis-engine.js'
import { silentLogger } from '../helpers/logger.js'
import { startRedis } from '../helpers/redis.js'
import { until } from '../helpers/wait.js'

// What the stream hub needs of a feed, for both kinds: a process's own (memory engine, or the
// setting off) and the one shared in Redis.
const server = await startRedis(t)

const noMetrics = { recorded: () => {}, recording: () => {} }

function feeds (): Array<[string, (t: Test) => { bus: Bus, feed: Feed }]> {
  return [
    ['a process\'s own (memory engine)', (t) => {
      const engine = new MemoryEngine({ redis: undefined, pubsubChannel: 'p', prodconsKey: 'q', redisTimeoutMs: 1000, memoryQueueMax: 1000, memoryQueueMaxBytes: 2 ** 20 })
      t.teardown(() => engine.close())
      const bus: Bus = engine.bus
      return { bus, feed: bus.history({ shared: false, keyPrefix: 'f:', size: 100, bytes: 2 ** 20, maxMessageBytes: 1024, metrics: noMetrics }) }
    }],
    ['shared in Redis', (t) => {
      const id = randomUUID()
      const engine = new RedisEngine({ redis: parseRedisUrl(server.url), pubsubChannel: `f.${id}`, prodconsKey: `f.${id}.q`, redisTimeoutMs: 1000, memoryQueueMax: 0, memoryQueueMaxBytes: 0 }, silentLogger())
      const feed = engine.bus.history({ shared: true, keyPrefix: `f.${id}:`, size: 100, bytes: 2 ** 20, maxMessageBytes: 1024, metrics: noMetrics })
      t.teardown(async () => { await feed.close(); await engine.close() })
      return { bus: engine.bus, feed }
    }]
  ]
}

const frame = (s: string) => Buffer.from(s)

for (const [name, make] of feeds()) {
  t.test(`feed contract: ${name}`, async (t) => {
    t.test('begin comes first; messages follow in order, with rising ids of its own', async (t) => {
      const { bus, feed } = make(t)
      const seen: string[] = []
      const ids: string[] = []
      const stop = await feed.follow({
        begin: (start) => { seen.push('begin'); ids.push(start) },
        message: (raw, id) => { seen.push(raw.byteLength > 100 ? `big ${raw.byteLength}` : raw.toString()); ids.push(id) },
        setAside: (id, bytes) => { seen.push(`aside ${bytes}`); ids.push(id) },
        gap: (id) => { seen.push('gap'); ids.push(id) }
      })
      t.teardown(stop)
      await bus.produce([frame('one'), frame('two'), Buffer.alloc(2000)])
      await until(() => seen.length === 4)
      // The shared feed does not keep a message past the bound (its place and id only); a process's own hands it on, and the hub sets it aside.
      t.same(seen, ['begin', 'one', 'two', feed.shared ? 'aside 2000' : 'big 2000'])
      for (let i = 1; i < ids.length; i++) t.ok(feed.compare(ids[i - 1]!, ids[i]!) < 0, `${ids[i - 1]!} < ${ids[i]!}`)
      for (const id of ids.slice(1)) t.equal(feed.kind(id), 'ours')
      t.equal(feed.kind('garbage'), 'unknown_id')
      t.equal(feed.compare(await feed.newest(), ids[ids.length - 1]!), 0, 'the newest is the last heard')
      t.ok(feed.caughtUp())
    })

    t.test('a second follow begins after what the first heard', async (t) => {
      const { bus, feed } = make(t)
      const first: string[] = []
      const stop = await feed.follow({ begin: () => {}, message: (_raw, id) => first.push(id), setAside: () => {}, gap: () => {} })
      await bus.produce([frame('a')])
      await until(() => first.length === 1)
      await stop()
      let start = ''
      const again: string[] = []
      const stopAgain = await feed.follow({ begin: (s) => { start = s }, message: (raw) => again.push(raw.toString()), setAside: () => {}, gap: () => {} })
      t.teardown(stopAgain)
      t.ok(feed.compare(start, first[0]!) >= 0, 'its start is not before what came first')
      await bus.produce([frame('b')])
      await until(() => again.length === 1)
      t.same(again, ['b'])
    })

    t.test('read: what came after an id, or gone', async (t) => {
      const { bus, feed } = make(t)
      const ids: string[] = []
      const stop = await feed.follow({ begin: () => {}, message: (_raw, id) => ids.push(id), setAside: () => {}, gap: () => {} })
      t.teardown(stop)
      await bus.produce([frame('x'), frame('y'), frame('z')])
      await until(() => ids.length === 3)
      const page = await feed.read(ids[0]!, ids[2]!, 10)
      if (feed.shared) {
        t.same(page === 'gone' ? page : page.map((e) => e.raw?.toString()), ['y', 'z'])
        t.same(await feed.read(ids[0]!, ids[2]!, 1).then((p) => p === 'gone' ? p : p.map((e) => e.raw?.toString())), ['y'], 'at most max')
        t.equal(await feed.read('1-0', ids[2]!, 10), 'gone', 'an id it does not hold')
      } else {
        t.equal(page, 'gone', 'a process\'s own feed keeps nothing: the hub\'s memory is its history')
      }
    })
  })
}
