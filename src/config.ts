import { parseArgs } from 'node:util'
import { MAX_MESSAGE_BYTES } from './codec.js'
import { MAX_FRAMES_PER_PRODUCE } from './engines/limits.js'

export type Scope = 'publish' | 'subscribe' | 'admin'
export const SCOPES: readonly Scope[] = ['publish', 'subscribe', 'admin']

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = typeof LOG_LEVELS[number]

export interface TokenGrant {
  token: string
  scopes: ReadonlySet<Scope>
}

export interface RedisTarget {
  /** the server; with `sentinel`, the first sentinel (for logs) */
  host: string
  port: number
  db: number
  /** the data nodes' credentials (with Sentinel too: a sentinel's own password is BUSGATE_REDIS_SENTINEL_PASSWORD) */
  username: string | undefined
  password: string | undefined
  tls: boolean
  /** `redis+sentinel://`: the sentinels to ask for the master of the service `name` */
  sentinel?: { hosts: Array<{ host: string, port: number }>, name: string }
  /** `redis+cluster://`: nodes of a Redis Cluster to start from */
  cluster?: { nodes: Array<{ host: string, port: number }> }
}

export interface Config {
  host: string
  port: number
  /** unset selects the embedded memory engine */
  redis: RedisTarget | undefined
  redisSentinelPassword: string | undefined
  redisWaitReplicas: number
  redisWaitTimeoutMs: number
  logLevel: LogLevel
  pubsubChannel: string
  prodconsKey: string
  keyPrefix: string
  /** unset means no authentication */
  tokens: readonly TokenGrant[] | undefined
  agentId: string
  corsOrigins: readonly string[] | undefined
  bodyLimit: number
  batchMax: number
  busMaxMessageBytes: number
  requestTimeoutMs: number
  maxConnections: number
  /** requests per window per client; 0 = no limit */
  rateLimit: number
  rateLimitWindowMs: number
  redisTimeoutMs: number
  shutdownTimeoutMs: number
  memoryQueueMax: number
  memoryQueueMaxBytes: number
  sseHeartbeatMs: number
  sseRetryMs: number
  sseHistory: number
  sseLingerMs: number
  sseHistoryBytes: number
  sseSharedHistory: boolean
  sseMaxBufferBytes: number
  sseMaxClients: number
  webhookAllowPrivate: boolean
  webhookSecretOverlapMs: number
  webhookConcurrency: number
  webhookTimeoutMs: number
  webhookMaxAttempts: number
  webhookMaxAgeMs: number
  webhookBackoffMs: number
  webhookBackoffMaxMs: number
  webhookCircuitFailures: number
  webhookCircuitCooldownMs: number
  webhookDisableAfterMs: number
  webhookTake: WebhookTake
  webhookScanDepth: number
  webhookPollMs: number
  webhookSubscriberQueueMax: number
  deadLetterMax: number
  instanceTtlMs: number
  taskKeyPrefix: string
  taskTracking: TaskTracking
}

export type TaskTracking = 'watched' | 'always'

export const WEBHOOK_TAKE = ['matching', 'all'] as const
export type WebhookTake = typeof WEBHOOK_TAKE[number]

/** A setting that cannot be used: the message names it and says what is expected. */
export class ConfigError extends Error {
  override name = 'ConfigError'
}

interface Setting<K extends keyof Config> {
  key: K
  env: string
  flag: string
  default: string | undefined
  help: string
  parse: (raw: string) => Config[K]
}

