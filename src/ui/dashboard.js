// The dashboard: a page served by the gateway that uses its public API as any client does.
// Plain ES modules, no build step. Streams are read with fetch rather than EventSource: the
// token goes in a header (not the URL), and events of any name reach one handler. Each panel
// asks the API on its own and shows its own failures, so one that fails stops no other.

import { Chart, Rates, parseMetrics, total } from './charts.js'
import { DecodeError, decodeMsgpack, fromBase64 } from './msgpack.js'

const TOKEN_KEY = 'busgate.token'
const MAX_ROWS = 500
const MAX_PAUSED = 5000
const POLL_MS = 5000
const METRICS_MS = 2000
const LETTER_PAGE = 50
const TASK_STATUS = {
  task_updated: 'started',
  task_done: 'done',
  task_failed: 'failed',
  task_cancelled: 'cancelled',
  bgtask_updated: 'started',
  bgtask_done: 'done',
  bgtask_failed: 'failed',
  bgtask_cancelled: 'cancelled'
}

const $ = (id) => document.getElementById(id)
// sessionStorage: the token lives as long as this tab, and no other tab sees it.
let token = sessionStorage.getItem(TOKEN_KEY)

function authHeaders (extra = {}) {
  return token ? { ...extra, authorization: `Bearer ${token}` } : extra
}

class ApiError extends Error {
  constructor (status, message) {
    super(message)
    this.status = status
  }
}

/**
 * One API call: resolves with the answer's JSON (its text with `text: true`; null for a 204),
 * or throws an ApiError whose message a person can read.
 */
async function api (path, { method = 'GET', body, text = false } = {}) {
  const headers = authHeaders(body === undefined ? { accept: 'application/json' } : { accept: 'application/json', 'content-type': 'application/json' })
  let res
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
  } catch (err) {
    throw new ApiError(0, `the gateway could not be reached (${err.message})`)
  }
  if (res.ok) return res.status === 204 ? null : text ? await res.text() : await res.json()
  const error = await res.json().catch(() => ({}))
  if (res.status === 401) showTokenForm()
  throw new ApiError(res.status, failure(res.status, typeof error.message === 'string' ? error.message : ''))
}

function failure (status, message) {
  if (status === 401) return token ? 'the token was refused (401): give another above' : 'this gateway needs a token (401): give one above'
  if (status === 403) return 'needs a token with the admin scope (403)'
  if (status === 503) return `the gateway cannot serve this now (503${message ? `: ${message}` : ''})`
  return `${message || 'refused'} (HTTP ${status})`
}

function showProblem (id, err) {
  const note = $(id)
  note.textContent = err instanceof ApiError ? err.message : `could not show it: ${err}`
  note.hidden = false
}

function hideProblem (id) {
  $(id).hidden = true
}

let pollers = []

/** Runs `task` now, then again `ms` after each run has ended: a slow gateway gets no pile of requests. */
function every (ms, task) {
  let timer
  let stopped = false
  const run = async () => {
    try {
      await task()
    } catch (err) {
      console.error(err)
    }
    if (!stopped) timer = setTimeout(run, ms)
  }
  pollers.push(() => {
    stopped = true
    clearTimeout(timer)
  })
  run()
}

/** A time of today as a time, an older one with its date: a letter from last week must not pass for one of today. */
function when (iso) {
  const at = new Date(iso)
  if (Number.isNaN(at.getTime())) return String(iso)
  return at.toDateString() === new Date().toDateString() ? at.toLocaleTimeString() : at.toLocaleString()
}

const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value)

/** The gateway's glob lists: comma-separated, `*` matching any run of characters. */
function globList (text) {
  const patterns = text.split(',').map((p) => p.trim()).filter(Boolean)
  if (patterns.length === 0) return () => true
  const res = patterns.map((p) => new RegExp(`^${p.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`))
  return (value) => res.some((re) => re.test(value))
}

/**
 * A Server-Sent Events stream over fetch that reconnects after the server's `retry:` hint,
 * resuming with Last-Event-ID. `onEvent({ event, data, id })` gets each event; returning
 * false from it ends the stream.
 */
