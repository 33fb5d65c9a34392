import type { Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { Errors, clientErrorBody, isUnavailable, toErrorBody } from '../errors.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** count this route's refusals in busgate_events_rejected_total */
    countsRejections?: boolean
  }
}

/** The one place errors become responses. */
export default fp<{ bodyLimit: number }>(async (app, { bodyLimit }) => {
  app.setErrorHandler((err, request, reply) => {
    const schema = request.routeOptions.schema as { body?: { content?: Record<string, unknown> } } | undefined
    const body = toErrorBody(err, {
      bodyLimit,
      contentType: request.headers['content-type'],
      accepted: Object.keys(schema?.body?.content ?? { 'application/json': true })
    })
    if (isUnavailable(err)) {
      // The engine logs the outage once; a line per refused request would flood the log.
      request.log.debug({ code: body.code, statusCode: body.statusCode }, 'request refused: bus unavailable')
    } else if (body.code === 'BUSGATE_CLIENT_ABORTED') {
      // Nobody is left to answer, and nothing went wrong here.
      app.metrics.clientErrors.inc({ code: body.code })
      request.log.debug({ code: body.code }, 'client went away mid-request')
    } else if (body.statusCode >= 500) {
      request.log.error({ err }, 'request failed')
    } else {
      request.log.info({ code: body.code, statusCode: body.statusCode, reason: body.message }, 'request refused')
    }
    if (request.routeOptions.config.countsRejections === true) app.metrics.rejected.inc({ reason: body.code })
    if (body.statusCode === 401) reply.header('www-authenticate', 'Bearer realm="busgate"')
    if (body.statusCode === 503) reply.header('retry-after', '1')
    return reply.code(body.statusCode).send(body)
  })

  app.setNotFoundHandler(async (request) => {
    throw new Errors.NotFound(`No route ${request.method} ${request.url.split('?')[0] ?? ''}`)
  })
}, { name: 'busgate-error-handler', fastify: '5.x', dependencies: ['busgate-metrics'] })

/**
 * For what Node's HTTP parser refuses before Fastify sees a request (a bad chunk size, headers
 * too large, a request not complete within BUSGATE_REQUEST_TIMEOUT_MS): the one error shape,
 * then the connection is closed.
 */
export function clientErrorHandler (requestTimeoutMs: number) {
  return function (this: FastifyInstance, err: NodeJS.ErrnoException, socket: Socket): void {
    // A reset: the socket is gone and there is nobody to answer.
    if (err.code === 'ECONNRESET' || socket.destroyed) return
    const body = clientErrorBody(err, requestTimeoutMs)
    this.metrics.clientErrors.inc({ code: body.code })
    this.log.debug({ code: body.code, reason: err.code }, 'malformed or incomplete request: connection closed')
    // Not in the middle of another answer on this connection (pipelined requests), as Node's own handler.
    const answering = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true
    if (socket.writable && !answering) {
      const json = JSON.stringify(body)
      socket.write(`HTTP/1.1 ${body.statusCode} ${body.error}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(json)}\r\n\r\n${json}`)
    }
    socket.destroySoon()
    // A peer that does not read would keep the answer, and the socket, for ever.
    setTimeout(() => socket.destroy(), 1000).unref()
  }
}
