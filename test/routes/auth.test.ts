import t, { type Test } from 'tap'
import { buildApp } from '../../src/app.js'
import { defaultConfig, loadConfig, type Config } from '../../src/config.js'
import { capturingLogger } from '../helpers/logger.js'

const PUBLISHER = 'pub-token-0123456789'
const OPS = 'ops-token-abcdefghij'
const tokens = (loadConfig({ BUSGATE_TOKENS: `${PUBLISHER}:publish,${OPS}:publish+subscribe+admin` }, []) as { config: Config }).config.tokens

async function app (t: Test) {
  const log = capturingLogger('trace')
  const a = await buildApp(defaultConfig({ tokens }), { logger: log.logger })
  t.teardown(() => a.close())
  await a.ready()
  return { app: a, lines: log.lines }
}

const event = { event_name: 'kernel_started' }

t.test('a token is needed, with the right scope', async (t) => {
  const { app: a } = await app(t)
  const none = await a.inject({ method: 'POST', url: '/events', payload: event })
  t.equal(none.statusCode, 401)
  t.equal(none.json().code, 'BUSGATE_UNAUTHORIZED')
  t.equal(none.headers['www-authenticate'], 'Bearer realm="busgate"')

  const wrong = await a.inject({ method: 'POST', url: '/events', payload: event, headers: { authorization: 'Bearer nope' } })
  t.equal(wrong.statusCode, 401)
  t.match(wrong.json().message, /not valid/)

  const basic = await a.inject({ method: 'POST', url: '/events', payload: event, headers: { authorization: `Basic ${PUBLISHER}` } })
  t.equal(basic.statusCode, 401, 'only the Bearer scheme')

  const ok = await a.inject({ method: 'POST', url: '/events', payload: event, headers: { authorization: `Bearer ${PUBLISHER}` } })
  t.equal(ok.statusCode, 202)
  const lower = await a.inject({ method: 'POST', url: '/events', payload: event, headers: { authorization: `bearer ${PUBLISHER}` } })
  t.equal(lower.statusCode, 202, 'the scheme is case-insensitive')

  const noScope = await a.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${PUBLISHER}` } })
  t.equal(noScope.statusCode, 403)
  t.match(noScope.json(), { code: 'BUSGATE_FORBIDDEN', message: /"admin" scope/ })
  const admin = await a.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${OPS}` } })
  t.equal(admin.statusCode, 200)
})

t.test('health, readiness, the spec and the docs need no token', async (t) => {
  const { app: a } = await app(t)
  for (const url of ['/healthz', '/readyz', '/openapi.json', '/docs/']) {
    t.equal((await a.inject({ method: 'GET', url })).statusCode, 200, url)
  }
})

t.test('unknown routes are not revealed without a token', async (t) => {
  const { app: a } = await app(t)
  t.equal((await a.inject({ method: 'GET', url: '/nowhere' })).statusCode, 401)
  t.equal((await a.inject({ method: 'GET', url: '/nowhere', headers: { authorization: `Bearer ${PUBLISHER}` } })).statusCode, 404)
})

t.test('auth is checked before the body: a 401 writes nothing and parses nothing', async (t) => {
  const { app: a } = await app(t)
  const res = await a.inject({ method: 'POST', url: '/events', headers: { 'content-type': 'application/json' }, payload: '{broken' })
  t.equal(res.statusCode, 401)
  t.equal(await a.engine.bus.queueLength(), 0)
})

t.test('tokens never reach the log', async (t) => {
  const { app: a, lines } = await app(t)
  await a.inject({ method: 'POST', url: '/events', payload: event, headers: { authorization: `Bearer ${PUBLISHER}` } })
  await a.inject({ method: 'POST', url: '/events', payload: { event_name: 'BAD' }, headers: { authorization: `Bearer ${PUBLISHER}` } })
  await a.inject({ method: 'GET', url: `/metrics?access_token=${OPS}`, headers: { authorization: `Bearer ${PUBLISHER}` } })
  await a.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${OPS}x` } })
  const text = lines()
  t.match(text, /request completed/, 'requests were logged at trace level')
  t.match(text, /access_token=\[redacted\]/, 'the query token is redacted')
  t.notMatch(text, new RegExp(PUBLISHER))
  t.notMatch(text, new RegExp(OPS))
})

t.test('without BUSGATE_TOKENS everything is open, and a warning says so', async (t) => {
  const log = capturingLogger('info')
  const a = await buildApp(defaultConfig(), { logger: log.logger })
  t.teardown(() => a.close())
  t.equal((await a.inject({ method: 'GET', url: '/metrics' })).statusCode, 200)
  t.match(log.lines(), /BUSGATE_TOKENS is unset/)
})
