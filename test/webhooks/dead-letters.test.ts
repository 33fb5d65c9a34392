import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import type { Config } from '../../src/config.js'
import { buildApp, type App } from '../../src/app.js'
import { defaultConfig, parseRedisUrl } from '../../src/config.js'
import { testApp } from '../helpers/app.js'
import { uniqueNames, type BusNames } from '../helpers/bus.js'
import { capturingLogger } from '../helpers/logger.js'
import { startReceiver } from '../helpers/receiver.js'
import { startRedis } from '../helpers/redis.js'
import { replyDelay } from '../helpers/reply-delay.js'
import { until } from '../helpers/wait.js'

const redis = await startRedis(t)

interface Letter {
  id: string
  message_id: string
  reason: string
  error: string
  event_name: string | null
  agent_id: string | null
  webhook_id?: string | null
  frame: string | null
  frame_bytes: number
  attempts: number
  first_seen: string
  dead_at: string
}

interface Page { dead_letters: Letter[], total: number }

async function gatewayOn (t: Test, names: BusNames, overrides: Partial<Config> = {}): Promise<App> {
  // A list these gateways own alone (BUSGATE_WEBHOOK_TAKE=all): what no webhook takes is dead-lettered, which is how letters are made here.
  return await testApp(t, redis.url, { ...names, webhookAllowPrivate: true, webhookBackoffMs: 50, webhookBackoffMaxMs: 200, webhookMaxAttempts: 1, webhookTake: 'all', ...overrides })
}

async function page (app: App, query = ''): Promise<Page> {
  const res = await app.inject({ method: 'GET', url: `/dead-letters${query}` })
  if (res.statusCode !== 200) throw new Error(`${res.statusCode} ${res.body}`)
  return res.json()
}

/** Every letter, newest first, a page of 1000 at a time. */
async function everyLetter (app: App): Promise<Letter[]> {
  const all: Letter[] = []
  for (;;) {
    const { dead_letters: batch } = await page(app, `?offset=${all.length}&limit=1000`)
    all.push(...batch)
    if (batch.length < 1000) return all
  }
}

/**
 * Dead letters the way the dispatcher makes them: a webhook that takes none of the events, so
 * each is dead-lettered as no_matching_webhook. Then the webhook goes, so what is redelivered
 * stays on the consumer list for the test to count.
 */
async function seed (t: Test, app: App, names: BusNames, events: Array<{ event_name: string }>,
  queued = async () => await redis.client.llen(names.prodconsKey)): Promise<Letter[]> {
  const created = await app.inject({ method: 'POST', url: '/webhooks', payload: { url: 'http://127.0.0.1:1/never', event_names: ['nothing_takes_these_*'] } })
  t.equal(created.statusCode, 201)
  const before = (await page(app, '?limit=1')).total
  for (let i = 0; i < events.length; i += 1000) {
    const res = await app.inject({ method: 'POST', url: '/events/batch', payload: events.slice(i, i + 1000) })
    if (res.statusCode !== 202) throw new Error(res.body)
  }
  const deadline = Date.now() + 60_000
  while ((await page(app, '?limit=1')).total < before + events.length && Date.now() < deadline) await sleep(50)
  t.equal(await queued(), 0, 'every event was taken')
  const deleted = await app.inject({ method: 'DELETE', url: `/webhooks/${created.json().id as string}` })
  t.equal(deleted.statusCode, 204)
  // Each gateway reads the registry at most once a second.
  await sleep(1200)
  const all = await everyLetter(app)
  t.equal(all.length, before + events.length, 'all dead-lettered')
  return all
}

function events (n: number, name = 'undeliverable'): Array<{ event_name: string, agent_id: string, args: unknown[] }> {
  const run = randomBytes(4).toString('hex')
  return Array.from({ length: n }, (_, i) => ({ event_name: name, agent_id: 'i-ag01', args: [run, i] }))
}

