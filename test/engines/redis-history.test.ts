import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { parseRedisUrl } from '../../src/config.js'
import type { Feed } from '../../src/engines/feed.js'
import { RedisEngine } from '../../src/engines/redis-engine.js'
import { alignAfter, LEASE_MS } from '../../src/engines/redis-history.js'
import { silentLogger } from '../helpers/logger.js'
import { startRedis } from '../helpers/redis.js'
import { replyDelay } from '../helpers/reply-delay.js'
import { until } from '../helpers/wait.js'

// The shared history's recorder handing over: cleanly, after a crash, and when it cannot know where the last one stopped.
const server = await startRedis(t)

interface Heard { id: string, what: string }

function names () {
  const id = randomUUID()
  return { pubsubChannel: `h.${id}.pubsub`, prodconsKey: `h.${id}.prodcons`, keyPrefix: `h.${id}:` }
}

async function follower (t: Test, n: ReturnType<typeof names>, bytes = 2 ** 26, url = server.url) {
  const engine = new RedisEngine({ redis: parseRedisUrl(url), ...n, redisTimeoutMs: 1000, memoryQueueMax: 0, memoryQueueMaxBytes: 0 }, silentLogger())
  const counts = { message: 0, break: 0, recording: false }
  const feed: Feed = engine.bus.history({
    shared: true,
    keyPrefix: n.keyPrefix,
    size: 100_000,
    bytes,
    maxMessageBytes: 2 ** 20,
    metrics: { recorded: (kind, c) => { counts[kind] += c }, recording: (yes) => { counts.recording = yes } }
  })
  const heard: Heard[] = []
  const stop = await feed.follow({
    begin: () => {},
    message: (raw, id) => heard.push({ id, what: raw.toString() }),
    setAside: (id) => heard.push({ id, what: '(set aside)' }),
    gap: (id) => heard.push({ id, what: '(gap)' })
  })
  t.teardown(async () => { await stop(); await feed.close(); await engine.close() })
  return { engine, feed, heard, counts, stop }
}

const publish = async (channel: string, from: number, n: number) => {
  for (let i = from; i < from + n; i++) await server.client.publish(channel, `m${i}`)
}
const messages = (from: number, n: number) => Array.from({ length: n }, (_, i) => `m${from + i}`)

t.test('a recorder that stops renewing (it crashed): another takes over where it stopped, nothing lost, no break', async (t) => {
  const n = names()
  const one = await follower(t, n)
  const two = await follower(t, n)
  await publish(n.pubsubChannel, 0, 20)
  await until(() => one.heard.length === 20 && two.heard.length === 20)
  // As if the recorder died: the lease is no one's (living) for a while.
  await server.client.set(`${n.keyPrefix}history:recorder`, 'a-dead-instance', 'PX', 1500)
  await publish(n.pubsubChannel, 20, 30)
  await until(() => one.heard.length === 50 && two.heard.length === 50, LEASE_MS + 5000)
  t.same(one.heard.map((h) => h.what), messages(0, 50), 'all, in order, with no gap')
  t.same(two.heard.map((h) => h.id), one.heard.map((h) => h.id), 'the same ids for both')
  t.equal(one.counts.break + two.counts.break, 1, 'one break only: the history\'s first entry')
  t.equal(await server.client.xlen(`${n.keyPrefix}history`), 51)
})

t.test('a new recorder that cannot find where the last one stopped writes a break first', async (t) => {
  const n = names()
  const one = await follower(t, n)
  await publish(n.pubsubChannel, 0, 3)
  await until(() => one.heard.length === 3)
  await server.client.set(`${n.keyPrefix}history:recorder`, 'a-dead-instance', 'PX', 1000)
  await one.stop()
  await publish(n.pubsubChannel, 3, 2) // nobody listens
  const two = await follower(t, n)
  await publish(n.pubsubChannel, 5, 1)
  await until(() => two.heard.length === 2, LEASE_MS + 5000)
  t.same(two.heard.map((h) => h.what), ['(gap)', 'm5'], 'a gap where m3 and m4 were missed, then what it heard')
  t.equal(two.counts.break, 1)
})

t.test('a clean handover loses nothing even while messages flow', async (t) => {
  const n = names()
  const one = await follower(t, n)
  const two = await follower(t, n)
  const [recorder, other] = one.counts.recording ? [one, two] : [two, one]
  t.ok(recorder.counts.recording && !other.counts.recording, 'one of them records')
  const flowing = (async () => { for (let i = 0; i < 200; i++) { await publish(n.pubsubChannel, i, 1); if (i % 20 === 0) await sleep(5) } })()
  await sleep(20)
  await recorder.stop()
  await flowing
  await until(() => other.heard.length >= 200, LEASE_MS + 5000)
  t.same(other.heard.map((h) => h.what), messages(0, 200), 'all, in order, with no gap')
  t.ok(other.counts.recording)
  t.equal(other.counts.break, 0)
})

