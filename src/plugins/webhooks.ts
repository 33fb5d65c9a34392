import fp from 'fastify-plugin'
import { WebhookRegistry } from '../webhooks/registry.js'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    webhooks: WebhookRegistry
  }
}

/** Owns the webhook registry: kept in the engine's store, so every instance sees the same set. */
export default fp<{ config: Config }>(async (app, { config }) => {
  app.decorate('webhooks', new WebhookRegistry(app.engine.store, config.keyPrefix))
}, { name: 'busgate-webhooks', fastify: '5.x', dependencies: ['busgate-engine'] })
