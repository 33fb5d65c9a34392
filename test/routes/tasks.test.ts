import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { encode } from '@msgpack/msgpack'
import t, { type Test } from 'tap'
import { parseTaskEvent } from '../../src/tasks.js'
import { listeningApp, testApp } from '../helpers/app.js'
import { startRedis } from '../helpers/redis.js'
import { dataOf, openStream } from '../helpers/sse.js'

// Debian's python3 has python3-msgpack; a python3 earlier on PATH (pyenv…) may not.
const PYTHON = process.env.BUSGATE_TEST_PYTHON ?? (existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3')
const PEER = new URL('../fixtures/backend-ai-peer.py', import.meta.url).pathname

// The task events use the default bus names, as Backend.AI does: each test has its own Redis.
const redis = await startRedis(t)
let taskNo = 0
const newTaskId = (): string => `5f3c7a2e-9d1b-4c8e-a0f2-${String(++taskNo).padStart(12, '0')}`

/** The hash once it exists (written asynchronously by what heard the event), or {} after 5 s. */
async function hashOnce (key: string): Promise<Record<string, string>> {
  for (let i = 0; i < 250 && await redis.client.exists(key) === 0; i++) await sleep(20)
  return await redis.client.hgetall(key)
}

const post = async (base: string, event: object): Promise<void> => {
  const res = await fetch(`${base}/events`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(event) })
  if (res.status !== 202) throw new Error(await res.text())
}

const progress = (taskId: string, current: number, total: number, name = 'task_updated') =>
  ({ event_name: name, agent_id: 'manager', args: [{ task_id: taskId, message: `step ${current}`, current_progress: current, total_progress: total }] })

/** Backend.AI's task manager in Python, on the same Redis, one step per call of `step`. */
async function pythonTask (t: Test, taskId: string, options: { form?: 'map' | 'positional', names?: 'task' | 'bgtask', hash?: boolean, end?: string, steps?: number } = {}) {
  const { form = 'map', names = 'task', hash = true, end = 'done', steps = 2 } = options
  const proc = spawn(PYTHON, [PEER, 'task', String(redis.port), taskId, String(steps), form, names, hash ? 'hash' : 'nohash', end],
    { stdio: ['pipe', 'pipe', 'inherit'] })
  t.teardown(() => { proc.kill() })
  const lines = createInterface({ input: proc.stdout })[Symbol.asyncIterator]()
  const next = async (): Promise<string> => String((await lines.next()).value)
  t.equal(await next(), 'started', 'the Python task started')
  return {
    step: async (): Promise<string> => {
      proc.stdin.write('\n')
      return await next()
    }
  }
}

t.test('task events in either form, under either family of names, are read; anything else is not a task report', async (t) => {
  t.same(parseTaskEvent({ event_name: 'task_updated', args: [{ task_id: 't1', message: 'half', current_progress: 5, total_progress: 10 }] }),
    { name: 'task_updated', taskId: 't1', status: 'started', message: 'half', current: 5, total: 10 })
  t.same(parseTaskEvent({ event_name: 'bgtask_updated', args: ['t1', 5n, 10, 'half'] }),
    { name: 'bgtask_updated', taskId: 't1', status: 'started', message: 'half', current: 5, total: 10 }, 'positional, with a bigint')
  t.same(parseTaskEvent({ event_name: 'bgtask_failed', args: ['t1', 'boom'] }),
    { name: 'bgtask_failed', taskId: 't1', status: 'failed', message: 'boom', current: null, total: null })
  t.equal(parseTaskEvent({ event_name: 'task_done', args: [] }), undefined, 'no arguments')
  t.equal(parseTaskEvent({ event_name: 'task_done', args: [{ message: 'no id' }] }), undefined, 'no task id')
  t.equal(parseTaskEvent({ event_name: 'task_done', args: [{ task_id: 'bad id\nwith a break' }] }), undefined, 'an id that cannot be a key')
  t.equal(parseTaskEvent({ event_name: 'task_done', args: [42] }), undefined)
  t.equal(parseTaskEvent({ event_name: 'kernel_started', args: ['t1'] }), undefined, 'not a task event')
})

