import t from 'tap'
import { startReceiver } from '../helpers/receiver.js'
import { startRedis } from '../helpers/redis.js'
import { webhookGateway } from '../helpers/webhooks.js'
import { testApp } from '../helpers/app.js'
import { until } from '../helpers/wait.js'
import { WebhookRegistry } from '../../src/webhooks/registry.js'
import { MemoryEngine } from '../../src/engines/memory-engine.js'
import { defaultConfig } from '../../src/config.js'

const redis = await startRedis(t)

t.test('a PATCH racing a disable and a rotation loses none of the three changes', async (t) => {
  const { app, names } = await webhookGateway(t, redis)
  const other = new WebhookRegistry((await testApp(t, redis.url, names)).engine.store, names.keyPrefix)
  for (let round = 0; round < 30; round++) {
    const created = (await app.inject({ method: 'POST', url: '/webhooks', payload: { url: 'http://127.0.0.1:1/hook' } })).json()
    const [patched, , rotated] = await Promise.all([
      app.inject({ method: 'PATCH', url: `/webhooks/${created.id}`, payload: { description: `round ${round}` } }),
      other.update(created.id, { enabled: false }), // what a 410 does, on another instance
      app.inject({ method: 'POST', url: `/webhooks/${created.id}/rotate-secret` })
    ])
    t.equal(patched.statusCode, 200)
    t.equal(rotated.statusCode, 200)
    const stored = await other.get(created.id)
    if (stored?.description !== `round ${round}` || stored.enabled || stored.secrets.length !== 2 || stored.secrets[0]?.value !== rotated.json().secret) {
      t.fail(`round ${round} lost a change: ${JSON.stringify(stored)}`)
      return
    }
  }
  t.pass('every change held in 30 rounds')
})

t.test('a stored record that does not check is left out and reported, never trusted; it can still be deleted', async (t) => {
  const { app, names, register } = await webhookGateway(t, redis)
  const good = await register('http://127.0.0.1:1/good')
  const bad = 'wh_AAAAAAAAAAAAAAAA'
  await redis.client.hset(`${names.keyPrefix}webhooks`, bad, JSON.stringify({ id: bad, url: 'http://x', enabled: 'yes' }))
  await redis.client.hset(`${names.keyPrefix}webhooks`, 'wh_BBBBBBBBBBBBBBBB', '{not json')
  const list = (await app.inject({ method: 'GET', url: '/webhooks' })).json()
  t.same(list.webhooks.map((w: { id: string }) => w.id), [good.id], 'only the good one')
  t.equal((await app.inject({ method: 'GET', url: `/webhooks/${bad}` })).statusCode, 404)
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /busgate_invalid_records_total\{kind="webhook"\} [1-9]/)
  t.equal((await app.inject({ method: 'DELETE', url: `/webhooks/${bad}` })).statusCode, 204, 'deleted all the same')
  t.equal(await redis.client.hexists(`${names.keyPrefix}webhooks`, bad), 0)
  await redis.client.lpush(`${names.keyPrefix}attempts:${good.id}`, '{"at":1}', 'nope')
  t.same((await app.inject({ method: 'GET', url: `/webhooks/${good.id}/attempts` })).json().attempts, [], 'attempt lines that do not check are left out')
})

