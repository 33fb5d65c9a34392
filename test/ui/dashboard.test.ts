import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { encode } from '@msgpack/msgpack'
import { chromium, type Page } from 'playwright-core'
import t from 'tap'
import { decodeEvent, encodeEvent, toJsonEvent } from '../../src/codec.js'
import type { DeadLetter } from '../../src/webhooks/dead-letters.js'
import { listeningApp } from '../helpers/app.js'
import { uniqueNames } from '../helpers/bus.js'
import { startReceiver } from '../helpers/receiver.js'
import { startRedis } from '../helpers/redis.js'
import { until } from '../helpers/wait.js'

// Debian's chromium (apt-get install chromium), driven by playwright-core.
const CHROMIUM = process.env.BUSGATE_TEST_CHROMIUM ?? '/usr/bin/chromium'
// As root and on a machine without internet: no sandbox, and none of Chromium's own traffic.
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync']

t.ok(existsSync(CHROMIUM), `Chromium at ${CHROMIUM} (apt-get install chromium)`)
const redis = await startRedis(t)
const tokens = [
  { token: 'admin-token', scopes: new Set(['publish', 'subscribe', 'admin'] as const) },
  { token: 'watch-token', scopes: new Set(['subscribe'] as const) }
]
// A list this gateway owns alone: what no webhook takes is dead-lettered, for the dead-letter view.
const { app, base } = await listeningApp(t, redis.url, { tokens, webhookAllowPrivate: true, webhookTake: 'all' })
const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS })
t.teardown(async () => { await browser.close() })

const admin = { authorization: 'Bearer admin-token' }