class Stream {
  #controller = new AbortController()
  #lastId
  #retryMs = 2000

  constructor (url, onEvent, onState = () => {}) {
    this.url = url
    this.onEvent = onEvent
    this.onState = onState
  }

  stop () {
    this.#controller.abort()
  }

  async run () {
    const { signal } = this.#controller
    while (!signal.aborted) {
      try {
        const headers = authHeaders({ accept: 'text/event-stream', ...(this.#lastId ? { 'last-event-id': this.#lastId } : {}) })
        const res = await fetch(this.url, { headers, signal })
        if (res.status === 401) {
          askForToken()
          return
        }
        if (res.status !== 200) {
          const body = await res.json().catch(() => ({}))
          this.onState('error', body.message ?? `HTTP ${res.status}`, res.status)
          if (res.status >= 400 && res.status < 500) return
        } else {
          this.onState('live')
          if (await this.#read(res) === 'ended') return
          this.onState('reconnecting')
        }
      } catch (err) {
        if (signal.aborted) return
        this.onState('reconnecting', String(err))
      }
      await new Promise((resolve) => setTimeout(resolve, this.#retryMs))
    }
  }

  // An event the page cannot show is skipped: it must not end the stream, nor repeat on resume.
  #deliver (event) {
    try {
      return this.onEvent({ event: event.event, data: event.data.join('\n'), id: event.id })
    } catch (err) {
      console.warn('an event could not be shown', err)
    }
  }

  async #read (res) {
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
    let buffer = ''
    let event = { event: 'message', data: [], id: undefined }
    for (;;) {
      const { value, done } = await reader.read()
      if (done) return 'closed'
      buffer += value
      let end
      while ((end = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, '')
        buffer = buffer.slice(end + 1)
        if (line === '') {
          if (event.id !== undefined) this.#lastId = event.id
          if (event.data.length > 0 && this.#deliver(event) === false) {
            reader.cancel().catch(() => {})
            this.stop()
            return 'ended'
          }
          event = { event: 'message', data: [], id: undefined }
          continue
        }
        if (line.startsWith(':')) continue
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
        if (field === 'data') event.data.push(text)
        else if (field === 'event') event.event = text
        else if (field === 'id') event.id = text
        else if (field === 'retry' && /^\d+$/.test(text)) this.#retryMs = Number(text)
      }
    }
  }
}

// --- token ---------------------------------------------------------------------------------

let needsToken = false

/** The stream was refused: nothing can work without another token. */
function askForToken () {
  if (needsToken) return
  needsToken = true
  stopAll()
  setConnection('needs-token', token ? 'token refused' : 'needs a token')
  showTokenForm()
}

// Also for a panel's refusal alone, which leaves the stream and the other panels running.
function showTokenForm () {
  if (!$('token-form').hidden) return
  $('token-form').hidden = false
  $('token').focus()
}

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault()
  token = $('token').value.trim()
  if (!token) return
  sessionStorage.setItem(TOKEN_KEY, token)
  $('token').value = ''
  $('token-form').hidden = true
  needsToken = false
  stopAll()
  startAll()
})

$('forget-token').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY)
  token = null
  location.reload()
})

function showConnection () {
  if (streamState === 'live' && paused) setConnection('paused', 'paused')
  else setConnection(streamState.startsWith('error') ? 'error' : streamState, streamState)
}

function setConnection (state, text) {
  const badge = $('connection')
  badge.dataset.state = state
  badge.textContent = text
}

// --- live events ---------------------------------------------------------------------------

let eventStream
let streamState = 'connecting'
let paused = false
let waiting = []
let rowMatches = () => true

function filters () {
  return { eventName: $('filter-event-name').value.trim(), agentId: $('filter-agent-id').value.trim() }
}

function startEvents () {
  const { eventName, agentId } = filters()
  const query = new URLSearchParams()
  if (eventName) query.set('event_name', eventName)
  if (agentId) query.set('agent_id', agentId)
  $('filter-error').hidden = true
  const search = String(query)
  streamState = 'connecting'
  showConnection()
  eventStream = new Stream(`/events/stream${search ? `?${search}` : ''}`, onBusEvent, (state, detail, status) => {
    if (state === 'error' && status === 400) {
      $('filter-error').textContent = detail
      $('filter-error').hidden = false
    }
    streamState = state === 'error' ? `error: ${detail}` : state
    showConnection()
  })
  eventStream.run()
}

