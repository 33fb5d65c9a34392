import { connect, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { buildApp, redactUrl } from '../../src/app.js'
import { defaultConfig, type Config } from '../../src/config.js'
import { capturingLogger } from '../helpers/logger.js'
import { until } from '../helpers/wait.js'

// Clients that send slowly, stop halfway, or send what is not HTTP: on the memory engine, as
// none of this reaches the bus.

async function gateway (t: Test, overrides: Partial<Config> = {}, level = 'silent') {
  const log = capturingLogger(level)
  const app = await buildApp(defaultConfig(overrides), { logger: log.logger })
  t.teardown(async () => { await app.close() })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as { port: number }
  return { app, port, log }
}

/** A raw connection, and everything it receives until the server closes it. */
async function raw (port: number): Promise<{ socket: Socket, received: () => string, closed: Promise<void> }> {
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  let received = ''
  socket.on('data', (d: Buffer) => { received += d.toString('latin1') })
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
  await new Promise((resolve) => socket.once('connect', resolve))
  return { socket, received: () => received, closed }
}

function statusOf (response: string): number {
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(response)?.[1] ?? 0)
}

function bodyOf (response: string): unknown {
  const at = response.indexOf('\r\n\r\n')
  return JSON.parse(response.slice(at + 4))
}

t.test('a body sent a byte at a time is cut off at BUSGATE_REQUEST_TIMEOUT_MS with a 408', async (t) => {
  const { app, port } = await gateway(t, { requestTimeoutMs: 1500 })
  const c = await raw(port)
  c.socket.write('POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{')
  const drip = setInterval(() => { if (!c.socket.destroyed) c.socket.write(' ') }, 200)
  t.teardown(() => clearInterval(drip))
  const started = Date.now()
  await Promise.race([c.closed, sleep(10_000)])
  clearInterval(drip)
  const waited = Date.now() - started
  t.ok(c.socket.destroyed || c.socket.readableEnded, 'the server closed the connection')
  t.ok(waited >= 1400 && waited < 4000, `after ${waited} ms`)
  t.equal(statusOf(c.received()), 408)
  t.same(bodyOf(c.received()), { statusCode: 408, code: 'BUSGATE_REQUEST_TIMEOUT', error: 'Request Timeout', message: 'The request was not complete within 1500 ms' })
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /busgate_http_client_errors_total\{code="BUSGATE_REQUEST_TIMEOUT"\} 1\n/)
})

t.test('headers sent a line at a time are cut off the same way', async (t) => {
  const { port } = await gateway(t, { requestTimeoutMs: 1000 })
  const c = await raw(port)
  c.socket.write('GET /healthz HTTP/1.1\r\n')
  const drip = setInterval(() => { if (!c.socket.destroyed) c.socket.write('X-A: b\r\n') }, 200)
  t.teardown(() => clearInterval(drip))
  await Promise.race([c.closed, sleep(8000)])
  clearInterval(drip)
  t.ok(c.socket.destroyed || c.socket.readableEnded, 'closed')
  t.equal(statusOf(c.received()), 408)
})

t.test('with tokens on, a 401 to a request whose body is still coming closes the connection', async (t) => {
  const { port } = await gateway(t, { tokens: [{ token: 'secret-token', scopes: new Set(['publish']) }] })
  const c = await raw(port)
  c.socket.write('POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"event_name":')
  await Promise.race([c.closed, sleep(5000)])
  t.equal(statusOf(c.received()), 401)
  t.match(c.received(), /\r\nconnection: close\r\n/i)
  t.ok(c.socket.destroyed || c.socket.readableEnded, 'the server did not wait for the rest of the body')
})

t.test('a request Node cannot parse gets the one error shape, with a code', async (t) => {
  const { port } = await gateway(t)
  const cases: Array<[string, number, string]> = [
    ['POST /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n', 400, 'BUSGATE_BAD_REQUEST'],
    ['POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400, 'BUSGATE_BAD_REQUEST'],
    ['GET / HTTP/1.1\r\nHost: x\r\nX-Big: ' + 'a'.repeat(20_000) + '\r\n\r\n', 431, 'BUSGATE_HEADERS_TOO_LARGE'],
    ['NOT HTTP AT ALL\r\n\r\n', 400, 'BUSGATE_BAD_REQUEST']
  ]
  for (const [request, status, code] of cases) {
    const c = await raw(port)
    c.socket.write(request)
    await Promise.race([c.closed, sleep(3000)])
    t.equal(statusOf(c.received()), status, request.slice(0, 40))
    t.match(bodyOf(c.received()), { statusCode: status, code, error: String, message: String })
  }
})

t.test('an upload the client abandons is not a server fault', async (t) => {
  const { app, port, log } = await gateway(t, {}, 'debug')
  for (let i = 0; i < 3; i++) {
    const c = await raw(port)
    c.socket.write('POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"event_name":"a"')
    await sleep(50)
    c.socket.destroy()
  }
  await until(() => log.lines().includes('BUSGATE_CLIENT_ABORTED'), 3000)
  await sleep(100)
  t.notMatch(log.lines(), /"level":50/, 'nothing logged as an error')
  t.notMatch(log.lines(), /BUSGATE_INTERNAL/)
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /busgate_http_client_errors_total\{code="BUSGATE_CLIENT_ABORTED"\} 3\n/)
  t.notMatch(metrics, /BUSGATE_INTERNAL/)
})

