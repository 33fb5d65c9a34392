import type { FastifyBaseLogger } from 'fastify'
import { toJsonValue, type BusEvent, type JsonValue } from './codec.js'
import type { Store } from './engines/engine.js'
import type { SseHub } from './sse-hub.js'

export type TaskStatus = 'started' | 'done' | 'failed' | 'cancelled'

/** Backend.AI's task events: the names of the seed, and the bgtask_ names of later releases. */
const TASK_EVENTS: ReadonlyMap<string, TaskStatus> = new Map(Object.entries({
  task_updated: 'started',
  task_done: 'done',
  task_failed: 'failed',
  task_cancelled: 'cancelled',
  bgtask_updated: 'started',
  bgtask_done: 'done',
  bgtask_failed: 'failed',
  bgtask_cancelled: 'cancelled'
} satisfies Record<string, TaskStatus>))

const ENDED = ['done', 'failed', 'cancelled'] as const

/** What a task event says; progress is null where the event carries none. */
export interface TaskReport {
  /** the event name as produced */
  name: string
  taskId: string
  status: TaskStatus
  message: string | null
  current: JsonValue
  total: JsonValue
}

/** A task's state as its hash keeps it (Backend.AI's fields). */
export interface TaskState {
  status: string
  current: string
  total: string
  msg: string
  started_at?: string
  last_update?: string
}

export const TASK_ID = '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'
const TASK_ID_PATTERN = new RegExp(TASK_ID)

export function isTerminal (status: string): boolean {
  return (ENDED as readonly string[]).includes(status)
}

const asText = (value: JsonValue | undefined): string | null => typeof value === 'string' ? value : null
const asProgress = (value: JsonValue | undefined): JsonValue => typeof value === 'number' || typeof value === 'string' ? value : null

/**
 * Reads a task event in either form producers use: one map argument
 * `{task_id, message, current_progress, total_progress}`, or Backend.AI's positional
 * arguments, `(task_id, current_progress, total_progress, message)` for an update and
 * `(task_id, message)` for the end of a task. Anything else is not a task report.
 */
export function parseTaskEvent (event: { event_name: string, args?: readonly unknown[] }): TaskReport | undefined {
  const status = TASK_EVENTS.get(event.event_name)
  if (status === undefined || event.args === undefined) return undefined
  const args = event.args.map(toJsonValue)
  const first = args[0]
  let report: Omit<TaskReport, 'name' | 'status'>
  if (first !== null && typeof first === 'object' && !Array.isArray(first)) {
    const taskId = asText(first.task_id)
    if (taskId === null) return undefined
    report = { taskId, message: asText(first.message), current: asProgress(first.current_progress), total: asProgress(first.total_progress) }
  } else if (typeof first === 'string') {
    report = status === 'started'
      ? { taskId: first, current: asProgress(args[1]), total: asProgress(args[2]), message: asText(args[3]) }
      : { taskId: first, current: null, total: null, message: asText(args[1]) }
  } else {
    return undefined
  }
  if (!TASK_ID_PATTERN.test(report.taskId)) return undefined
  return { name: event.event_name, status, ...report }
}

/** Seconds since the epoch with a fraction, as Python's str(time.time()) writes them. */
function pythonTime (ms = Date.now()): string {
  return (ms / 1000).toFixed(6)
}

export interface TaskTrackerOptions {
  /** the hash of a task is `<keyPrefix><task_id>` */
  keyPrefix: string
  ttlMs: number
  /** keep the bus subscription for the tracker alone, so task events are recorded while nobody watches */
  always: boolean
}

/** A background-task stream, told of its task's events and of gaps in what was heard. */
export interface TaskWatcher {
  report: (report: TaskReport) => void
  /** events of the task may have been missed: its hash says where it stands */
  gap: () => void
}

/**
 * Keeps the last state of each background task in its hash, as Backend.AI's task manager does,
 * from the task events the gateway produces and those it hears on the bus; and tells the
 * background-task streams of a task about its events.
 */
