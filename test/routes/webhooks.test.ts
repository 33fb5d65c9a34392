import t from 'tap'
import { testApp } from '../helpers/app.js'
import { uniqueNames } from '../helpers/bus.js'
import { startRedis } from '../helpers/redis.js'
import { bothCases, unsafeIPv6 } from '../helpers/unsafe-addresses.js'

const redis = await startRedis(t)
const PUBLIC_URL = 'https://93.184.215.14/hook'

t.test('register, list, read, update, delete; every instance sees the same set', async (t) => {
  const names = uniqueNames()
  const a = await testApp(t, redis.url, names)
  const b = await testApp(t, redis.url, names)
  const created = await a.inject({ method: 'POST', url: '/webhooks', payload: { url: PUBLIC_URL, event_names: ['kernel_*'], description: 'ops' } })
  t.equal(created.statusCode, 201)
  const body = created.json()
  t.match(body, { id: /^wh_[A-Za-z0-9_-]{16}$/, url: PUBLIC_URL, event_names: ['kernel_*'], description: 'ops', enabled: true, secret: /^whsec_[A-Za-z0-9+/]{32}$/ })
  const { id, secret } = body

  const listed = (await b.inject({ method: 'GET', url: '/webhooks' })).json()
  t.equal(listed.webhooks.length, 1, 'the other instance sees it')
  t.equal(listed.webhooks[0].id, id)
  t.notMatch(JSON.stringify(listed), /whsec_/, 'no secret in a listing')
  const read = await b.inject({ method: 'GET', url: `/webhooks/${id}` })
  t.equal(read.statusCode, 200)
  t.notOk('secret' in read.json())

  const patched = await b.inject({ method: 'PATCH', url: `/webhooks/${id}`, payload: { enabled: false, event_names: ['*'] } })
  t.equal(patched.statusCode, 200)
  t.match(patched.json(), { enabled: false, event_names: ['*'], description: 'ops', url: PUBLIC_URL })
  t.equal((await a.webhooks.get(id))?.secrets[0]?.value, secret, 'the secret is kept across updates')

  t.equal((await a.inject({ method: 'DELETE', url: `/webhooks/${id}` })).statusCode, 204)
  t.equal((await b.inject({ method: 'GET', url: `/webhooks/${id}` })).statusCode, 404)
  t.equal((await b.inject({ method: 'DELETE', url: `/webhooks/${id}` })).statusCode, 404)
  t.same((await a.inject({ method: 'GET', url: '/webhooks' })).json(), { webhooks: [] })
})

t.test('secret rotation: a new secret, the old one valid for the overlap', async (t) => {
  const app = await testApp(t, redis.url, { ...uniqueNames(), webhookSecretOverlapMs: 60_000 })
  const { id, secret: first } = (await app.inject({ method: 'POST', url: '/webhooks', payload: { url: PUBLIC_URL } })).json()
  const before = Date.now()
  const rotated = await app.inject({ method: 'POST', url: `/webhooks/${id}/rotate-secret` })
  t.equal(rotated.statusCode, 200)
  const { secret: second, previous_secret_expires_at: expiresAt } = rotated.json()
  t.match(second, /^whsec_/)
  t.not(second, first)
  t.ok(Math.abs(Date.parse(expiresAt) - (before + 60_000)) < 5000, 'expires after the overlap')
  const { activeSecrets } = await import('../../src/webhooks/registry.js')
  const stored = await app.webhooks.get(id)
  t.same(activeSecrets(stored!), [second, first], 'both sign meanwhile, the new one first')
  t.same(activeSecrets(stored!, Date.parse(expiresAt) + 1), [second], 'then only the new one')
  const third = (await app.inject({ method: 'POST', url: `/webhooks/${id}/rotate-secret` })).json().secret
  t.same(activeSecrets((await app.webhooks.get(id))!), [third, second, first], 'rotating again keeps what is still in its overlap')
  t.equal((await app.inject({ method: 'POST', url: '/webhooks/wh_AAAAAAAAAAAAAAAA/rotate-secret' })).statusCode, 404)
})

