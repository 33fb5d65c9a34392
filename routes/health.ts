import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Ref } from '../schemas/common.js'
import { authErrors } from '../schemas/error.js'
import { Liveness, MetricsText, Readiness } from '../schemas/health.js'

const health: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/healthz', {
    schema: {
      operationId: 'liveness',
      tags: ['operations'],
      summary: 'Liveness: the process answers',
      response: { 200: Liveness }
    },
    config: { scope: 'public', rateLimit: false }
  }, async () => ({ status: 'ok' as const }))

  app.get('/readyz', {
    schema: {
      operationId: 'readiness',
      tags: ['operations'],
      summary: 'Readiness: the event bus answers a PING',
      response: { 200: Ref(Readiness, 'Ready: the bus answers'), 503: Ref(Readiness, 'Not ready: the bus does not answer') }
    },
    config: { scope: 'public', rateLimit: false }
  }, async (_request, reply) => {
    const up = await app.engine.ping().then(() => true, () => false)
    return reply.code(up ? 200 : 503).send({
      status: up ? 'ready' : 'unavailable',
      engine: app.engine.kind,
      bus: up ? 'up' : 'down'
    })
  })

  app.get('/metrics', {
    schema: {
      operationId: 'metrics',
      tags: ['operations'],
      summary: 'Prometheus metrics',
      response: { 200: { description: 'Prometheus text exposition format', content: { 'text/plain': { schema: MetricsText } } }, ...authErrors }
    },
    config: { scope: 'admin', rateLimit: false }
  }, async (_request, reply) => {
    const text = await app.metrics.registry.metrics()
    return reply.type(app.metrics.registry.contentType).send(text)
  })
}

export default health
