import { Type, type Static } from '@sinclair/typebox'
import { StringEnum } from './common.js'

export const Liveness = Type.Object({
  status: StringEnum(['ok'])
}, { additionalProperties: false, description: 'The process is alive' })

export const Readiness = Type.Object({
  status: StringEnum(['ready', 'unavailable']),
  engine: StringEnum(['redis', 'memory'], { description: 'which event bus the gateway uses' }),
  bus: StringEnum(['up', 'down'], { description: 'whether the bus answered a PING within BUSGATE_REDIS_TIMEOUT_MS' })
}, { $id: 'Readiness', title: 'Readiness', additionalProperties: false, description: 'Whether this instance can serve events' })
export type Readiness = Static<typeof Readiness>

export const MetricsText = Type.String({ description: 'Prometheus text exposition format 0.0.4' })