const post = async (event: object, to = base): Promise<void> => {
  const res = await fetch(`${to}/events${Array.isArray(event) ? '/batch' : ''}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...admin },
    body: JSON.stringify(event)
  })
  if (res.status !== 202) throw new Error(await res.text())
}

const pageErrors: string[] = []

/** A new tab with the token given in its form, as a user would, once the page asks for it. */
async function signedIn (token: string, to = base): Promise<Page> {
  const page = await (await browser.newContext()).newPage()
  page.on('pageerror', (err) => pageErrors.push(err.message))
  // A blocked script, style or request only shows on the console.
  page.on('console', (message) => { if (/Content Security Policy|Refused to/.test(message.text())) pageErrors.push(message.text()) })
  await page.goto(`${to}/`)
  await page.locator('#token-form').waitFor({ state: 'visible' })
  await page.fill('#token', token)
  await page.click('#token-form button[type=submit]')
  await page.locator('#connection[data-state="live"]').waitFor()
  await page.locator('#tasks-panel[data-state="live"]').waitFor()
  return page
}

const rows = (page: Page) => page.locator('#events tbody tr')
const visibleNames = async (page: Page): Promise<string[]> =>
  await page.locator('#events tbody tr:not([hidden]) td:nth-child(2)').allTextContents()

t.test('the page is served with a strict policy and asks for a token when auth is on', async (t) => {
  const res = await fetch(`${base}/`)
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /^text\/html/)
  t.match(res.headers.get('content-security-policy'), /script-src 'self'/)
  t.equal((await fetch(`${base}/ui/dashboard.js`)).headers.get('content-type'), 'text/javascript; charset=utf-8')
  const page = await (await browser.newContext()).newPage()
  await page.goto(`${base}/`)
  await page.locator('#connection[data-state="needs-token"]').waitFor()
  t.ok(await page.locator('#token-form').isVisible(), 'the token form is shown')
  t.notOk(await page.locator('#forget-token').isVisible(), 'no token to forget yet')
  await page.close()
})

t.test('live events appear; a filter hides what it should; pause holds events back', async (t) => {
  const page = await signedIn('admin-token')
  await post({ event_name: 'kernel_started', agent_id: 'i-ag01', args: ['sess-1', { $base64: 'AP8=' }] })
  await post({ event_name: 'session_started', agent_id: 'i-ag02', args: ['sess-1'] })
  await rows(page).nth(1).waitFor()
  t.same(await visibleNames(page), ['session_started', 'kernel_started'], 'newest first')
  t.match(await rows(page).nth(1).textContent(), /i-ag01.*\["sess-1",\{"\$base64":"AP8="\}\]/)

  await page.fill('#filter-event-name', 'kernel_*')
  await page.click('#filters button[type=submit]')
  t.same(await visibleNames(page), ['kernel_started'], 'the session row is hidden at once')
  await page.locator('#connection[data-state="live"]').waitFor()
  await post({ event_name: 'session_ended', agent_id: 'i-ag02' })
  await post({ event_name: 'kernel_terminated', agent_id: 'i-ag01' })
  await page.locator('#events tbody tr:not([hidden])').nth(1).waitFor()
  t.same(await visibleNames(page), ['kernel_terminated', 'kernel_started'], 'only kernel events arrive')

  await page.click('#pause')
  await post({ event_name: 'kernel_paused_one', agent_id: 'i-ag01' })
  await page.locator('#paused-note', { hasText: '1 waiting' }).waitFor()
  t.same(await visibleNames(page), ['kernel_terminated', 'kernel_started'], 'nothing is added while paused')
  await page.click('#pause')
  await page.locator('#events tbody tr:not([hidden])').nth(2).waitFor()
  t.equal((await visibleNames(page))[0], 'kernel_paused_one', 'it shows once resumed')

  await page.fill('#filter-event-name', 'bad name,')
  await page.click('#filters button[type=submit]')
  await page.locator('#filter-error').waitFor({ state: 'visible' })
  t.match(await page.locator('#filter-error').textContent(), /event_name/, 'a filter the gateway refuses is explained')
  await page.close()
})

t.test('a burst of events is counted in full and shows the newest 500 rows', async (t) => {
  const page = await signedIn('admin-token')
  for (let n = 0; n < 3; n++) {
    const res = await fetch(`${base}/events/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer admin-token' },
      body: JSON.stringify(Array.from({ length: 1000 }, (_, i) => ({ event_name: 'burst', args: [n * 1000 + i] })))
    })
    t.equal(res.status, 202)
  }
  await page.locator('#event-count', { hasText: /^3000$/ }).waitFor({ timeout: 20_000 })
  t.equal(await rows(page).count(), 500, 'the table keeps the newest 500')
  t.match(await rows(page).first().textContent(), /\[2999\]/, 'newest first')
  t.match(await rows(page).last().textContent(), /\[2500\]/)
  await page.close()
})

t.test("a task's bar reaches 100% and shows done; an ended task can be followed by id", async (t) => {
  const page = await signedIn('admin-token')
  const taskId = '5f3c7a2e-9d1b-4c8e-a0f2-3b6d9e1c4a57'
  const bar = page.locator(`li.task[data-task-id="${taskId}"] .bar`)
  await post({ event_name: 'task_updated', agent_id: 'manager', args: [{ task_id: taskId, message: 'copying', current_progress: 1, total_progress: 4 }] })
  await bar.waitFor()
  t.equal(await bar.getAttribute('aria-valuenow'), '25')
  t.equal(await page.locator(`li.task[data-task-id="${taskId}"] .status`).textContent(), 'running')
  await post({ event_name: 'task_updated', agent_id: 'manager', args: [{ task_id: taskId, message: 'copying', current_progress: 3, total_progress: 4 }] })
  await page.locator(`li.task[data-task-id="${taskId}"] .bar[aria-valuenow="75"]`).waitFor()
  await post({ event_name: 'task_done', agent_id: 'manager', args: [{ task_id: taskId, message: 'copied', current_progress: 4, total_progress: 4 }] })
  await page.locator(`li.task[data-task-id="${taskId}"][data-status="done"]`).waitFor()
  t.equal(await bar.getAttribute('aria-valuenow'), '100')
  t.equal(await page.locator(`li.task[data-task-id="${taskId}"] .status`).textContent(), 'done')
  t.equal(await page.locator(`li.task[data-task-id="${taskId}"] .message`).textContent(), 'copied')
  await page.screenshot({ path: join(tmpdir(), 'busgate-dashboard.png'), fullPage: true })

  // A new tab knows nothing of it: it follows the ended task through the background-task view.
  const later = await signedIn('admin-token')
  await later.fill('#task-id', taskId)
  await later.click('#task-form button[type=submit]')
  await later.locator(`li.task[data-task-id="${taskId}"][data-status="done"] .bar[aria-valuenow="100"]`).waitFor()
  await later.fill('#task-id', 'no-such-task')
  await later.click('#task-form button[type=submit]')
  await later.locator('#task-error').waitFor({ state: 'visible' })
  t.match(await later.locator('#task-error').textContent(), /No background task no-such-task/)
  await page.close()
  await later.close()
})

