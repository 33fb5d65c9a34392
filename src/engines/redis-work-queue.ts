import type { Result } from 'ioredis'
import { RedisDeadLetters } from './redis-dead-letters.js'
import type { RedisLink } from './redis-link.js'
import { SCAN_BYTES, checkFrameCount, type Consumer, type DeadLetterStore, type HeardEvent, type WorkQueue } from './engine.js'

declare module 'ioredis' {
  interface RedisCommander<Context> {
    /** keys (5 + sources), processing, retry, prodcons, delayed, oversized, sources…, max, sharers, maxBytes, depth, globs, sourcesFirst, globs…, done… */
    busgateClaimBuffer: (...args: Array<string | number | Buffer>) =>
    Result<[taken: Buffer[], nextDueIn: Buffer, aside: number, looked: number, unreadable: number], Context>
    busgateRecordHeard: (...args: Array<string | number | Buffer>) => Result<[recorded: number[], dropped: number], Context>
    busgateGiveBack: (processing: string, prodcons: string, claimed: Buffer, frame: Buffer) => Result<number, Context>
    busgateDelay: (processing: string, delayed: string, frame: Buffer, next: Buffer, delayMs: number) => Result<number, Context>
    busgateRelease: (processing: string, retry: string, prodcons: string, prefix: string, ...frames: Buffer[]) => Result<number, Context>
    busgateReclaim: (processing: string, retry: string, prodcons: string, prefix: string) => Result<number, Context>
  }
}

// Tail first, each to the head of its list: what comes back keeps its order, ahead of the rest.
const RECLAIM_LUA = `
local n = 0
while true do
  local v = redis.call('RPOP', KEYS[1])
  if not v then return n end
  if string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
    redis.call('LPUSH', KEYS[2], v)
  else
    redis.call('LPUSH', KEYS[3], v)
  end
  n = n + 1
end
`