t.test('bad input and unsafe URLs are refused, nothing stored', async (t) => {
  const app = await testApp(t, redis.url, uniqueNames())
  const cases: Array<[string, string, object, number, string, RegExp?]> = [
    ['POST', '/webhooks', { url: 'http://127.0.0.1:9/x' }, 400, 'BUSGATE_UNSAFE_WEBHOOK_URL', /loopback/],
    ['POST', '/webhooks', { url: 'http://169.254.169.254/' }, 400, 'BUSGATE_UNSAFE_WEBHOOK_URL'],
    ['POST', '/webhooks', { url: 'not a url' }, 400, 'BUSGATE_VALIDATION_FAILED', /format "uri"/],
    ['POST', '/webhooks', {}, 400, 'BUSGATE_VALIDATION_FAILED', /url/],
    ['POST', '/webhooks', { url: PUBLIC_URL, event_names: [] }, 400, 'BUSGATE_VALIDATION_FAILED'],
    ['POST', '/webhooks', { url: PUBLIC_URL, event_names: ['bad name'] }, 400, 'BUSGATE_VALIDATION_FAILED'],
    ['POST', '/webhooks', { url: PUBLIC_URL, secret: 'mine' }, 400, 'BUSGATE_VALIDATION_FAILED', /additional/],
    ['PATCH', '/webhooks/wh_AAAAAAAAAAAAAAAA', {}, 400, 'BUSGATE_VALIDATION_FAILED', /fewer than 1/],
    ['PATCH', '/webhooks/wh_AAAAAAAAAAAAAAAA', { enabled: 'yes' }, 400, 'BUSGATE_VALIDATION_FAILED'],
    ['PATCH', '/webhooks/wh_AAAAAAAAAAAAAAAA', { enabled: true }, 404, 'BUSGATE_NOT_FOUND'],
    ['GET', '/webhooks/not-an-id', {}, 400, 'BUSGATE_VALIDATION_FAILED']
  ]
  for (const [method, url, payload, status, code, message] of cases) {
    const res = await app.inject({ method: method as 'POST', url, ...(method === 'GET' ? {} : { payload }) })
    t.equal(res.statusCode, status, `${method} ${url} ${JSON.stringify(payload)}`)
    t.match(res.json(), { code, message: message ?? String })
  }
  const { id } = (await app.inject({ method: 'POST', url: '/webhooks', payload: { url: PUBLIC_URL } })).json()
  const unsafePatch = await app.inject({ method: 'PATCH', url: `/webhooks/${id}`, payload: { url: 'http://10.0.0.1/' } })
  t.equal(unsafePatch.statusCode, 400)
  t.equal((await app.webhooks.get(id))?.url, PUBLIC_URL, 'unchanged')
  t.equal((await app.webhooks.list()).length, 1)
})

t.test('IPv6 forms of private targets are refused on create and on update, nothing stored', async (t) => {
  const app = await testApp(t, undefined)
  const { id } = (await app.inject({ method: 'POST', url: '/webhooks', payload: { url: PUBLIC_URL } })).json()
  for (const address of bothCases(unsafeIPv6)) {
    const url = `http://[${address}]/hook`
    for (const [method, path] of [['POST', '/webhooks'], ['PATCH', `/webhooks/${id}`]] as const) {
      const res = await app.inject({ method, url: path, payload: { url } })
      t.equal(res.statusCode, 400, `${method} ${url}`)
      t.match(res.json(), { code: 'BUSGATE_UNSAFE_WEBHOOK_URL', message: /loopback, private or link-local/ })
    }
  }
  t.same((await app.webhooks.list()).map((w) => w.url), [PUBLIC_URL], 'only the public one, unchanged')
})

t.test('the admin scope is needed', async (t) => {
  const app = await testApp(t, redis.url, {
    ...uniqueNames(),
    tokens: [{ token: 'pub-0123456789abcd', scopes: new Set(['publish']) }, { token: 'adm-0123456789abcd', scopes: new Set(['admin']) }]
  })
  t.equal((await app.inject({ method: 'GET', url: '/webhooks' })).statusCode, 401)
  t.equal((await app.inject({ method: 'GET', url: '/webhooks', headers: { authorization: 'Bearer pub-0123456789abcd' } })).statusCode, 403)
  t.equal((await app.inject({ method: 'GET', url: '/webhooks', headers: { authorization: 'Bearer adm-0123456789abcd' } })).statusCode, 200)
})

t.test('private URLs when the operator allows them', async (t) => {
  const app = await testApp(t, redis.url, { ...uniqueNames(), webhookAllowPrivate: true })
  t.equal((await app.inject({ method: 'POST', url: '/webhooks', payload: { url: 'http://127.0.0.1:9/x' } })).statusCode, 201)
})
