import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { TaskTracker } from '../tasks.js'

declare module 'fastify' {
  interface FastifyInstance {
    tasks: TaskTracker
  }
}

/** Backend.AI keeps a finished task's hash this long (MAX_BGTASK_ARCHIVE_PERIOD). */
const TASK_TTL_MS = 86_400_000

/** Owns the background-task tracker: it listens to the stream hub's subscription, and stops on close. */
export default fp<{ config: Config }>(async (app, { config }) => {
  const tracker = new TaskTracker(app.hub, app.engine.store, {
    keyPrefix: config.taskKeyPrefix,
    ttlMs: TASK_TTL_MS,
    always: config.taskTracking === 'always'
  }, app.log)
  await tracker.start()
  app.decorate('tasks', tracker)
  app.addHook('onClose', async () => { tracker.close() })
}, { name: 'busgate-tasks', fastify: '5.x', dependencies: ['busgate-engine', 'busgate-sse-hub'] })