/** How many times each frame (base64) sits on the consumer list; a letter's `frame` looks itself up (null: not shown, never found). */
async function queuedCounts (names: BusNames): Promise<Map<string | null, number>> {
  const counts = new Map<string | null, number>()
  for (const frame of await redis.client.lrangeBuffer(names.prodconsKey, 0, -1)) {
    const key = frame.toString('base64')
    counts.set(key, (counts.get(key) ?? 0) + 1)
  }
  return counts
}

t.test('a letter whose write Redis ran but answered late is written once', async (t) => {
  const names = uniqueNames()
  const proxy = await replyDelay(t, redis.port)
  const app = await testApp(t, proxy.url, { ...names, webhookAllowPrivate: true, webhookMaxAttempts: 1, webhookTake: 'all', redisTimeoutMs: 1000 })
  const created = await app.inject({ method: 'POST', url: '/webhooks', payload: { url: 'http://127.0.0.1:1/never', event_names: ['nothing_takes_these_*'] } })
  t.equal(created.statusCode, 201)
  await sleep(1200)
  // The answer to the letter's write comes after the 1 s command timeout.
  proxy.holdAfter('"reason":"no_matching_webhook"', 1500)
  t.equal((await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'undeliverable' } })).statusCode, 202)
  await until(() => proxy.held === 1)
  await sleep(4000)
  const letters = await everyLetter(app)
  t.same(letters.map((l) => l.event_name), ['undeliverable'], 'one letter')
  t.equal(await redis.client.llen(names.prodconsKey), 0, 'and the message left the list')
})

t.test('5,000 dead letters are redelivered at once, oldest first, each once, in a few seconds', async (t) => {
  const names = uniqueNames()
  const app = await gatewayOn(t, names)
  const letters = await seed(t, app, names, events(5000))
  const started = performance.now()
  const res = await app.inject({ method: 'POST', url: '/dead-letters/redeliver' })
  const took = performance.now() - started
  t.comment(`redeliver-all of 5,000 dead letters took ${Math.round(took)} ms`)
  t.equal(res.statusCode, 202)
  t.same(res.json(), { redelivered: 5000 })
  t.ok(took < 10_000, `well under 10 s (${Math.round(took)} ms)`)
  const queued = await redis.client.lrangeBuffer(names.prodconsKey, 0, -1)
  t.same(queued.map((f) => f.toString('base64')), letters.map((l) => l.frame).reverse(), 'the original bytes, oldest first')
  t.equal((await page(app)).total, 0)
})

t.test('two concurrent redeliver-all calls, on two gateways, put each letter on the list exactly once', async (t) => {
  const names = uniqueNames()
  const one = await gatewayOn(t, names)
  const two = await gatewayOn(t, names)
  const letters = await seed(t, one, names, events(2000))
  const [a, b, c] = await Promise.all([
    one.inject({ method: 'POST', url: '/dead-letters/redeliver' }),
    two.inject({ method: 'POST', url: '/dead-letters/redeliver' }),
    one.inject({ method: 'POST', url: '/dead-letters/redeliver' })
  ])
  t.same([a.statusCode, b.statusCode, c.statusCode], [202, 202, 202])
  t.equal(a.json().redelivered + b.json().redelivered + c.json().redelivered, 2000, 'the counts add up to the letters')
  const counts = await queuedCounts(names)
  t.equal(counts.size, 2000, 'every letter is on the list')
  t.same([...counts.values()].filter((n) => n !== 1), [], 'none twice')
  t.ok(letters.every((l) => counts.get(l.frame) === 1))
  t.equal((await page(one)).total, 0)
})

t.test('redeliver-one racing delete: exactly one of them wins, and the list agrees', async (t) => {
  const names = uniqueNames()
  const one = await gatewayOn(t, names)
  const two = await gatewayOn(t, names)
  const letters = await seed(t, one, names, events(60))
  const outcomes = await Promise.all(letters.map(async (letter, i) => {
    const [first, second] = i % 2 === 0 ? [one, two] : [two, one]
    const [redelivered, deleted] = await Promise.all([
      first.inject({ method: 'POST', url: `/dead-letters/${letter.id}/redeliver` }),
      second.inject({ method: 'DELETE', url: `/dead-letters/${letter.id}` })
    ])
    return { letter, redelivered: redelivered.statusCode, deleted: deleted.statusCode }
  }))
  const counts = await queuedCounts(names)
  for (const { letter, redelivered, deleted } of outcomes) {
    t.ok((redelivered === 202 && deleted === 404) || (redelivered === 404 && deleted === 204), `one winner for ${letter.id}: redeliver ${redelivered}, delete ${deleted}`)
    t.equal(counts.get(letter.frame) ?? 0, redelivered === 202 ? 1 : 0, 'on the list only when redelivered, and once')
  }
  t.equal((await page(one)).total, 0, 'gone either way')
})

