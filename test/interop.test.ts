import { spawn, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import t from 'tap'
import { decodeEvent, toJsonEvent } from '../src/codec.js'
import { listeningApp, testApp } from './helpers/app.js'
import { startRedis } from './helpers/redis.js'
import { claimOne } from './helpers/bus.js'
import { startReceiver, verifySignature } from './helpers/receiver.js'

// Debian's python3 has python3-msgpack; a python3 earlier on PATH (pyenv…) may not.
const PYTHON = process.env.BUSGATE_TEST_PYTHON ?? (existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3')
const PEER = new URL('./fixtures/backend-ai-peer.py', import.meta.url).pathname

function peer (...args: string[]): string[] {
  const res = spawnSync(PYTHON, [PEER, ...args], { encoding: 'utf8', timeout: 30_000 })
  if (res.status !== 0) throw new Error(`backend-ai-peer ${args.join(' ')} failed: ${res.stderr}`)
  return res.stdout.trim().split('\n').filter((l) => l !== '')
}

/** The same, without blocking this process: for a peer that talks to the gateway in this process. */
async function peerAsync (...args: string[]): Promise<string[]> {
  const child = spawn(PYTHON, [PEER, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 })
  let out = ''
  let err = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  child.stderr.on('data', (d: Buffer) => { err += d.toString() })
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  if (code !== 0) throw new Error(`backend-ai-peer ${args.join(' ')} failed: ${err}`)
  return out.trim().split('\n').filter((l) => l !== '')
}

const redis = await startRedis(t)

t.test('events posted over HTTP are read by Python as Backend.AI reads them', async (t) => {
  // Backend.AI keeps its bus in database 4, with the default key names.
  const app = await testApp(t, `${redis.url}/4`)
  const listener = spawn(PYTHON, [PEER, 'listen', String(redis.port), '3'], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => listener.kill())
  let heard = ''
  listener.stdout.on('data', (d: Buffer) => { heard += d.toString() })
  for (let i = 0; i < 200 && !heard.includes('ready'); i++) await new Promise((resolve) => setTimeout(resolve, 25))
  t.match(heard, /ready/, 'the Python subscriber is listening')

  const posted = [
    { event_name: 'kernel_started', agent_id: 'i-ag01', args: ['sess-1', 'kern-1'] },
    { event_name: 'kernel_log', agent_id: 'i-ag01', args: [{ $base64: 'AAEC/w==' }, 'héllo 🎉', 2 ** 40, -7, 1.25, null, true, { nested: [[]] }] }
  ]
  t.equal((await app.inject({ method: 'POST', url: '/events', payload: posted[0] })).statusCode, 202)
  t.equal((await app.inject({ method: 'POST', url: '/events', payload: posted[1] })).statusCode, 202)
  // msgpack body: an int64 beyond 2^53, written unchanged
  const big = Buffer.from('83aa6576656e745f6e616d65a362696ea86167656e745f6964a178a46172677391cf7fffffffffffffff', 'hex')
  t.equal((await app.inject({ method: 'POST', url: '/events', headers: { 'content-type': 'application/msgpack' }, payload: big })).statusCode, 202)
  const expected = [...posted, { event_name: 'bin', agent_id: 'x', args: ['9223372036854775807'] }]

  const fromList = peer('read', String(redis.port), '4').map((l) => JSON.parse(l))
  t.same(fromList, expected, 'the consumer list, decoded by Python with strict_map_key and raw=False')
  await new Promise<void>((resolve) => { listener.on('exit', () => resolve()) })
  const fromChannel = heard.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l))
  t.same(fromChannel, expected, 'the channel, as a Python subscriber hears it')
  t.equal(await redis.connect(0).llen('events.prodcons'), 0, 'database 0 untouched')
})

t.test('what a Python agent produces is read back by the gateway without loss', async (t) => {
  const app = await testApp(t, `${redis.url}/5`)
  const heard: Buffer[] = []
  await app.engine.bus.subscribe({ message: (f) => heard.push(f) })
  const hexes = peer('produce', String(redis.port), '5')
  t.equal(hexes.length, 3)
  const consumer = app.engine.queue.consumer('busgate:test:processing')
  t.teardown(() => consumer.close())
  const claimed: Buffer[] = []
  for (let i = 0; i < 3; i++) claimed.push((await claimOne(consumer, 2000)) as Buffer)
  t.same(claimed.map((b) => b.toString('hex')), hexes, 'the consumer list, byte for byte')
  for (let i = 0; i < 100 && heard.length < 3; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.same(heard.map((b) => b.toString('hex')), hexes, 'the channel, byte for byte')
  t.same(claimed.map((b) => toJsonEvent(decodeEvent(b))), [
    { event_name: 'kernel_started', agent_id: 'i-ag01', args: ['sess-1', 'kern-1'] },
    { event_name: 'instance_heartbeat', agent_id: 'i-ag01', args: [{ cpu: '8', mem: 2 ** 40 }, { $base64: 'AP8=' }] },
    { event_name: 'task_done', agent_id: 'manager', args: [{ task_id: 't-1', message: 'ok', current_progress: 10, total_progress: 10 }] }
  ])
})

t.test("a Python agent's events reach a webhook as the documented JSON, signed", async (t) => {
  const app = await testApp(t, `${redis.url}/6`, { webhookAllowPrivate: true })
  const receiver = await startReceiver(t)
  const res = await app.inject({ method: 'POST', url: '/webhooks', payload: { url: receiver.url } })
  t.equal(res.statusCode, 201)
  peer('produce', String(redis.port), '6')
  const got = await receiver.waitFor(3)
  // Loops deliver side by side: the order of arrival is not the order of the list.
  t.same(got.map((r) => r.json).sort((a, b) => a.event_name.localeCompare(b.event_name)), [
    { event_name: 'instance_heartbeat', agent_id: 'i-ag01', args: [{ cpu: '8', mem: 2 ** 40 }, { $base64: 'AP8=' }] },
    { event_name: 'kernel_started', agent_id: 'i-ag01', args: ['sess-1', 'kern-1'] },
    { event_name: 'task_done', agent_id: 'manager', args: [{ task_id: 't-1', message: 'ok', current_progress: 10, total_progress: 10 }] }
  ], 'each once, as the documented JSON')
  t.ok(got.every((r) => verifySignature(r, res.json().secret as string)), 'every signature verifies')
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(receiver.received.length, 3, 'none twice')
})

t.test('a msgpack batch packed by Python reaches Redis as Python packed each event', async (t) => {
  const { app, base } = await listeningApp(t, `${redis.url}/7`)
  const heard: Buffer[] = []
  await app.engine.bus.subscribe({ message: (f) => heard.push(f) })
  const [status, ...hexes] = await peerAsync('post-batch', `${base}/events/batch`)
  t.equal(status, '202', 'urllib got 202')
  t.equal(hexes.length, 3)
  const queued = await redis.connect(7).lrangeBuffer('events.prodcons', 0, -1)
  t.same(queued.map((b) => b.toString('hex')), hexes, "the consumer list: each event's msgpack.packb bytes, in order")
  for (let i = 0; i < 100 && heard.length < 3; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.same(heard.map((b) => b.toString('hex')), hexes, 'the channel, byte for byte')
  t.match(toJsonEvent(decodeEvent(queued[1] as Buffer)), { event_name: 'kernel_log', args: [{ $base64: 'AAH/' }, 'héllo', '9223372036854775807', -(2 ** 40), 1.25, null, true, { nested: [[]] }] })
})