function onBusEvent ({ event, data }) {
  if (paused) {
    waiting.push({ event, data })
    if (waiting.length > MAX_PAUSED) waiting.shift()
    $('paused-note').textContent = `${waiting.length} waiting`
    return
  }
  show([{ event, data }])
}

// Rows are added once per frame, however fast events come: a busy bus must not freeze the page.
// Of what came since the last frame only the newest MAX_ROWS can be seen anyway.
let incoming = []
let received = 0

function show (events) {
  received += events.length
  incoming.push(...events)
  if (incoming.length > MAX_ROWS) incoming = incoming.slice(-MAX_ROWS)
  if (incoming.length === events.length) requestAnimationFrame(render)
}

function render () {
  const rows = document.createDocumentFragment()
  for (let i = incoming.length - 1; i >= 0; i--) rows.append(makeRow(incoming[i].event, incoming[i].data))
  incoming = []
  const body = $('events').tBodies[0]
  body.prepend(rows)
  while (body.rows.length > MAX_ROWS) body.lastElementChild.remove()
  $('event-count').textContent = String(received)
}

function makeRow (event, data) {
  const row = document.createElement('tr')
  const time = new Date().toLocaleTimeString()
  if (event === 'busgate.gap') {
    const gap = JSON.parse(data)
    row.className = 'gap'
    row.dataset.eventName = event
    row.dataset.agentId = ''
    cells(row, [time, 'gap', '', `events may be missing (${gap.reason})`])
  } else {
    const bus = JSON.parse(data)
    row.dataset.eventName = bus.event_name
    row.dataset.agentId = bus.agent_id
    const args = JSON.stringify(bus.args)
    cells(row, [time, bus.event_name, bus.agent_id, args])
    row.lastChild.className = 'args'
    row.lastChild.title = args
  }
  // A row added after a filter was applied follows it too (the stream already does).
  row.hidden = !rowMatches(row)
  return row
}

function cells (row, values) {
  for (const value of values) {
    const cell = row.insertCell()
    cell.textContent = value
  }
}

$('filters').addEventListener('submit', (e) => {
  e.preventDefault()
  const { eventName, agentId } = filters()
  // Rows already shown follow the new filter too; the stream restarts with it.
  const nameMatches = globList(eventName)
  const agentMatches = globList(agentId)
  rowMatches = (row) => row.className === 'gap' || (nameMatches(row.dataset.eventName) && agentMatches(row.dataset.agentId))
  for (const row of $('events').tBodies[0].rows) row.hidden = !rowMatches(row)
  eventStream?.stop()
  startEvents()
})

$('pause').addEventListener('click', () => {
  paused = !paused
  const button = $('pause')
  button.textContent = paused ? 'Resume' : 'Pause'
  button.setAttribute('aria-pressed', String(paused))
  $('paused-note').hidden = !paused
  $('paused-note').textContent = `${waiting.length} waiting`
  if (!paused) {
    show(waiting)
    waiting = []
  }
  showConnection()
})

// --- background tasks ----------------------------------------------------------------------

let taskStream
const followed = new Map()

/** A task event's report, from either argument form producers use (as the gateway reads them). */
function taskReport (eventName, args) {
  if (!Object.hasOwn(TASK_STATUS, eventName)) return undefined
  const status = TASK_STATUS[eventName]
  const first = args[0]
  if (first !== null && typeof first === 'object' && !Array.isArray(first) && typeof first.task_id === 'string') {
    return { taskId: first.task_id, status, message: first.message, current: first.current_progress, total: first.total_progress }
  }
  if (typeof first === 'string') {
    return status === 'started'
      ? { taskId: first, status, current: args[1], total: args[2], message: args[3] }
      : { taskId: first, status, message: args[1] }
  }
  return undefined
}

