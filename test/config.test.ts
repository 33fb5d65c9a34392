import t from 'tap'
import { ConfigError, HELP, SETTINGS, defaultConfig, describeRedis, loadConfig, parseRedisUrl, type Config } from '../src/config.js'

const run = (env: Record<string, string>, argv: string[] = []): Config => {
  const action = loadConfig(env, argv)
  if (action.kind !== 'run') throw new Error(action.kind)
  return action.config
}

t.test('defaults are the design\'s', async (t) => {
  const c = run({})
  t.match(c, {
    host: '127.0.0.1',
    port: 8080,
    redis: undefined,
    logLevel: 'info',
    pubsubChannel: 'events.pubsub',
    prodconsKey: 'events.prodcons',
    keyPrefix: 'busgate:',
    tokens: undefined,
    agentId: 'manager',
    corsOrigins: undefined,
    bodyLimit: 1048576,
    busMaxMessageBytes: 1048576,
    requestTimeoutMs: 30000,
    maxConnections: 25000,
    batchMax: 1000
  })
  t.same(defaultConfig(), c)
})

t.test('environment variables and flags, a flag winning', async (t) => {
  const c = run(
    { PORT: '9000', HOST: '0.0.0.0', REDIS_URL: 'redis://r.example:6380/4', BUSGATE_AGENT_ID: 'gw-1', LOG_LEVEL: 'WARN' },
    ['--port', '9100', '--pubsub-channel=my.pubsub', '--batch-max', '10']
  )
  t.equal(c.port, 9100)
  t.equal(c.host, '0.0.0.0')
  t.same(c.redis, { host: 'r.example', port: 6380, db: 4, username: undefined, password: undefined, tls: false })
  t.equal(c.agentId, 'gw-1')
  t.equal(c.logLevel, 'warn')
  t.equal(c.pubsubChannel, 'my.pubsub')
  t.equal(c.batchMax, 10)
  t.equal(run({ PORT: '' }).port, 8080, 'an empty variable counts as unset')
})

t.test('every setting has a flag named after its variable', async (t) => {
  t.same(SETTINGS.map((s) => s.flag), [
    'host', 'port', 'redis-url', 'redis-sentinel-password', 'redis-wait-replicas', 'redis-wait-timeout-ms', 'log-level', 'pubsub-channel', 'prodcons-key', 'key-prefix', 'tokens', 'agent-id',
    'cors-origins', 'body-limit', 'bus-max-message-bytes', 'request-timeout-ms', 'max-connections', 'rate-limit', 'rate-limit-window-ms', 'batch-max', 'redis-timeout-ms', 'shutdown-timeout-ms', 'memory-queue-max', 'memory-queue-max-bytes',
    'sse-heartbeat-ms', 'sse-retry-ms', 'sse-history', 'sse-linger-ms', 'sse-history-bytes', 'sse-shared-history', 'sse-max-buffer-bytes',
    'webhook-allow-private', 'webhook-secret-overlap-ms', 'sse-max-clients', 'webhook-concurrency', 'webhook-timeout-ms',
    'webhook-max-attempts', 'webhook-max-age-ms', 'webhook-backoff-ms', 'webhook-backoff-max-ms', 'webhook-circuit-failures',
    'webhook-circuit-cooldown-ms', 'webhook-disable-after-ms', 'webhook-take', 'webhook-scan-depth', 'webhook-poll-ms', 'webhook-subscriber-queue-max', 'dead-letter-max', 'instance-ttl-ms', 'task-key-prefix', 'task-tracking'
  ])
  for (const s of SETTINGS) t.match(HELP, `--${s.flag}`)
  t.same(loadConfig({}, ['--help']), { kind: 'help' })
  t.same(loadConfig({}, ['--version']), { kind: 'version' })
})

t.test('Redis URLs: db index, password, user, TLS, IPv6', async (t) => {
  t.same(parseRedisUrl('redis://localhost'), { host: 'localhost', port: 6379, db: 0, username: undefined, password: undefined, tls: false })
  t.same(parseRedisUrl('rediss://user:p%40ss@redis.example:7000/15'), { host: 'redis.example', port: 7000, db: 15, username: 'user', password: 'p@ss', tls: true })
  t.same(parseRedisUrl('redis://:pw@[::1]:6379/4'), { host: '::1', port: 6379, db: 4, username: undefined, password: 'pw', tls: false })
  t.equal(describeRedis(parseRedisUrl('redis://:secret@h:1/2')), 'redis://:***@h:1/2', 'no password in logs')
})

