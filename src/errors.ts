import createError from '@fastify/error'

// Every error a client can see. The codes are part of the HTTP contract: never rename one.
export const Errors = {
  BadRequest: createError('BUSGATE_BAD_REQUEST', '%s', 400),
  ClientAborted: createError('BUSGATE_CLIENT_ABORTED', 'The client closed the connection before the request was complete', 400),
  RequestTimeout: createError('BUSGATE_REQUEST_TIMEOUT', 'The request was not complete within %s ms', 408),
  HeadersTooLarge: createError('BUSGATE_HEADERS_TOO_LARGE', 'The request headers are larger than the server accepts', 431),
  ExpectationFailed: createError('BUSGATE_EXPECTATION_FAILED', 'The gateway meets no Expect header but 100-continue', 417),
  InvalidJson: createError('BUSGATE_INVALID_JSON', 'The body is not valid JSON: %s', 400),
  ValidationFailed: createError('BUSGATE_VALIDATION_FAILED', '%s', 400),
  InvalidMsgpack: createError('BUSGATE_INVALID_MSGPACK', 'The body is not a valid msgpack event: %s', 400),
  InvalidEvent: createError('BUSGATE_INVALID_EVENT', 'The event cannot be put on the bus: %s', 400),
  Unauthorized: createError('BUSGATE_UNAUTHORIZED', '%s', 401),
  Forbidden: createError('BUSGATE_FORBIDDEN', '%s', 403),
  NotFound: createError('BUSGATE_NOT_FOUND', '%s', 404),
  UnsafeWebhookUrl: createError('BUSGATE_UNSAFE_WEBHOOK_URL', 'The webhook URL is refused: %s', 400),
  PayloadTooLarge: createError('BUSGATE_PAYLOAD_TOO_LARGE', 'The body is larger than the limit of %s bytes', 413),
  MessageTooLarge: createError('BUSGATE_MESSAGE_TOO_LARGE', 'The event is larger than the bus takes: %s', 413),
  UnsupportedMediaType: createError('BUSGATE_UNSUPPORTED_MEDIA_TYPE', 'Content-Type %s is not accepted here; use %s', 415),
  RateLimited: createError('BUSGATE_RATE_LIMITED', 'More than %s requests in %s ms from this client; retry in %s', 429),
  Internal: createError('BUSGATE_INTERNAL', 'Internal Server Error', 500),
  RedisUnavailable: createError('BUSGATE_REDIS_UNAVAILABLE', 'The event bus is unavailable: %s', 503),
  ReplicationUnconfirmed: createError('BUSGATE_REPLICATION_UNCONFIRMED',
    'The event reached the Redis master but %s: it may be kept or lost (a retry may make a duplicate)', 503),
  QueueFull: createError('BUSGATE_QUEUE_FULL', 'The consumer list is full (%s messages); retry later', 503),
  ShuttingDown: createError('BUSGATE_SHUTTING_DOWN', 'The gateway is shutting down; retry on another instance', 503),
  TooManyStreams: createError('BUSGATE_TOO_MANY_STREAMS', 'This instance holds its maximum of %s streams; retry on another instance', 503)
} as const

export type ErrorCode = `BUSGATE_${string}`

export interface ErrorBody {
  statusCode: number
  code: string
  error: string
  message: string
}

/** An engine failure that means "try again": the bus is unreachable, slow or full. */
export function isUnavailable (err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return code === 'BUSGATE_REDIS_UNAVAILABLE' || code === 'BUSGATE_QUEUE_FULL' || code === 'BUSGATE_REPLICATION_UNCONFIRMED' || code === 'BUSGATE_SHUTTING_DOWN' ||
    code === 'BUSGATE_TOO_MANY_STREAMS'
}

const OUTCOME_UNKNOWN = Symbol('outcome unknown')

/** Marks an engine failure after the command was sent (a timeout, a dropped connection): Redis may have run it. */
export function outcomeUnknown<E extends Error> (err: E): E {
  return Object.assign(err, { [OUTCOME_UNKNOWN]: true })
}

/** Whether the failed command may still have been carried out (see outcomeUnknown). */
export function isOutcomeUnknown (err: unknown): boolean {
  return (err as { [OUTCOME_UNKNOWN]?: unknown } | null)?.[OUTCOME_UNKNOWN] === true
}

interface RaisedError {
  code?: string
  statusCode?: number
  message?: string
  validation?: unknown
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  406: 'Not Acceptable',
  408: 'Request Timeout',
  413: 'Payload Too Large',
  415: 'Unsupported Media Type',
  417: 'Expectation Failed',
  429: 'Too Many Requests',
  431: 'Request Header Fields Too Large',
  500: 'Internal Server Error',
  503: 'Service Unavailable'
}

export interface ErrorContext {
  bodyLimit: number
  contentType: string | undefined
  accepted: readonly string[]
}

/**
 * Turns anything thrown while serving a request into the one error shape. Busgate's own errors
 * pass through; Fastify's are given busgate codes; anything else is a 500 whose details stay in the log.
 */
export function toErrorBody (raised: unknown, context: ErrorContext): ErrorBody {
  return errorBody(translate((typeof raised === 'object' && raised !== null ? raised : {}) as RaisedError, context))
}

/** The one error shape, from one of busgate's errors (or anything with a code and status). */
export function errorBody (known: RaisedError): ErrorBody {
  const statusCode = known.statusCode ?? 500
  return {
    statusCode,
    code: known.code ?? 'BUSGATE_INTERNAL',
    error: STATUS_TEXT[statusCode] ?? 'Error',
    message: known.message ?? 'Internal Server Error'
  }
}

/** What a malformed request that never reached Fastify (a bad chunk size, a timeout) gets. */
export function clientErrorBody (err: { code?: string }, requestTimeoutMs: number): ErrorBody {
  switch (err.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return errorBody(new Errors.RequestTimeout(requestTimeoutMs))
    case 'HPE_HEADER_OVERFLOW':
      return errorBody(new Errors.HeadersTooLarge())
    default:
      return errorBody(new Errors.BadRequest(`The request is not valid HTTP/1.1 (${err.code ?? 'unknown'})`))
  }
}

function translate (err: RaisedError, context: ErrorContext): RaisedError {
  if (typeof err.code === 'string' && err.code.startsWith('BUSGATE_')) return err
  if (err.validation !== undefined) return new Errors.ValidationFailed(err.message)
  switch (err.code) {
    // The body stream ended early: the client went away, nothing is wrong here.
    case 'ECONNRESET':
    case 'ERR_STREAM_PREMATURE_CLOSE':
      return new Errors.ClientAborted()
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new Errors.InvalidJson('the body is empty')
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new Errors.InvalidJson('it could not be parsed')
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new Errors.PayloadTooLarge(context.bodyLimit)
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_ERR_CTP_INVALID_TYPE':
      return new Errors.UnsupportedMediaType(context.contentType ?? '(none)', context.accepted.join(' or '))
  }
  // Fastify's other client errors (bad Content-Length, malformed URL…) keep their status.
  if (typeof err.code === 'string' && err.code.startsWith('FST_') && (err.statusCode ?? 500) < 500) {
    const status = err.statusCode ?? 400
    return { code: status === 404 ? 'BUSGATE_NOT_FOUND' : 'BUSGATE_BAD_REQUEST', statusCode: status, message: err.message }
  }
  return new Errors.Internal()
}