// Redis's own clock, in ms: due times must not depend on which gateway's clock set or reads them.
const NOW_MS = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// The name of a bus event, read off the head of its msgpack bytes in Redis without decoding
// the rest: a map of str keys holding event_name (str), agent_id (str) and args (array), in any
// order. Values before the last key are skipped, at most SKIP_STEPS headers each, so a message
// costs a few steps however large its args; nil for anything else (read errors end in pcall).
const EVENT_NAME_LUA = `
local SKIP_STEPS = 64
local function u (v, p, n)
  local x = 0
  for i = p, p + n - 1 do x = x * 256 + string.byte(v, i) end
  return x
end
local function skip (v, p)
  local pending, steps = 1, 0
  while pending > 0 do
    steps = steps + 1
    if steps > SKIP_STEPS then return nil end
    pending = pending - 1
    local b = string.byte(v, p)
    if b <= 0x7f or b >= 0xe0 or b == 0xc0 or b == 0xc2 or b == 0xc3 then p = p + 1
    elseif b <= 0x8f then pending = pending + 2 * (b - 0x80); p = p + 1
    elseif b <= 0x9f then pending = pending + (b - 0x90); p = p + 1
    elseif b <= 0xbf then p = p + 1 + (b - 0xa0)
    elseif b == 0xc4 or b == 0xd9 then p = p + 2 + u(v, p + 1, 1)
    elseif b == 0xc5 or b == 0xda then p = p + 3 + u(v, p + 1, 2)
    elseif b == 0xc6 or b == 0xdb then p = p + 5 + u(v, p + 1, 4)
    elseif b == 0xc7 then p = p + 3 + u(v, p + 1, 1)
    elseif b == 0xc8 then p = p + 4 + u(v, p + 1, 2)
    elseif b == 0xc9 then p = p + 6 + u(v, p + 1, 4)
    elseif b == 0xca then p = p + 5
    elseif b == 0xcb then p = p + 9
    elseif b == 0xcc or b == 0xd0 then p = p + 2
    elseif b == 0xcd or b == 0xd1 then p = p + 3
    elseif b == 0xce or b == 0xd2 then p = p + 5
    elseif b == 0xcf or b == 0xd3 then p = p + 9
    elseif b == 0xd4 then p = p + 3
    elseif b == 0xd5 then p = p + 4
    elseif b == 0xd6 then p = p + 6
    elseif b == 0xd7 then p = p + 10
    elseif b == 0xd8 then p = p + 18
    elseif b == 0xdc then pending = pending + u(v, p + 1, 2); p = p + 3
    elseif b == 0xdd then pending = pending + u(v, p + 1, 4); p = p + 5
    elseif b == 0xde then pending = pending + 2 * u(v, p + 1, 2); p = p + 3
    elseif b == 0xdf then pending = pending + 2 * u(v, p + 1, 4); p = p + 5
    else return nil end
  end
  return p
end
local function str (v, p)
  local b = string.byte(v, p)
  if b >= 0xa0 and b <= 0xbf then return b - 0xa0, p + 1 end
  if b == 0xd9 then return u(v, p + 1, 1), p + 2 end
  if b == 0xda then return u(v, p + 1, 2), p + 3 end
  return nil, p
end
local function read_name (v)
  local b = string.byte(v, 1)
  local n, p
  if b >= 0x80 and b <= 0x8f then n, p = b - 0x80, 2
  elseif b == 0xde then n, p = u(v, 2, 2), 4
  elseif b == 0xdf then n, p = u(v, 2, 4), 6
  else return nil end
  local name, agent, args
  for k = 1, n do
    local klen, kp = str(v, p)
    if not klen or kp + klen - 1 > #v then return nil end
    local key = string.sub(v, kp, kp + klen - 1)
    p = kp + klen
    if key == 'event_name' then
      local vlen, vp = str(v, p)
      if not vlen or vp + vlen - 1 > #v then return nil end
      name = string.sub(v, vp, vp + vlen - 1)
      p = vp + vlen
    else
      local vb = string.byte(v, p)
      if key == 'agent_id' then agent = (vb >= 0xa0 and vb <= 0xbf) or (vb >= 0xd9 and vb <= 0xdb) end
      if key == 'args' then args = (vb >= 0x90 and vb <= 0x9f) or vb == 0xdc or vb == 0xdd end
      if k == n then break end
      p = skip(v, p)
      if not p or p > #v + 1 then return nil end
    end
  end
  if name and agent and args then return name end
  return nil
end
local function event_name (v)
  local ok, name = pcall(read_name, v)
  if ok then return name end
  return nil
end
`

// A glob as globList (src/glob.ts) matches it: a star for any run, the fixed head and tail, then
// each middle part leftmost, in linear time.
const GLOB_LUA = `
local function glob_parts (g)
  local parts, start = {}, 1
  while true do
    local i = string.find(g, '*', start, true)
    if not i then parts[#parts + 1] = string.sub(g, start) return parts end
    parts[#parts + 1] = string.sub(g, start, i - 1)
    start = i + 1
  end
end
local function glob_match (parts, s)
  local n = #parts
  local head = parts[1]
  if n == 1 then return s == head end
  local tail = parts[n]
  if #s < #head + #tail or string.sub(s, 1, #head) ~= head then return false end
  if #tail > 0 and string.sub(s, -#tail) ~= tail then return false end
  local at, stop = #head + 1, #s - #tail
  for i = 2, n - 1 do
    local part = parts[i]
    if #part > 0 then
      local f = string.find(s, part, at, true)
      if not f or f + #part - 1 > stop then return false end
      at = f + #part
    end
  end
  return true
end
`