function showTask (report) {
  let item = document.querySelector(`li.task[data-task-id="${CSS.escape(report.taskId)}"]`)
  if (item === null) {
    item = document.createElement('li')
    item.className = 'task'
    item.dataset.taskId = report.taskId
    item.innerHTML = '<div class="id"></div><div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100"><div></div></div><div><strong class="status"></strong> <span class="progress"></span> <span class="message"></span></div>'
    item.querySelector('.id').textContent = report.taskId
    $('tasks').prepend(item)
  }
  const current = Number(report.current ?? item.dataset.current ?? 0)
  const total = Number(report.total ?? item.dataset.total ?? 0)
  item.dataset.current = String(current)
  item.dataset.total = String(total)
  item.dataset.status = report.status
  const percent = report.status === 'done' ? 100 : total > 0 ? Math.min(100, Math.round((current / total) * 100)) : 0
  const bar = item.querySelector('.bar')
  bar.setAttribute('aria-valuenow', String(percent))
  bar.firstElementChild.style.width = `${percent}%`
  item.querySelector('.status').textContent = report.status === 'started' ? 'running' : report.status
  item.querySelector('.progress').textContent = total > 0 ? `${current} / ${total} (${percent}%)` : `${percent}%`
  if (report.message !== undefined) item.querySelector('.message').textContent = report.message ?? ''
}

function startTasks () {
  taskStream = new Stream('/events/stream?event_name=task_*,bgtask_*', ({ event, data }) => {
    if (event === 'busgate.gap') return
    const bus = JSON.parse(data)
    const report = taskReport(bus.event_name, bus.args)
    if (report !== undefined) showTask(report)
  }, (state) => { $('tasks-panel').dataset.state = state })
  taskStream.run()
}

/** Shows one task's state through the Backend.AI-compatible view, which also knows tasks that already ended. */
function followTask (taskId) {
  followed.get(taskId)?.stop()
  $('task-error').hidden = true
  const stream = new Stream(`/events/background-task?task_id=${encodeURIComponent(taskId)}`, ({ event, data }) => {
    if (event === 'server_close' || !Object.hasOwn(TASK_STATUS, event)) return false
    const body = JSON.parse(data)
    showTask({ taskId, status: TASK_STATUS[event], message: body.message, current: body.current_progress, total: body.total_progress })
    // The first event is the task's state so far; the task stream above carries the rest, so
    // following many tasks does not take one of the browser's few connections each.
    return false
  }, (state, detail) => {
    if (state !== 'error') return
    $('task-error').textContent = detail
    $('task-error').hidden = false
  })
  followed.set(taskId, stream)
  stream.run().finally(() => { if (followed.get(taskId) === stream) followed.delete(taskId) })
}

$('task-form').addEventListener('submit', (e) => {
  e.preventDefault()
  const taskId = $('task-id').value.trim()
  if (taskId) followTask(taskId)
})

// --- charts --------------------------------------------------------------------------------

const charts = {
  events: new Chart($('chart-events')),
  queue: new Chart($('chart-queue')),
  deliveries: new Chart($('chart-deliveries')),
  failures: new Chart($('chart-failures'))
}
const rates = new Rates()

async function pollMetrics () {
  let metrics
  try {
    metrics = parseMetrics(await api('/metrics', { text: true }))
    hideProblem('charts-note')
  } catch (err) {
    showProblem('charts-note', err)
    // A gap in every line where the gateway did not answer, rather than a line drawn across it.
    for (const chart of Object.values(charts)) chart.push(undefined)
    return
  }
  const deliveries = 'busgate_webhook_deliveries_total'
  const now = rates.next(total(metrics, 'busgate_process_start_time_seconds'), performance.now(), {
    // Counted as the gateway frames what it hears on the channel (the page's stream keeps it
    // listening): the whole bus, whatever the filters of the page's own stream.
    events: total(metrics, 'busgate_sse_events_total'),
    delivered: total(metrics, deliveries, (labels) => labels.outcome === 'delivered'),
    // Every other outcome is an attempt that did not deliver (failed, gone, throttled).
    failed: total(metrics, deliveries, (labels) => labels.outcome !== 'delivered')
  })
  charts.queue.push(total(metrics, 'busgate_queue_length'))
  charts.events.push(now?.events)
  charts.deliveries.push(now?.delivered)
  charts.failures.push(now?.failed)
}