// The table is the single source for parsing, `--help` and the README's settings table.
export const SETTINGS = [
  setting('host', 'HOST', '127.0.0.1', 'listen address', nonEmpty),
  setting('port', 'PORT', '8080', 'listen port', (raw) => integer(raw, 0, 65535)),
  setting('redis', 'REDIS_URL', undefined,
    '`redis://` or `rediss://` URL with optional user, password and db index (`redis://:pw@host:6379/4`), or ' +
    '`redis+sentinel://[[user]:password@]host:port[,host:port…]/<service_name>[/<db>]` (the password is the data nodes\'), or ' +
    '`redis+cluster://[[user]:password@]host:port[,host:port…]`; unset = the embedded in-memory engine',
    parseRedisUrl),
  setting('redisSentinelPassword', 'BUSGATE_REDIS_SENTINEL_PASSWORD', undefined, 'the sentinels\' own password, if they have one (`redis+sentinel://` only)',
    (raw) => bounded(raw, 1024)),
  setting('redisWaitReplicas', 'BUSGATE_REDIS_WAIT_REPLICAS', '0',
    'a `202` means this many replicas hold the event too (Redis `WAIT` after each write); 0 = the master alone', (raw) => integer(raw, 0, 100)),
  setting('redisWaitTimeoutMs', 'BUSGATE_REDIS_WAIT_TIMEOUT_MS', '1000',
    'how long a produce waits for BUSGATE_REDIS_WAIT_REPLICAS replicas; then 503 BUSGATE_REPLICATION_UNCONFIRMED (the event may be kept or lost)',
    (raw) => integer(raw, 1, 60_000)),
  setting('logLevel', 'LOG_LEVEL', 'info', `pino level: ${LOG_LEVELS.join(', ')}`, (raw) => oneOf(raw, LOG_LEVELS)),
  setting('pubsubChannel', 'BUSGATE_PUBSUB_CHANNEL', 'events.pubsub', 'the broadcast channel', redisName),
  setting('prodconsKey', 'BUSGATE_PRODCONS_KEY', 'events.prodcons', 'the consumer list', redisName),
  setting('keyPrefix', 'BUSGATE_KEY_PREFIX', 'busgate:', "prefix of busgate's own keys", redisName),
  setting('tokens', 'BUSGATE_TOKENS', undefined,
    'API tokens and scopes: `TOKEN:SCOPE[+SCOPE…]`, comma-separated, scopes `publish`, `subscribe`, `admin`; unset = no auth (logged as a warning)',
    parseTokens),
  setting('agentId', 'BUSGATE_AGENT_ID', 'manager', '`agent_id` of events posted without one', (raw) => bounded(raw, 255)),
  setting('corsOrigins', 'BUSGATE_CORS_ORIGINS', undefined,
    'browser origins allowed by CORS, comma-separated (`https://a.example,https://b.example`) or `*`; unset = no CORS headers',
    parseOrigins),
  setting('bodyLimit', 'BUSGATE_BODY_LIMIT', '1048576', 'largest request body in bytes (larger: 413)', (raw) => integer(raw, 1024, 64 * 1024 * 1024)),
  setting('busMaxMessageBytes', 'BUSGATE_BUS_MAX_MESSAGE_BYTES', '1048576',
    'largest bus message busgate reads or writes: larger ones on the bus are counted and set aside without being decoded; a produce that would write one gets 413',
    (raw) => integer(raw, 1024, MAX_MESSAGE_BYTES)),
  setting('requestTimeoutMs', 'BUSGATE_REQUEST_TIMEOUT_MS', '30000',
    'how long a client may take to send a whole request, headers and body; then 408 and the connection is closed',
    (raw) => integer(raw, 1000, 3_600_000)),
  setting('maxConnections', 'BUSGATE_MAX_CONNECTIONS', '25000',
    'most open client connections, streams included; past it new connections are closed at once (keep it below `ulimit -n`)',
    (raw) => integer(raw, 1, 10_000_000)),
  setting('rateLimit', 'BUSGATE_RATE_LIMIT', '0',
    'requests a client (a token, or an address without one) may make per BUSGATE_RATE_LIMIT_WINDOW_MS; past it 429 BUSGATE_RATE_LIMITED; counted in Redis for all instances, or per process with the memory engine; 0 = no limit',
    (raw) => integer(raw, 0, 100_000_000)),
  setting('rateLimitWindowMs', 'BUSGATE_RATE_LIMIT_WINDOW_MS', '60000',
    'the window BUSGATE_RATE_LIMIT counts in: a client\'s count starts at its first request and is dropped this long after',
    (raw) => integer(raw, 1000, 86_400_000)),
  setting('batchMax', 'BUSGATE_BATCH_MAX', '1000', `most events in one \`POST /events/batch\` (at most ${MAX_FRAMES_PER_PRODUCE})`,
    (raw) => integer(raw, 1, MAX_FRAMES_PER_PRODUCE)),
  setting('redisTimeoutMs', 'BUSGATE_REDIS_TIMEOUT_MS', '2000', 'bound on connecting to Redis and on each command; past it a request gets 503', (raw) => integer(raw, 50, 60000)),
  setting('shutdownTimeoutMs', 'BUSGATE_SHUTDOWN_TIMEOUT_MS', '10000', 'on SIGTERM, how long in-flight requests may finish before the process exits anyway', (raw) => integer(raw, 0, 600000)),
  setting('memoryQueueMax', 'BUSGATE_MEMORY_QUEUE_MAX', '100000',
    'memory engine only: most messages its consumer list holds; past it `POST /events` gets 503', (raw) => integer(raw, 1, 100_000_000)),
  setting('memoryQueueMaxBytes', 'BUSGATE_MEMORY_QUEUE_MAX_BYTES', '268435456',
    'memory engine only: most bytes its consumer list holds; past it `POST /events` gets 503', (raw) => integer(raw, 1024, 2 ** 40)),
  setting('sseHeartbeatMs', 'BUSGATE_SSE_HEARTBEAT_MS', '15000', 'interval of the comment lines that keep idle streams open through proxies', (raw) => integer(raw, 100, 600_000)),
  setting('sseRetryMs', 'BUSGATE_SSE_RETRY_MS', '2000', 'the `retry:` hint sent to stream clients: how long they wait before reconnecting', (raw) => integer(raw, 0, 600_000)),
  setting('sseHistory', 'BUSGATE_SSE_HISTORY', '10000', 'events kept for clients that reconnect with Last-Event-ID (in memory, and in Redis when shared)', (raw) => integer(raw, 0, 1_000_000)),
  setting('sseLingerMs', 'BUSGATE_SSE_LINGER_MS', '300000',
    'how long the gateway stays subscribed after its last stream closed, so that reconnects can resume; then it stops taking in the channel',
    (raw) => integer(raw, 0, 86_400_000)),
  setting('sseHistoryBytes', 'BUSGATE_SSE_HISTORY_BYTES', '67108864', 'bytes the resume history may hold; the oldest events go first',
    (raw) => integer(raw, 0, 2 ** 40)),
  setting('sseSharedHistory', 'BUSGATE_SSE_SHARED_HISTORY', 'true',
    'with Redis: keep the resume history in Redis, one for all instances (a stream resumes on any of them, and after a restart); false: each process keeps its own',
    parseBoolean),
  setting('sseMaxBufferBytes', 'BUSGATE_SSE_MAX_BUFFER_BYTES', '1048576',
    'unsent bytes a stream client may fall behind by before it is disconnected', (raw) => integer(raw, 1024, 1024 * 1024 * 1024)),
  setting('webhookAllowPrivate', 'BUSGATE_WEBHOOK_ALLOW_PRIVATE', 'false',
    'let webhook URLs reach loopback, private and link-local addresses (tests, trusted networks)', parseBoolean),
  setting('webhookSecretOverlapMs', 'BUSGATE_WEBHOOK_SECRET_OVERLAP_MS', '86400000',
    'after a secret rotation, how long deliveries are also signed with the previous secret', (raw) => integer(raw, 0, 30 * 86_400_000)),
  setting('sseMaxClients', 'BUSGATE_SSE_MAX_CLIENTS', '20000', 'most open streams per process; past it a new stream gets 503', (raw) => integer(raw, 1, 1_000_000)),
  setting('webhookConcurrency', 'BUSGATE_WEBHOOK_CONCURRENCY', '256',
    'deliveries in flight per process (each holds its message, at most BUSGATE_BUS_MAX_MESSAGE_BYTES); served by at most 4 Redis connections of their own, so a receiver answering in 100 ms gets up to ~2,500 deliveries/s',
    (raw) => integer(raw, 1, 10_000)),
  setting('webhookTimeoutMs', 'BUSGATE_WEBHOOK_TIMEOUT_MS', '10000', 'how long a receiver may take to answer one delivery', (raw) => integer(raw, 100, 600_000)),
  setting('webhookMaxAttempts', 'BUSGATE_WEBHOOK_MAX_ATTEMPTS', '12', 'deliveries tried for one message, over all webhooks, before it is dead-lettered', (raw) => integer(raw, 1, 1000)),
  setting('webhookMaxAgeMs', 'BUSGATE_WEBHOOK_MAX_AGE_MS', '86400000', 'how long a message may be retried before it is dead-lettered', (raw) => integer(raw, 1000, 30 * 86_400_000)),
  setting('webhookBackoffMs', 'BUSGATE_WEBHOOK_BACKOFF_MS', '1000', 'wait after the first failed round; doubles each round, with jitter', (raw) => integer(raw, 1, 3_600_000)),
  setting('webhookBackoffMaxMs', 'BUSGATE_WEBHOOK_BACKOFF_MAX_MS', '300000', 'longest wait between rounds', (raw) => integer(raw, 1, 86_400_000)),
  setting('webhookCircuitFailures', 'BUSGATE_WEBHOOK_CIRCUIT_FAILURES', '5', 'failures in a row that set a webhook aside', (raw) => integer(raw, 1, 1000)),
  setting('webhookCircuitCooldownMs', 'BUSGATE_WEBHOOK_CIRCUIT_COOLDOWN_MS', '30000', 'how long a set-aside webhook rests before it is probed again', (raw) => integer(raw, 100, 86_400_000)),
  setting('webhookDisableAfterMs', 'BUSGATE_WEBHOOK_DISABLE_AFTER_MS', '432000000',
    'a webhook failing for this long without a success is disabled (5 days, as Svix does)', (raw) => integer(raw, 1000, 365 * 86_400_000)),
  setting('webhookTake', 'BUSGATE_WEBHOOK_TAKE', 'matching',
    '`matching`: take a message off the consumer list only when an available consumer webhook matches it, leaving the rest, in order, for the other consumers; ' +
    '`all`: take every message (a list busgate owns alone) and dead-letter what no webhook matches', (raw) => oneOf(raw, WEBHOOK_TAKE)),
  setting('webhookScanDepth', 'BUSGATE_WEBHOOK_SCAN_DEPTH', '1000',
    '`matching` only: how far down the consumer list a claim looks for messages a webhook wants; what lies beyond waits until the head moves',
    (raw) => integer(raw, 1, 100_000)),
  setting('webhookPollMs', 'BUSGATE_WEBHOOK_POLL_MS', '100',
    '`matching` only: how often idle delivery loops look at the list again when no broadcast announced a message they want (a push without a publish)',
    (raw) => integer(raw, 10, 60_000)),
  setting('webhookSubscriberQueueMax', 'BUSGATE_WEBHOOK_SUBSCRIBER_QUEUE_MAX', '100000',
    'most copies waiting in Redis for one subscriber webhook; past it the oldest are dropped and counted', (raw) => integer(raw, 1, 100_000_000)),
  setting('deadLetterMax', 'BUSGATE_DEAD_LETTER_MAX', '10000', 'dead letters kept; past it the oldest go (counted in busgate_dead_letters_dropped_total)', (raw) => integer(raw, 1, 1_000_000)),
  setting('instanceTtlMs', 'BUSGATE_INSTANCE_TTL_MS', '15000',
    'how long after an instance stops beating its held messages are put back for others', (raw) => integer(raw, 300, 3_600_000)),
  setting('taskKeyPrefix', 'BUSGATE_TASK_KEY_PREFIX', 'bgtask.', "prefix of the background-task hashes (Backend.AI's `bgtask.<task_id>`)", redisName),
  setting('taskTracking', 'BUSGATE_TASK_TRACKING', 'watched',
    '`watched`: task hashes are written from task events produced here, and from those heard on the bus while any stream is open; `always`: stay subscribed to hear every task event',
    (raw) => oneOf(raw, ['watched', 'always'] as const))
] as const

