import { fastifySSE } from '@fastify/sse'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { SseHub } from '../sse-hub.js'

declare module 'fastify' {
  interface FastifyInstance {
    hub: SseHub
  }
}

/**
 * Owns the stream hub: its one subscription to the broadcast channel starts with the app, and
 * its streams end before the server closes (an open stream would otherwise hold the close).
 */
export default fp<{ config: Config }>(async (app, { config }) => {
  // @fastify/sse handles the response lifecycle; its per-connection heartbeat timers are
  // replaced by the hub's one timer for all streams.
  await app.register(fastifySSE, { heartbeatInterval: 0 })
  const { metrics } = app
  const feed = app.engine.bus.history({
    shared: config.sseSharedHistory,
    keyPrefix: config.keyPrefix,
    size: config.sseHistory,
    bytes: config.sseHistoryBytes,
    maxMessageBytes: config.busMaxMessageBytes,
    metrics: {
      recorded: (kind, count) => metrics.historyRecorded.inc({ kind }, count),
      recording: (yes) => metrics.historyRecording.set(yes ? 1 : 0)
    }
  })
  const hub = new SseHub(feed, {
    lingerMs: config.sseLingerMs,
    historySize: config.sseHistory,
    historyBytes: config.sseHistoryBytes,
    maxBufferBytes: config.sseMaxBufferBytes,
    heartbeatMs: config.sseHeartbeatMs,
    retryMs: config.sseRetryMs,
    maxClients: config.sseMaxClients,
    maxMessageBytes: config.busMaxMessageBytes
  }, {
    clients: (n) => metrics.sseClients.set(n),
    published: () => metrics.sseEvents.inc(),
    delivered: (n) => metrics.sseDeliveries.inc(n),
    slowDisconnect: () => metrics.sseSlowDisconnects.inc(),
    resume: (result) => metrics.sseResumes.inc({ result }),
    malformed: (reason) => metrics.malformed.inc({ source: 'pubsub', reason })
  }, app.log)
  hub.start()
  app.decorate('hub', hub)
  app.addHook('preClose', async () => {
    await hub.close()
    await feed.close()
  })
}, { name: 'busgate-sse-hub', fastify: '5.x', dependencies: ['busgate-engine', 'busgate-metrics'] })