t.test('redeliver-one racing redeliver-all: each letter moves once', async (t) => {
  const names = uniqueNames()
  const one = await gatewayOn(t, names)
  const two = await gatewayOn(t, names)
  const letters = await seed(t, one, names, events(600))
  const [all, ...singles] = await Promise.all([
    one.inject({ method: 'POST', url: '/dead-letters/redeliver' }),
    ...letters.map(async (l) => await two.inject({ method: 'POST', url: `/dead-letters/${l.id}/redeliver` }))
  ])
  const won = singles.filter((r) => r.statusCode === 202).length
  t.ok(singles.every((r) => r.statusCode === 202 || r.statusCode === 404), 'a single one is moved or was already gone')
  t.equal(all!.json().redelivered + won, 600, 'the counts add up')
  const counts = await queuedCounts(names)
  t.equal(counts.size, 600)
  t.same([...counts.values()].filter((n) => n !== 1), [], 'none twice')
})

t.test('filters by reason and event name; total counts the matches; pages within them', async (t) => {
  const names = uniqueNames()
  const app = await gatewayOn(t, names)
  const failing = await startReceiver(t, () => ({ status: 500 }))
  const res = await app.inject({ method: 'POST', url: '/webhooks', payload: { url: failing.url, event_names: ['gamma_*'] } })
  t.equal(res.statusCode, 201)
  await app.inject({
    method: 'POST',
    url: '/events/batch',
    payload: [...events(3, 'alpha_event'), ...events(1, 'gamma_event'), ...events(2, 'beta_event')]
  })
  await redis.client.rpush(names.prodconsKey, Buffer.from([0xc1]), Buffer.from([0xc1, 0x01]))
  for (let i = 0; i < 200 && (await page(app)).total < 8; i++) await sleep(25)
  t.equal((await page(app)).total, 8, 'everything was dead-lettered')

  const malformed = await page(app, '?reason=malformed')
  t.equal(malformed.total, 2)
  t.same(malformed.dead_letters.map((l) => l.reason), ['malformed', 'malformed'])
  t.same(malformed.dead_letters.map((l) => l.frame).sort(), ['wQ==', 'wQE='].sort(), 'with their bytes')
  const alpha = await page(app, '?event_name=alpha_event')
  t.equal(alpha.total, 3)
  t.ok(alpha.dead_letters.every((l) => l.event_name === 'alpha_event' && l.reason === 'no_matching_webhook'))
  t.same((await page(app, '?reason=no_matching_webhook&event_name=beta_event')).total, 2)
  t.match((await page(app, '?reason=delivery_failed')).dead_letters, [{ event_name: 'gamma_event', attempts: 1 }])
  t.same(await page(app, '?reason=too_large'), { dead_letters: [], total: 0 }, 'too_large is a reason one may ask for')
  t.same(await page(app, '?reason=malformed&event_name=alpha_event'), { dead_letters: [], total: 0 })
  t.same(await page(app, '?event_name=alpha'), { dead_letters: [], total: 0 }, 'the exact name, not a prefix')
  const paged = await page(app, '?event_name=alpha_event&offset=1&limit=1')
  t.equal(paged.total, 3)
  t.same(paged.dead_letters.map((l) => l.id), [alpha.dead_letters[1]!.id], 'offset and limit count matches, newest first')
  t.same((await page(app, '?event_name=alpha_event&offset=3')).dead_letters, [])
  const bad = await app.inject({ method: 'GET', url: '/dead-letters?reason=bogus' })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().code, 'BUSGATE_VALIDATION_FAILED')
})