t.test('a write whose answer comes after the command timeout (Redis ran it) is not written twice when tried again', async (t) => {
  const n = names()
  const proxy = await replyDelay(t, server.port)
  const one = await follower(t, n, 2 ** 26, proxy.url)
  t.ok(one.counts.recording)
  await publish(n.pubsubChannel, 0, 1)
  await until(() => one.heard.some((h) => h.what === 'm0'))
  // The recorder's next write runs in Redis; its answer is held past the 1 s command timeout.
  proxy.holdAfter('$2\r\nm1\r\n', 1500)
  await publish(n.pubsubChannel, 1, 1)
  await until(() => proxy.held === 1)
  await sleep(2500)
  await publish(n.pubsubChannel, 2, 1)
  await until(() => one.heard.some((h) => h.what === 'm2'))
  await sleep(200)
  const entries = await server.client.xrange(`${n.keyPrefix}history`, '-', '+')
  t.same(entries.map(([, f]) => f[f.length - 1]), ['1', 'm0', 'm1', 'm2'], 'the break that began it, then each message once')
  t.same(one.heard.map((h) => h.what).slice(-3), ['m0', 'm1', 'm2'], 'streamed once each')
})

t.test('a reader that falls behind the trimming is told, not left with a silent hole', async (t) => {
  const n = names()
  const one = await follower(t, n)
  await publish(n.pubsubChannel, 0, 1)
  await until(() => one.heard.some((h) => h.what === 'm0'))
  // The stream loses entries under the reader (as a failover to a replica that lacked them would).
  await server.client.xadd(`${n.keyPrefix}history`, '*', 'n', '999', 'm', 'from elsewhere')
  await until(() => one.heard.some((h) => h.what === 'from elsewhere'))
  // Before m0 only the recorder's first break may come (as a gap): on a loaded machine its lease
  // or its first write can take longer than the follow waits, and a gap said too often is allowed.
  const m0 = one.heard.findIndex((h) => h.what === 'm0')
  t.ok(one.heard.slice(0, m0).every((h) => h.what === '(gap)'), 'nothing but a gap before m0')
  t.same(one.heard.slice(m0).map((h) => h.what), ['m0', '(gap)', 'from elsewhere'])
  t.equal(one.heard[m0 + 1]!.id, one.heard[m0]!.id, 'the gap lies after the last entry read')
})

t.test('a break another recorder writes after this follower began is a gap, even as the history\'s first entry', async (t) => {
  const n = names()
  // Another records and has written nothing yet: this follower begins at the empty start.
  await server.client.set(`${n.keyPrefix}history:recorder`, 'another-instance', 'PX', 60_000)
  const one = await follower(t, n)
  t.notOk(one.counts.recording)
  // It lost what it heard since this one began (its subscription dropped): a break, then what came after.
  await server.client.xadd(`${n.keyPrefix}history`, '*', 'n', '1', 'c', '0', 'b', '1')
  await server.client.xadd(`${n.keyPrefix}history`, '*', 'n', '2', 'c', '2', 'm', 'm1')
  await until(() => one.heard.length === 2)
  t.same(one.heard.map((h) => h.what), ['(gap)', 'm1'], 'what was lost is said, not hidden')
})

t.test('alignment: found once, found twice (ambiguous), not found', async (t) => {
  const m = (s: string) => ({ kind: 'm' as const, raw: Buffer.from(s) })
  t.equal(alignAfter([m('a'), m('b'), m('c'), m('d')], [m('b'), m('a')]), 2, 'after b')
  t.equal(alignAfter([m('a'), m('b'), m('c')], [m('c'), m('b'), m('a'), m('z')]), 3, 'what it heard reaches back less far than the tail')
  t.equal(alignAfter([m('a'), m('a')], [m('a'), m('a'), m('x')]), undefined, 'identical messages: no telling where')
  t.equal(alignAfter([m('a'), m('b')], [m('q')]), undefined, 'not there')
  t.equal(alignAfter([m('a'), m('b')], [{ kind: 'b' }, m('a')]), undefined, 'the newest entry is a break: nothing to go on from')
  t.equal(alignAfter([m('x'), m('a'), m('b')], [m('b'), m('a'), { kind: 'b' }, m('q')]), 3, 'compared up to the newest break')
})

t.test('the history holds its byte bound (at least 16 MiB), the oldest going first, the newest always kept', async (t) => {
  const n = names()
  const one = await follower(t, n, 1024 * 1024)
  for (let i = 0; i < 30; i++) await server.client.publish(n.pubsubChannel, Buffer.alloc(1_000_000, i))
  await until(() => one.heard.length === 30, 20_000)
  const entries = await server.client.xrangeBuffer(`${n.keyPrefix}history`, '-', '+') as Array<[Buffer, Buffer[]]>
  const bytes = entries.reduce((sum, [, f]) => sum + (f[f.length - 1]!.length > 100 ? f[f.length - 1]!.length : 0), 0)
  t.ok(bytes <= 16 * 1024 * 1024 && bytes > 15_000_000, `${bytes} bytes of messages kept`)
  const newest = entries[entries.length - 1]![1]
  t.equal(newest[newest.length - 1]![0], 29, 'the newest is there')
  t.same(one.heard.map((h) => h.what.length), Array(30).fill(1_000_000), 'and every one was streamed')
})
