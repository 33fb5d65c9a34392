import fp from 'fastify-plugin'
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

export interface Metrics {
  registry: Registry
  produced: Counter<'route' | 'format'>
  rejected: Counter<'reason'>
  httpDuration: Histogram<'method' | 'route' | 'status_code'>
}

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Metrics
  }
}

/** Owns the Prometheus registry: one per app, so apps built side by side (tests) never share counters. */
export default fp(async (app) => {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'busgate_' })
  const metrics: Metrics = {
    registry,
    produced: new Counter({
      name: 'busgate_events_produced_total',
      help: 'Events written to the bus through HTTP, by route and body format',
      labelNames: ['route', 'format'],
      registers: [registry]
    }),
    rejected: new Counter({
      name: 'busgate_events_rejected_total',
      help: 'Event requests refused, by error code',
      labelNames: ['reason'],
      registers: [registry]
    }),
    httpDuration: new Histogram({
      name: 'busgate_http_request_duration_seconds',
      help: 'Time from request to response, by route',
      labelNames: ['method', 'route', 'status_code'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry]
    })
  }
  app.decorate('metrics', metrics)

  // prom-client hashes the label object on every observe; on the hot path a Map from a plain
  // string key to the bound child costs a fraction of that.
  const durationByKey = new Map<string, Histogram.Internal<'method' | 'route' | 'status_code'>>()
  app.addHook('onResponse', (request, reply, done) => {
    const route = request.routeOptions.url ?? 'unmatched'
    const key = `${request.method} ${reply.statusCode} ${route}`
    let child = durationByKey.get(key)
    if (child === undefined) {
      child = metrics.httpDuration.labels({ method: request.method, route, status_code: String(reply.statusCode) })
      durationByKey.set(key, child)
    }
    child.observe(reply.elapsedTime / 1000)
    done()
  })
}, { name: 'busgate-metrics', fastify: '5.x' })