// Acknowledges what the caller finished with, moves one delayed message that is due to the
// retry list (one per claim, so a loop does not take a run of retries for a failing receiver
// at once), then takes up to ARGV[1] messages: put-back ones first, else from the consumer list
// and from the subscriber lists KEYS[6..] (envelopes for one webhook each), in the order ARGV[6]
// says. From the consumer list, a fair share (1/ARGV[2] of its length, at least one):
// with ARGV[4] = 0 every message, the oldest first, a value longer than ARGV[3] (0: no bound)
// going to the list KEYS[5] instead, so it never travels to the gateway (see Consumer.claim);
// with ARGV[4] = depth, only messages among the first `depth` (and SCAN_BYTES) whose event name
// matches one of the ARGV[5] globs that follow ARGV[6], leaving every other value where it is.
// Returns what it took, in how many ms the next delayed one is due ('' for none), how many it
// set aside, how many values it looked at, and how many of them it could not read or were too long.
const CLAIM_LUA = NOW_MS + EVENT_NAME_LUA + GLOB_LUA + `
local max, sharers, limit, depth, nglobs = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
for i = 7 + nglobs, #ARGV do redis.call('LREM', KEYS[1], 1, ARGV[i]) end
local out, aside, scanned, unreadable = {}, 0, 0, 0
local function keep (v)
  if limit > 0 and #v > limit then
    redis.call('RPUSH', KEYS[5], redis.call('RPOP', KEYS[1]))
    aside = aside + 1
  else
    out[#out + 1] = v
  end
end
if max > 0 then
  for _, v in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1)) do
    redis.call('ZREM', KEYS[4], v)
    redis.call('RPUSH', KEYS[2], v)
  end
end
while #out + aside < max do
  local v = redis.call('LMOVE', KEYS[2], KEYS[1], 'LEFT', 'RIGHT')
  if not v then break end
  keep(v)
end
local function from_sources ()
  for k = 6, #KEYS do
    while #out < max do
      local v = redis.call('LMOVE', KEYS[k], KEYS[1], 'LEFT', 'RIGHT')
      if not v then break end
      out[#out + 1] = v
    end
  end
end
local function take_all ()
  local n = math.min(max, math.max(1, math.floor(redis.call('LLEN', KEYS[3]) / sharers)))
  for i = 1, n do
    local v = redis.call('LMOVE', KEYS[3], KEYS[1], 'LEFT', 'RIGHT')
    if not v then break end
    keep(v)
  end
end
local function take_matching ()
  local globs = {}
  for i = 1, nglobs do globs[i] = glob_parts(ARGV[6 + i]) end
  -- A fair share of what is queued, as with take_all: no more is looked for.
  local want = math.min(max, math.max(1, math.floor(redis.call('LLEN', KEYS[3]) / sharers)))
  -- Read in chunks that grow: a list whose head is what busgate wants costs a short read.
  local found, bytes, at, size = {}, 0, 0, math.max(want, 8)
  while at < depth and #found < want and bytes <= ${SCAN_BYTES} do
    local chunk = redis.call('LRANGE', KEYS[3], at, math.min(at + size, depth) - 1)
    for _, v in ipairs(chunk) do
      scanned = scanned + 1
      bytes = bytes + #v
      local name = nil
      if limit == 0 or #v <= limit then name = event_name(v) end
      if not name then
        unreadable = unreadable + 1
      else
        for _, parts in ipairs(globs) do
          if glob_match(parts, name) then found[#found + 1] = v break end
        end
      end
      if #found >= want or bytes > ${SCAN_BYTES} then break end
    end
    if #chunk < size then break end
    at = at + #chunk
    size = math.min(size * 2, 128)
  end
  for i = 1, #found do
    if redis.call('LREM', KEYS[3], 1, found[i]) == 1 then
      redis.call('RPUSH', KEYS[1], found[i])
      out[#out + 1] = found[i]
    end
  end
end
local function from_list ()
  if depth == 0 then take_all() elseif nglobs > 0 then take_matching() end
end
if #out + aside == 0 and max > 0 then
  if ARGV[6] == '1' then
    from_sources()
    if #out == 0 then from_list() end
  else
    from_list()
    if #out + aside == 0 then from_sources() end
  end
end
local due = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')[2]
return {out, due and tostring(math.max(0, tonumber(due) - now)) or '', aside, scanned, unreadable}
`