t.test('webhooks with their health, and the dead-letter count', async (t) => {
  const receiver = await startReceiver(t)
  const res = await app.inject({ method: 'POST', url: '/webhooks', headers: { authorization: 'Bearer admin-token' }, payload: { url: receiver.url, event_names: ['kernel_*'] } })
  t.equal(res.statusCode, 201)
  const subscriber = await app.inject({ method: 'POST', url: '/webhooks', headers: { authorization: 'Bearer admin-token' }, payload: { url: receiver.url, event_names: ['audit_*'], role: 'subscriber' } })
  t.equal(subscriber.statusCode, 201)
  await post({ event_name: 'kernel_started', agent_id: 'i-ag01' })
  await post({ event_name: 'nobody_takes_this', agent_id: 'i-ag01' })
  await receiver.waitFor(1)
  // What earlier tests queued is consumed now too: wait until the list is drained.
  for (let i = 0; i < 100 && (await redis.client.llen('events.prodcons') > 0 || app.dispatcher.inFlight > 0); i++) await sleep(100)
  await sleep(500)
  const total = (await app.deadLetters.list(0, 1)).total
  t.ok(total >= 1, 'the event no webhook takes was dead-lettered')
  const page = await signedIn('admin-token')
  const consumerRow = page.locator(`li.webhook[data-webhook-id="${res.json().id as string}"]`)
  const subscriberRow = page.locator(`li.webhook[data-webhook-id="${subscriber.json().id as string}"]`)
  await page.locator(`li.webhook[data-webhook-id="${res.json().id as string}"][data-health="healthy"]`).waitFor({ timeout: 15_000 })
  await subscriberRow.waitFor({ timeout: 15_000 })
  t.match(await consumerRow.locator('.url').textContent(), receiver.url)
  t.equal(await consumerRow.locator('.role').textContent(), 'consumer', 'the consumer is labelled so')
  t.equal(await subscriberRow.locator('.role').textContent(), 'subscriber', 'the subscriber is labelled so')
  t.match(await subscriberRow.textContent(), /subscriber/)
  await page.locator('#dead-letter-count', { hasText: new RegExp(`^${total}$`) }).waitFor({ timeout: 15_000 })
  t.pass(`${total} dead letters shown`)

  // A token without the admin scope still streams; the admin panels say what they need.
  const watcher = await signedIn('watch-token')
  await watcher.locator('#webhooks-note', { hasText: 'admin scope' }).waitFor()
  t.equal(await watcher.locator('li.webhook').count(), 0)
  await page.close()
  await watcher.close()
})

/** The args of a letter's bytes as the stream shows them. */
const argsOf = (letter: DeadLetter): unknown => toJsonEvent(decodeEvent(Buffer.from(letter.frame ?? '', 'base64'))).args
const letterIds = async (page: Page): Promise<string[]> =>
  await page.locator('#dead-letters tr.dead-letter').evaluateAll((rows) => rows.map((row) => row.getAttribute('data-id') ?? ''))

