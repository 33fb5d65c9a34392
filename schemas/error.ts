import { Type, type Static } from '@sinclair/typebox'

export const ErrorResponse = Type.Object({
  statusCode: Type.Integer({ description: 'the HTTP status, repeated', examples: [400] }),
  code: Type.String({ description: 'stable machine-readable code, `BUSGATE_…`', examples: ['BUSGATE_VALIDATION_FAILED'] }),
  error: Type.String({ description: 'the HTTP reason phrase', examples: ['Bad Request'] }),
  message: Type.String({ description: 'what went wrong, for people', examples: ['body/event_name must match pattern "^[a-z][a-z0-9]*(_[a-z0-9]+)*$"'] })
}, { $id: 'Error', title: 'Error', description: 'Every error busgate returns, whatever the route.' })
export type ErrorResponse = Static<typeof ErrorResponse>

const ref = Type.Unsafe<ErrorResponse>(Type.Ref('Error'))

function errors<const S extends readonly number[]> (...statuses: S): { [K in S[number]]: typeof ref } {
  return Object.fromEntries(statuses.map((s) => [s, ref])) as { [K in S[number]]: typeof ref }
}

/** The error responses of a route: the ones its own logic can give, plus those every authenticated route can. */
export const errorResponses = errors
export const authErrors = errors(401, 403, 500)