// Per event: ARGV occurrence, copies, then per copy its webhook and value; KEYS its seen hash
// (a field per webhook), then one list per copy. ARGV[1] ttl, ARGV[2] most values per list, ARGV[3] events.
const RECORD_HEARD_LUA = `
local ttl, max, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local a, k, recorded, dropped = 4, 1, {}, 0
for e = 1, n do
  local occurrence, copies = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  recorded[e] = 0
  for c = 1, copies do
    local webhook, value = ARGV[a], ARGV[a + 1]
    a = a + 2
    local held = tonumber(redis.call('HGET', KEYS[k], webhook) or '0') or 0
    if held < occurrence then
      redis.call('HSET', KEYS[k], webhook, occurrence)
      local length = redis.call('RPUSH', KEYS[k + c], value)
      if length > max then
        redis.call('LPOP', KEYS[k + c], length - max)
        dropped = dropped + length - max
      end
      recorded[e] = 1
    end
  end
  redis.call('PEXPIRE', KEYS[k], ttl)
  k = k + 1 + copies
end
return {recorded, dropped}
`

// Out of the processing list; the bare message back to the head of the consumer list.
const GIVE_BACK_LUA = `
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then redis.call('LPUSH', KEYS[2], ARGV[2]) return 1 end
return 0
`

// Out of the processing list, into the delay set, due ARGV[3] ms from now (the score).
const DELAY_LUA = NOW_MS + `
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2]) return 1 end
return 0
`

// Last first, each to the head of its list, so the given values come back in their order.
const RELEASE_LUA = `
for i = #ARGV, 2, -1 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    if string.sub(ARGV[i], 1, string.len(ARGV[1])) == ARGV[1] then
      redis.call('LPUSH', KEYS[2], ARGV[i])
    else
      redis.call('LPUSH', KEYS[3], ARGV[i])
    end
  end
end
return 0
`

/** The work queue on Redis: claims from the consumer list into processing lists, delays, reclaims, subscriber copies, dead letters. */
export class RedisWorkQueue implements WorkQueue {
  constructor (private readonly link: RedisLink) {
    const define = (name: string, lua: string, numberOfKeys?: number): void => link.commands.defineCommand(name, { numberOfKeys, lua })
    define('busgateReclaim', RECLAIM_LUA, 3)
    define('busgateRecordHeard', RECORD_HEARD_LUA)
    define('busgateGiveBack', GIVE_BACK_LUA, 2)
    define('busgateDelay', DELAY_LUA, 2)
    define('busgateClaim', CLAIM_LUA)
    define('busgateRelease', RELEASE_LUA, 3)
    RedisDeadLetters.define(link)
  }

