import { Type, type Static } from '@sinclair/typebox'

const EventGlob = Type.String({
  pattern: '^[A-Za-z0-9_.:*-]{1,128}$',
  description: 'an event name, `*` matching any run of characters',
  examples: ['kernel_*']
})

const EventNames = Type.Array(EventGlob, {
  minItems: 1,
  maxItems: 50,
  description: 'the events this webhook takes (a consumer) or gets a copy of (a subscriber); `["*"]` for all',
  examples: [['kernel_*', 'session_started']]
})

const Url = Type.String({ format: 'uri', maxLength: 2048, description: 'where events are POSTed (http or https)', examples: ['https://receiver.example/hooks/busgate'] })
const Description = Type.String({ maxLength: 500, description: 'free text for people' })
const Enabled = Type.Boolean({ description: 'a disabled webhook receives nothing' })
const Role = Type.Union([Type.Literal('consumer'), Type.Literal('subscriber')], {
  description: '`consumer`: takes its share of the consumer list (each queued message goes to one consumer webhook, round-robin, ' +
    'competing with Backend.AI\'s managers for what it matches); `subscriber`: gets a copy of every matching event of the broadcast channel, ' +
    'whoever published it, and never touches the consumer list. Set at registration; it cannot be changed.',
  examples: ['subscriber']
})

const MaxInFlight = Type.Integer({
  minimum: 1,
  maximum: 100_000,
  description: 'most deliveries to it at once, across all gateway instances; unset: no bound but the instances\' own',
  examples: [10]
})
const RateLimit = Type.Number({
  exclusiveMinimum: 0,
  maximum: 100_000,
  description: 'most deliveries to it per second, across all gateway instances, evenly spaced; unset: no bound',
  examples: [50]
})

export const WebhookInput = Type.Object({
  url: Url,
  event_names: Type.Optional(EventNames),
  description: Type.Optional(Description),
  enabled: Type.Optional(Enabled),
  role: Type.Optional(Role),
  max_in_flight: Type.Optional(MaxInFlight),
  rate_limit: Type.Optional(RateLimit)
}, { $id: 'WebhookInput', title: 'WebhookInput', additionalProperties: false, description: 'A new webhook. `event_names` defaults to `["*"]`, `enabled` to true, `role` to `consumer`.' })
export type WebhookInput = Static<typeof WebhookInput>

export const WebhookPatch = Type.Object({
  url: Type.Optional(Url),
  event_names: Type.Optional(EventNames),
  description: Type.Optional(Description),
  enabled: Type.Optional(Enabled),
  max_in_flight: Type.Optional(Type.Union([MaxInFlight, Type.Null()], { description: `${MaxInFlight.description}; null removes the bound` })),
  rate_limit: Type.Optional(Type.Union([RateLimit, Type.Null()], { description: `${RateLimit.description}; null removes the bound` }))
}, { $id: 'WebhookPatch', title: 'WebhookPatch', additionalProperties: false, minProperties: 1, description: 'The fields to change' })
export type WebhookPatch = Static<typeof WebhookPatch>

const Instant = Type.Union([Type.String({ format: 'date-time' }), Type.Null()])

export const WebhookHealth = Type.Object({
  state: Type.Union([Type.Literal('healthy'), Type.Literal('failing'), Type.Literal('set_aside'), Type.Literal('disabled')], {
    description: '`healthy`: the last attempt succeeded (or none was made); `failing`: failed since the last success; ' +
      '`set_aside`: no delivery until `set_aside_until` (its circuit is open, or it asked to wait with Retry-After); `disabled`: it gets nothing',
    examples: ['failing']
  }),
  consecutive_failures: Type.Integer({ minimum: 0, description: 'failed attempts since the last success' }),
  last_attempt_at: { ...Instant, description: 'when the last delivery attempt ended' },
  last_status: Type.Union([Type.Integer(), Type.Null()], { description: 'its HTTP status; null when there was no answer (refused, timed out) or no attempt' }),
  set_aside_until: { ...Instant, description: 'while set aside: when deliveries may try again' }
}, { $id: 'WebhookHealth', title: 'WebhookHealth', additionalProperties: false, description: 'The webhook\'s health as every gateway instance shares it (they agree within about a second)' })
export type WebhookHealth = Static<typeof WebhookHealth>

export const Webhook = Type.Object({
  id: Type.String({ examples: ['wh_3q2XkLZb9v1tY0aB'] }),
  url: Type.String(),
  event_names: Type.Array(Type.String()),
  description: Type.String(),
  enabled: Type.Boolean(),
  role: Role,
  max_in_flight: Type.Union([Type.Integer(), Type.Null()], { description: 'most deliveries to it at once, across all instances; null: no bound' }),
  rate_limit: Type.Union([Type.Number(), Type.Null()], { description: 'most deliveries to it per second, across all instances; null: no bound' }),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
  health: Type.Ref('WebhookHealth')
}, { $id: 'Webhook', title: 'Webhook', additionalProperties: false, description: 'A registered webhook; its secret is never shown here' })
export type Webhook = Static<typeof Webhook>

export const WebhookCreated = Type.Object({
  ...Webhook.properties,
  secret: Type.String({ description: 'the signing secret (Standard Webhooks, `whsec_…`); shown this once', examples: ['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'] })
}, { $id: 'WebhookCreated', title: 'WebhookCreated', additionalProperties: false, description: 'The new webhook, with its secret: keep it, it is not shown again' })

export const WebhookList = Type.Object({
  webhooks: Type.Array(Type.Ref('Webhook'))
}, { $id: 'WebhookList', title: 'WebhookList', additionalProperties: false, description: 'Every registered webhook, oldest first' })

export const SecretRotated = Type.Object({
  secret: Type.String({ description: 'the new signing secret; shown this once' }),
  previous_secret_expires_at: Type.String({ format: 'date-time', description: 'until then deliveries are signed with both secrets' })
}, { $id: 'SecretRotated', title: 'SecretRotated', additionalProperties: false, description: 'The new secret' })

export const WebhookParams = Type.Object({
  id: Type.String({ pattern: '^wh_[A-Za-z0-9_-]{16}$', description: 'the webhook id' })
})