t.test('pages, newest first, add up to the whole list, each letter once', async (t) => {
  const names = uniqueNames()
  const app = await gatewayOn(t, names)
  const all = await seed(t, app, names, events(25))
  const pages = [await page(app, '?limit=10'), await page(app, '?offset=10&limit=10'), await page(app, '?offset=20&limit=10')]
  t.same(pages.map((p) => p.dead_letters.length), [10, 10, 5])
  t.ok(pages.every((p) => p.total === 25))
  t.same(pages.flatMap((p) => p.dead_letters), all)
  t.equal(new Set(all.map((l) => l.id)).size, 25)
  for (const letter of all) t.match(letter.id, /^dl_[A-Za-z0-9_-]{16}$/)
  for (let i = 1; i < all.length; i++) t.ok(all[i - 1]!.dead_at >= all[i]!.dead_at, 'newest first')
  t.same((await page(app, '?offset=25')).dead_letters, [])
  const one = all[7]!
  t.same((await app.inject({ method: 'GET', url: `/dead-letters/${one.id}` })).json(), one, 'one reads as listed')
  t.equal((await app.inject({ method: 'DELETE', url: `/dead-letters/${one.id}` })).statusCode, 204)
  t.equal((await app.inject({ method: 'DELETE', url: `/dead-letters/${one.id}` })).statusCode, 404)
  t.equal((await app.inject({ method: 'POST', url: `/dead-letters/${one.id}/redeliver` })).statusCode, 404)
  t.equal((await app.inject({ method: 'GET', url: `/dead-letters/${one.id}` })).statusCode, 404)
  t.same((await everyLetter(app)).map((l) => l.id), all.filter((l) => l.id !== one.id).map((l) => l.id))
})

t.test('past BUSGATE_DEAD_LETTER_MAX the oldest go, counted', async (t) => {
  const names = uniqueNames()
  const app = await gatewayOn(t, names, { deadLetterMax: 5, webhookConcurrency: 1 })
  const kept = await seed(t, app, names, events(5))
  const metrics = async (): Promise<string> => (await app.inject({ method: 'GET', url: '/metrics' })).body
  const created = await app.inject({ method: 'POST', url: '/webhooks', payload: { url: 'http://127.0.0.1:1/never', event_names: ['nothing_takes_these_*'] } })
  t.equal(created.statusCode, 201)
  await app.inject({ method: 'POST', url: '/events/batch', payload: events(3, 'later') })
  for (let i = 0; i < 200 && !/\nbusgate_dead_letters_dropped_total 3\n/.test(await metrics()); i++) await sleep(25)
  const now = await everyLetter(app)
  t.equal(now.length, 5, 'still five')
  t.same(now.slice(0, 3).map((l) => l.event_name), ['later', 'later', 'later'])
  t.same(now.slice(3).map((l) => l.id), kept.slice(0, 2).map((l) => l.id), 'the two newest of the first five are left')
  t.match(await metrics(), /\nbusgate_dead_letters_dropped_total 3\n/)
  t.match(await metrics(), /\nbusgate_dead_letters 5\n/)
})

