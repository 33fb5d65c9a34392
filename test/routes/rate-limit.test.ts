import t from 'tap'
import { loadConfig, type Config } from '../../src/config.js'
import { testApp } from '../helpers/app.js'
import { startRedis } from '../helpers/redis.js'

const ALICE = 'alice-token-0123456789'
const BOB = 'bob-token-abcdefghijkl'
const tokens = (loadConfig({ BUSGATE_TOKENS: `${ALICE}:publish+subscribe+admin,${BOB}:publish+subscribe+admin` }, []) as { config: Config }).config.tokens

// A window far longer than any test: no count may expire while a loaded machine runs one.
const WINDOW = 600_000
const event = { event_name: 'kernel_started' }
const as = (token: string) => ({ authorization: `Bearer ${token}` })

t.test('over the limit: 429 BUSGATE_RATE_LIMITED with Retry-After and the RateLimit-* headers', async (t) => {
  const redis = await startRedis(t)
  const app = await testApp(t, redis.url, { rateLimit: 3, rateLimitWindowMs: WINDOW })
  for (let i = 0; i < 3; i++) {
    const ok = await app.inject({ method: 'POST', url: '/events', payload: event })
    t.equal(ok.statusCode, 202)
    t.equal(ok.headers['ratelimit-limit'], '3')
    t.equal(ok.headers['ratelimit-remaining'], String(2 - i))
  }
  const refused = await app.inject({ method: 'POST', url: '/events', payload: event })
  t.equal(refused.statusCode, 429)
  t.same(Object.keys(refused.json()).sort(), ['code', 'error', 'message', 'statusCode'])
  t.match(refused.json(), { statusCode: 429, code: 'BUSGATE_RATE_LIMITED', error: 'Too Many Requests' })
  t.equal(refused.headers['ratelimit-limit'], '3')
  t.equal(refused.headers['ratelimit-remaining'], '0')
  const retry = Number(refused.headers['retry-after'])
  t.ok(retry > 0 && retry <= WINDOW / 1000, `Retry-After ${retry}`)
  t.equal(Number(refused.headers['ratelimit-reset']), retry)
  t.equal(await redis.client.llen('events.prodcons'), 3, 'the refused event was not written')
  const keys = await redis.client.keys('*rate-limit*')
  t.equal(keys.length, 1)
  t.match(keys[0], /^busgate:rate-limit:ip:/, 'under the key prefix')
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /^busgate_rate_limited_total\{route="\/events",client="address"\} 1$/m, 'counted')
})

