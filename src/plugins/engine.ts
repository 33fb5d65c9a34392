import fp from 'fastify-plugin'
import { Gauge } from 'prom-client'
import type { Config } from '../config.js'
import { createEngine } from '../engines/create-engine.js'
import type { Engine } from '../engines/engine.js'
import { busCountGauge } from './metrics.js'

declare module 'fastify' {
  interface FastifyInstance {
    engine: Engine
  }
}

/** Owns the event bus connection: opened before the routes are ready, closed on shutdown. */
export default fp<{ config: Config }>(async (app, { config }) => {
  const engine = await createEngine(config, app.log)
  app.decorate('engine', engine)
  app.addHook('onClose', async () => { await engine.close() })
  await engine.connect()
  if (engine.state !== 'ready') app.log.warn('event bus not reachable yet; serving 503 until it is')

  new Gauge({ // eslint-disable-line no-new
    name: 'busgate_bus_up',
    help: '1 when the event bus connection is ready, else 0',
    labelNames: ['engine'],
    registers: [app.metrics.registry],
    collect () { this.set({ engine: engine.kind }, engine.state === 'ready' ? 1 : 0) }
  })
  busCountGauge(app.metrics.registry, 'busgate_queue_length', 'Messages waiting in the consumer list', async () => await engine.bus.queueLength())
}, { name: 'busgate-engine', fastify: '5.x', dependencies: ['busgate-metrics'] })
