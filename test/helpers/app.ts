import { buildApp, type App } from '../../src/app.js'
import { defaultConfig, parseRedisUrl, type Config } from '../../src/config.js'

interface Teardown { teardown: (fn: () => unknown) => void }

/** A gateway on the given Redis (or the memory engine), silent, closed at teardown. */
export async function testApp (t: Teardown, redisUrl: string | undefined, overrides: Partial<Config> = {}): Promise<App> {
  const config = defaultConfig({ redis: redisUrl === undefined ? undefined : parseRedisUrl(redisUrl), redisTimeoutMs: 1000, ...overrides })
  const app = await buildApp(config, { logger: false })
  t.teardown(async () => { await app.close() })
  await app.ready()
  return app
}

/** The same, listening on a free port, for real HTTP clients (SSE). */
export async function listeningApp (t: Teardown, redisUrl: string | undefined, overrides: Partial<Config> = {}): Promise<{ app: App, base: string }> {
  const app = await testApp(t, redisUrl, overrides)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as { port: number }
  return { app, base: `http://127.0.0.1:${port}` }
}