async function filterLetters (page: Page, reason: string, eventName: string, status: RegExp): Promise<void> {
  await page.selectOption('#dead-letter-reason', reason)
  await page.fill('#dead-letter-event-name', eventName)
  await page.click('#dead-letter-filters button[type=submit]')
  await page.locator('#dead-letters-status', { hasText: status }).waitFor()
}

t.test('dead letters: filtered, their details, one redelivered, one deleted, old ones dated, more loaded, all redelivered after a confirm', async (t) => {
  const receiver = await startReceiver(t)
  // A consumer webhook makes this gateway (webhookTake: all) take the list and dead-letter what it does not match.
  const hook = await app.inject({ method: 'POST', url: '/webhooks', headers: admin, payload: { url: receiver.url, event_names: ['dlq_wanted_later'] } })
  t.equal(hook.statusCode, 201)
  const hookId = hook.json().id as string
  // As wire bytes: JSON cannot carry an integer past 2^53.
  const alphaFrame = encode({ event_name: 'dlq_alpha', agent_id: 'i-ag07', args: ['first', new Uint8Array([0, 255]), 2n ** 63n - 1n] }, { useBigInt64: true })
  t.equal((await fetch(`${base}/events`, { method: 'POST', headers: { 'content-type': 'application/msgpack', ...admin }, body: alphaFrame })).status, 202)
  await post({ event_name: 'dlq_alpha', agent_id: 'i-ag07', args: ['second'] })
  await post(Array.from({ length: 60 }, (_, i) => ({ event_name: 'dlq_bulk', args: [i] })))
  const garbage = Buffer.from([0xc1, 0x01, 0x02])
  await redis.client.rpush('events.prodcons', garbage)
  // A letter three days old, as an older busgate kept it: the migration every gateway runs takes it in.
  const old = new Date(Date.now() - 3 * 86_400_000)
  const oldFrame = encodeEvent({ event_name: 'dlq_old', agent_id: 'i-ag07', args: ['old'] }).toString('base64')
  const oldLetter = { id: 'dl_fromThreeDaysAgo', message_id: 'msg_old', reason: 'delivery_failed', error: 'HTTP 500', event_name: 'dlq_old', agent_id: 'i-ag07' }
  await redis.client.lpush('busgate:dead-letters', JSON.stringify({ ...oldLetter, webhook_id: null, frame: oldFrame, attempts: 12, first_seen: old.toISOString(), dead_at: old.toISOString() }))
  t.equal(await app.deadLetters.migrate(), 1)
  const letters = async (filter: { reason?: DeadLetter['reason'], event_name?: string }) => (await app.deadLetters.list(0, 1000, filter)).deadLetters
  await until(async () => (await letters({ event_name: 'dlq_alpha' })).length === 2 && (await letters({ event_name: 'dlq_bulk' })).length === 60 &&
    (await letters({ reason: 'malformed' })).some((l) => l.frame === garbage.toString('base64')), 15_000)

  const page = await signedIn('admin-token')
  const row = (id: string) => page.locator(`#dead-letters tr.dead-letter[data-id="${id}"]`)
  const detailsOf = (id: string) => page.locator(`#dead-letters tr.dead-letter[data-id="${id}"] + tr.details`)

  await filterLetters(page, '', 'dlq_alpha', /^2 of 2 matching shown$/)
  const alpha = await letters({ event_name: 'dlq_alpha' })
  t.same(await letterIds(page), alpha.map((l) => l.id), 'the letters of that name, newest first')
  const first = alpha.find((l) => (argsOf(l) as unknown[])[0] === 'first')!
  const second = alpha.find((l) => (argsOf(l) as unknown[])[0] === 'second')!
  t.match(await row(first.id).textContent(), /no_matching_webhook\s*dlq_alpha\s*no enabled webhook/i, 'reason, event and error')
  t.notMatch(await row(first.id).locator('td').first().textContent(), /\d{4}/, 'a letter of today shows its time only')

  await row(first.id).locator('button.details').click()
  await detailsOf(first.id).locator('dd[data-field="args"] pre').waitFor()
  t.same(JSON.parse(await detailsOf(first.id).locator('dd[data-field="args"] pre').textContent() ?? ''), ['first', { $base64: 'AP8=' }, '9223372036854775807'],
    'the args, read from its bytes and shown as the stream shows them')
  t.equal(await detailsOf(first.id).locator('dd[data-field="message_id"]').textContent(), first.message_id)
  t.equal(await detailsOf(first.id).locator('dd[data-field="agent_id"]').textContent(), 'i-ag07')
  t.equal(await row(first.id).locator('button.details').getAttribute('aria-expanded'), 'true')

  // Once a webhook takes the name, a redelivered letter reaches it.
  t.equal((await app.inject({ method: 'PATCH', url: `/webhooks/${hookId}`, headers: admin, payload: { event_names: ['dlq_alpha'] } })).statusCode, 200)
  await row(first.id).locator('button.redeliver').click()
  await row(first.id).waitFor({ state: 'detached' })
  t.equal(await detailsOf(first.id).count(), 0, 'its details go with it')
  await receiver.waitFor(1)
  t.same(receiver.received.map((r) => r.json.args), [['first', { $base64: 'AP8=' }, '9223372036854775807']], 'the webhook got the redelivered message')
  t.equal(await app.deadLetters.get(first.id), undefined)
  await page.locator('#dead-letters-status', { hasText: `${first.id} redelivered` }).waitFor()

  // Delete asks once more: the first click deletes nothing.
  await row(second.id).locator('button.delete').click()
  t.equal(await row(second.id).locator('button.delete').textContent(), 'Delete for good?')
  t.ok(await app.deadLetters.get(second.id), 'still kept after one click')
  await row(second.id).locator('button.delete').click()
  await row(second.id).waitFor({ state: 'detached' })
  t.equal(await app.deadLetters.get(second.id), undefined, 'deleted')
  await page.locator('#dead-letters-status', { hasText: `${second.id} deleted` }).waitFor()
  await sleep(300)
  t.equal(receiver.received.length, 1, 'and not delivered')

  await filterLetters(page, 'malformed', '', /matching shown/)
  const malformed = (await letters({ reason: 'malformed' })).find((l) => l.frame === garbage.toString('base64'))!
  await row(malformed.id).locator('button.details').click()
  await detailsOf(malformed.id).locator('dd[data-field="args"] pre').waitFor()
  t.match(await detailsOf(malformed.id).locator('dd[data-field="args"]').textContent(), /not msgpack .*c1 01 02/, 'bytes that are no msgpack are shown as bytes')
  t.equal(await row(malformed.id).locator('td').nth(2).textContent(), '–', 'no event name')

  await filterLetters(page, '', 'dlq_old', /^1 of 1 matching shown$/)
  t.match(await row('dl_fromThreeDaysAgo').locator('td').first().textContent(), String(old.getFullYear()), 'an older letter shows its date')

  await filterLetters(page, '', 'dlq_bulk', /^50 of 60 matching shown$/)
  await page.click('#dead-letters-more')
  await page.locator('#dead-letters-status', { hasText: /^60 of 60 matching shown$/ }).waitFor()
  t.same(await letterIds(page), (await letters({ event_name: 'dlq_bulk' })).map((l) => l.id), 'the next page follows, in order')
  t.notOk(await page.locator('#dead-letters-more').isVisible(), 'nothing more to load')

  // Redeliver all asks first, saying it takes every letter, not only those shown.
  const kept = (await app.deadLetters.list(0, 1)).total
  await page.click('#redeliver-all')
  await page.locator('#redeliver-all-confirm').waitFor()
  t.equal(await page.locator('#redeliver-all-count').textContent(), String(kept))
  t.match(await page.locator('#redeliver-all-confirm').textContent(), /not only those the filters show/)
  await page.click('#redeliver-all-no')
  t.notOk(await page.locator('#redeliver-all-confirm').isVisible(), 'cancelled')
  t.equal((await app.deadLetters.list(0, 1)).total, kept, 'nothing redelivered')
  const before = (await app.deadLetters.list(0, 1000)).deadLetters.map((l) => l.id)
  await page.click('#redeliver-all')
  await page.click('#redeliver-all-yes')
  await page.locator('#dead-letters-status', { hasText: new RegExp(`^${kept} redelivered`) }).waitFor()
  t.same((await Promise.all(before.slice(0, 100).map(async (id) => await app.deadLetters.get(id)))).filter(Boolean), [], 'the letters there were are gone')
  t.ok(await page.locator('#redeliver-all').isVisible(), 'the button is back, to be asked again')
  await page.close()
})