t.test('the query names one task; an unknown one is a 404', async (t) => {
  const app = await testApp(t, redis.url, { sseLingerMs: 0 })
  const get = async (query: string) => await app.inject({ method: 'GET', url: `/events/background-task${query}` })
  const missing = await get('')
  t.equal(missing.statusCode, 400)
  t.match(missing.json(), { code: 'BUSGATE_BAD_REQUEST', message: /task_id/ })
  t.equal((await get('?task_id=a&taskId=b')).statusCode, 400, 'two different tasks')
  t.equal((await get('?task_id=..%2F..%0A')).json().code, 'BUSGATE_VALIDATION_FAILED', 'an id no task can have')
  t.equal((await get('?task_id=x&limit=3')).statusCode, 400, 'an unknown parameter')
  const unknown = await get(`?task_id=${newTaskId()}`)
  t.equal(unknown.statusCode, 404)
  t.match(unknown.json(), { statusCode: 404, code: 'BUSGATE_NOT_FOUND', message: /unknown, or ended more than 24 hours ago/ })
  const subscribers = async (): Promise<number> => Number((await redis.client.pubsub('NUMSUB', 'events.pubsub') as [string, number])[1])
  for (let i = 0; i < 100 && await subscribers() > 0; i++) await sleep(20)
  t.equal(await subscribers(), 0, 'the subscription taken to listen for the task was let go')
  t.equal(app.hub.clientCount, 0, 'no stream was left open')
})

t.test('events posted over HTTP: the gateway keeps the hash; the stream follows the task to server_close', async (t) => {
  const { base } = await listeningApp(t, redis.url)
  const taskId = newTaskId()
  await post(base, progress(taskId, 1, 4))
  const hash = await redis.client.hgetall(`bgtask.${taskId}`)
  t.match(hash, { status: 'started', current: '1', total: '4', msg: 'step 1', started_at: /^\d+\.\d{6}$/, last_update: /^\d+\.\d{6}$/ }, "Backend.AI's fields, as strings")
  const ttl = await redis.client.ttl(`bgtask.${taskId}`)
  t.ok(ttl > 86_000 && ttl <= 86_400, `expires in 24 hours (${ttl} s)`)

  const stream = await openStream(`${base}/events/background-task?task_id=${taskId}`)
  t.equal(stream.status, 200)
  t.match(stream.headers['content-type'], /^text\/event-stream/)
  await stream.waitFor(1)
  t.same(stream.events.map((e) => [e.event, dataOf(e)]), [
    ['task_updated', { task_id: taskId, message: 'step 1', current_progress: 1, total_progress: 4 }]
  ], 'the state so far, at once')
  await post(base, progress(taskId, 3, 4))
  await post(base, { event_name: 'kernel_started', args: ['another event'] })
  await post(base, progress(newTaskId(), 1, 1))
  await post(base, { event_name: 'task_done', args: [{ task_id: taskId, message: 'all done', current_progress: 4, total_progress: 4 }] })
  await stream.ended
  t.same(stream.events.map((e) => [e.event, dataOf(e)]), [
    ['task_updated', { task_id: taskId, message: 'step 1', current_progress: 1, total_progress: 4 }],
    ['task_updated', { task_id: taskId, message: 'step 3', current_progress: 3, total_progress: 4 }],
    ['task_done', { task_id: taskId, message: 'all done', current_progress: 4, total_progress: 4 }],
    ['server_close', {}]
  ], "only this task's events, then server_close, then the end")
  t.match(stream.raw(), /event: task_updated\nretry: 2000\ndata: /, 'each event carries a retry hint')
  t.match(await redis.client.hgetall(`bgtask.${taskId}`), { status: 'done', current: '4', msg: 'all done' })
})

