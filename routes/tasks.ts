import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import type { Config } from '../src/config.js'
import { Errors } from '../src/errors.js'
import { NO_EVENTS, type StreamHandle } from '../src/sse-hub.js'
import { streamHead } from '../src/sse-response.js'
import type { TaskReport, TaskState } from '../src/tasks.js'
import { TaskStream } from '../src/task-stream.js'
import { authErrors, errorResponses } from '../schemas/error.js'
import { TASK_STREAM_DESCRIPTION, TaskQuery } from '../schemas/task.js'

const tasks: FastifyPluginAsyncTypebox<{ config: Config }> = async (app, { config }) => {
  app.get('/events/background-task', {
    exposeHeadRoute: false,
    sse: { kind: 'manual', heartbeat: false },
    schema: {
      operationId: 'streamBackgroundTask',
      tags: ['events'],
      summary: 'Follow one background task, as Server-Sent Events (Backend.AI-compatible)',
      description: TASK_STREAM_DESCRIPTION,
      querystring: TaskQuery,
      response: {
        200: { description: 'The task\'s events, until it ends', content: { 'text/event-stream': { schema: Type.String() } } },
        ...authErrors,
        ...errorResponses(400, 404, 503)
      }
    },
    config: { scope: 'subscribe', queryToken: true, stream: true }
  }, async (request, reply) => {
    const { task_id: snake, taskId: camel } = request.query
    if (snake !== undefined && camel !== undefined && snake !== camel) throw new Errors.BadRequest('task_id and taskId name different tasks; give one')
    const taskId = snake ?? camel
    if (taskId === undefined) throw new Errors.BadRequest('Which task? Give task_id (or taskId) in the query')
    if (app.hub.full) throw new Errors.TooManyStreams(config.sseMaxClients)

    // Listening starts before the state is read: an event published in between is not missed.
    let heard: TaskReport[] | undefined = []
    let onReport = (report: TaskReport): void => { heard?.push(report) }
    let missedSome = false
    let onGap = (): void => { missedSome = true }
    const unwatch = await app.tasks.watch(taskId, { report: (report) => onReport(report), gap: () => onGap() })
    let state: TaskState | undefined
    try {
      state = await app.tasks.state(taskId)
    } catch (err) {
      unwatch()
      throw err
    }
    if (state === undefined) {
      unwatch()
      throw new Errors.NotFound(`No background task ${taskId}: unknown, or ended more than 24 hours ago`)
    }

    let stream: StreamHandle | undefined
    try {
      stream = await app.hub.open(reply.raw, NO_EVENTS, undefined, streamHead(reply))
    } finally {
      if (stream === undefined) unwatch()
    }
    if (stream === undefined) return
    reply.raw.once('close', unwatch)
    request.log.debug({ req: request, task: taskId }, 'task stream opened')
    const open = stream
    const follower = new TaskStream(taskId, state, config.sseRetryMs, {
      write: (frame) => { open.write(frame) },
      end: (frame) => {
        unwatch()
        open.end(frame)
      }
    })
    const early = heard
    heard = undefined
    for (const report of early) follower.send(report)
    onReport = (report) => { follower.send(report) }
    // The bus subscription was lost for a while: the task may have moved on, or ended, unheard.
    onGap = () => {
      app.tasks.state(taskId).then((now) => { if (now !== undefined) follower.resync(now) }, () => undefined)
    }
    if (missedSome) onGap()
  })
}

export default tasks
