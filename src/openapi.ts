import swagger from '@fastify/swagger'
import type { FastifyInstance } from 'fastify'
import { VERSION } from './version.js'

/** Collects the route schemas into the OpenAPI document; must be registered before the routes. */
export async function registerOpenApi (app: FastifyInstance): Promise<void> {
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'busgate',
        version: VERSION,
        description: 'HTTP gateway for a Redis event bus in the wire format of Backend.AI\'s manager: ' +
          'events are msgpack maps `{event_name, agent_id, args}` published to `events.pubsub` and pushed to `events.prodcons`.\n\n' +
          'Errors are always `{statusCode, code, error, message}` with a stable `code`.\n\n' +
          'JSON mapping of msgpack values leaving busgate: bin → `{"$base64": "…"}`; integers beyond ±(2^53-1) → decimal strings; ' +
          'NaN/±Infinity → strings; timestamps → ISO-8601 strings; other extensions → `{"$ext": type, "$base64": "…"}`.'
      },
      tags: [
        { name: 'events', description: 'Produce to the bus, and watch it: the event stream and the background-task view' },
        { name: 'webhooks', description: 'Consumers of the consumer list' },
        { name: 'operations', description: 'Health, readiness and metrics' },
        { name: 'dashboard', description: 'The page that shows the bus live' }
      ],
      components: {
        securitySchemes: {
          bearerAuth: { type: 'http', scheme: 'bearer', description: 'A token from BUSGATE_TOKENS' }
        }
      }
    },
    hideUntagged: true,
    // Shared schemas keep their $id as their component name instead of def-0, def-1…
    refResolver: {
      buildLocalReference: (json, _baseUri, _fragment, i) => typeof json.$id === 'string' ? json.$id : `def-${i}`
    }
  })
}