t.test('a Python task manager on the same Redis: followed live, and a late client gets the end at once', async (t) => {
  const { base } = await listeningApp(t, redis.url)
  const taskId = newTaskId()
  const task = await pythonTask(t, taskId, { form: 'positional', names: 'bgtask', steps: 3, end: 'failed' })
  const stream = await openStream(`${base}/events/background-task?taskId=${taskId}`)
  await stream.waitFor(1)
  t.same(dataOf(stream.events[0]!), { task_id: taskId, message: '', current_progress: 0, total_progress: 3 }, 'the state the manager wrote at start')
  for (let i = 0; i < 3; i++) await task.step()
  t.equal(await task.step(), 'failed')
  await stream.ended
  t.same(stream.events.map((e) => e.event), ['task_updated', 'bgtask_updated', 'bgtask_updated', 'bgtask_updated', 'bgtask_failed', 'server_close'])
  t.same(dataOf(stream.events[4]!), { task_id: taskId, message: 'RuntimeError: disk full', current_progress: 3, total_progress: 3 },
    'an end without progress keeps the progress last seen')

  const late = await openStream(`${base}/events/background-task?task_id=${taskId}`)
  await late.ended
  t.same(late.events.map((e) => [e.event, dataOf(e)]), [
    ['task_failed', { task_id: taskId, message: 'RuntimeError: disk full', current_progress: 3, total_progress: 3 }],
    ['server_close', {}]
  ], 'a task that has ended: its final event and server_close, at once')
})

t.test('a reconnect to a second instance picks up from the hash and follows to the end', async (t) => {
  const one = await listeningApp(t, redis.url)
  const two = await listeningApp(t, redis.url)
  const taskId = newTaskId()
  await post(one.base, progress(taskId, 1, 2))
  const first = await openStream(`${one.base}/events/background-task?task_id=${taskId}`)
  await first.waitFor(1)
  first.close()
  await post(one.base, progress(taskId, 2, 2))
  const second = await openStream(`${two.base}/events/background-task?task_id=${taskId}`)
  await second.waitFor(1)
  t.same(dataOf(second.events[0]!), { task_id: taskId, message: 'step 2', current_progress: 2, total_progress: 2 }, 'the progress made meanwhile')
  await post(one.base, { event_name: 'task_cancelled', args: [{ task_id: taskId, message: 'stopped' }] })
  await second.ended
  t.same(second.events.map((e) => e.event), ['task_updated', 'task_cancelled', 'server_close'])
})

t.test('task events from other producers are recorded while the gateway listens; with tracking "always" even when nobody watches', async (t) => {
  const watched = await listeningApp(t, redis.url)
  const always = await listeningApp(t, redis.url, { taskTracking: 'always' })
  const produceRaw = async (event: object) => {
    const frame = Buffer.from(encode(event))
    await redis.client.publish('events.pubsub', frame)
    await redis.client.rpush('events.prodcons', frame)
  }
  // No stream is open on either: only the "always" instance hears this one.
  const quiet = newTaskId()
  await produceRaw(progress(quiet, 1, 5))
  t.match(await hashOnce(`bgtask.${quiet}`), { status: 'started', current: '1', total: '5' }, 'recorded by the instance that always listens')
  t.equal(always.app.hub.clientCount, 0)

  await always.app.close()
  const other = newTaskId()
  await produceRaw(progress(other, 1, 5))
  await sleep(200)
  t.same(await redis.client.hgetall(`bgtask.${other}`), {}, 'not heard while no stream is open')
  const open = await openStream(`${watched.base}/events/stream?event_name=nothing_matches`)
  await produceRaw(progress(other, 2, 5))
  t.match(await hashOnce(`bgtask.${other}`), { status: 'started', current: '2' }, 'heard once a stream is open')
  open.close()
})

t.test('an ended task stays as it ended, and progress never goes back: late writes change nothing', async (t) => {
  const { app, base } = await listeningApp(t, redis.url)
  const taskId = newTaskId()
  await post(base, progress(taskId, 1, 2))
  await post(base, { event_name: 'task_done', args: [{ task_id: taskId, message: 'finished', current_progress: 2, total_progress: 2 }] })
  const ended = await redis.client.hgetall(`bgtask.${taskId}`)
  await app.tasks.record({ name: 'task_updated', taskId, status: 'started', message: 'late', current: 1, total: 2 })
  await app.tasks.record({ name: 'task_failed', taskId, status: 'failed', message: 'a second end', current: null, total: null })
  await post(base, progress(taskId, 1, 2))
  t.same(await redis.client.hgetall(`bgtask.${taskId}`), ended, 'the hash is untouched')
  t.match(ended, { status: 'done', msg: 'finished', current: '2' })

  // Running, progress does not go back either: a write of what was heard a moment ago lands
  // after the manager wrote the next step.
  const running = newTaskId()
  await post(base, progress(running, 3, 5))
  await app.tasks.record({ name: 'bgtask_updated', taskId: running, status: 'started', message: 'step 2', current: 2, total: 5 })
  t.match(await redis.client.hgetall(`bgtask.${running}`), { current: '3', msg: 'step 3' })
})

