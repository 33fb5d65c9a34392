import t from 'tap'
import { testApp } from '../helpers/app.js'

t.test('configured origins get CORS headers, preflights pass without a token', async (t) => {
  const app = await testApp(t, undefined, {
    corsOrigins: ['https://dash.example'],
    tokens: [{ token: 'tok-0123456789abcdef', scopes: new Set(['publish']) }]
  })
  const preflight = await app.inject({
    method: 'OPTIONS',
    url: '/events',
    headers: { origin: 'https://dash.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' }
  })
  t.equal(preflight.statusCode, 204)
  t.equal(preflight.headers['access-control-allow-origin'], 'https://dash.example')
  t.match(String(preflight.headers['access-control-allow-headers']), /Authorization/)
  t.match(String(preflight.headers['access-control-allow-methods']), /POST/)

  const post = await app.inject({
    method: 'POST',
    url: '/events',
    headers: { origin: 'https://dash.example', authorization: 'Bearer tok-0123456789abcdef' },
    payload: { event_name: 'a' }
  })
  t.equal(post.statusCode, 202)
  t.equal(post.headers['access-control-allow-origin'], 'https://dash.example')

  const refused = await app.inject({ method: 'POST', url: '/events', headers: { origin: 'https://dash.example' }, payload: { event_name: 'a' } })
  t.equal(refused.statusCode, 401)
  t.equal(refused.headers['access-control-allow-origin'], 'https://dash.example', 'a browser can read the 401')

  const other = await app.inject({ method: 'GET', url: '/healthz', headers: { origin: 'https://evil.example' } })
  t.equal(other.headers['access-control-allow-origin'], undefined, 'other origins get no grant')
})

t.test('without BUSGATE_CORS_ORIGINS no CORS headers are sent', async (t) => {
  const app = await testApp(t, undefined)
  const res = await app.inject({ method: 'GET', url: '/healthz', headers: { origin: 'https://dash.example' } })
  t.equal(res.headers['access-control-allow-origin'], undefined)
})
