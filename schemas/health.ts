import { Type, type Static } from '@sinclair/typebox'

export const Liveness = Type.Object({
  status: Type.Literal('ok')
}, { additionalProperties: false })

export const Readiness = Type.Object({
  status: Type.Union([Type.Literal('ready'), Type.Literal('unavailable')]),
  engine: Type.Union([Type.Literal('redis'), Type.Literal('memory')], { description: 'which event bus the gateway uses' }),
  bus: Type.Union([Type.Literal('up'), Type.Literal('down')], { description: 'whether the bus answered a PING within BUSGATE_REDIS_TIMEOUT_MS' })
}, { additionalProperties: false })
export type Readiness = Static<typeof Readiness>

export const MetricsText = Type.String({ description: 'Prometheus text exposition format 0.0.4' })
