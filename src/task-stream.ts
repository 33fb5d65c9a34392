import { sseFrame } from './sse-frame.js'
import { isTerminal, type TaskReport, type TaskState } from './tasks.js'

/** Progress as Backend.AI's hash keeps it (a string), as a number where it is one. */
function progress (value: string): number | string {
  const n = Number(value)
  return value.trim() !== '' && Number.isFinite(n) ? n : value
}

/** The event a task's hash stands for: its end, or its progress so far. */
export function reportOfState (taskId: string, state: TaskState): TaskReport {
  const status = isTerminal(state.status) ? state.status as TaskReport['status'] : 'started'
  return {
    name: status === 'started' ? 'task_updated' : `task_${status}`,
    taskId,
    status,
    message: state.msg,
    current: progress(state.current),
    total: progress(state.total)
  }
}

const SERVER_CLOSE = sseFrame({ event: 'server_close', data: '{}' })

export interface TaskStreamOutput {
  write: (frame: Buffer) => void
  /** the last frames; nothing is written after them */
  end: (frame: Buffer) => void
}

/**
 * What one background-task stream sends, as Backend.AI's clients read it: the state so far, then
 * each report of the task under its own name, and after its end `server_close`. It starts from
 * the task's hash and is told of every report heard since, in any order they come.
 */
export class TaskStream {
  #last: TaskReport
  #sent = ''
  #ended = false

  constructor (readonly taskId: string, state: TaskState, private readonly retryMs: number, private readonly out: TaskStreamOutput) {
    this.#last = reportOfState(taskId, state)
    this.send(this.#last)
  }

  get ended (): boolean {
    return this.#ended
  }

  send (report: TaskReport): void {
    if (this.#ended) return
    // An end without progress (Backend.AI's positional form) keeps the progress last seen.
    const last = this.#last = { ...report, current: report.current ?? this.#last.current, total: report.total ?? this.#last.total }
    const data = JSON.stringify({ task_id: this.taskId, message: last.message, current_progress: last.current, total_progress: last.total })
    const frame = sseFrame({ event: report.name, retry: this.retryMs, data })
    if (report.status === 'started') {
      // The state read from the hash and the broadcast that made it can both arrive (the
      // broadcast late, as on a cluster's bus): the same progress twice says nothing new.
      if (frame !== this.#sent) this.out.write(Buffer.from(frame))
      this.#sent = frame
      return
    }
    this.#ended = true
    this.out.end(Buffer.from(frame + SERVER_CLOSE))
  }

  /** The task's hash read again after events may have been missed: where it stands now. */
  resync (state: TaskState): void {
    this.send(reportOfState(this.taskId, state))
  }
}