t.test('a webhook is disabled and enabled with its switch; health and limits show where the API gives them', async (t) => {
  const receiver = await startReceiver(t)
  const register = async (eventNames: string[]): Promise<string> => {
    const res = await app.inject({ method: 'POST', url: '/webhooks', headers: admin, payload: { url: receiver.url, event_names: eventNames } })
    t.equal(res.statusCode, 201)
    return res.json().id
  }
  const id = await register(['toggle_*'])
  const other = await register(['toggle_other'])
  const page = await signedIn('admin-token')
  const item = page.locator(`li.webhook[data-webhook-id="${id}"]`)
  const toggle = item.locator('input.enabled')
  await item.waitFor({ timeout: 10_000 })
  t.ok(await toggle.isChecked(), 'enabled')
  t.match(await item.locator('.events').textContent(), 'toggle_*')

  await toggle.click()
  await page.locator(`li.webhook[data-webhook-id="${id}"][data-enabled="false"][data-health="disabled"]`).waitFor()
  t.equal((await app.webhooks.get(id))?.enabled, false, 'disabled in the gateway')
  await sleep(5500)
  t.notOk(await toggle.isChecked(), 'and still shown so after the next poll')
  await toggle.click()
  await page.locator(`li.webhook[data-webhook-id="${id}"][data-enabled="true"]`).waitFor()
  t.equal((await app.webhooks.get(id))?.enabled, true, 'enabled again')
  await post({ event_name: 'toggle_on', agent_id: 'i-ag08' })
  t.equal((await receiver.waitFor(1))[0]?.json.event_name, 'toggle_on', 'and it receives again')

  // A change the gateway refuses leaves the switch as it was, and says why.
  await page.route(`**/webhooks/${id}`, async (route) => {
    if (route.request().method() !== 'PATCH') return await route.continue()
    await route.fulfill({ status: 503, json: { statusCode: 503, code: 'BUSGATE_REDIS_UNAVAILABLE', error: 'Service Unavailable', message: 'Redis is unreachable' } })
  })
  await toggle.click()
  await item.locator('.problem', { hasText: 'could not disable it: the gateway cannot serve this now (503: Redis is unreachable)' }).waitFor()
  t.ok(await toggle.isChecked(), 'the switch is back on')
  t.equal((await app.webhooks.get(id))?.enabled, true)
  await page.unroute(`**/webhooks/${id}`)

  // The gateway's health and limits, where it gives them (here added to its answer), and nothing broken where it does not.
  const inAMinute = new Date(Date.now() + 60_000).toISOString()
  await page.route('**/webhooks', async (route) => {
    const res = await route.fetch()
    const body = await res.json() as { webhooks: Array<Record<string, unknown>> }
    for (const webhook of body.webhooks) {
      if (webhook.id === id) {
        Object.assign(webhook, {
          health: { state: 'set_aside', consecutive_failures: 5, last_attempt_at: new Date().toISOString(), last_status: 503, set_aside_until: inAMinute },
          max_in_flight: 16,
          rate_limit: 50
        })
      }
      if (webhook.id === other) Object.assign(webhook, { health: {}, max_in_flight: null })
    }
    await route.fulfill({ response: res, json: body })
  })
  await page.locator(`li.webhook[data-webhook-id="${id}"][data-health="set_aside"]`).waitFor({ timeout: 10_000 })
  t.equal(await item.locator('.health').textContent(), 'set aside')
  t.match(await item.locator('.health-detail').textContent(), /^5 failures in a row · last attempt .*: 503 · set aside until /)
  t.equal(await item.locator('.limits').textContent(), 'at most 16 in flight · at most 50 deliveries/s')
  const otherItem = page.locator(`li.webhook[data-webhook-id="${other}"]`)
  t.equal(await otherItem.getAttribute('data-health'), 'idle', 'an empty health: the state read from its attempts')
  t.notOk(await otherItem.locator('.limits').isVisible(), 'no limits, no line')
  t.notMatch(await otherItem.textContent(), /undefined|null|NaN|Invalid/)
  await page.unroute('**/webhooks')
  for (const hook of [id, other]) await app.inject({ method: 'DELETE', url: `/webhooks/${hook}`, headers: admin })
  await page.close()
})