function setting<K extends keyof Config> (key: K, env: string, dflt: string | undefined, help: string,
  parse: (raw: string) => Config[K]): Setting<K> {
  const flag = env.replace(/^BUSGATE_/, '').toLowerCase().replaceAll('_', '-')
  return { key, env, flag, default: dflt, help, parse }
}

export const HELP = [
  'Usage: busgate [--flag value]…',
  '',
  'Every setting comes from its environment variable or the flag of the same meaning; a flag wins.',
  '',
  ...SETTINGS.map((s) => `  --${s.flag.padEnd(20)} ${s.env.padEnd(28)} ${s.help.replaceAll('`', '')}${s.default === undefined ? '' : ` (default ${s.default})`}`),
  '',
  '  --help, --version'
].join('\n')

export type CliAction = { kind: 'run', config: Config } | { kind: 'help' } | { kind: 'version' }

/** Reads the settings once, from flags then environment then defaults, and checks every one. */
export function loadConfig (env: NodeJS.ProcessEnv, argv: readonly string[]): CliAction {
  let flags: Record<string, string | boolean | undefined>
  try {
    const options: Record<string, { type: 'string' | 'boolean' }> = { help: { type: 'boolean' }, version: { type: 'boolean' } }
    for (const s of SETTINGS) options[s.flag] = { type: 'string' }
    flags = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false }).values
  } catch (err) {
    throw new ConfigError((err as Error).message.split('\n')[0] ?? 'invalid arguments')
  }
  if (flags.help === true) return { kind: 'help' }
  if (flags.version === true) return { kind: 'version' }

  const config: Partial<Record<keyof Config, unknown>> = {}
  for (const s of SETTINGS) {
    const fromFlag = flags[s.flag]
    const raw = typeof fromFlag === 'string' ? fromFlag : (env[s.env] === '' ? undefined : env[s.env])
    const name = typeof fromFlag === 'string' ? `--${s.flag}` : s.env
    const value = raw ?? s.default
    if (value === undefined) {
      config[s.key] = undefined
      continue
    }
    try {
      config[s.key] = s.parse(value)
    } catch (err) {
      throw new ConfigError(`${name}: ${(err as Error).message}`)
    }
  }
  const result = inCluster(config as unknown as Config)
  checkKeys(result)
  return { kind: 'run', config: result }
}

