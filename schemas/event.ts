import { Type, type Static } from '@sinclair/typebox'
import { AccessToken, Ref } from './common.js'

export const EVENT_NAME_MAX = 128

export const EventName = Type.String({
  pattern: '^[a-z][a-z0-9]*(_[a-z0-9]+)*$',
  maxLength: EVENT_NAME_MAX,
  description: `snake_case, at most ${EVENT_NAME_MAX} characters`,
  examples: ['kernel_started']
})

export const AgentId = Type.String({
  minLength: 1,
  maxLength: 255,
  description: 'the source node; `manager` for manager instances',
  examples: ['i-agent01']
})

const ArgsDescription = 'extra arguments, each any msgpack-serialisable value. In JSON, `{"$base64": "…"}` (that key alone) ' +
  'stands for msgpack bin; integers from 2^53 to 2^64 (either sign) cannot be carried exactly and are refused: send them as `application/msgpack`. ' +
  'So are numbers past ±1.8e308 (`1e400`), which JSON parsers read as Infinity.'

export const EventInput = Type.Object({
  event_name: EventName,
  agent_id: Type.Optional(AgentId),
  args: Type.Optional(Type.Array(Type.Unknown(), { description: ArgsDescription, examples: [['sess-1', 'kern-1']] }))
}, {
  $id: 'EventInput',
  title: 'EventInput',
  additionalProperties: false,
  description: 'One event. `agent_id` defaults to the gateway\'s BUSGATE_AGENT_ID, `args` to `[]`.'
})
export type EventInput = Static<typeof EventInput>

export const WireEvent = Type.Object({
  event_name: EventName,
  agent_id: AgentId,
  args: Type.Array(Type.Unknown(), { description: 'any msgpack values' })
}, {
  $id: 'WireEvent',
  title: 'WireEvent',
  additionalProperties: false,
  description: 'The wire format itself: a msgpack map of exactly these three keys, as Backend.AI writes it. ' +
    'Posted as `application/msgpack`, the bytes are checked (Python\'s `msgpack.unpackb(raw=False)` must read them) and written unchanged.'
})
export type WireEvent = Static<typeof WireEvent>

export const ProduceAccepted = Type.Object({
  accepted: Type.Integer({ description: 'events written to both the channel and the consumer list', examples: [1] }),
  subscribers: Type.Integer({ description: 'clients subscribed to the channel that received the copy (gateways, managers)', examples: [2] }),
  queue_length: Type.Integer({ description: 'length of the consumer list right after the write', examples: [1] })
}, { $id: 'ProduceAccepted', title: 'ProduceAccepted', additionalProperties: false, description: 'Redis holds every event of the request on both keys' })
export type ProduceAccepted = Static<typeof ProduceAccepted>

export function eventBatch (maxItems: number) {
  return Type.Array(Ref(EventInput), {
    minItems: 1,
    maxItems,
    description: `1 to ${maxItems} events (BUSGATE_BATCH_MAX), written all or none, in this order`
  })
}

/** The msgpack batch: the same bounds, each element the wire format itself. */
export function wireEventBatch (maxItems: number) {
  return Type.Array(Ref(WireEvent), {
    minItems: 1,
    maxItems,
    description: `one msgpack array of 1 to ${maxItems} wire-format maps (BUSGATE_BATCH_MAX), each written unchanged, all or none, in this order`
  })
}

const GLOB_LIST = '^[A-Za-z0-9_.:*-]{1,128}(,[A-Za-z0-9_.:*-]{1,128}){0,49}$'

export const StreamQuery = Type.Object({
  event_name: Type.Optional(Type.String({
    pattern: GLOB_LIST,
    description: 'only these events: comma-separated names, `*` matching any run of characters (`kernel_*,session_started`)',
    examples: ['kernel_*,session_started']
  })),
  agent_id: Type.Optional(Type.String({
    pattern: '^[^,\\x00-\\x1f]{1,255}(,[^,\\x00-\\x1f]{1,255}){0,49}$',
    description: 'only events from these agents: comma-separated, `*` globs allowed',
    examples: ['i-ag01,i-ag02']
  })),
  last_event_id: Type.Optional(Type.String({
    maxLength: 128,
    description: 'resume after this event id, for clients that cannot send the Last-Event-ID header (the header wins)'
  })),
  access_token: Type.Optional(AccessToken)
}, { additionalProperties: false })
export type StreamQuery = Static<typeof StreamQuery>

export const STREAM_DESCRIPTION = 'Server-Sent Events. Each bus event is `id: <opaque id>`, `event: <event_name>`, ' +
  '`data: {"event_name", "agent_id", "args"}` (JSON, with the documented mapping of msgpack values). The stream starts with a ' +
  '`retry:` hint; comment lines (`:`) keep it open. Reconnecting with `Last-Event-ID` (or `last_event_id`) replays what was ' +
  'missed: with Redis from a history shared by every gateway instance of the bus, so on any of them; otherwise from this ' +
  'process\'s. An event `busgate.gap` with data `{"reason", "last_event_id", "resume_from"}` ' +
  'says events may be missing: reason `unknown_id`, `too_old` or `other_instance` (per-process history only) after a reconnect ' +
  'that cannot be filled, `bus_reconnected` after the gateway lost its Redis subscription for a while (or the shared ' +
  'history has a break), `overloaded` when messages came faster than the gateway could decode them and some were not streamed.'
