import { Type, type Static } from '@sinclair/typebox'

export const DEAD_LETTER_REASONS = ['malformed', 'no_matching_webhook', 'delivery_failed', 'too_large'] as const

// An enum, not a union of literals: OpenAPI readers show an enum as the list it is.
export const DeadLetterReason = Type.Unsafe<typeof DEAD_LETTER_REASONS[number]>({
  type: 'string',
  enum: [...DEAD_LETTER_REASONS],
  description: '`malformed`: not an event; `no_matching_webhook`: no enabled webhook takes its name; `delivery_failed`: retries ran out; ' +
    '`too_large`: larger than a bus message may be'
})

export const DeadLetter = Type.Object({
  id: Type.String({ examples: ['dl_W6qZ3nS5d2bHc9Vf'] }),
  message_id: Type.String({ description: 'the webhook-id its deliveries carried' }),
  reason: DeadLetterReason,
  error: Type.String({ description: 'the last error' }),
  event_name: Type.Union([Type.String(), Type.Null()]),
  agent_id: Type.Union([Type.String(), Type.Null()]),
  webhook_id: Type.Optional(Type.Union([Type.String(), Type.Null()], {
    description: 'a subscriber webhook\'s copy: the webhook it was for, to which alone a redelivery goes; null for a message of the consumer list'
  })),
  frame: Type.Union([Type.String(), Type.Null()], {
    description: 'the message as it was on the bus, base64; null when it is larger than BUSGATE_BUS_MAX_MESSAGE_BYTES ' +
      '(its bytes are kept and redelivered, but not shown)'
  }),
  frame_bytes: Type.Integer({ minimum: 0, description: 'the size of the message as kept, in bytes' }),
  attempts: Type.Integer(),
  first_seen: Type.String({ format: 'date-time' }),
  dead_at: Type.String({ format: 'date-time' })
}, { $id: 'DeadLetter', title: 'DeadLetter', additionalProperties: false, description: 'A message that could not be delivered' })

export type DeadLetter = Static<typeof DeadLetter>

/**
 * A dead letter as stored: all of it but its id (the key it is kept under) and its bytes (kept
 * as bytes, not base64, their size known from them). Not part of the HTTP API.
 */
export const DeadLetterRecord = Type.Omit(DeadLetter, ['id', 'frame', 'frame_bytes'], { title: 'DeadLetterRecord', description: 'A dead letter as stored' })

export type DeadLetterRecord = Static<typeof DeadLetterRecord>

/** A dead letter as busgate before the current layout kept it, whole, bytes in base64, in one list. Not part of the HTTP API. */
export const OldDeadLetter = Type.Composite([Type.Omit(DeadLetter, ['frame', 'frame_bytes']), Type.Object({ frame: Type.String() })],
  { title: 'OldDeadLetter', additionalProperties: false })

export const DeadLetterList = Type.Object({
  dead_letters: Type.Array(Type.Ref('DeadLetter')),
  total: Type.Integer({ description: 'how many match the filters (without any: how many are kept)' })
}, { $id: 'DeadLetterList', title: 'DeadLetterList', additionalProperties: false, description: 'Dead letters, newest first' })

export const DeadLetterQuery = Type.Object({
  offset: Type.Integer({ minimum: 0, maximum: 1_000_000, default: 0, description: 'at most BUSGATE_DEAD_LETTER_MAX can be kept' }),
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
  reason: Type.Optional(DeadLetterReason),
  event_name: Type.Optional(Type.String({ minLength: 1, description: 'only the letters of events of exactly this name' }))
}, { additionalProperties: false })

export const DEAD_LETTER_ID = '^dl_[A-Za-z0-9_-]{16}$'

export const DeadLetterParams = Type.Object({
  id: Type.String({ pattern: DEAD_LETTER_ID, description: 'the dead letter id' })
})

export const Redelivered = Type.Object({
  redelivered: Type.Integer({ description: 'messages put back on the consumer list (not broadcast again)' })
}, { $id: 'Redelivered', title: 'Redelivered', additionalProperties: false, description: 'Back in the consumer list' })

/** One delivery attempt, as the API shows it and as the attempt log stores it. */
export const Attempt = Type.Object({
  at: Type.String({ format: 'date-time' }),
  message_id: Type.String(),
  event_name: Type.String(),
  status: Type.Union([Type.Integer(), Type.Null()], { description: 'the HTTP status, or null when none came' }),
  latency_ms: Type.Number(),
  error: Type.Union([Type.String(), Type.Null()])
}, { additionalProperties: false })
export type Attempt = Static<typeof Attempt>

export const AttemptList = Type.Object({
  attempts: Type.Array(Attempt)
}, { $id: 'AttemptList', title: 'AttemptList', additionalProperties: false, description: 'The latest delivery attempts (at most 100), newest first' })