/**
 * In a Redis Cluster a script's keys must share a slot: busgate's own keys take the consumer
 * list's name as their hash tag (`busgate:{events.prodcons}:…`), so they live in its slot, and
 * every script that moves messages between them and the list stays on one node.
 */
export function inCluster (config: Config): Config {
  if (config.redis?.cluster === undefined) return config
  // A name with braces hashes on what is inside them: the tag would name another slot.
  if (/[{}]/.test(config.prodconsKey) || /[{}]/.test(config.keyPrefix)) {
    throw new ConfigError('with redis+cluster://, BUSGATE_PRODCONS_KEY and BUSGATE_KEY_PREFIX must not hold braces: busgate tags its keys with the consumer list\'s name')
  }
  // WAIT counts the replicas of the node it is sent to, which a cluster client picks at random.
  if (config.redisWaitReplicas > 0) throw new ConfigError('BUSGATE_REDIS_WAIT_REPLICAS is not supported with redis+cluster:// yet')
  return { ...config, keyPrefix: `${config.keyPrefix}{${config.prodconsKey}}:` }
}

/** The defaults, with overrides: what tests and benchmarks build apps from. */
export function defaultConfig (overrides: Partial<Config> = {}): Config {
  const action = loadConfig({}, [])
  if (action.kind !== 'run') throw new Error('unreachable')
  const config = inCluster({ ...action.config, ...overrides })
  checkKeys(config)
  return config
}

