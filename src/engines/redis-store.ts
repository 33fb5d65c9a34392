import type { Result } from 'ioredis'
import type { RedisLink } from './redis-link.js'
import type { HashGuard, Store } from './engine.js'

declare module 'ioredis' {
  interface RedisCommander<Context> {
    busgateHashMerge: (key: string, ...args: string[]) => Result<number, Context>
    busgateHashSwap: (key: string, counter: string, field: string, expects: string, expected: string, sets: string, value: string) => Result<number, Context>
    busgateSlotAcquire: (inFlight: string, rate: string, token: string, max: number, perSecond: number, ttlMs: number) => Result<number, Context>
  }
}

// ARGV: field, whether it is expected to exist, what it is expected to hold, whether it is to
// hold a value after, that value. KEYS[2] counts the changes.
const HASH_SWAP_LUA = `
local held = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '0' then
  if held then return 0 end
elseif held ~= ARGV[3] then
  return 0
end
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[5]) else redis.call('HDEL', KEYS[1], ARGV[1]) end
return redis.call('INCR', KEYS[2])
`

// ARGV: ttl, guard field, rising field, n, n guard values, then the fields and the defaults, each
// as count + pairs.
const HASH_MERGE_LUA = `
local n = tonumber(ARGV[4])
if n > 0 then
  local current = redis.call('HGET', KEYS[1], ARGV[2])
  for i = 5, 4 + n do
    if current == ARGV[i] then return 0 end
  end
end
local i = 5 + n
if ARGV[3] ~= '' then
  local held = tonumber(redis.call('HGET', KEYS[1], ARGV[3]))
  for j = 1, tonumber(ARGV[i]) do
    if ARGV[i + 2 * j - 1] == ARGV[3] then
      local brought = tonumber(ARGV[i + 2 * j])
      if held and brought and brought < held then return 0 end
    end
  end
end
for _, command in ipairs({'HSET', 'HSETNX'}) do
  local count = tonumber(ARGV[i])
  for j = 1, count do
    redis.call(command, KEYS[1], ARGV[i + 2 * j - 1], ARGV[i + 2 * j])
  end
  i = i + 1 + 2 * count
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
`

// KEYS: the in-flight set (token by expiry), the rate's next free time. ARGV: token, max,
// per second, ttl. By Redis's clock, so instances whose clocks differ share one rate.
const SLOT_ACQUIRE_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local max, rate, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if max > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= max then return -1 end
end
if rate > 0 then
  local free = tonumber(redis.call('GET', KEYS[2]) or '0')
  if free > now then return math.ceil(free - now) end
  local nextFree = now + 1000 / rate
  redis.call('SET', KEYS[2], tostring(nextFree), 'PX', math.ceil(nextFree - now) + 1000)
