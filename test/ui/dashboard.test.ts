import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { chromium, type Page } from 'playwright-core'
import t from 'tap'
import { listeningApp } from '../helpers/app.js'
import { startReceiver } from '../helpers/receiver.js'
import { startRedis } from '../helpers/redis.js'

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

const post = async (event: object): Promise<void> => {
  const res = await fetch(`${base}/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer admin-token' },
    body: JSON.stringify(event)
  })
  if (res.status !== 202) throw new Error(await res.text())
}

const pageErrors: string[] = []

/** A new tab with the token given in its form, as a user would, once the page asks for it. */
async function signedIn (token: string): Promise<Page> {
  const page = await (await browser.newContext()).newPage()
  page.on('pageerror', (err) => pageErrors.push(err.message))
  // A blocked script, style or request only shows on the console.
  page.on('console', (message) => { if (/Content Security Policy|Refused to/.test(message.text())) pageErrors.push(message.text()) })
  await page.goto(`${base}/`)
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