// --- webhooks ------------------------------------------------------------------------------

const HEALTH_STATES = new Set(['healthy', 'failing', 'set_aside', 'disabled'])
const webhookItems = new Map()
let webhookPolls = 0

// Gateways before `health` give none; a value the page cannot read is taken for none too.
const hasHealth = (webhook) => isObject(webhook.health) && HEALTH_STATES.has(webhook.health.state)

/**
 * The state the row shows: the webhook's own `health` when the gateway gives one, else read
 * from its latest attempt, `unknown` when that could not be read.
 */
function webhookState (webhook, attempts) {
  if (!webhook.enabled) return 'disabled'
  if (hasHealth(webhook)) return webhook.health.state
  if (attempts === undefined) return 'unknown'
  if (attempts.length === 0) return 'idle'
  const status = attempts[0].status
  return status !== null && status >= 200 && status < 300 ? 'healthy' : 'failing'
}

function healthDetail (webhook, attempts) {
  if (!hasHealth(webhook)) {
    const last = attempts?.[0]
    return last ? `last attempt ${when(last.at)}: ${last.status ?? last.error}` : ''
  }
  const health = webhook.health
  const parts = []
  const failures = health.consecutive_failures
  if (Number.isInteger(failures) && failures > 0) parts.push(`${failures} failure${failures === 1 ? '' : 's'} in a row`)
  if (typeof health.last_attempt_at === 'string') {
    const status = Number.isInteger(health.last_status) ? `: ${health.last_status}` : health.last_status === null ? ': no answer' : ''
    parts.push(`last attempt ${when(health.last_attempt_at)}${status}`)
  }
  if (typeof health.set_aside_until === 'string') parts.push(`set aside until ${when(health.set_aside_until)}`)
  return parts.join(' · ')
}

function limits (webhook) {
  const parts = []
  if (Number.isFinite(webhook.max_in_flight)) parts.push(`at most ${webhook.max_in_flight} in flight`)
  if (Number.isFinite(webhook.rate_limit)) parts.push(`at most ${webhook.rate_limit} deliveries/s`)
  return parts.join(' · ')
}

function webhookItem (id) {
  let item = webhookItems.get(id)
  if (item !== undefined) return item
  item = document.createElement('li')
  item.className = 'webhook'
  item.dataset.webhookId = id
  item.innerHTML = '<div class="line"><span class="health"></span> <span class="url"></span> <span class="role"></span>' +
    '<label class="switch"><input type="checkbox" class="enabled" role="switch"> enabled</label></div>' +
    '<small class="events note"></small><small class="health-detail note"></small><small class="limits note"></small>' +
    '<small class="problem" hidden></small>'
  item.querySelector('.enabled').addEventListener('change', (e) => setEnabled(item, e.target.checked))
  webhookItems.set(id, item)
  return item
}

function showWebhook (item, webhook, attempts) {
  const state = webhookState(webhook, attempts)
  item.attempts = attempts
  item.dataset.health = state
  item.dataset.enabled = String(webhook.enabled)
  const health = item.querySelector('.health')
  health.textContent = state.replace('_', ' ')
  health.dataset.health = state
  item.querySelector('.url').textContent = webhook.url
  const role = item.querySelector('.role')
  role.textContent = webhook.role
  role.dataset.role = webhook.role
  role.title = webhook.role === 'subscriber' ? 'gets a copy of every matching broadcast event' : 'takes its share of the consumer list'
  item.querySelector('.enabled').checked = webhook.enabled
  item.querySelector('.events').textContent = Array.isArray(webhook.event_names) ? webhook.event_names.join(', ') : ''
  for (const [name, text] of [['health-detail', healthDetail(webhook, attempts)], ['limits', limits(webhook)]]) {
    const line = item.querySelector(`.${name}`)
    line.textContent = text
    line.hidden = text === ''
  }
}