t.test('/healthz, /readyz and /metrics are never limited', async (t) => {
  const app = await testApp(t, undefined, { rateLimit: 1, rateLimitWindowMs: WINDOW, tokens })
  t.equal((await app.inject({ method: 'GET', url: '/webhooks', headers: as(ALICE) })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/webhooks', headers: as(ALICE) })).statusCode, 429, 'the token is spent')
  for (let i = 0; i < 5; i++) {
    for (const url of ['/healthz', '/readyz']) {
      const res = await app.inject({ method: 'GET', url })
      t.equal(res.statusCode, 200, url)
      t.equal(res.headers['ratelimit-limit'], undefined)
    }
    t.equal((await app.inject({ method: 'GET', url: '/metrics', headers: as(ALICE) })).statusCode, 200, '/metrics')
    t.equal((await app.inject({ method: 'GET', url: '/openapi.json' })).statusCode, 200, '/openapi.json')
  }
})

t.test('two instances on the same Redis share the count', async (t) => {
  const redis = await startRedis(t)
  const a = await testApp(t, redis.url, { rateLimit: 5, rateLimitWindowMs: WINDOW, tokens })
  const b = await testApp(t, redis.url, { rateLimit: 5, rateLimitWindowMs: WINDOW, tokens })
  for (let i = 0; i < 3; i++) t.equal((await a.inject({ method: 'POST', url: '/events', payload: event, headers: as(ALICE) })).statusCode, 202, `A ${i + 1}`)
  for (let i = 0; i < 2; i++) t.equal((await b.inject({ method: 'POST', url: '/events', payload: event, headers: as(ALICE) })).statusCode, 202, `B ${i + 1}`)
  const refused = await b.inject({ method: 'POST', url: '/events', payload: event, headers: as(ALICE) })
  t.equal(refused.statusCode, 429, 'B refuses the sixth')
  t.equal((await a.inject({ method: 'POST', url: '/events', payload: event, headers: as(ALICE) })).statusCode, 429, 'and so does A')
  const keys = await redis.client.keys('*rate-limit*')
  t.equal(keys.length, 1)
  t.notMatch(keys[0], ALICE, 'the key holds a digest, never the token')
})

t.test('different tokens are counted separately', async (t) => {
  const redis = await startRedis(t)
  const app = await testApp(t, redis.url, { rateLimit: 2, rateLimitWindowMs: WINDOW, tokens })
  for (let i = 0; i < 2; i++) t.equal((await app.inject({ method: 'GET', url: '/webhooks', headers: as(ALICE) })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/webhooks', headers: as(ALICE) })).statusCode, 429)
  for (let i = 0; i < 2; i++) t.equal((await app.inject({ method: 'GET', url: '/webhooks', headers: as(BOB) })).statusCode, 200, 'Bob has his own count')
  t.equal((await app.inject({ method: 'GET', url: '/webhooks', headers: as(BOB) })).statusCode, 429)
  // A made-up token gets its 401 before it is counted: it cannot spend anyone's count, nor make keys.
  for (let i = 0; i < 5; i++) t.equal((await app.inject({ method: 'GET', url: '/webhooks', headers: as(`nope-${i}`) })).statusCode, 401)
  t.equal((await redis.client.keys('*rate-limit*')).length, 2)
  const metrics = (await app.inject({ method: 'GET', url: '/metrics', headers: as(ALICE) })).body
  t.match(metrics, /^busgate_rate_limited_total\{route="\/webhooks",client="token"\} 2$/m, 'each refusal counted, by route and kind of client')
  t.notMatch(metrics, /client="address"/)
})

t.test('off by default', async (t) => {
  const app = await testApp(t, undefined)
  for (let i = 0; i < 300; i++) {
    const res = await app.inject({ method: 'GET', url: '/webhooks' })
    if (res.statusCode !== 200) t.fail(`request ${i + 1}: ${res.statusCode}`)
    if (res.headers['ratelimit-limit'] !== undefined) t.fail('no RateLimit headers')
  }
  t.pass('300 requests, none refused')
})

t.test('the memory engine counts per process', async (t) => {
  const a = await testApp(t, undefined, { rateLimit: 2, rateLimitWindowMs: WINDOW })
  const b = await testApp(t, undefined, { rateLimit: 2, rateLimitWindowMs: WINDOW })
  for (let i = 0; i < 2; i++) t.equal((await a.inject({ method: 'POST', url: '/events', payload: event })).statusCode, 202)
  const refused = await a.inject({ method: 'POST', url: '/events', payload: event })
  t.equal(refused.statusCode, 429)
  t.equal(refused.json().code, 'BUSGATE_RATE_LIMITED')
  t.equal((await b.inject({ method: 'POST', url: '/events', payload: event })).statusCode, 202, 'another instance counts alone')
})

t.test('Redis gone: requests are not counted, and not turned into 500s', async (t) => {
  const redis = await startRedis(t)
  const app = await testApp(t, redis.url, { rateLimit: 100, rateLimitWindowMs: WINDOW })
  t.equal((await app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200)
  await redis.kill()
  const res = await app.inject({ method: 'POST', url: '/events', payload: event })
  t.equal(res.statusCode, 503, 'the engine\'s own answer')
  t.equal(res.json().code, 'BUSGATE_REDIS_UNAVAILABLE')
})

t.test('the spec declares 429 on counted routes only, limit or not', async (t) => {
  const app = await testApp(t, undefined)
  const spec = app.swagger() as unknown as { paths: Record<string, Record<string, { responses: Record<string, unknown> }>> }
  t.ok(spec.paths['/events']?.post?.responses['429'])
  t.ok(spec.paths['/events/stream']?.get?.responses['429'])
  t.notOk(spec.paths['/healthz']?.get?.responses['429'])
  t.notOk(spec.paths['/metrics']?.get?.responses['429'])
})
