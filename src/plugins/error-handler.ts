import type { Socket } from 'node:net'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Errors, clientErrorBody, errorBody, isUnavailable, toErrorBody, type ErrorBody } from '../errors.js'

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
    } else if (body.code === 'BUSGATE_RATE_LIMITED') {
      // A client over its limit keeps asking: a line per refusal would let it flood the log.
      request.log.debug({ code: body.code }, 'request refused: rate limit')
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
 * What the router refuses before a route runs (a URL that does not decode, a path parameter past
 * its length), in the one error shape: these never reach the error handler.
 */
export function frameworkErrorHandler (err: { code?: string }, _request: FastifyRequest, reply: FastifyReply): void {
  const known = err.code === 'FST_ERR_MAX_PARAM_LENGTH'
    ? new Errors.NotFound('No such resource: the id is longer than any the gateway makes')
    : new Errors.BadRequest(`The URL is not valid (${err.code ?? 'unknown'})`)
  const body = errorBody(known)
  reply.code(body.statusCode).send(body)
}

/**
 * For what Node's HTTP parser refuses before Fastify sees a request (a bad chunk size, headers
 * too large, a request not complete within BUSGATE_REQUEST_TIMEOUT_MS): the one error shape,
 * then the connection is closed.
 */
export function clientErrorHandler (requestTimeoutMs: number) {
  return function (this: FastifyInstance, err: NodeJS.ErrnoException, socket: Socket): void {
    // A reset, or the peer closing mid-request (counted as an abort where the request is read):
    // the socket is gone, or going, and there is nobody to answer.
    if (err.code === 'ECONNRESET' || err.code === 'HPE_INVALID_EOF_STATE' || socket.destroyed) {
      socket.destroy()
      return
    }
    const body = clientErrorBody(err, requestTimeoutMs)
    this.metrics.clientErrors.inc({ code: body.code })
    this.log.debug({ code: body.code, reason: err.code }, 'malformed or incomplete request: connection closed')
    // Not in the middle of another answer on this connection (pipelined requests), as Node's own handler.
    const answering = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true
    if (!answering) writeRaw(socket, body)
    socket.destroySoon()
  }
}

/** Answers on a bare socket, in the one error shape, for what Node would answer itself. */
export function rawErrorAnswer (socket: Socket | null, err: { code?: string, statusCode?: number, message?: string }): void {
  if (socket !== null) writeRaw(socket, errorBody(err))
}

function writeRaw (socket: Socket, body: ErrorBody): void {
  if (!socket.writable) return
  const json = JSON.stringify(body)
  socket.write(`HTTP/1.1 ${body.statusCode} ${body.error}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(json)}\r\n\r\n${json}`)
  // A peer that does not read would keep the answer, and the socket, for ever.
  setTimeout(() => socket.destroy(), 1000).unref()
}
