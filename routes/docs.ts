import swaggerUi from '@fastify/swagger-ui'
import type { FastifyPluginAsync } from 'fastify'

const docs: FastifyPluginAsync = async (app) => {
  app.get('/openapi.json', {
    schema: { hide: true },
    config: { scope: 'public' }
  }, async () => app.swagger())

  // The page and its assets describe the API and expose no data: public, like the spec.
  await app.register(async (ui) => {
    ui.addHook('onRoute', (route) => { route.config = { ...route.config, scope: 'public' } })
    await ui.register(swaggerUi, { routePrefix: '/docs', uiConfig: { deepLinking: true } })
  })
}

export default docs