async function pollWebhooks () {
  const poll = ++webhookPolls
  let webhooks
  let attempts
  try {
    ({ webhooks } = await api('/webhooks'))
    // A webhook's latest attempts only where the gateway gives no health of it.
    attempts = await Promise.all(webhooks.map(async (webhook) => hasHealth(webhook)
      ? undefined
      : await api(`/webhooks/${webhook.id}/attempts`).then((body) => body.attempts, () => undefined)))
    hideProblem('webhooks-note')
  } catch (err) {
    showProblem('webhooks-note', err)
    return
  }
  const items = webhooks.map((webhook, i) => {
    const item = webhookItem(webhook.id)
    // A poll that began before a toggle answered may have read the registry before it changed.
    if (!(item.toggledAt >= poll)) showWebhook(item, webhook, attempts[i])
    return item
  })
  const ids = new Set(webhooks.map((webhook) => webhook.id))
  for (const id of webhookItems.keys()) if (!ids.has(id)) webhookItems.delete(id)
  const list = $('webhooks')
  // Only when the set changed: moving the rows would take the focus off a switch.
  if (items.length !== list.children.length || items.some((item, i) => list.children[i] !== item)) list.replaceChildren(...items)
  $('webhooks-empty').hidden = items.length > 0
}

async function setEnabled (item, enabled) {
  const input = item.querySelector('.enabled')
  const problem = item.querySelector('.problem')
  input.disabled = true
  item.toggledAt = Infinity
  try {
    const webhook = await api(`/webhooks/${item.dataset.webhookId}`, { method: 'PATCH', body: { enabled } })
    showWebhook(item, webhook, item.attempts)
    problem.hidden = true
  } catch (err) {
    input.checked = !enabled
    problem.textContent = `could not ${enabled ? 'enable' : 'disable'} it: ${err.message}`
    problem.hidden = false
  } finally {
    input.disabled = false
    item.toggledAt = webhookPolls
  }
}

// --- dead letters --------------------------------------------------------------------------

// The list is loaded on demand (filters, Refresh, Load more), not every poll: rows must not move
// under a hand about to press Delete. The poll counts what is kept, and says when that changed.
let letterFilters = ''
let lettersLoaded = false
let listedTotal = 0
// A page past the first brought nothing new: what the total still counts are values that are
// no letters (hand edits), which the gateway counts but does not show.
let lettersExhausted = false
let letterLoads = 0
let keptTotal
let listChanged = false
let lastAction = ''

const letterRows = () => [...$('dead-letters').tBodies[0].querySelectorAll('tr.dead-letter')]

function chosenFilters () {
  const query = new URLSearchParams()
  const reason = $('dead-letter-reason').value
  const eventName = $('dead-letter-event-name').value.trim()
  if (reason) query.set('reason', reason)
  if (eventName) query.set('event_name', eventName)
  return String(query)
}

function showLetterStatus () {
  const shown = letterRows().length
  const parts = [lastAction, lettersLoaded ? `${shown} of ${listedTotal}${letterFilters ? ' matching' : ''} shown` : '']
  if (listChanged) parts.push('changed since: Refresh to see it')
  $('dead-letters-status').textContent = parts.filter(Boolean).join(' · ')
  $('dead-letters-more').hidden = !lettersLoaded || lettersExhausted || shown >= listedTotal
}

async function loadLetters ({ more = false } = {}) {
  const filters = more ? letterFilters : chosenFilters()
  const query = new URLSearchParams(filters)
  const body = $('dead-letters').tBodies[0]
  query.set('offset', String(more ? letterRows().length : 0))
  query.set('limit', String(LETTER_PAGE))
  const load = ++letterLoads
  let page
  let kept
  try {
    // With filters the page's total counts the matches: how many are kept is asked beside it,
    // so the poll can tell what changed after this list was read.
    [page, kept] = await Promise.all([api(`/dead-letters?${query}`), more || filters === '' ? undefined : api('/dead-letters?limit=1')])
    hideProblem('dead-letters-note')
  } catch (err) {
    showProblem('dead-letters-note', err)
    return
  }
  // A load asked for since (other filters, a Refresh) decides what the list shows.
  if (load !== letterLoads) return
  if (!more) {
    body.replaceChildren()
    letterFilters = filters
    listChanged = false
    lettersExhausted = false
    keptTotal = kept?.total ?? page.total
    $('dead-letter-count').textContent = String(keptTotal)
  }
  // Letters that came since the last page push the ones shown further down: skip them there.
  const shown = new Set(letterRows().map((row) => row.dataset.id))
  const added = page.dead_letters.filter((letter) => !shown.has(letter.id))
  body.append(...added.map(letterRow))
  listedTotal = page.total
  lettersExhausted = more && added.length === 0
  lettersLoaded = true
  showLetterStatus()
}