t.test('malformed task events are ignored; the stream goes on', async (t) => {
  const { base } = await listeningApp(t, redis.url)
  const taskId = newTaskId()
  await post(base, progress(taskId, 1, 2))
  const stream = await openStream(`${base}/events/background-task?task_id=${taskId}`)
  await stream.waitFor(1)
  await post(base, { event_name: 'task_updated', args: [] })
  await post(base, { event_name: 'task_updated', args: [{ task_id: 42 }] })
  await post(base, { event_name: 'task_done', args: [[taskId]] })
  await redis.client.publish('events.pubsub', Buffer.from('not msgpack at all'))
  await post(base, { event_name: 'task_done', args: [{ task_id: taskId, message: 'ok', current_progress: 2, total_progress: 2 }] })
  await stream.ended
  t.same(stream.events.map((e) => e.event), ['task_updated', 'task_done', 'server_close'])
})

t.test('with auth on: subscribe scope, by header or access_token; the producer needs publish', async (t) => {
  const { base } = await listeningApp(t, redis.url, { tokens: [{ token: 'pub', scopes: new Set(['publish']) }, { token: 'sub', scopes: new Set(['subscribe']) }] })
  const taskId = newTaskId()
  const res = await fetch(`${base}/events`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer pub' }, body: JSON.stringify(progress(taskId, 1, 1)) })
  t.equal(res.status, 202)
  t.equal((await fetch(`${base}/events/background-task?task_id=${taskId}`)).status, 401)
  t.equal((await fetch(`${base}/events/background-task?task_id=${taskId}`, { headers: { authorization: 'Bearer pub' } })).status, 403)
  const byQuery = await openStream(`${base}/events/background-task?task_id=${taskId}&access_token=sub`)
  t.equal(byQuery.status, 200)
  await byQuery.waitFor(1)
  byQuery.close()
})

t.test('the memory engine keeps task state too', async (t) => {
  const { base } = await listeningApp(t, undefined)
  const taskId = newTaskId()
  await post(base, progress(taskId, 1, 2, 'bgtask_updated'))
  await post(base, { event_name: 'bgtask_done', args: [taskId, 'finished'] })
  const stream = await openStream(`${base}/events/background-task?task_id=${taskId}`)
  await stream.ended
  t.same(stream.events.map((e) => [e.event, dataOf(e)]), [
    ['task_done', { task_id: taskId, message: 'finished', current_progress: 1, total_progress: 2 }],
    ['server_close', {}]
  ])
})

t.test('an end published while the subscription was down reaches the stream from the hash', async (t) => {
  const { base } = await listeningApp(t, redis.url)
  const taskId = newTaskId()
  await post(base, progress(taskId, 1, 2))
  const stream = await openStream(`${base}/events/background-task?task_id=${taskId}`)
  const bus = await openStream(`${base}/events/stream?event_name=nothing_matches`)
  await stream.waitFor(1)
  // The gateway resubscribes 100 ms after losing its subscription: the end comes before that,
  // as a Backend.AI manager reports one (hash, then event).
  await redis.client.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
  await redis.client.hset(`bgtask.${taskId}`, { status: 'done', current: '2', msg: 'finished while unheard' })
  await redis.client.publish('events.pubsub', Buffer.from(encode({ event_name: 'task_done', agent_id: 'manager', args: [{ task_id: taskId, message: 'finished while unheard' }] })))
  await stream.ended
  t.same(stream.events.map((e) => [e.event, dataOf(e)]), [
    ['task_updated', { task_id: taskId, message: 'step 1', current_progress: 1, total_progress: 2 }],
    ['task_done', { task_id: taskId, message: 'finished while unheard', current_progress: 2, total_progress: 2 }],
    ['server_close', {}]
  ])
  await bus.waitFor(1)
  t.same(bus.events.map((e) => e.event), ['busgate.gap'], 'bus streams are told of the gap as before; task streams are not sent it')
  bus.close()
})
