import { Type, type Static } from '@sinclair/typebox'
import { Ref } from './common.js'

export const ErrorResponse = Type.Object({
  statusCode: Type.Integer({ description: 'the HTTP status, repeated', examples: [400] }),
  code: Type.String({ description: 'stable machine-readable code, `BUSGATE_…`', examples: ['BUSGATE_VALIDATION_FAILED'] }),
  error: Type.String({ description: 'the HTTP reason phrase', examples: ['Bad Request'] }),
  message: Type.String({ description: 'what went wrong, for people', examples: ['body/event_name must match pattern "^[a-z][a-z0-9]*(_[a-z0-9]+)*$"'] })
}, { $id: 'Error', title: 'Error', description: 'Every error busgate returns, whatever the route.' })
export type ErrorResponse = Static<typeof ErrorResponse>

const MEANING = {
  400: 'The request is malformed: `BUSGATE_INVALID_JSON`, `BUSGATE_VALIDATION_FAILED`, `BUSGATE_INVALID_MSGPACK`, `BUSGATE_INVALID_EVENT`, `BUSGATE_BAD_REQUEST`',
  401: 'No token, or not a valid one (`BUSGATE_UNAUTHORIZED`)',
  403: 'The token lacks the scope this route needs (`BUSGATE_FORBIDDEN`)',
  404: 'Nothing here (`BUSGATE_NOT_FOUND`)',
  413: 'The body is larger than BUSGATE_BODY_LIMIT (`BUSGATE_PAYLOAD_TOO_LARGE`)',
  415: 'The Content-Type is not one this route takes (`BUSGATE_UNSUPPORTED_MEDIA_TYPE`)',
  429: 'More requests than BUSGATE_RATE_LIMIT allows this client (its token, or its address without one) in BUSGATE_RATE_LIMIT_WINDOW_MS; retry after `Retry-After` seconds (`BUSGATE_RATE_LIMITED`). Only when a limit is set',
  500: 'A fault in the gateway; details are logged, not returned (`BUSGATE_INTERNAL`)',
  503: 'The event bus is unavailable or full; nothing was written; retry after `Retry-After` seconds (`BUSGATE_REDIS_UNAVAILABLE`, `BUSGATE_QUEUE_FULL`, `BUSGATE_SHUTTING_DOWN`)'
} as const

type Status = keyof typeof MEANING
type ErrorRef = ReturnType<typeof Ref<typeof ErrorResponse>>

/** The error responses of a route, each a reference to the one Error schema. */
export function errorResponses<const S extends readonly Status[]> (...statuses: S): { [K in S[number]]: ErrorRef } {
  return Object.fromEntries(statuses.map((s) => [s, Ref(ErrorResponse, MEANING[s])])) as { [K in S[number]]: ErrorRef }
}

/** What every route behind a token can answer besides its own errors. */
export const authErrors = errorResponses(401, 403, 500)
