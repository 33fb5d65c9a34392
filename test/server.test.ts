import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { freePort, startRedis } from './helpers/redis.js'
import { openStream } from './helpers/sse.js'

// The real entry point, run as users run it.
const SERVER = [process.execPath, ['--import', 'tsx', new URL('../src/server.ts', import.meta.url).pathname]] as const

function runOnce (env: Record<string, string>, args: string[] = []) {
  return spawnSync(SERVER[0], [...SERVER[1], ...args], { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 30_000 })
}

interface Running { proc: ChildProcess, port: number, output: () => string, exited: Promise<number | null> }

async function startServer (t: Test, env: Record<string, string>): Promise<Running> {
  const port = await freePort()
  const proc = spawn(SERVER[0], [...SERVER[1]], { env: { ...process.env, PORT: String(port), ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  proc.stdout?.on('data', (d: Buffer) => { out += d.toString() })
  proc.stderr?.on('data', (d: Buffer) => { out += d.toString() })
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)))
  t.teardown(() => { if (proc.exitCode === null) proc.kill('SIGKILL') })
  for (let i = 0; i < 300 && !out.includes('Server listening'); i++) {
    if (proc.exitCode !== null) throw new Error(`server exited: ${out}`)
    await sleep(50)
  }
  return { proc, port, output: () => out, exited }
}

function post (port: number, path: string, body: string): Promise<{ status: number, body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ port, path, method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      let data = ''
      res.on('data', (c: Buffer) => { data += c.toString() })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: data }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

t.test('a wrong setting stops the process with one line, no stack trace', async (t) => {
  const res = runOnce({ PORT: 'eighty' })
  t.equal(res.status, 2)
  t.equal(res.stderr, 'busgate: PORT: must be an integer from 0 to 65535, got "eighty"\n')
  t.equal(res.stdout, '')
  const flag = runOnce({}, ['--redis-url', 'http://wrong'])
  t.equal(flag.status, 2)
  t.match(flag.stderr, /^busgate: --redis-url: .* must start with redis:\/\/, rediss:\/\/, redis\+sentinel:\/\/ or redis\+cluster:\/\/\n$/)
})

t.test('--help lists every setting; --version prints the version', async (t) => {
  const help = runOnce({}, ['--help'])
  t.equal(help.status, 0)
  t.match(help.stdout, /--redis-url\s+REDIS_URL/)
  t.match(help.stdout, /--tokens\s+BUSGATE_TOKENS/)
  t.match(runOnce({}, ['--version']).stdout, /^\d+\.\d+\.\d+\n$/)
})

t.test('a port in use is one clear line', async (t) => {
  const first = await startServer(t, {})
  const res = runOnce({ PORT: String(first.port) })
  t.equal(res.status, 1)
  t.match(res.stderr, new RegExp(`^busgate: cannot listen on 127.0.0.1:${first.port}: the address is in use\\n$`))
})

t.test('SIGTERM lets an in-flight request finish, then closes Redis and exits 0', async (t) => {
  const redis = await startRedis(t)
  const server = await startServer(t, { REDIS_URL: `${redis.url}/3` })
  // A request whose body is still arriving when the signal comes.
  const body = JSON.stringify({ event_name: 'during_shutdown' })
  const socket = connect(server.port, '127.0.0.1')
  await new Promise((resolve) => socket.once('connect', resolve))
  let response = ''
  socket.on('data', (d: Buffer) => { response += d.toString() })
  socket.write(`POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 5)}`)
  await sleep(200)
  server.proc.kill('SIGTERM')
  await sleep(200)
  t.equal(server.proc.exitCode, null, 'still draining')
  socket.write(body.slice(5))
  const code = await server.exited
  t.equal(code, 0)
  t.match(response, /^HTTP\/1.1 202 Accepted/, 'the in-flight request was answered')
  socket.destroy()
  const db3 = new Redis({ port: redis.port, db: 3 })
  t.teardown(() => db3.disconnect())
  t.equal(await db3.llen('events.prodcons'), 1, 'and its event was written')
  t.match(server.output(), /shutting down/)
  t.match(server.output(), /"msg":"stopped"/)
  const clients = await redis.client.client('LIST') as string
  t.notMatch(clients, /name=busgate/, 'the gateway closed its Redis connections')
})