t.test('a hand-written value that is not a dead letter does not break reading, deleting or redelivering', async (t) => {
  const names = uniqueNames()
  const { logger, lines } = capturingLogger('warn')
  const app = await buildApp(defaultConfig({ redis: parseRedisUrl(redis.url), redisTimeoutMs: 1000, ...names, webhookAllowPrivate: true, webhookTake: 'all' }), { logger })
  t.teardown(async () => { await app.close() })
  await app.ready()
  const letters = await seed(t, app, names, events(3))
  const base = `${names.keyPrefix}dead-letters`
  // As an operator with redis-cli might leave them: not JSON, the wrong shape, no bytes, no description.
  const garbage = ['dl_AAAAAAAAAAAAAAAA', 'dl_BBBBBBBBBBBBBBBB', 'dl_CCCCCCCCCCCCCCCC', 'dl_DDDDDDDDDDDDDDDD']
  const newest = Number((await redis.client.zrange(`${base}:ids`, -1, '-1', 'WITHSCORES'))[1] ?? 0)
  await redis.client.zadd(`${base}:ids`, newest + 1, garbage[0]!, newest + 2, garbage[1]!, newest + 3, garbage[2]!, newest + 4, garbage[3]!)
  await redis.client.hset(`${base}:meta`, garbage[0]!, 'not json {', garbage[1]!, JSON.stringify({ reason: 'bogus', attempts: 'many' }), garbage[3]!, JSON.stringify(letters[0]))
  await redis.client.hset(`${base}:frames`, garbage[0]!, 'raw0', garbage[1]!, 'raw1', garbage[2]!, '')
  await redis.client.hset(`${base}:meta`, 'dl_EEEEEEEEEEEEEEEE', 'in the hash only')

  const listed = await page(app)
  t.same(listed.dead_letters.map((l) => l.id), letters.map((l) => l.id), 'the readable ones, in order; the others skipped')
  t.same(listed.dead_letters, letters, 'as they were')
  t.equal((await page(app, '?event_name=undeliverable')).total, 3, 'a filter skips them too')
  for (const id of garbage) t.equal((await app.inject({ method: 'GET', url: `/dead-letters/${id}` })).statusCode, 404, `${id} cannot be read`)
  for (const id of garbage) {
    const logged = lines().split('\n').filter((line) => line.includes(`"dead_letter":"${id}"`))
    t.equal(logged.length, 1, `${id} is reported once, however often it is read`)
    t.match(logged[0], /"level":"?(warn|40)"?/)
  }
  t.equal((await app.inject({ method: 'DELETE', url: `/dead-letters/${garbage[1]!}` })).statusCode, 204, 'but can be deleted by id')
  t.equal(listed.total, 7, 'total counts what is stored, readable or not (dl_EEEE… is no letter: it is not in the index)')
  const all = await app.inject({ method: 'POST', url: '/dead-letters/redeliver' })
  t.equal(all.statusCode, 202)
  const counts = await queuedCounts(names)
  t.ok(letters.every((l) => counts.get(l.frame) === 1), 'the good ones went back')
  // The bytes are the message; a broken description does not keep them from going back.
  t.same([counts.get(Buffer.from('raw0').toString('base64')), counts.get('')], [1, 1], 'so did the ones with bytes')
  t.same(all.json(), { redelivered: 5 })
  t.same(await page(app), { dead_letters: [], total: 1 }, 'the one without bytes stays, unreadable, until deleted')
  t.equal((await app.inject({ method: 'DELETE', url: `/dead-letters/${garbage[3]!}` })).statusCode, 204)
  t.equal((await page(app)).total, 0)
})