function checkKeys (c: Config): void {
  if (c.pubsubChannel === c.prodconsKey) {
    throw new ConfigError('BUSGATE_PUBSUB_CHANNEL and BUSGATE_PRODCONS_KEY must differ')
  }
  for (const [env, name] of [['BUSGATE_PUBSUB_CHANNEL', c.pubsubChannel], ['BUSGATE_PRODCONS_KEY', c.prodconsKey]] as const) {
    if (name.startsWith(c.keyPrefix)) {
      throw new ConfigError(`${env}: "${name}" lies under BUSGATE_KEY_PREFIX "${c.keyPrefix}", where busgate keeps its own keys`)
    }
  }
}

function nonEmpty (raw: string): string {
  if (raw.trim() === '') throw new Error('must not be empty')
  return raw.trim()
}

function bounded (raw: string, max: number): string {
  const value = nonEmpty(raw)
  if (value.length > max) throw new Error(`must be at most ${max} characters`)
  return value
}

function redisName (raw: string): string {
  if (raw === '' || /[\s\p{Cc}]/u.test(raw)) throw new Error('must be non-empty without spaces or control characters')
  return bounded(raw, 200)
}

function integer (raw: string, min: number, max: number): number {
  if (!/^\d+$/.test(raw.trim())) throw new Error(`must be an integer from ${min} to ${max}, got "${raw}"`)
  const n = Number(raw.trim())
  if (n < min || n > max) throw new Error(`must be an integer from ${min} to ${max}, got ${n}`)
  return n
}

