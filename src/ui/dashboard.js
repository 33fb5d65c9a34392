// The dashboard: a page served by the gateway that uses its public API as any client does.
// Plain ES module, no build step. Streams are read with fetch rather than EventSource: the
// token goes in a header (not the URL), and events of any name reach one handler.

const TOKEN_KEY = 'busgate.token'
const MAX_ROWS = 500
const MAX_PAUSED = 5000
const POLL_MS = 5000
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

class NeedsToken extends Error {}

function authHeaders (extra = {}) {
  return token ? { ...extra, authorization: `Bearer ${token}` } : extra
}

async function api (path) {
  const res = await fetch(path, { headers: authHeaders({ accept: 'application/json' }) })
  if (res.status === 401) {
    askForToken()
    throw new NeedsToken()
  }
  const body = await res.json().catch(() => ({}))
  return { status: res.status, body }
}

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

function askForToken () {
  if (needsToken) return
  needsToken = true
  stopAll()
  setConnection('needs-token', token ? 'token refused' : 'needs a token')
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

// --- webhooks and dead letters -------------------------------------------------------------

let pollTimer

function health (webhook, attempts) {
  if (!webhook.enabled) return 'disabled'
  if (attempts.length === 0) return 'idle'
  const last = attempts[0]
  return last.status !== null && last.status >= 200 && last.status < 300 ? 'healthy' : 'failing'
}

async function pollAdmin () {
  try {
    const { status, body } = await api('/webhooks')
    if (status === 403) {
      $('webhooks-note').textContent = 'needs a token with the admin scope'
      $('webhooks-note').hidden = false
      $('dead-letters-note').textContent = 'needs the admin scope'
      return
    }
    $('webhooks-note').hidden = body.webhooks.length > 0
    $('webhooks-note').textContent = 'none registered'
    const items = await Promise.all(body.webhooks.map(async (webhook) => {
      const attempts = (await api(`/webhooks/${webhook.id}/attempts`)).body.attempts ?? []
      const item = document.createElement('li')
      item.className = 'webhook'
      item.dataset.webhookId = webhook.id
      const state = health(webhook, attempts)
      item.innerHTML = '<span class="health"></span> <span class="url"></span> <span class="role"></span><br><small class="note"></small>'
      item.querySelector('.health').textContent = state
      item.querySelector('.health').dataset.health = state
      item.dataset.health = state
      item.querySelector('.url').textContent = webhook.url
      const role = item.querySelector('.role')
      role.textContent = webhook.role
      role.dataset.role = webhook.role
      role.title = webhook.role === 'subscriber' ? 'gets a copy of every matching broadcast event' : 'takes its share of the consumer list'
      const last = attempts[0]
      item.querySelector('small').textContent = `${webhook.event_names.join(', ')}${last ? ` · last attempt ${new Date(last.at).toLocaleTimeString()}: ${last.status ?? last.error}` : ''}`
      return item
    }))
    $('webhooks').replaceChildren(...items)
    const letters = await api('/dead-letters?limit=1')
    $('dead-letter-count').textContent = String(letters.body.total ?? '–')
    $('dead-letters-note').textContent = letters.body.total === 1 ? 'message could not be delivered' : 'messages could not be delivered'
  } catch (err) {
    if (!(err instanceof NeedsToken)) $('webhooks-note').textContent = `could not load: ${err}`
  }
}

// --- start ---------------------------------------------------------------------------------

function stopAll () {
  eventStream?.stop()
  taskStream?.stop()
  for (const stream of followed.values()) stream.stop()
  clearInterval(pollTimer)
}

function startAll () {
  $('forget-token').hidden = !token
  startEvents()
  startTasks()
  pollAdmin()
  pollTimer = setInterval(pollAdmin, POLL_MS)
}

startAll()