t.test('registry changes apply before the answer here and on another instance; one registered elsewhere is taken up within 100 ms', async (t) => {
  const { app: a, names, register } = await webhookGateway(t, redis)
  const b = await testApp(t, redis.url, { ...names, webhookAllowPrivate: true })
  const receiver = await startReceiver(t)
  const post = async (app: typeof a, n: number): Promise<void> => {
    const res = await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'numbered', args: [n] } })
    t.equal(res.statusCode, 202)
  }
  // Registered on A: B delivers what is produced 100 ms later (A's loops are stopped, so only B can).
  const { id } = await register(receiver.url, ['numbered'])
  await a.dispatcher.stop()
  await new Promise((resolve) => setTimeout(resolve, 100))
  await post(b, 1)
  await receiver.waitFor(1, 3000)
  t.same(receiver.received.map((r) => r.json.args[0]), [1], 'B took it up within 100 ms')
  // Disabled on A: B makes no new attempt after A's answer (A answers once B has read the change).
  t.equal((await a.inject({ method: 'PATCH', url: `/webhooks/${id}`, payload: { enabled: false } })).statusCode, 200)
  await post(b, 2)
  // Deleted: likewise.
  t.equal((await a.inject({ method: 'DELETE', url: `/webhooks/${id}` })).statusCode, 204)
  await post(b, 3)
  await until(() => false, 500)
  t.same(receiver.received.map((r) => r.json.args[0]), [1], 'nothing after the disable or the delete')
  t.equal(await redis.client.llen(names.prodconsKey), 2, 'both wait in the list, for other consumers')
})

t.test('on the instance that answered, a change holds for the very next event', async (t) => {
  const { app, names, register } = await webhookGateway(t, redis)
  const receiver = await startReceiver(t)
  const { id } = await register(receiver.url, ['numbered'])
  for (let i = 0; i < 10; i++) {
    await app.inject({ method: 'PATCH', url: `/webhooks/${id}`, payload: { enabled: false } })
    await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'numbered', args: [i] } })
    await until(() => false, 50)
    t.equal(receiver.received.length, 0, `disabled: ${i} is not delivered`)
  }
  await app.inject({ method: 'DELETE', url: `/webhooks/${id}` })
  await app.inject({ method: 'POST', url: '/events', payload: { event_name: 'numbered', args: ['after delete'] } })
  await until(() => false, 300)
  t.equal(receiver.received.length, 0, 'nor after the delete')
  t.equal(await redis.client.llen(names.prodconsKey), 11, 'every event waits in the list')
})

t.test('the memory engine: compare-and-set on its store', async (t) => {
  const engine = new MemoryEngine(defaultConfig({}))
  const registry = new WebhookRegistry(engine.store, 'm:')
  const created = await registry.create({ url: 'http://x/', event_names: ['*'], description: '', enabled: true, role: 'subscriber' })
  await Promise.all([registry.update(created.id, { description: 'd' }), registry.update(created.id, { enabled: false })])
  const stored = await registry.get(created.id)
  t.match(stored, { description: 'd', enabled: false, role: 'subscriber' })
  t.equal(registry.current(created.id)?.description, 'd')
  t.ok(await registry.delete(created.id))
  t.equal(registry.current(created.id), undefined)
  t.notOk(await registry.delete(created.id))
  await engine.close()
})

t.test('a change waits for the other live instances to read it, and no longer than REGISTRY_ACK_MS for one that does not answer', async (t) => {
  const { app, names, register } = await webhookGateway(t, redis)
  const { id } = await register('http://127.0.0.1:1/hook')
  // An instance that said it was alive a moment ago and has read nothing since (a frozen one).
  await redis.client.hset(`${names.keyPrefix}webhooks:seen`, 'frozen', `0 ${Date.now() + 5000}`)
  const started = performance.now()
  t.equal((await app.inject({ method: 'PATCH', url: `/webhooks/${id}`, payload: { description: 'x' } })).statusCode, 200)
  const took = performance.now() - started
  t.ok(took >= 200 && took < 1000, `waited for it, within the bound (${took.toFixed(0)} ms)`)
  await redis.client.hset(`${names.keyPrefix}webhooks:seen`, 'frozen', `0 ${Date.now() - 120_000}`)
  const again = performance.now()
  await app.inject({ method: 'PATCH', url: `/webhooks/${id}`, payload: { description: 'y' } })
  t.ok(performance.now() - again < 200, 'one long gone is not waited for')
  t.equal(await redis.client.hexists(`${names.keyPrefix}webhooks:seen`, 'frozen'), 0, 'and its entry is dropped')
})