function parseBoolean (raw: string): boolean {
  const value = raw.trim().toLowerCase()
  if (['true', '1', 'yes', 'on'].includes(value)) return true
  if (['false', '0', 'no', 'off'].includes(value)) return false
  throw new Error(`must be true or false, got "${raw}"`)
}

function oneOf<T extends string> (raw: string, allowed: readonly T[]): T {
  const value = raw.trim().toLowerCase()
  if (!(allowed as readonly string[]).includes(value)) throw new Error(`must be one of ${allowed.join(', ')}, got "${raw}"`)
  return value as T
}

function parseTokens (raw: string): TokenGrant[] {
  const grants: TokenGrant[] = []
  const seen = new Set<string>()
  // Tokens are secrets: messages name the entry by position, never by value.
  raw.split(',').forEach((entry, i) => {
    const where = `entry ${i + 1}`
    const trimmed = entry.trim()
    const colon = trimmed.lastIndexOf(':')
    if (colon <= 0) throw new Error(`${where} must look like TOKEN:SCOPE[+SCOPE…]`)
    const token = trimmed.slice(0, colon)
    if (/\s/.test(token)) throw new Error(`${where}: the token must not contain spaces`)
    const scopes = new Set<Scope>()
    for (const scope of trimmed.slice(colon + 1).split('+')) {
      // Not echoed: a token with a colon and no scope would otherwise print its tail.
      if (!(SCOPES as readonly string[]).includes(scope)) {
        throw new Error(`${where}: an unknown scope after the last colon (scopes: ${SCOPES.join(', ')})`)
      }
      scopes.add(scope as Scope)
    }
    if (seen.has(token)) throw new Error(`${where} repeats a token given earlier`)
    seen.add(token)
    grants.push({ token, scopes })
  })
  return grants
}

function parseOrigins (raw: string): string[] {
  const origins = raw.split(',').map((o) => o.trim()).filter((o) => o !== '')
  if (origins.length === 0) throw new Error('must list at least one origin')
  for (const origin of origins) {
    if (origin === '*') continue
    let url: URL
    try {
      url = new URL(origin)
    } catch {
      throw new Error(`"${origin}" is not an origin like https://app.example`)
    }
    if (url.origin !== origin) throw new Error(`"${origin}" is not an origin like https://app.example (no path or trailing slash)`)
  }
  return origins
}

export function parseRedisUrl (raw: string): RedisTarget {
  if (/^redis\+sentinel:/i.test(raw.trim())) return parseSentinelUrl(raw.trim())
  if (/^redis\+cluster:/i.test(raw.trim())) return parseClusterUrl(raw.trim())
  let url: URL
  try {
    url = new URL(raw.trim())
  } catch {
    throw new Error('is not a URL; expected redis://[user:password@]host[:port][/db], redis+sentinel://host:port[,host:port…]/<service_name>[/<db>] or redis+cluster://host:port[,host:port…]')
  }
  const shown = withoutPassword(url)
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    throw new Error(`"${shown}" must start with redis://, rediss://, redis+sentinel:// or redis+cluster://`)
  }
  if (url.hostname === '') throw new Error(`"${shown}" has no host`)
  if (url.search !== '' || url.hash !== '') throw new Error(`"${shown}" must not have query parameters or a fragment`)
  const path = url.pathname
  let db = 0
  if (path !== '' && path !== '/') {
    if (!/^\/\d{1,5}$/.test(path)) throw new Error(`"${shown}": the path must be a database index such as /4`)
    db = Number(path.slice(1))
  }
  return {
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port === '' ? 6379 : Number(url.port),
    db,
    username: url.username === '' ? undefined : decodeURIComponent(url.username),
    password: url.password === '' ? undefined : decodeURIComponent(url.password),
    tls: url.protocol === 'rediss:'
  }
}