t.test('the charts show the bus, the consumer list and deliveries from /metrics, and move as events come', async (t) => {
  // A gateway of its own names: its list is consumed by nobody until this test says so.
  const second = await listeningApp(t, redis.url, {
    ...uniqueNames(), tokens, webhookAllowPrivate: true, webhookBackoffMs: 50, webhookBackoffMaxMs: 100, webhookTimeoutMs: 1000
  })
  const page = await signedIn('admin-token', second.base)
  const data = async (chart: string, key: 'last' | 'max' | 'samples'): Promise<string | null> => await page.getAttribute(`#chart-${chart}`, `data-${key}`)
  const reaches = async (chart: string, key: 'last' | 'max', test: (n: number) => boolean): Promise<void> => {
    const holds = async (): Promise<boolean> => { const v = await data(chart, key); return v !== null && v !== '' && test(Number(v)) }
    await until(holds, 15_000)
    t.ok(await holds(), `${chart} ${key}: ${await data(chart, key)}`)
  }
  t.equal(await page.locator('.chart svg path.line').count(), 4, 'four charts')
  await reaches('events', 'last', (n) => n === 0)
  t.equal(await data('queue', 'last'), '0', 'nothing waits')

  await post(Array.from({ length: 40 }, (_, i) => ({ event_name: 'chart_tick', args: [i] })), second.base)
  await reaches('queue', 'last', (n) => n === 40)
  await reaches('events', 'max', (n) => n > 0)
  const rate = Number(await data('events', 'max'))
  // 40 events between two scrapes about 2 s apart: a rate per second, not the count.
  t.ok(rate >= 4 && rate <= 27, `events/s on the bus: ${rate}`)
  t.match(await page.locator('#chart-events .value').textContent(), /^\d/)
  t.match(await page.locator('#chart-events path.line').getAttribute('d'), /^M[\d.]+,[\d.]+( L[\d.]+,[\d.]+)+$/, 'a line of several points')

  const receiver = await startReceiver(t, (r) => ({ status: r.json.event_name === 'chart_fail' ? 500 : 204 }))
  const hook = await second.app.inject({ method: 'POST', url: '/webhooks', headers: admin, payload: { url: receiver.url, event_names: ['chart_*'] } })
  t.equal(hook.statusCode, 201)
  t.equal((await receiver.waitFor(40)).length, 40, 'the webhook takes the 40')
  await post({ event_name: 'chart_fail' }, second.base)
  await reaches('deliveries', 'max', (n) => n > 0)
  await reaches('failures', 'max', (n) => n > 0)
  await reaches('queue', 'last', (n) => n === 0)
  await page.close()
})

