import { Type, type Static } from '@sinclair/typebox'
import { AccessToken } from './common.js'
import { TASK_ID } from '../src/tasks.js'

const TaskId = Type.String({ pattern: TASK_ID, description: 'the background task id (Backend.AI: a UUID)', examples: ['5f3c7a2e-9d1b-4c8e-a0f2-3b6d9e1c4a57'] })

export const TaskQuery = Type.Object({
  task_id: Type.Optional(TaskId),
  taskId: Type.Optional({ ...TaskId, description: 'the same, as Backend.AI clients also spell it' }),
  access_token: Type.Optional(AccessToken)
}, { additionalProperties: false })
export type TaskQuery = Static<typeof TaskQuery>

export const TASK_STREAM_DESCRIPTION = 'Server-Sent Events of one background task, as Backend.AI\'s manager serves them. ' +
  'Producers report tasks with `task_updated`, `task_done`, `task_failed`, `task_cancelled` (or the later `bgtask_*` names), ' +
  'each with one map argument `{task_id, message, current_progress, total_progress}` (Backend.AI\'s positional arguments are read too). ' +
  'Each event of the task is sent under its own name with data `{"task_id", "message", "current_progress", "total_progress"}` and a `retry:` hint. ' +
  'A task still running starts with a `task_updated` of its last known state. After the task ends (`done`, `failed`, `cancelled`) ' +
  'comes `event: server_close` with data `{}`, and the stream closes; a task that has already ended gets its final event and ' +
  '`server_close` at once. A task is known while its hash `bgtask.<task_id>` exists (24 hours after its last event): ' +
  'an unknown or expired id gets `404`.'