t.test('a gateway that finds the old list moves its letters, ids and all, once, and drops the old key', async (t) => {
  const names = uniqueNames()
  const key = `${names.keyPrefix}dead-letters`
  const old = Array.from({ length: 1234 }, (_, i) => ({
    id: `dl_${randomBytes(12).toString('base64url')}`,
    message_id: `msg_old${i}`,
    reason: i % 3 === 0 ? 'malformed' : 'no_matching_webhook',
    error: `error ${i}`,
    event_name: i % 3 === 0 ? null : `old_event_${i % 2}`,
    agent_id: i % 3 === 0 ? null : 'i-ag01',
    frame: Buffer.from(`frame ${i} \u00ff`, 'latin1').toString('base64'),
    attempts: i % 5,
    first_seen: new Date(Date.UTC(2024, 0, 1, 0, 0, i)).toISOString(),
    dead_at: new Date(Date.UTC(2024, 0, 1, 1, 0, i)).toISOString()
  }))
  // The old code LPUSHed each: newest at the head. Plus one value that is no dead letter at all.
  await redis.client.lpush(key, ...old.slice(0, 600).map((l) => JSON.stringify(l)), 'garbage, not json', ...old.slice(600).map((l) => JSON.stringify(l)))
  // Two gateways starting at once both find it.
  const [one, two] = await Promise.all([gatewayOn(t, names), gatewayOn(t, names)])
  t.equal(await redis.client.exists(key), 0, 'the old list is gone')
  // As listed now: with the size of their bytes, which the old list did not keep.
  const listed = (l: typeof old[number]): Letter => ({ ...l, webhook_id: null, frame_bytes: Buffer.from(l.frame, 'base64').byteLength })
  const newestFirst = [...old].reverse().map(listed)
  t.same(await everyLetter(one), newestFirst, 'the same letters, ids, fields and order')
  t.same(await everyLetter(two), newestFirst)
  t.same(await redis.client.lrange(`${key}:unreadable`, 0, -1), ['garbage, not json'], 'the unreadable value is kept aside, not lost')
  t.equal((await page(one, '?reason=malformed')).total, old.filter((l) => l.reason === 'malformed').length)
  const letter = old[5]!
  t.equal((await one.inject({ method: 'POST', url: `/dead-letters/${letter.id}/redeliver` })).statusCode, 202)
  t.same(await redis.client.lrangeBuffer(names.prodconsKey, 0, -1), [Buffer.from(letter.frame, 'base64')], 'the original bytes went back')

  // An old gateway still running writes one more: a new gateway takes it on its next start.
  const late = { ...old[0]!, id: `dl_${randomBytes(12).toString('base64url')}`, message_id: 'msg_late' }
  await redis.client.lpush(key, JSON.stringify(late))
  const three = await gatewayOn(t, names)
  t.equal(await redis.client.exists(key), 0)
  const after = await everyLetter(three)
  t.equal(after.length, 1234, 'one redelivered, one more moved in')
  t.same(after[0], listed(late), 'the late one is the newest')
})

t.test('the memory engine keeps dead letters the same way', async (t) => {
  const names = uniqueNames()
  const app = await testApp(t, undefined, { ...names, webhookAllowPrivate: true, webhookTake: 'all' })
  const letters = await seed(t, app, names, [...events(3, 'one_event'), ...events(4, 'other_event')], async () => await app.engine.bus.queueLength())
  t.equal(letters.length, 7)
  t.equal((await page(app, '?event_name=other_event&limit=2')).total, 4)
  t.same((await page(app, '?event_name=other_event&limit=2')).dead_letters.map((l) => l.id), letters.filter((l) => l.event_name === 'other_event').slice(0, 2).map((l) => l.id))
  t.same((await app.inject({ method: 'GET', url: `/dead-letters/${letters[2]!.id}` })).json(), letters[2])
  t.equal((await app.inject({ method: 'POST', url: `/dead-letters/${letters[2]!.id}/redeliver` })).statusCode, 202)
  t.equal((await app.inject({ method: 'DELETE', url: `/dead-letters/${letters[3]!.id}` })).statusCode, 204)
  t.same((await app.inject({ method: 'POST', url: '/dead-letters/redeliver' })).json(), { redelivered: 5 })
  t.equal(await app.engine.bus.queueLength(), 6)
  const consumer = app.engine.queue.consumer('test.memory.drain')
  const frames = (await consumer.claim(100, { max: 10 })).map((f) => f.toString('base64'))
  const oldestFirst = [...letters].reverse().filter((l) => l.id !== letters[2]!.id && l.id !== letters[3]!.id).map((l) => l.frame)
  t.same(frames, [letters[2]!.frame, ...oldestFirst], 'the single one first, then the rest oldest first')
})

