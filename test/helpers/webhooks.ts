import type { Test } from 'tap'
import { testApp } from './app.js'
import { uniqueNames } from './bus.js'
import type { RedisServer } from './redis.js'
import type { Config } from '../../src/config.js'

/**
 * A gateway on its own key names of `redis`, with webhooks that may reach local receivers and
 * retries fast enough for tests; and what registers one.
 */
export async function webhookGateway (t: Test, redis: RedisServer, overrides: Partial<Config> = {}) {
  const names = uniqueNames()
  const app = await testApp(t, redis.url, {
    ...names, webhookAllowPrivate: true, webhookBackoffMs: 50, webhookBackoffMaxMs: 200, webhookTimeoutMs: 1000, ...overrides
  })
  const register = async (url: string, eventNames?: string[], fields: { role?: 'consumer' | 'subscriber', enabled?: boolean } = {}) => {
    const res = await app.inject({ method: 'POST', url: '/webhooks', payload: { url, ...(eventNames === undefined ? {} : { event_names: eventNames }), ...fields } })
    if (res.statusCode !== 201) throw new Error(res.body)
    return res.json() as { id: string, secret: string }
  }
  return { app, names, register }
}
