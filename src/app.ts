import type { IncomingMessage } from 'node:http'
import cors from '@fastify/cors'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Fastify, { LogController, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import type { Config } from './config.js'
import { registerOpenApi } from './openapi.js'
import authPlugin from './plugins/auth.js'
import enginePlugin from './plugins/engine.js'
import errorHandler, { clientErrorHandler, frameworkErrorHandler, rawErrorAnswer } from './plugins/error-handler.js'
import metricsPlugin from './plugins/metrics.js'
import rateLimitPlugin from './plugins/rate-limit.js'
import ssePlugin from './plugins/sse-hub.js'
import tasksPlugin from './plugins/tasks.js'
import webhooksPlugin from './plugins/webhooks.js'
import { Errors } from './errors.js'
import { buildValidator } from './validation.js'
import docsRoutes from '../routes/docs.js'
import eventRoutes from '../routes/events.js'
import taskRoutes from '../routes/tasks.js'
import uiRoutes from '../routes/ui.js'
import healthRoutes from '../routes/health.js'
import webhookRoutes from '../routes/webhooks.js'
import deadLetterRoutes from '../routes/dead-letters.js'
import { AttemptList, DeadLetter, DeadLetterList, Redelivered } from '../schemas/dead-letter.js'
import { ErrorResponse } from '../schemas/error.js'
import { EventInput, ProduceAccepted, WireEvent } from '../schemas/event.js'
import { Readiness } from '../schemas/health.js'
import { SecretRotated, Webhook, WebhookCreated, WebhookHealth, WebhookInput, WebhookList, WebhookPatch } from '../schemas/webhook.js'

/**
 * Tokens travel in `?access_token=` for EventSource clients: keep them out of every log line.
 * Each parameter's name is decoded as the query parser decodes it (`access%5Ftoken` is the same
 * parameter), so no spelling the gateway accepts slips past.
 */
export function redactUrl (url: string): string {
  // The router ends the path at any of these, and a client may put its token after each.
  const q = url.search(/[?#;]/)
  if (q < 0) return url
  const pairs = url.slice(q + 1).split(/([&;#?])/).map((pair) => {
    const eq = pair.indexOf('=')
    const name = eq < 0 ? pair : pair.slice(0, eq)
    // Any spelling near the parser's own (another case, `access_token[]`, a stray byte): a
    // client that gets the name wrong sends its token all the same.
    return decodeName(name).toLowerCase().includes('access_token') ? `${name}=[redacted]` : pair
  })
  return `${url.slice(0, q + 1)}${pairs.join('')}`
}

function decodeName (name: string): string {
  const spaced = name.replaceAll('+', ' ')
  try {
    return decodeURIComponent(spaced)
  } catch {
    // The parser keeps what it cannot decode as it is, and decodes the rest piece by piece.
    return spaced.replace(/%([0-9a-fA-F]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)))
  }
}

export function loggerOptions (level: string): FastifyServerOptions['logger'] {
  return {
    level,
    serializers: {
      req: (req: { method: string, url: string, ip?: string }) => ({ method: req.method, url: redactUrl(req.url), remoteAddress: req.ip })
    }
  }
}

/** The levels (LOG_LEVELS) at which a debug line is written. */
const WRITES_DEBUG: ReadonlySet<string> = new Set(['debug', 'trace'])

/**
 * Access lines at debug: at info, a line per request would cost more than producing the event.
 * Refusals and failures are logged by the error handler at info and error.
 */
class AccessLog extends LogController {
  override incomingRequest (): void {}
  override requestCompleted (error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    // Built only when it will be written: this runs for every request.
    if (!WRITES_DEBUG.has(request.log.level)) return
    // A stream closed by its client ends "with an error" (premature close): still just an access line.
    request.log.debug({ req: request, statusCode: reply.statusCode, ms: reply.elapsedTime, ...(error == null ? {} : { ended: error.message }) },
      'request completed')
  }
}

export interface BuildOptions {
  /** pino options, or false for silence; defaults to the configured level */
  logger?: FastifyServerOptions['logger']
}

/** Builds the gateway without listening: the entry point listens, tests use `inject` or listen on port 0. */
export async function buildApp (config: Config, options: BuildOptions = {}) {
  const app = Fastify({
    logger: options.logger ?? loggerOptions(config.logLevel),
    bodyLimit: config.bodyLimit,
    // A client gets this long to send a whole request, headers and body: a slow sender
    // (slowloris) cannot hold a connection, and the check runs every second rather than Node's 30.
    requestTimeout: config.requestTimeoutMs,
    // No Host is no reason to refuse a request here (routing does not use it), and Node's own
    // refusal would not be in the error shape.
    http: { headersTimeout: config.requestTimeoutMs, connectionsCheckingInterval: Math.min(1000, config.requestTimeoutMs), requireHostHeader: false },
    clientErrorHandler: clientErrorHandler(config.requestTimeoutMs),
    frameworkErrors: frameworkErrorHandler,
    logController: new AccessLog(),
    schemaController: { compilersFactory: { buildValidator } }
  }).withTypeProvider<TypeBoxTypeProvider>()

  // Only JSON, and msgpack where a route adds it: a text/plain body must get 415, not reach a handler.
  app.removeContentTypeParser('text/plain')
  for (const schema of [ErrorResponse, EventInput, WireEvent, ProduceAccepted, Readiness,
    WebhookInput, WebhookPatch, WebhookHealth, Webhook, WebhookCreated, WebhookList, SecretRotated, DeadLetter, DeadLetterList, Redelivered, AttemptList]) app.addSchema(schema)

  await app.register(metricsPlugin)
  await app.register(errorHandler, { bodyLimit: config.bodyLimit })
  // CORS before auth: a browser must be able to read a 401 too.
  if (config.corsOrigins !== undefined) {
    await app.register(cors, {
      origin: config.corsOrigins.includes('*') ? '*' : [...config.corsOrigins],
      methods: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'],
      allowedHeaders: ['Authorization', 'Content-Type', 'Last-Event-ID'],
      // A browser client must be able to see when it may come back.
      exposedHeaders: ['Retry-After', 'RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset'],
      maxAge: 600
    })
  }
  await app.register(authPlugin, { tokens: config.tokens })
  await app.register(enginePlugin, { config })
  // Before any route, so each one gets its hook and its 429 in the spec.
  await app.register(rateLimitPlugin, { config })
  await app.register(ssePlugin, { config })
  await app.register(tasksPlugin, { config })
  await app.register(webhooksPlugin, { config })
  await registerOpenApi(app)

  // Once shutdown starts, answers to in-flight requests close their connection: a keep-alive
  // socket left open would hold the process until the shutdown bound.
  // An answer sent before its request's body was read (a 401, a 413) closes the connection
  // too: keeping it would mean reading whatever the client still sends, as slowly as it likes.
  let closing = false
  app.addHook('preClose', async () => { closing = true })
  app.addHook('onSend', (request, reply, payload, done) => {
    if (closing || !request.raw.complete) reply.header('connection', 'close')
    done(null, payload)
  })
  // Past the bound Node closes new connections at once: file descriptors stay for Redis and receivers.
  app.server.maxConnections = config.maxConnections
  // Requests Node answers itself otherwise, without the error shape (or, for CONNECT, not at all).
  app.server.on('checkExpectation', (_req, res) => {
    rawErrorAnswer(res.socket, new Errors.ExpectationFailed())
    res.socket?.destroySoon()
  })
  app.server.on('connect', (req: IncomingMessage) => {
    rawErrorAnswer(req.socket, new Errors.BadRequest('CONNECT is not served here'))
    req.socket.destroySoon()
  })

  await app.register(healthRoutes)
  await app.register(eventRoutes, { config })
  await app.register(taskRoutes, { config })
  await app.register(webhookRoutes, { config })
  await app.register(deadLetterRoutes)
  await app.register(docsRoutes)
  await app.register(uiRoutes)
  return app
}

export type App = Awaited<ReturnType<typeof buildApp>>