function letterRow (letter) {
  const row = document.createElement('tr')
  row.className = 'dead-letter'
  row.dataset.id = letter.id
  cells(row, [when(letter.dead_at), letter.reason, letter.event_name ?? '–', letter.error])
  row.cells[0].title = letter.dead_at
  row.cells[1].className = 'reason'
  row.cells[1].dataset.reason = letter.reason
  row.cells[3].className = 'error-text'
  row.cells[3].title = letter.error
  const actions = row.insertCell()
  actions.className = 'actions'
  actions.append(
    button('Details', 'details', () => toggleDetails(row)),
    button('Redeliver', 'redeliver', () => takeOut(row, 'redelivered', () => api(`/dead-letters/${letter.id}/redeliver`, { method: 'POST' }))),
    button('Delete', 'delete', () => confirmDelete(row))
  )
  return row
}

function button (text, className, onClick) {
  const element = document.createElement('button')
  element.type = 'button'
  element.className = className
  element.textContent = text
  element.addEventListener('click', onClick)
  return element
}

// A letter deleted is gone for good: the button asks once more before it does it.
function confirmDelete (row) {
  const remove = row.querySelector('button.delete')
  if (remove.dataset.armed === 'true') {
    takeOut(row, 'deleted', () => api(`/dead-letters/${row.dataset.id}`, { method: 'DELETE' }))
    return
  }
  remove.dataset.armed = 'true'
  remove.textContent = 'Delete for good?'
  clearTimeout(remove.disarm)
  remove.disarm = setTimeout(() => {
    remove.dataset.armed = 'false'
    remove.textContent = 'Delete'
  }, 4000)
}

async function takeOut (row, done, call) {
  const buttons = row.querySelectorAll('.actions button')
  for (const b of buttons) b.disabled = true
  try {
    await call()
    lastAction = `${row.dataset.id} ${done}`
  } catch (err) {
    if (err.status !== 404) {
      lastAction = `${row.dataset.id} not ${done}: ${err.message}`
      for (const b of buttons) b.disabled = false
      showLetterStatus()
      return
    }
    lastAction = `${row.dataset.id} was already gone`
  }
  if (row.nextElementSibling?.classList.contains('details')) row.nextElementSibling.remove()
  row.remove()
  listedTotal--
  if (keptTotal !== undefined) $('dead-letter-count').textContent = String(--keptTotal)
  showLetterStatus()
}

async function toggleDetails (row) {
  const toggle = row.querySelector('button.details')
  if (row.nextElementSibling?.classList.contains('details')) {
    row.nextElementSibling.remove()
    toggle.setAttribute('aria-expanded', 'false')
    return
  }
  const details = document.createElement('tr')
  details.className = 'details'
  const cell = details.insertCell()
  cell.colSpan = 5
  cell.textContent = 'loading…'
  row.after(details)
  toggle.setAttribute('aria-expanded', 'true')
  try {
    // Read by id: a page leaves out the bytes of its letters past 16 MiB, one letter has them all.
    cell.replaceChildren(letterDetails(await api(`/dead-letters/${row.dataset.id}`)))
  } catch (err) {
    cell.textContent = err.status === 404 ? 'it is gone: redelivered or deleted meanwhile' : err.message
    cell.className = 'problem'
  }
}