t.test('past BUSGATE_MAX_CONNECTIONS new connections are closed; the ones held are served', async (t) => {
  const { port } = await gateway(t, { maxConnections: 5 })
  const held = await Promise.all(Array.from({ length: 5 }, async () => await raw(port)))
  t.teardown(() => { for (const h of held) h.socket.destroy() })
  await sleep(100)
  const extra = await raw(port)
  await Promise.race([extra.closed, sleep(3000)])
  t.ok(extra.socket.destroyed, 'the sixth connection was closed at once')
  held[0]!.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
  await until(() => held[0]!.received().includes('"ok"'), 3000)
  t.equal(statusOf(held[0]!.received()), 200, 'a held connection is still served')
})

t.test('the query token is redacted under every spelling the query parser accepts', async (t) => {
  for (const url of ['/s?access_token=tok', '/s?access%5Ftoken=tok', '/s?%61ccess_token=tok&x=1', '/s?x=1&ACCESS_TOKEN=tok',
    '/s?access_token', '/s?a=1&access%5ftoken=tok&access_token=tok2', '/s?%zz=1&access%5Ftoken=tok', '/s?Access_Token=tok',
    '/s#access_token=tok', '/s?x=1#access_token=tok', '/s;access_token=tok', '/s?access_token[]=tok', '/s?access_token%00=tok', '/s?+access_token=tok',
    '/s?a=1;access_token=tok']) {
    const redacted = redactUrl(url)
    t.notMatch(redacted, /=tok/, `${url} -> ${redacted}`)
  }
  t.equal(redactUrl('/s?x=1&ACCESS_TOKEN=tok'), '/s?x=1&ACCESS_TOKEN=[redacted]', 'in any case: a secret sent in the wrong case is a secret still')
  t.equal(redactUrl('/s?x=1&token=kept'), '/s?x=1&token=kept', 'other parameters as they are')
  t.equal(redactUrl('/events/stream'), '/events/stream')

  const { port, log } = await gateway(t, { tokens: [{ token: 'sub-token-abcdef', scopes: new Set(['subscribe']) }] }, 'debug')
  const c = await raw(port)
  c.socket.write('GET /events/stream?access%5Ftoken=sub-token-abcdef HTTP/1.1\r\nHost: x\r\n\r\n')
  await until(() => c.received().includes('retry:'), 3000)
  t.equal(statusOf(c.received()), 200, 'the encoded name is accepted as the token')
  c.socket.destroy()
  await sleep(100)
  t.notMatch(log.lines(), /sub-token-abcdef/)
  t.match(log.lines(), /access%5Ftoken=\[redacted\]/)
})

t.test('what Node or the router would answer themselves gets the one error shape too', async (t) => {
  const { port, app } = await gateway(t)
  const cases: Array<[string, number, string]> = [
    ['GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n', 400, 'BUSGATE_BAD_REQUEST'],
    [`GET /webhooks/${'w'.repeat(300)} HTTP/1.1\r\nHost: x\r\n\r\n`, 404, 'BUSGATE_NOT_FOUND'],
    ['GET /healthz HTTP/1.1\r\nExpect: 200-ok\r\nHost: x\r\n\r\n', 417, 'BUSGATE_EXPECTATION_FAILED'],
    ['CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n', 400, 'BUSGATE_BAD_REQUEST'],
    ['GET /dead-letters?offset=99999999999999999999 HTTP/1.1\r\nHost: x\r\n\r\n', 400, 'BUSGATE_VALIDATION_FAILED']
  ]
  for (const [request, status, code] of cases) {
    const c = await raw(port)
    c.socket.write(request)
    await until(() => c.received().includes('\r\n\r\n{'), 3000)
    await sleep(50)
    t.equal(statusOf(c.received()), status, request.slice(0, request.indexOf('\r')))
    t.match(bodyOf(c.received()), { statusCode: status, code, error: String, message: String })
    c.socket.destroy()
  }
  const noHost = await raw(port)
  noHost.socket.write('GET /healthz HTTP/1.1\r\n\r\n')
  await until(() => noHost.received().includes('"ok"'), 3000)
  t.equal(statusOf(noHost.received()), 200, 'a request without Host is served')
  noHost.socket.destroy()
  t.notMatch((await app.inject({ method: 'GET', url: '/metrics' })).body, /BUSGATE_INTERNAL/)
})

t.test('an upload cut off by its client is counted once, as an abort', async (t) => {
  const { app, port } = await gateway(t)
  const c = await raw(port)
  c.socket.write('POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"event_name":"a"')
  await sleep(50)
  c.socket.end() // a FIN mid-body, not a reset
  await until(async () => /busgate_http_client_errors_total\{code="BUSGATE_CLIENT_ABORTED"\} 1/.test((await app.inject({ method: 'GET', url: '/metrics' })).body), 3000)
  await sleep(100)
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /busgate_http_client_errors_total\{code="BUSGATE_CLIENT_ABORTED"\} 1\n/)
  t.notMatch(metrics, /busgate_http_client_errors_total\{code="BUSGATE_BAD_REQUEST"\}/)
})
