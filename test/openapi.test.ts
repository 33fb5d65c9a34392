import { readFileSync } from 'node:fs'
import t from 'tap'
import { generateOpenApi } from '../src/generate-openapi.js'
import { testApp } from './helpers/app.js'

t.test('openapi.yaml is what the route schemas generate (run `npm run openapi` after changing a route)', async (t) => {
  const checkedIn = readFileSync(new URL('../openapi.yaml', import.meta.url), 'utf8')
  t.equal(await generateOpenApi(), checkedIn)
})

t.test('the spec is served, and every route in it is described', async (t) => {
  const app = await testApp(t, undefined, { tokens: [{ token: 'x'.repeat(20), scopes: new Set(['admin']) }] })
  const res = await app.inject({ method: 'GET', url: '/openapi.json' })
  t.equal(res.statusCode, 200, 'public even with auth on')
  const spec = res.json()
  t.equal(spec.openapi, '3.1.0')
  t.ok(spec.paths['/events'].post.requestBody.content['application/msgpack'], 'msgpack body documented')
  const batch = spec.paths['/events/batch'].post.requestBody.content
  t.same(Object.keys(batch).sort(), ['application/json', 'application/msgpack'], 'the batch takes JSON and msgpack')
  t.match(batch['application/msgpack'].schema, { type: 'array', minItems: 1, items: { $ref: '#/components/schemas/WireEvent' } }, 'msgpack batch: an array of wire events')
  t.match(batch['application/json'].schema, { type: 'array', minItems: 1, items: { $ref: '#/components/schemas/EventInput' } })
  t.same(Object.keys(spec.paths).sort(), ['/', '/events', '/events/background-task', '/events/batch', '/events/stream', '/healthz', '/metrics', '/readyz',
    '/webhooks', '/webhooks/{id}', '/webhooks/{id}/rotate-secret', '/webhooks/{id}/attempts', '/dead-letters', '/dead-letters/{id}',
    '/dead-letters/{id}/redeliver', '/dead-letters/redeliver'].sort())
  for (const [path, ops] of Object.entries(spec.paths as Record<string, Record<string, { operationId?: string, responses: object }>>)) {
    for (const [method, op] of Object.entries(ops)) {
      t.ok(op.operationId, `${method} ${path} has an operationId`)
      t.ok(Object.keys(op.responses).length > 0, `${method} ${path} has responses`)
    }
  }
  t.same(spec.paths['/events'].post.security, [{ bearerAuth: [] }])
  t.notOk(spec.paths['/healthz'].get.security, 'health needs no token')
  t.notOk(spec.paths['/'].get.security, 'the dashboard page needs no token')
  t.ok(spec.paths['/'].get.responses['200'].content['text/html'], 'the dashboard is a page')
})

t.test('/docs serves a page to read the spec', async (t) => {
  const app = await testApp(t, undefined, { tokens: [{ token: 'x'.repeat(20), scopes: new Set(['admin']) }] })
  const page = await app.inject({ method: 'GET', url: '/docs/' })
  t.equal(page.statusCode, 200)
  t.match(page.headers['content-type'], /text\/html/)
  t.match(page.body, /swagger/i)
  const json = await app.inject({ method: 'GET', url: '/docs/json' })
  t.equal(json.statusCode, 200)
  t.equal(json.json().info.title, 'busgate')
})