function hostList (list: string, shown: string, defaultPort: number): Array<{ host: string, port: number }> {
  return list.split(',').map((part) => {
    const hostPort = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(part.trim())
    if (hostPort === null) throw new Error(`"${shown}": "${part}" is not host:port`)
    const port = hostPort[3] === undefined ? defaultPort : Number(hostPort[3])
    if (port < 1 || port > 65535) throw new Error(`"${shown}": port ${port} is out of range`)
    return { host: (hostPort[1] ?? hostPort[2]) as string, port }
  })
}

function parseClusterUrl (raw: string): RedisTarget {
  const match = /^redis\+cluster:\/\/(?:([^:@/]*)(?::([^@/]*))?@)?([^/@]+)\/?$/i.exec(raw)
  const shown = raw.replace(/:\/\/([^:@/]*):[^@/]*@/, '://$1:***@')
  if (match === null) throw new Error(`"${shown}" is not redis+cluster://[[user]:password@]host:port[,host:port…] (a cluster has database 0 only)`)
  const [, user, password, list] = match as unknown as [string, string | undefined, string | undefined, string]
  const nodes = hostList(list, shown, 6379)
  const first = nodes[0] as { host: string, port: number }
  return {
    host: first.host,
    port: first.port,
    db: 0,
    username: user === undefined || user === '' ? undefined : decodeURIComponent(user),
    password: password === undefined || password === '' ? undefined : decodeURIComponent(password),
    tls: false,
    cluster: { nodes }
  }
}

// A list of hosts is no URL authority WHATWG parses: read by hand, as Backend.AI's config lists them.
function parseSentinelUrl (raw: string): RedisTarget {
  const match = /^redis\+sentinel:\/\/(?:([^:@/]*)(?::([^@/]*))?@)?([^/@]+)\/([^/]+)(?:\/(\d{1,5}))?\/?$/i.exec(raw)
  const shown = raw.replace(/:\/\/([^:@/]*):[^@/]*@/, '://$1:***@')
  if (match === null) throw new Error(`"${shown}" is not redis+sentinel://[[user]:password@]host:port[,host:port…]/<service_name>[/<db>]`)
  const [, user, password, list, name, db] = match as unknown as [string, string | undefined, string | undefined, string, string, string | undefined]
  const hosts = hostList(list, shown, 26379)
  const first = hosts[0] as { host: string, port: number }
  return {
    host: first.host,
    port: first.port,
    db: db === undefined ? 0 : Number(db),
    username: user === undefined || user === '' ? undefined : decodeURIComponent(user),
    password: password === undefined || password === '' ? undefined : decodeURIComponent(password),
    tls: false,
    sentinel: { hosts, name: decodeURIComponent(name) }
  }
}

function withoutPassword (url: URL): string {
  const copy = new URL(url.href)
  if (copy.password !== '') copy.password = '***'
  return copy.href
}

/** How the Redis target is named in logs: never with its password. */
export function describeRedis (target: RedisTarget): string {
  const auth = target.password === undefined ? '' : `${target.username ?? ''}:***@`
  if (target.cluster !== undefined) {
    return `redis+cluster://${auth}${target.cluster.nodes.map(({ host, port }) => `${host.includes(':') ? `[${host}]` : host}:${port}`).join(',')}`
  }
  if (target.sentinel !== undefined) {
    const hosts = target.sentinel.hosts.map(({ host, port }) => `${host.includes(':') ? `[${host}]` : host}:${port}`).join(',')
    return `redis+sentinel://${auth}${hosts}/${target.sentinel.name}/${target.db}`
  }
  const host = target.host.includes(':') ? `[${target.host}]` : target.host
  return `${target.tls ? 'rediss' : 'redis'}://${auth}${host}:${target.port}/${target.db}`
}
