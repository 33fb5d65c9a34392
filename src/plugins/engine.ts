import fp from 'fastify-plugin'
import { Gauge } from 'prom-client'
import type { Config } from '../config.js'
import { createEngine, type Engine } from '../engines/engine.js'

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

  const registers = [app.metrics.registry]
  new Gauge({ // eslint-disable-line no-new
    name: 'busgate_bus_up',
    help: '1 when the event bus connection is ready, else 0',
    labelNames: ['engine'],
    registers,
    collect () { this.set({ engine: engine.kind }, engine.state === 'ready' ? 1 : 0) }
  })
  new Gauge({ // eslint-disable-line no-new
    name: 'busgate_queue_length',
    help: 'Messages waiting in the consumer list (NaN while the bus is unreachable)',
    registers,
    async collect () {
      try {
        this.set(await engine.queueLength())
      } catch {
        // Unknown while the bus is down: NaN, rather than a stale or a false zero.
        this.set(Number.NaN)
      }
    }
  })
}, { name: 'busgate-engine', fastify: '5.x', dependencies: ['busgate-metrics'] })