export class TaskTracker {
  readonly #watchers = new Map<string, Set<TaskWatcher>>()
  #stopListening: (() => void) | undefined
  #releaseAlways: (() => void) | undefined
  #failedWrites = 0

  constructor (
    private readonly hub: SseHub,
    private readonly store: Store,
    private readonly options: TaskTrackerOptions,
    private readonly log: FastifyBaseLogger
  ) {}

  async start (): Promise<void> {
    this.#stopListening = this.hub.listen({
      event: (event) => this.#onEvent(event),
      gap: () => { for (const watchers of this.#watchers.values()) for (const watcher of watchers) watcher.gap() }
    })
    // A bus that is down at start must not stop the gateway; the hub resubscribes on its own.
    if (this.options.always) this.#releaseAlways = await this.hub.hold().catch(() => undefined)
  }

  close (): void {
    this.#stopListening?.()
    this.#releaseAlways?.()
    this.#watchers.clear()
  }

  key (taskId: string): string {
    return `${this.options.keyPrefix}${taskId}`
  }

  /** The task's state, or undefined when it is unknown or has expired. */
  async state (taskId: string): Promise<TaskState | undefined> {
    const hash = await this.store.hashGetAll(this.key(taskId))
    if (hash.status === undefined) return undefined
    return { current: '0', total: '0', msg: '', ...hash } as TaskState
  }

  /**
   * Records a task event in its hash: written before the event is produced, so a client that
   * finds the task unfinished is subscribed before the event can reach it.
   */
  async record (report: TaskReport): Promise<void> {
    const now = pythonTime()
    const fields: Record<string, string> = { last_update: now }
    if (report.status !== 'started') fields.status = report.status
    if (report.current !== null) fields.current = String(report.current)
    if (report.total !== null) fields.total = String(report.total)
    if (report.message !== null || report.status !== 'started') fields.msg = report.message ?? ''
    const defaults: Record<string, string> = { status: 'started', started_at: now, current: '0', total: '0', msg: '' }
    // An ended task stays as it ended, and progress does not go back: a late write (an instance
    // recording what it heard a moment ago, after the manager wrote what came next) changes nothing.
    await this.store.hashMerge(this.key(report.taskId), fields, defaults, this.options.ttlMs, { field: 'status', values: ENDED, rising: 'current' })
  }

  /**
   * Records the task events among events about to be produced: before they are, see `record`.
   * Undefined when there are none, the usual case: a produce then waits for nothing.
   */
  recordProduced (events: ReadonlyArray<{ event_name: string, args?: readonly unknown[] }>): Promise<void> | undefined {
    const reports: TaskReport[] = []
    for (const event of events) {
      const report = parseTaskEvent(event)
      if (report !== undefined) reports.push(report)
    }
    return reports.length === 0 ? undefined : this.#recordAll(reports)
  }

  async #recordAll (reports: readonly TaskReport[]): Promise<void> {
    for (const report of reports) await this.record(report)
  }

  /**
   * Calls `watcher` with each event of the task heard from now on; resolves once the bus is
   * listened to. The returned function stops it.
   */
  async watch (taskId: string, watcher: TaskWatcher): Promise<() => void> {
    const release = await this.hub.hold()
    const set = this.#watchers.get(taskId) ?? new Set()
    this.#watchers.set(taskId, set.add(watcher))
    let stopped = false
    return () => {
      if (stopped) return
      stopped = true
      set.delete(watcher)
      if (set.size === 0 && this.#watchers.get(taskId) === set) this.#watchers.delete(taskId)
      release()
    }
  }

  #onEvent (event: BusEvent): void {
    const report = parseTaskEvent(event)
    if (report === undefined) return
    // Every instance that hears it writes the same state: whoever produced the event, its
    // task becomes known, and stays known when this instance goes away.
    this.record(report).catch((err: unknown) => {
      if (this.#failedWrites++ % 100 === 0) this.log.warn({ err: { message: (err as Error).message }, task: report.taskId }, 'could not record a task event')
    })
    for (const watcher of this.#watchers.get(report.taskId) ?? []) watcher.report(report)
  }
}