  get #redis (): RedisLink['commands'] {
    return this.link.commands
  }

  async enqueue (frames: readonly Uint8Array[]): Promise<number> {
    checkFrameCount(frames)
    return await this.link.call(async () => await this.#redis.rpush(this.link.options.prodconsKey, ...frames.map((f) => Buffer.from(f))))
  }

  async delayedLength (delayKey: string): Promise<number> {
    return await this.link.call(async () => await this.#redis.zcard(delayKey))
  }

  async recordHeard (events: readonly HeardEvent[], ttlMs: number, max: number): Promise<{ recorded: boolean[], dropped: number }> {
    if (events.length === 0) return { recorded: [], dropped: 0 }
    const keys: string[] = []
    const args: Array<string | number | Buffer> = [ttlMs, max, events.length]
    for (const event of events) {
      keys.push(event.seenKey, ...event.copies.map((c) => c.list))
      args.push(event.occurrence, event.copies.length, ...event.copies.flatMap((c) => [c.webhook, c.value]))
    }
    const [recorded, dropped] = await this.link.call(async () => await this.#redis.busgateRecordHeard(keys.length, ...keys, ...args))
    return { recorded: recorded.map((r) => r === 1), dropped }
  }

  deadLetterStore (base: string, retryKey: string): DeadLetterStore {
    return new RedisDeadLetters(this.link, base, retryKey)
  }

  async reclaim (processingKey: string, retryKey: string, envelopePrefix: string): Promise<number> {
    return await this.link.call(async () => await this.#redis.busgateReclaim(processingKey, retryKey, this.link.options.prodconsKey, envelopePrefix))
  }

  consumer (processingKey: string, retryKey?: string, delayKey?: string): Consumer {
    const { link } = this
    // Blocking pops get a connection each, without a command timeout (BLMOVE waits by design).
    // One queued waits through a reconnect; one on the wire when the connection drops fails (it
    // may have moved a message, which the lane's reclaim brings back), where a Cluster client
    // sends it again instead.
    const conn = link.open('consumer', { maxRetriesPerRequest: null, autoResendUnfulfilledCommands: false, lazyConnect: true })
    const { prodconsKey } = link.options
    // A consumer without a retry list or a delay set looks at ones that nothing fills.
    const retry = retryKey ?? `${processingKey}:retry`
    const delayed = delayKey ?? `${processingKey}:delayed`
    const redis = link.commands
    // Only the blocking wait uses the consumer's own connection: the scripts go on the shared
    // one, whose commands time out, so a stop while Redis is away cannot hang on them.
    return {
      claim: async (timeoutMs, { max = 1, sharers = 1, done = [], oversized, take, sources = [], sourcesFirst = false, scanned } = {}) => {
        // A monotonic clock: a step of the wall clock must not stretch the wait.
        const deadline = performance.now() + timeoutMs
        for (let acks = done; ; acks = []) {
          // Acks and the non-blocking take in one script; the blocking wait only when it found
          // nothing, and no longer than until the next delayed message is due.
          const [taken, nextDueIn, aside, looked, unreadable] = await link.call(async () => await redis.busgateClaimBuffer(5 + sources.length,
            processingKey, retry, prodconsKey, delayed, oversized?.key ?? `${processingKey}:oversized`, ...sources,
            max, sharers, oversized?.maxBytes ?? 0, take?.depth ?? 0, take?.globs.length ?? 0, sourcesFirst ? '1' : '0', ...(take?.globs ?? []), ...acks))
          if (aside > 0) oversized?.setAside(aside)
          if (take !== undefined) scanned?.(looked, unreadable)
          // A matching claim cannot wait in BLMOVE, which would take any message: the caller waits.
          if (taken.length > 0 || aside > 0 || max === 0 || take !== undefined) return taken
          const left = deadline - performance.now()
          const wait = Math.min(left, nextDueIn.length > 0 ? Number(nextDueIn.toString()) : Infinity)
          const frame = await link.call(async () => await conn.blmoveBuffer(prodconsKey, processingKey, 'LEFT', 'RIGHT', Math.max(wait, 1) / 1000))
          if (frame !== null) return [frame]
          if (performance.now() >= deadline) return []
        }
      },
      release: async (frames, envelopePrefix) => {
        if (frames.length > 0) await link.call(async () => await redis.busgateRelease(processingKey, retry, prodconsKey, envelopePrefix, ...frames))
      },
      giveBack: async (claimed, frame) => {
        await link.call(async () => await redis.busgateGiveBack(processingKey, prodconsKey, claimed, frame))
      },
      delay: async (frame, next, delayMs) => {
        await link.call(async () => await redis.busgateDelay(processingKey, delayed, frame, next, Math.max(0, Math.round(delayMs))))
      },
      ack: async (...frames) => {
        if (frames.length === 1) await link.call(async () => await redis.lrem(processingKey, 1, frames[0] as Buffer))
        else if (frames.length > 1) {
          await link.call(async () => await redis.busgateClaimBuffer(5, processingKey, retry, prodconsKey, delayed, `${processingKey}:oversized`, 0, 1, 0, 0, 0, '0', ...frames))
        }
      },
      pending: async () => await link.call(async () => await redis.llen(processingKey)),
      close: async () => { await link.release(conn) }
    }
  }
}