t.test('an API failure is shown readably in its own panel, while the stream and the other panels go on', async (t) => {
  const page = await signedIn('admin-token')
  await page.locator('#dead-letter-count', { hasText: /^\d+$/ }).waitFor()
  const unavailable = { statusCode: 503, code: 'BUSGATE_REDIS_UNAVAILABLE', error: 'Service Unavailable', message: 'Redis is unreachable' }
  await page.route(/\/dead-letters(\?|$)/, async (route) => await route.fulfill({ status: 503, json: unavailable }))
  await page.route(/\/metrics$/, async (route) => await route.abort('connectionrefused'))
  await page.locator('#dead-letters-note', { hasText: 'the gateway cannot serve this now (503: Redis is unreachable)' }).waitFor({ timeout: 10_000 })
  await page.locator('#charts-note', { hasText: 'the gateway could not be reached' }).waitFor({ timeout: 10_000 })
  t.equal(await page.getAttribute('#chart-queue', 'data-last'), '', 'a gap in the charts, not a made-up value')

  await post({ event_name: 'still_streaming', agent_id: 'i-ag09' })
  await page.locator('#events tbody tr', { hasText: 'still_streaming' }).waitFor()
  t.equal(await page.getAttribute('#connection', 'data-state'), 'live', 'the stream goes on')
  const receiver = await startReceiver(t)
  const hook = await app.inject({ method: 'POST', url: '/webhooks', headers: admin, payload: { url: receiver.url, event_names: ['unused_here'] } })
  await page.locator(`li.webhook[data-webhook-id="${hook.json().id as string}"]`).waitFor({ timeout: 10_000 })
  t.pass('the webhooks panel goes on')

  // A token refused by one panel: it says so and offers the form; the stream goes on with the token it has.
  await page.route(/\/webhooks$/, async (route) => await route.fulfill({ status: 401, json: { statusCode: 401, code: 'BUSGATE_UNAUTHORIZED', error: 'Unauthorized', message: 'A valid token is required' } }))
  await page.locator('#webhooks-note', { hasText: 'the token was refused (401)' }).waitFor({ timeout: 10_000 })
  t.ok(await page.locator('#token-form').isVisible(), 'the form to give another token')
  await post({ event_name: 'streaming_after_refusal', agent_id: 'i-ag09' })
  await page.locator('#events tbody tr', { hasText: 'streaming_after_refusal' }).waitFor()
  t.equal(await page.getAttribute('#connection', 'data-state'), 'live')

  await page.unrouteAll()
  for (const note of ['#dead-letters-note', '#charts-note', '#webhooks-note']) await page.locator(note).waitFor({ state: 'hidden', timeout: 10_000 })
  t.match(await page.locator('#dead-letter-count').textContent(), /^\d+$/, 'the panels fill again once the gateway answers')
  t.match(await page.locator('#dead-letters-status').textContent(), /shown/, 'and the dead-letter list is loaded')
  await app.inject({ method: 'DELETE', url: `/webhooks/${hook.json().id as string}`, headers: admin })
  await page.close()
})

t.test('the token is kept for the tab only', async (t) => {
  const page = await signedIn('watch-token')
  t.equal(await page.evaluate('sessionStorage.getItem("busgate.token")'), 'watch-token')
  t.equal(await page.evaluate('localStorage.length'), 0, 'nothing in storage other tabs share')
  await page.reload()
  await page.locator('#connection[data-state="live"]').waitFor()
  t.notOk(await page.locator('#token-form').isVisible(), 'a reload in the same tab keeps it')
  const other = await page.context().newPage()
  await other.goto(`${base}/`)
  await other.locator('#connection[data-state="needs-token"]').waitFor()
  t.pass('another tab asks again')
  await page.click('#forget-token')
  await page.locator('#connection[data-state="needs-token"]').waitFor()
  t.equal(await page.evaluate('sessionStorage.getItem("busgate.token")'), null, 'forgotten')
  await other.close()
  await page.close()
})

t.test('no page ever had a script error', async (t) => {
  t.same(pageErrors, [])
})
