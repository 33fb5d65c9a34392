import rateLimit, { normalizeIP } from '@fastify/rate-limit'
import type { FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { Errors } from '../errors.js'
import { errorResponses } from '../../schemas/error.js'

const tooMany = errorResponses(429)

/**
 * Whether a route is counted. Public routes (liveness, readiness, the spec, the docs and the
 * dashboard's page) describe the gateway and read no data: an orchestrator's probes and a
 * browser loading assets must never be refused. `rateLimit: false` exempts a route that needs a
 * token (`/metrics`: a scraper must see an instance that is being flooded).
 */
function counted (config: { scope?: string, rateLimit?: unknown } | undefined): boolean {
  return config?.rateLimit !== false && config?.scope !== 'public'
}

/** The client a request is counted against: its valid token (by digest), else its address. */
function clientKey (request: FastifyRequest): string {
  // Addresses as the library's default: an IPv6 client holds its whole /64, so it cannot
  // step around the limit by changing the low bits.
  return request.tokenDigest === null ? `ip:${normalizeIP(request.ip)}` : `token:${request.tokenDigest}`
}

/**
 * Per-client request limits (BUSGATE_RATE_LIMIT per BUSGATE_RATE_LIMIT_WINDOW_MS). With Redis the
 * counts live there, on the engine's commands connection, so every instance shares them; with the
 * memory engine each process counts alone. Registered after auth: its hook is the route's own,
 * which runs after auth's, so it sees which token was valid.
 */
export default fp<{ config: Config }>(async (app, { config }) => {
  // Declared whether or not a limit is set, as auth declares 401: the spec must not depend on the deployment.
  app.addHook('onRoute', (route) => {
    if (!counted(route.config)) return
    const schema = (route.schema ?? {}) as { response?: Record<string, unknown> }
    route.schema = { ...schema, response: { ...schema.response, ...tooMany } }
  })

  if (config.rateLimit === 0) return
  const redis = app.engine.commands
  await app.register(rateLimit, {
    max: config.rateLimit,
    timeWindow: config.rateLimitWindowMs,
    keyGenerator: clientKey,
    allowList: (request) => !counted(request.routeOptions.config),
    // The commands connection fails fast while Redis is away (no offline queue): requests then go
    // through uncounted, and get the engine's own 503 where they need the bus, rather than a 500 here.
    skipOnError: true,
    ...(redis === undefined ? {} : { redis, nameSpace: `${config.keyPrefix}rate-limit:` }),
    enableDraftSpec: true,
    onExceeded: (request) => {
      app.metrics.rateLimited.inc({ route: request.routeOptions.url ?? 'unmatched', client: request.tokenDigest === null ? 'address' : 'token' })
    },
    errorResponseBuilder: (_request, context) => new Errors.RateLimited(context.max, config.rateLimitWindowMs, context.after)
  })
}, { name: 'busgate-rate-limit', fastify: '5.x', dependencies: ['busgate-auth', 'busgate-engine', 'busgate-metrics'] })