function letterDetails (letter) {
  const list = document.createElement('dl')
  const fields = [
    ['id', letter.id], ['message_id', letter.message_id], ['reason', letter.reason], ['error', letter.error],
    ['event_name', letter.event_name ?? '–'], ['agent_id', letter.agent_id ?? '–'],
    ['webhook_id', letter.webhook_id ?? '– (a message of the consumer list)'], ['attempts', letter.attempts],
    ['first_seen', new Date(letter.first_seen).toLocaleString()], ['dead_at', new Date(letter.dead_at).toLocaleString()],
    ['bytes', letter.frame_bytes], ['args', frameText(letter)]
  ]
  for (const [term, value] of fields) {
    const dt = document.createElement('dt')
    const dd = document.createElement('dd')
    dt.textContent = term
    dd.dataset.field = term
    // The args keep their lines and indentation.
    if (term === 'args') dd.append(Object.assign(document.createElement('pre'), { textContent: value }))
    else dd.textContent = String(value)
    list.append(dt, dd)
  }
  return list
}

/** The letter's args as the stream would show them, or why they cannot be. */
function frameText (letter) {
  if (letter.frame === null) return `not shown: ${letter.frame_bytes} bytes, more than the gateway reads (a redelivery still moves them)`
  const bytes = fromBase64(letter.frame)
  try {
    const message = decodeMsgpack(bytes)
    if (isObject(message) && Array.isArray(message.args)) return JSON.stringify(message.args, null, 2)
    return `not an event; the bytes read as ${JSON.stringify(message, null, 2)}`
  } catch (err) {
    if (!(err instanceof DecodeError)) throw err
    const hex = [...bytes.subarray(0, 256)].map((b) => b.toString(16).padStart(2, '0')).join(' ')
    return `not msgpack (${err.message}); the bytes${bytes.length > 256 ? ', the first 256' : ''}: ${hex}`
  }
}

async function pollLetterCount () {
  try {
    const { total } = await api('/dead-letters?limit=1')
    if (keptTotal !== undefined && total !== keptTotal) listChanged = true
    keptTotal = total
    $('dead-letter-count').textContent = String(total)
    hideProblem('dead-letters-note')
  } catch (err) {
    showProblem('dead-letters-note', err)
    return
  }
  // A list that could not be loaded yet (the gateway was down, a token lacked the scope) is tried again.
  if (!lettersLoaded) await loadLetters()
  else showLetterStatus()
}

// What was last done stays said until the list is asked for anew.
function reloadLetters () {
  lastAction = ''
  loadLetters()
}

$('dead-letter-filters').addEventListener('submit', (e) => {
  e.preventDefault()
  reloadLetters()
})
$('dead-letters-refresh').addEventListener('click', reloadLetters)
$('dead-letters-more').addEventListener('click', () => loadLetters({ more: true }))

function askRedeliverAll (asking) {
  $('redeliver-all-confirm').hidden = !asking
  $('redeliver-all').hidden = asking
}

$('redeliver-all').addEventListener('click', () => {
  $('redeliver-all-count').textContent = keptTotal === undefined ? 'the' : String(keptTotal)
  askRedeliverAll(true)
  $('redeliver-all-no').focus()
})
$('redeliver-all-no').addEventListener('click', () => askRedeliverAll(false))
$('redeliver-all-yes').addEventListener('click', async () => {
  $('redeliver-all-yes').disabled = true
  try {
    const { redelivered } = await api('/dead-letters/redeliver', { method: 'POST' })
    lastAction = `${redelivered} redelivered`
  } catch (err) {
    lastAction = `not redelivered: ${err.message}`
  } finally {
    $('redeliver-all-yes').disabled = false
    askRedeliverAll(false)
  }
  await loadLetters()
})

// --- start ---------------------------------------------------------------------------------

function stopAll () {
  eventStream?.stop()
  taskStream?.stop()
  for (const stream of followed.values()) stream.stop()
  for (const stop of pollers) stop()
  pollers = []
}

function startAll () {
  $('forget-token').hidden = !token
  startEvents()
  startTasks()
  every(POLL_MS, pollWebhooks)
  every(POLL_MS, pollLetterCount)
  every(METRICS_MS, pollMetrics)
}

startAll()