t.test('a dead letter larger than BUSGATE_BUS_MAX_MESSAGE_BYTES is listed and read by its size, its bytes left in Redis; redelivered intact', async (t) => {
  const names = uniqueNames()
  const app = await gatewayOn(t, names, { busMaxMessageBytes: 64 * 1024 })
  const size = 8_000_000
  // Not one repeated byte: redelivery must bring back these bytes, in this order.
  const pushed = randomBytes(size)
  // The same reads once first, of a small letter, so that what is measured is the large one and
  // not what the first letter a gateway shows sets up (about 3 MB of heap, once).
  const ids = `${names.keyPrefix}dead-letters:ids`
  await app.deadLetters.add({
    message_id: 'msg_warm', reason: 'too_large', error: 'warming up', event_name: null, agent_id: null, frame: Buffer.from('small'), attempts: 0, first_seen: new Date().toISOString()
  })
  const [warm] = await redis.client.zrange(ids, 0, '-1')
  for (const url of ['/dead-letters', '/dead-letters?reason=too_large', `/dead-letters/${warm ?? 'dl_none'}`]) t.equal((await app.inject({ method: 'GET', url })).statusCode, 200)
  t.equal((await app.inject({ method: 'DELETE', url: `/dead-letters/${warm ?? 'dl_none'}` })).statusCode, 204)
  const created = await app.inject({ method: 'POST', url: '/webhooks', payload: { url: 'http://127.0.0.1:1/never' } })
  t.equal(created.statusCode, 201)
  await redis.client.rpush(names.prodconsKey, pushed)
  // Waited for in Redis: asking the API would read the letter before the measurement starts.
  for (let i = 0; i < 400 && await redis.client.zcard(ids) < 1; i++) await sleep(25)
  t.equal(await redis.client.zcard(ids), 1, 'dead-lettered')
  t.equal((await app.inject({ method: 'DELETE', url: `/webhooks/${created.json().id as string}` })).statusCode, 204)
  // Each gateway reads the registry at most once a second: then what is redelivered stays on the list.
  await sleep(1200)
  t.equal(await redis.client.llen(names.prodconsKey), 0)

  const inUse = (): number => { const m = process.memoryUsage(); return m.heapUsed + m.arrayBuffers }
  const before = { inUse: inUse(), rss: process.memoryUsage().rss, maxRss: process.resourceUsage().maxRSS * 1024 }
  let peak = before.inUse
  const sampler = setInterval(() => { peak = Math.max(peak, inUse()) }, 2)
  const started = performance.now()
  const listed = await app.inject({ method: 'GET', url: '/dead-letters' })
  const filtered = await app.inject({ method: 'GET', url: '/dead-letters?reason=too_large' })
  const id = (JSON.parse(listed.body) as Page).dead_letters[0]?.id ?? 'dl_none'
  const one = await app.inject({ method: 'GET', url: `/dead-letters/${id}` })
  const took = performance.now() - started
  clearInterval(sampler)
  peak = Math.max(peak, inUse())
  const after = { inUse: inUse(), rss: process.memoryUsage().rss, maxRss: process.resourceUsage().maxRSS * 1024 }
  const mb = (n: number): string => `${(n / 1e6).toFixed(1)} MB`
  t.comment(`three reads took ${Math.round(took)} ms; heap+buffers in use grew ${mb(after.inUse - before.inUse)} (peak ${mb(peak - before.inUse)}), ` +
    `RSS ${mb(after.rss - before.rss)}, peak RSS ${mb(after.maxRss - before.maxRss)}; bodies ${[listed, filtered, one].map((r) => r.body.length).join(', ')} characters`)

  t.same([listed.statusCode, filtered.statusCode, one.statusCode], [200, 200, 200])
  const letter = one.json() as Letter
  t.match(letter, { id, reason: 'too_large', frame: null, frame_bytes: size }, 'shown by its size, without its bytes')
  t.same(listed.json(), { dead_letters: [letter], total: 1 }, 'a page shows it the same way')
  t.same(filtered.json(), { dead_letters: [letter], total: 1 }, 'and so does a filtered page')
  t.ok(took < 1000, `answered promptly (${Math.round(took)} ms)`)
  t.ok(peak - before.inUse < size / 2, `the gateway never held the letter's bytes (heap and buffers grew at most ${mb(peak - before.inUse)})`)
  t.ok(after.maxRss - before.maxRss < size / 2, `nor did its peak RSS grow by their size (${mb(after.maxRss - before.maxRss)})`)

  const redelivered = await app.inject({ method: 'POST', url: `/dead-letters/${id}/redeliver` })
  t.equal(redelivered.statusCode, 202)
  const queued = await redis.client.lrangeBuffer(names.prodconsKey, 0, -1)
  t.equal(queued.length, 1)
  t.ok(queued[0]?.equals(pushed), 'back on the consumer list, byte for byte')
  t.same(await page(app), { dead_letters: [], total: 0 })
})