t.test('a request that never finishes does not hold shutdown past its bound', async (t) => {
  const server = await startServer(t, { BUSGATE_SHUTDOWN_TIMEOUT_MS: '500' })
  const socket = connect(server.port, '127.0.0.1')
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.on('error', () => {})
  socket.write('POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{')
  await sleep(100)
  const started = Date.now()
  server.proc.kill('SIGTERM')
  const code = await server.exited
  t.equal(code, 1)
  t.ok(Date.now() - started < 3000, `exited within the bound (${Date.now() - started} ms)`)
  t.match(server.output(), /shutdown took longer than BUSGATE_SHUTDOWN_TIMEOUT_MS/)
  socket.destroy()
})

t.test('a second signal while a request holds shutdown exits 1 at once', async (t) => {
  const server = await startServer(t, { BUSGATE_SHUTDOWN_TIMEOUT_MS: '20000' })
  const socket = connect(server.port, '127.0.0.1')
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.on('error', () => {})
  socket.write('POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{')
  await sleep(100)
  server.proc.kill('SIGTERM')
  await sleep(300)
  const started = Date.now()
  server.proc.kill('SIGINT')
  t.equal(await server.exited, 1)
  t.ok(Date.now() - started < 3000, `exited without waiting for the 20 s bound (${Date.now() - started} ms)`)
  t.match(server.output(), /second signal: exiting without waiting/)
  socket.destroy()
})

t.test('npm start serves on the memory engine when REDIS_URL is unset', async (t) => {
  const server = await startServer(t, {})
  const res = await post(server.port, '/events', '{"event_name":"hello_world"}')
  t.equal(res.status, 202)
  t.same(JSON.parse(res.body), { accepted: 1, subscribers: 0, queue_length: 1 })
  server.proc.kill('SIGTERM')
  t.equal(await server.exited, 0)
})

t.test('rediss:// with a private CA (NODE_EXTRA_CA_CERTS), db index and password', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'busgate-tls-'))
  const sh = (cmd: string): void => {
    const r = spawnSync('sh', ['-c', cmd], { cwd: dir, encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`)
  }
  sh('openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj "/CN=busgate test CA"')
  sh('openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost"')
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n')
  sh('openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile ext.cnf')
  const redis = await startRedis(t, (port) => [
    '--tls-port', String(port), '--tls-cert-file', join(dir, 'server.pem'), '--tls-key-file', join(dir, 'server.key'),
    '--tls-ca-cert-file', join(dir, 'ca.pem'), '--tls-auth-clients', 'no', '--requirepass', 'tls-pass'
  ])
  const server = await startServer(t, { REDIS_URL: `rediss://:tls-pass@localhost:${redis.port}/6`, NODE_EXTRA_CA_CERTS: join(dir, 'ca.pem') })
  const res = await post(server.port, '/events', '{"event_name":"over_tls"}')
  t.equal(res.status, 202)
  t.notMatch(server.output(), /tls-pass/, 'the password is not logged')
  t.match(server.output(), /rediss:\/\/:\*\*\*@localhost/)
  const check = new Redis({ port: redis.port, host: 'localhost', db: 6, password: 'tls-pass', tls: { ca: [readFileSync(join(dir, 'ca.pem'))] } })
  t.teardown(() => check.disconnect())
  t.equal(await check.llen('events.prodcons'), 1)
  server.proc.kill('SIGTERM')
  t.equal(await server.exited, 0)
})

t.test('SIGTERM with a thousand open streams: each ends with a retry hint, the process exits 0 at once', async (t) => {
  const server = await startServer(t, { BUSGATE_SSE_RETRY_MS: '1500' })
  const streams = []
  for (let i = 0; i < 10; i++) {
    streams.push(...await Promise.all(Array.from({ length: 100 }, () => openStream(`http://127.0.0.1:${server.port}/events/stream`))))
  }
  t.ok(streams.every((s) => s.status === 200))
  const started = Date.now()
  server.proc.kill('SIGTERM')
  t.equal(await server.exited, 0)
  t.ok(Date.now() - started < 3000, `exited in ${Date.now() - started} ms`)
  await Promise.all(streams.map((s) => s.ended))
  t.ok(streams.every((s) => s.retries.at(-1) === 1500 && s.retries.length === 2), 'every stream got the parting retry hint')
})
