import { Type } from '@sinclair/typebox'

export const DeadLetter = Type.Object({
  id: Type.String({ examples: ['dl_W6qZ3nS5d2bHc9Vf'] }),
  message_id: Type.String({ description: 'the webhook-id its deliveries carried' }),
  reason: Type.Unsafe<'malformed' | 'no_matching_webhook' | 'delivery_failed' | 'too_large'>({
    type: 'string',
    enum: ['malformed', 'no_matching_webhook', 'delivery_failed', 'too_large'],
    description: '`malformed`: not an event; `no_matching_webhook`: no enabled webhook takes its name; `delivery_failed`: retries ran out; ' +
      '`too_large`: over BUSGATE_BUS_MAX_MESSAGE_BYTES, or more values than busgate decodes, set aside undecoded'
  }),
  error: Type.String({ description: 'the last error' }),
  event_name: Type.Union([Type.String(), Type.Null()]),
  agent_id: Type.Union([Type.String(), Type.Null()]),
  frame: Type.String({ description: 'the message as it was on the bus, base64' }),
  attempts: Type.Integer(),
  first_seen: Type.String({ format: 'date-time' }),
  dead_at: Type.String({ format: 'date-time' })
}, { $id: 'DeadLetter', title: 'DeadLetter', additionalProperties: false, description: 'A message that could not be delivered' })

export const DeadLetterList = Type.Object({
  dead_letters: Type.Array(Type.Ref('DeadLetter')),
  total: Type.Integer({ description: 'how many the list holds' })
}, { $id: 'DeadLetterList', title: 'DeadLetterList', additionalProperties: false, description: 'Dead letters, newest first' })

export const DeadLetterQuery = Type.Object({
  offset: Type.Integer({ minimum: 0, default: 0 }),
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 })
}, { additionalProperties: false })

export const DeadLetterParams = Type.Object({
  id: Type.String({ pattern: '^dl_[A-Za-z0-9_-]{16}$', description: 'the dead letter id' })
})

export const Redelivered = Type.Object({
  redelivered: Type.Integer({ description: 'messages put back on the consumer list (not broadcast again)' })
}, { $id: 'Redelivered', title: 'Redelivered', additionalProperties: false, description: 'Back in the consumer list' })

export const AttemptList = Type.Object({
  attempts: Type.Array(Type.Object({
    at: Type.String({ format: 'date-time' }),
    message_id: Type.String(),
    event_name: Type.String(),
    status: Type.Union([Type.Integer(), Type.Null()], { description: 'the HTTP status, or null when none came' }),
    latency_ms: Type.Number(),
    error: Type.Union([Type.String(), Type.Null()])
  }, { additionalProperties: false }))
}, { $id: 'AttemptList', title: 'AttemptList', additionalProperties: false, description: 'The latest delivery attempts (at most 100), newest first' })