const BAD: Array<[Record<string, string>, string[], RegExp]> = [
  [{ PORT: 'abc' }, [], /^PORT: must be an integer from 0 to 65535, got "abc"$/],
  [{ PORT: '70000' }, [], /^PORT: .*got 70000/],
  [{}, ['--port=-1'], /^--port: must be an integer/],
  [{ REDIS_URL: 'http://x' }, [], /^REDIS_URL: "http:\/\/x\/?" must start with redis:\/\/, rediss:\/\/, redis\+sentinel:\/\/ or redis\+cluster:\/\//],
  [{ REDIS_URL: 'not a url' }, [], /^REDIS_URL: is not a URL/],
  [{ REDIS_URL: 'redis://h/db4' }, [], /^REDIS_URL: .*database index/],
  [{ REDIS_URL: 'redis://:hunter2@h/x' }, [], /^REDIS_URL: "redis:\/\/:\*\*\*@h\/x"/],
  [{ REDIS_URL: 'redis://h?db=4' }, [], /^REDIS_URL: .*query parameters/],
  [{ LOG_LEVEL: 'loud' }, [], /^LOG_LEVEL: must be one of fatal, error, warn, info, debug, trace, silent/],
  [{ BUSGATE_TASK_TRACKING: 'sometimes' }, [], /^BUSGATE_TASK_TRACKING: must be one of watched, always/],
  [{ BUSGATE_BUS_MAX_MESSAGE_BYTES: String(64 * 1024 * 1024) }, [], /^BUSGATE_BUS_MAX_MESSAGE_BYTES: must be an integer from 1024 to 33554432/],
  [{ BUSGATE_REQUEST_TIMEOUT_MS: '0' }, [], /^BUSGATE_REQUEST_TIMEOUT_MS: must be an integer from 1000/],
  [{ BUSGATE_MAX_CONNECTIONS: 'many' }, [], /^BUSGATE_MAX_CONNECTIONS: must be an integer/],
  [{ BUSGATE_TOKENS: 'abc' }, [], /^BUSGATE_TOKENS: entry 1 must look like TOKEN:SCOPE/],
  [{ BUSGATE_TOKENS: 'secrettoken:publish,othersecret:root' }, [], /^BUSGATE_TOKENS: entry 2: an unknown scope after the last colon/],
  [{ BUSGATE_TOKENS: 'secrettoken:publish,secrettoken:admin' }, [], /^BUSGATE_TOKENS: entry 2 repeats a token/],
  [{ BUSGATE_TOKENS: ':publish' }, [], /^BUSGATE_TOKENS: entry 1/],
  [{ BUSGATE_CORS_ORIGINS: 'https://a.example/' }, [], /^BUSGATE_CORS_ORIGINS: .*no path or trailing slash/],
  [{ BUSGATE_PUBSUB_CHANNEL: 'same', BUSGATE_PRODCONS_KEY: 'same' }, [], /must differ/],
  [{ BUSGATE_PRODCONS_KEY: 'busgate:queue' }, [], /^BUSGATE_PRODCONS_KEY: "busgate:queue" lies under BUSGATE_KEY_PREFIX/],
  [{ BUSGATE_KEY_PREFIX: 'has space' }, [], /^BUSGATE_KEY_PREFIX: must be non-empty without spaces/],
  [{ BUSGATE_RATE_LIMIT: '-1' }, [], /^BUSGATE_RATE_LIMIT: must be an integer from 0 to 100000000/],
  [{ BUSGATE_RATE_LIMIT_WINDOW_MS: '999' }, [], /^BUSGATE_RATE_LIMIT_WINDOW_MS: must be an integer from 1000 to 86400000, got 999$/],
  [{ BUSGATE_BATCH_MAX: '5001' }, [], /^BUSGATE_BATCH_MAX: must be an integer from 1 to 5000/],
  [{}, ['--nope'], /Unknown option '--nope'/],
  [{}, ['stray'], /positional/]
]

t.test('a wrong value is one clear line naming the setting', async (t) => {
  for (const [env, argv, message] of BAD) {
    const err = (() => { try { loadConfig(env, argv) } catch (e) { return e } })()
    t.type(err, ConfigError, JSON.stringify({ env, argv }))
    t.match((err as Error).message, message)
    t.notMatch((err as Error).message, /\n/, 'one line')
  }
})

t.test('tokens are parsed with their scopes, and never echoed in errors', async (t) => {
  const c = run({ BUSGATE_TOKENS: 't1-secret:publish, ops-secret:publish+subscribe+admin' })
  t.same(c.tokens?.map((g) => [g.token, [...g.scopes]]), [['t1-secret', ['publish']], ['ops-secret', ['publish', 'subscribe', 'admin']]])
  for (const value of ['topsecret:wrong', 'sk:live:secret123']) {
    try {
      loadConfig({ BUSGATE_TOKENS: value }, [])
      t.fail('should throw')
    } catch (err) {
      t.notMatch((err as Error).message, /topsecret|secret123|sk:live/, 'no part of the token')
    }
  }
})

t.test('redis+sentinel:// URLs: the sentinels, the service, the data nodes\' credentials, the db', async (t) => {
  const { parseRedisUrl, describeRedis } = await import('../src/config.js')
  t.match(parseRedisUrl('redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/4'), {
    db: 4,
    password: 's3cret',
    username: undefined,
    sentinel: { name: 'mymaster', hosts: [{ host: '10.0.0.1', port: 26379 }, { host: '10.0.0.2', port: 26379 }, { host: '::1', port: 26380 }] }
  })
  t.match(parseRedisUrl('redis+sentinel://user:pw@s1:5000/svc'), { db: 0, username: 'user', password: 'pw', sentinel: { name: 'svc' } })
  t.equal(describeRedis(parseRedisUrl('redis+sentinel://:pw@s1:5000,s2:5001/svc/2')), 'redis+sentinel://:***@s1:5000,s2:5001/svc/2', 'no password in logs')
  for (const bad of ['redis+sentinel://s1:5000', 'redis+sentinel://s1:99999/svc', 'redis+sentinel:///svc', 'redis+sentinel://s1:5000/svc/x', 'redis+sentinel://s1,/svc']) {
    t.throws(() => parseRedisUrl(bad), `${bad} is refused`)
  }
  t.throws(() => parseRedisUrl('redis+sentinel://:hunter2@s1:5000'), /\*\*\*/, 'the error hides the password')
})

t.test('redis+cluster:// URLs: the nodes to start from; busgate\'s keys take the consumer list\'s slot', async (t) => {
  const { parseRedisUrl, describeRedis, defaultConfig } = await import('../src/config.js')
  t.match(parseRedisUrl('redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001,[::1]'), {
    db: 0, password: 'pw', cluster: { nodes: [{ host: '10.0.0.1', port: 7000 }, { host: '10.0.0.2', port: 7001 }, { host: '::1', port: 6379 }] }
  })
  t.equal(describeRedis(parseRedisUrl('redis+cluster://:pw@a:7000,b:7001')), 'redis+cluster://:***@a:7000,b:7001')
  t.throws(() => parseRedisUrl('redis+cluster://a:7000/3'), /database 0 only/)
  t.equal(defaultConfig({ redis: parseRedisUrl('redis+cluster://a:7000') }).keyPrefix, 'busgate:{events.prodcons}:')
  t.equal(defaultConfig({ redis: parseRedisUrl('redis://a:7000') }).keyPrefix, 'busgate:', 'standalone keys unchanged')
  t.throws(() => defaultConfig({ redis: parseRedisUrl('redis+cluster://a:7000'), prodconsKey: 'events.{x}' }), /must not hold braces/, 'a tag of its own would name another slot')
  t.throws(() => defaultConfig({ redis: parseRedisUrl('redis+cluster://a:7000'), redisWaitReplicas: 1 }), /not supported with redis\+cluster/)
})