end
if max > 0 then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 0
`

/** busgate's own state on Redis, as the keys under BUSGATE_KEY_PREFIX hold it. */
export class RedisStore implements Store {
  constructor (private readonly link: RedisLink) {
    link.commands.defineCommand('busgateHashMerge', { numberOfKeys: 1, lua: HASH_MERGE_LUA })
    link.commands.defineCommand('busgateHashSwap', { numberOfKeys: 2, lua: HASH_SWAP_LUA })
    link.commands.defineCommand('busgateSlotAcquire', { numberOfKeys: 2, lua: SLOT_ACQUIRE_LUA })
  }

  get #redis (): RedisLink['commands'] {
    return this.link.commands
  }

  async hashGet (key: string, field: string): Promise<string | null> {
    return await this.link.call(async () => await this.#redis.hget(key, field))
  }

  async hashGetAll (key: string): Promise<Record<string, string>> {
    return await this.link.call(async () => await this.#redis.hgetall(key))
  }

  async hashSet (key: string, field: string, value: string): Promise<void> {
    await this.link.call(async () => await this.#redis.hset(key, field, value))
  }

  async hashMerge (key: string, fields: Record<string, string>, defaults: Record<string, string>, ttlMs: number, guard?: HashGuard): Promise<boolean> {
    const pairs = (record: Record<string, string>): string[] => [String(Object.keys(record).length), ...Object.entries(record).flat()]
    const args = [String(ttlMs), guard?.field ?? '', guard?.rising ?? '', String(guard?.values.length ?? 0), ...(guard?.values ?? []),
      ...pairs(fields), ...pairs(defaults)]
    return await this.link.call(async () => await this.#redis.busgateHashMerge(key, ...args)) === 1
  }

  async hashDelete (key: string, field: string): Promise<boolean> {
    return (await this.link.call(async () => await this.#redis.hdel(key, field))) > 0
  }

  async hashSwap (key: string, field: string, expected: string | null, value: string | null, counterKey: string): Promise<number> {
    return await this.link.call(async () =>
      await this.#redis.busgateHashSwap(key, counterKey, field, expected === null ? '0' : '1', expected ?? '', value === null ? '0' : '1', value ?? ''))
  }

  async deleteKeys (...keys: string[]): Promise<void> {
    if (keys.length > 0) await this.link.call(async () => await this.#redis.del(...keys))
  }

  async setExpiring (key: string, value: string, ttlMs: number): Promise<void> {
    await this.link.call(async () => await this.#redis.set(key, value, 'PX', ttlMs))
  }

  async exists (key: string): Promise<boolean> {
    return (await this.link.call(async () => await this.#redis.exists(key))) > 0
  }

  async setIfAbsent (key: string, value: string): Promise<string> {
    // A key deleted between the two commands is set again: what comes back is always what Redis holds.
    for (;;) {
      await this.link.call(async () => await this.#redis.set(key, value, 'NX'))
      const held = await this.link.call(async () => await this.#redis.get(key))
      if (held !== null) return held
    }
  }

  async keys (pattern: string): Promise<string[]> {
    const found = new Set<string>()
    for (const node of this.link.masters()) {
      let cursor = '0'
      do {
        const [next, batch] = await this.link.call(async () => await node.scan(cursor, 'MATCH', pattern, 'COUNT', 500))
        cursor = next
        for (const key of batch) found.add(key)
      } while (cursor !== '0')
    }
    return [...found]
  }

  async listPushCapped (key: string, value: string | readonly string[], max: number): Promise<number> {
    const [[pushErr, length], [trimErr]] = await this.link.call(async () =>
      await this.#redis.multi().lpush(key, ...(typeof value === 'string' ? [value] : value)).ltrim(key, 0, max - 1).exec()) as
      [[Error | null, number], [Error | null, unknown]]
    if (pushErr !== null || trimErr !== null) throw this.link.translate(pushErr ?? trimErr)
    return length
  }

  async listRange (key: string, start: number, stop: number): Promise<string[]> {
    return await this.link.call(async () => await this.#redis.lrange(key, start, stop))
  }

  async listRemove (key: string, value: string): Promise<number> {
    return await this.link.call(async () => await this.#redis.lrem(key, 0, value))
  }

  async listLength (key: string): Promise<number> {
    return await this.link.call(async () => await this.#redis.llen(key))
  }

  async increment (key: string, by = 1): Promise<number> {
    return await this.link.call(async () => await this.#redis.incrby(key, by))
  }

  async hashIncrement (key: string, field: string, by: number): Promise<number> {
    return await this.link.call(async () => await this.#redis.hincrby(key, field, by))
  }

  async slotAcquire (inFlightKey: string, rateKey: string, token: string, maxInFlight: number, perSecond: number, ttlMs: number): Promise<number> {
    return await this.link.call(async () => await this.#redis.busgateSlotAcquire(inFlightKey, rateKey, token, maxInFlight, perSecond, ttlMs))
  }

  async slotRelease (inFlightKey: string, token: string): Promise<void> {
    await this.link.call(async () => await this.#redis.zrem(inFlightKey, token))
  }
}
