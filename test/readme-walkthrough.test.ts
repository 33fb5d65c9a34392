import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { listeningApp } from './helpers/app.js'
import { until } from './helpers/wait.js'

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')

/** The README's receiver exactly as written, but for the port, which must be free here. */
function readmeReceiver (port: number): string {
  const block = /```js\n(\/\/ receiver\.mjs:[\s\S]*?)```/.exec(readme)
  if (block === null) throw new Error('the README has no receiver.mjs block')
  const source = block[1] ?? ''
  if (!source.includes('.listen(9000, ')) throw new Error('the receiver no longer listens on 9000 as the walk-through says')
  return source.replace('.listen(9000, ', `.listen(${port}, `)
}

async function freePort (): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return port
}

t.test("the README's local webhook walk-through works as written", async (t) => {
  const { app, base } = await listeningApp(t, undefined, { webhookAllowPrivate: true })
  const port = await freePort()
  const created = await app.inject({ method: 'POST', url: '/webhooks', payload: { url: `http://127.0.0.1:${port}/hooks`, event_names: ['kernel_*'] } })
  t.equal(created.statusCode, 201)
  const { id, secret } = created.json() as { id: string, secret: string }

  const dir = mkdtempSync(join(tmpdir(), 'busgate-readme-'))
  const file = join(dir, 'receiver.mjs')
  writeFileSync(file, readmeReceiver(port))
  const receiver = spawn(process.execPath, [file], { env: { ...process.env, WEBHOOK_SECRET: secret }, stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { receiver.kill() })
  let printed = ''
  receiver.stdout.setEncoding('utf8').on('data', (chunk: string) => { printed += chunk })
  let unsigned = 0
  await until(async () => { unsigned = await fetch(`http://127.0.0.1:${port}/`, { method: 'POST', body: '{}' }).then((res) => res.status, () => 0); return unsigned !== 0 }, 10_000)
  t.equal(unsigned, 401, 'an unsigned request is refused')

  const produced = await fetch(`${base}/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ event_name: 'kernel_started', agent_id: 'i-ag01', args: ['sess-1', 'kern-1'] })
  })
  t.equal(produced.status, 202)
  const verified = /^verified msg_\S+ .*kernel_started/m
  await until(() => verified.test(printed), 10_000)
  t.match(printed, verified, 'the delivery was printed as verified')
  let health = { state: '', last_status: null as number | null }
  await until(async () => {
    health = ((await app.inject({ url: `/webhooks/${id}` })).json() as { health: typeof health }).health
    return health.last_status === 204
  }, 10_000)
  t.match(health, { state: 'healthy', last_status: 204 }, 'the gateway saw the 204')

  // A tampered body with the real headers is refused: the check is a real one.
  const forged = await fetch(`http://127.0.0.1:${port}/hooks`, {
    method: 'POST',
    headers: { 'webhook-id': 'msg_x', 'webhook-timestamp': String(Math.floor(Date.now() / 1000)), 'webhook-signature': 'v1,' + Buffer.alloc(32).toString('base64') },
    body: '{"forged":true}'
  })
  t.equal(forged.status, 401)
})
