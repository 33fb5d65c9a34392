import { setTimeout as sleep } from 'node:timers/promises'
import { ReplyError, type Redis } from 'ioredis'
import type { FastifyBaseLogger } from 'fastify'
import type { RedisTarget } from '../config.js'
import { Errors } from '../errors.js'
import { LocalFeed, type Feed } from './feed.js'
import { RedisConnections } from './redis-connections.js'
import { RedisHistory } from './redis-history.js'
import {
  LETTER_TRIM_MAX, MAX_FRAMES_PER_PRODUCE, READ_FRAME_BUDGET, SCAN_BYTES, checkFrameCount, deliverMessage, type Consumer, type DeadLetterStore, type Engine, type EngineOptions, type EngineState, type HeardEvent,
  type HistoryOptions, type ProduceResult, type Store, type StoredLetter, type SubscriptionHandlers
} from './engine.js'

// RPUSH first: if it fails (wrong type, out of memory) the script stops before PUBLISH, so a
// failed produce leaves nothing behind. A script is atomic, and one command pipelines well.
const PRODUCE_LUA = `
local n = redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
local s = 0
for i = 2, #ARGV do
  s = redis.call('PUBLISH', ARGV[1], ARGV[i])
end
return {s, n}
`

/** A produce that would take a waiting group past this sends that group first, and starts the next. */
const GROUP_BYTES = 4 * 1024 * 1024

interface PendingProduce {
  frames: Buffer[]
  resolve: (result: ProduceResult) => void
  reject: (err: Error) => void
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

// The dead letters: KEYS[1] a sorted set of ids by sequence number, KEYS[2] a hash of their
// descriptions, KEYS[3] a hash of their bytes. Bytes stay bytes (Lua has no base64), so a
// redelivery moves them inside one script.
const LETTERS_LUA = `
local function returns (ids)
  local fields = {}
  for i, id in ipairs(ids) do fields[i] = 'r:' .. id end
  return fields
end
local function forget (ids)
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('HDEL', KEYS[2], unpack(ids))
  redis.call('HDEL', KEYS[3], unpack(ids))
  redis.call('HDEL', KEYS[3], unpack(returns(ids)))
end
local function trim (max)
  local over = math.min(redis.call('ZCARD', KEYS[1]) - max, ${LETTER_TRIM_MAX})
  if over <= 0 then return 0 end
  local old = redis.call('ZRANGE', KEYS[1], 0, over - 1)
  forget(old)
  return #old
end
-- Those of the ids that have bytes go to the end of the consumer list (KEYS[4]), in their
-- order, and out of the letters; a subscriber's copy (its field 'r:<id>' holds the envelope
-- for its webhook) goes to the retry list (KEYS[5]) instead. The RPUSHes are the first writes:
-- if Redis refuses one (OOM, a wrong type), nothing has changed.
local function move (ids)
  if #ids == 0 then return 0 end
  local frames = redis.call('HMGET', KEYS[3], unpack(ids))
  local back = redis.call('HMGET', KEYS[3], unpack(returns(ids)))
  local bytes, copies, moved = {}, {}, {}
  for i, id in ipairs(ids) do
    if frames[i] then
      if back[i] then copies[#copies + 1] = back[i] else bytes[#bytes + 1] = frames[i] end
      moved[#moved + 1] = id
    end
  end
  if #moved == 0 then return 0 end
  if #bytes > 0 then redis.call('RPUSH', KEYS[4], unpack(bytes)) end
  if #copies > 0 then redis.call('RPUSH', KEYS[5], unpack(copies)) end
  forget(moved)
  return #moved
end
`

// KEYS[4]: the sequence counter. ARGV: id, description, bytes, max, what a redelivery returns ('': none).
const LETTER_ADD_LUA = LETTERS_LUA + `
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], 'r:' .. ARGV[1], ARGV[5]) end
return trim(tonumber(ARGV[4]))
`

// Reading letters: their sizes, and their bytes only up to a bound. A letter keeps whatever a
// producer put on the bus, hundreds of MB if it likes; HSTRLEN is O(1), so one too large to
// show never leaves Redis (a redelivery moves it inside a script). HSTRLEN is 0 for bytes that
// are not there, and HGET tells those from empty ones.
const LETTER_READ_LUA = `
local function read (ids, max)
  local sizes, frames, budget = {}, {}, math.max(max, ${READ_FRAME_BUDGET})
  for i, id in ipairs(ids) do
    sizes[i] = redis.call('HSTRLEN', KEYS[3], id)
    frames[i] = sizes[i] <= max and sizes[i] <= budget and redis.call('HGET', KEYS[3], id)
    if frames[i] then budget = budget - sizes[i] end
  end
  return sizes, frames
end
`

// Newest first, ranks ARGV[1] to ARGV[2], bytes up to ARGV[3]: the total, the ids, their
// descriptions, sizes and bytes.
const LETTER_PAGE_LUA = LETTER_READ_LUA + `
local total = redis.call('ZCARD', KEYS[1])
local ids = redis.call('ZREVRANGE', KEYS[1], ARGV[1], ARGV[2])
if #ids == 0 then return {total, {}, {}, {}, {}} end
local sizes, frames = read(ids, tonumber(ARGV[3]))
return {total, ids, redis.call('HMGET', KEYS[2], unpack(ids)), sizes, frames}
`

// ARGV: the bound, then the ids: their sizes and bytes.
const LETTER_FRAMES_LUA = LETTER_READ_LUA + `
local sizes, frames = read({unpack(ARGV, 2)}, tonumber(ARGV[1]))
return {sizes, frames}
`

// Newest first, sequence below ARGV[1] (a ZRANGEBYSCORE bound), up to ARGV[2]: ids with their
// sequence, and their descriptions.
const LETTER_SCAN_LUA = `
local found = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], '-inf', 'WITHSCORES', 'LIMIT', 0, ARGV[2])
if #found == 0 then return {{}, {}} end
local ids = {}
for i = 1, #found, 2 do ids[#ids + 1] = found[i] end
return {found, redis.call('HMGET', KEYS[2], unpack(ids))}
`

// ARGV: the id, the bound. Its description, size and bytes.
const LETTER_GET_LUA = LETTER_READ_LUA + `
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return false end
local sizes, frames = read({ARGV[1]}, tonumber(ARGV[2]))
return {redis.call('HGET', KEYS[2], ARGV[1]), sizes[1], frames[1]}
`

const LETTER_REMOVE_LUA = LETTERS_LUA + `
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
forget({ARGV[1]})
return 1
`

const LETTER_REDELIVER_LUA = LETTERS_LUA + `
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
return move({ARGV[1]})
`

// The oldest with a sequence within ARGV[1] and ARGV[2] (ZRANGEBYSCORE bounds), up to ARGV[3]:
// how many moved, and the sequence of the last one looked at ('' for none).
// No more than ${READ_FRAME_BUDGET} bytes in one step (but one letter at least): a step of
// letters of tens of MB each would hold Redis for seconds.
const LETTER_REDELIVER_OLDEST_LUA = LETTERS_LUA + `
local found = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local ids, bytes, last = {}, 0, ''
for i = 1, #found, 2 do
  local size = redis.call('HSTRLEN', KEYS[3], found[i])
  if #ids > 0 and bytes + size > ${READ_FRAME_BUDGET} then break end
  ids[#ids + 1] = found[i]
  bytes = bytes + size
  last = found[i + 1]
end
return {move(ids), last}
`

// KEYS[4] the sequence counter, KEYS[5] the old list, KEYS[6] where its unreadable values go.
// ARGV: max, n, the list's last n values (its oldest last), then per value an id (empty when it
// holds no letter), a description and bytes. Nothing changes unless the list still ends with
// exactly those values: two gateways migrating at once, or an old one still writing, cannot
// make a letter move twice. The INCRBY is the first write, so a refusal changes nothing.
const LETTER_IMPORT_LUA = LETTERS_LUA + `
local max, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local tail = redis.call('LRANGE', KEYS[5], -n, -1)
if #tail ~= n then return -1 end
for i = 1, n do
  if tail[i] ~= ARGV[2 + i] then return -1 end
end
local seq = redis.call('INCRBY', KEYS[4], n) - n
for i = n, 1, -1 do
  local at = 2 + n + 3 * (i - 1)
  local id = ARGV[at + 1]
  seq = seq + 1
  if id == '' then
    redis.call('RPUSH', KEYS[6], ARGV[2 + i])
  elseif not redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], seq, id)
    redis.call('HSET', KEYS[2], id, ARGV[at + 2])
    redis.call('HSET', KEYS[3], id, ARGV[at + 3])
  end
end
redis.call('LTRIM', KEYS[5], 0, -n - 1)
return trim(max)
`

// KEYS[4] the sequence counter, KEYS[5] the list a claim set values aside in. ARGV: id,
// description, max. The value never leaves Redis: how large it was is all that comes back.
const LETTER_ADOPT_LUA = LETTERS_LUA + `
local v = redis.call('LPOP', KEYS[5])
if not v then return false end
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], v)
return {#v, trim(tonumber(ARGV[3]))}
`

type LetterKeys = [ids: string, meta: string, frames: string]

interface ScriptCommands {
  busgateLetterAdd: (...args: [...LetterKeys, seq: string, id: string, meta: string, frame: Buffer, max: number, returns: Buffer | string]) => Promise<number>
  busgateLetterPageBuffer: (...args: [...LetterKeys, start: number, stop: number, maxFrameBytes: number]) => Promise<[number, Buffer[], Array<Buffer | null>, number[], Array<Buffer | null>]>
  busgateLetterScan: (ids: string, meta: string, before: string, count: number) => Promise<[string[], Array<string | null>]>
  busgateLetterFramesBuffer: (...args: [...LetterKeys, maxFrameBytes: number, ...ids: string[]]) => Promise<[number[], Array<Buffer | null>]>
  busgateLetterGetBuffer: (...args: [...LetterKeys, id: string, maxFrameBytes: number]) => Promise<[Buffer | null, number, Buffer | null] | null>
  busgateLetterRemove: (...args: [...LetterKeys, id: string]) => Promise<number>
  busgateLetterRedeliver: (...args: [...LetterKeys, prodcons: string, retry: string, id: string]) => Promise<number>
  busgateLetterRedeliverOldest: (...args: [...LetterKeys, prodcons: string, retry: string, after: string, upto: string, count: number]) => Promise<[number, string]>
  busgateLetterImport: (...args: [...LetterKeys, seq: string, list: string, unreadable: string, max: number, n: number, ...values: Array<string | Buffer>]) => Promise<number>
  busgateLetterAdopt: (...args: [...LetterKeys, seq: string, list: string, id: string, meta: string, max: number]) => Promise<[number, number] | null>

  /** keys (5 + sources), processing, retry, prodcons, delayed, oversized, sources…, max, sharers, maxBytes, depth, globs, sourcesFirst, globs…, done… */
  busgateClaimBuffer: (...args: Array<string | number | Buffer>) => Promise<[Buffer[], Buffer, number, number, number]>
  busgateRecordHeard: (...args: Array<string | number | Buffer>) => Promise<[number[], number]>
  busgateGiveBack: (processing: string, prodcons: string, claimed: Buffer, frame: Buffer) => Promise<number>
  busgateDelay: (processing: string, delayed: string, frame: Buffer, next: Buffer, delayMs: number) => Promise<number>
  busgateRelease: (processing: string, retry: string, prodcons: string, prefix: string, ...frames: Buffer[]) => Promise<number>
  busgateHashMerge: (key: string, ...args: string[]) => Promise<number>
  busgateHashSwap: (key: string, counter: string, field: string, expects: string, expected: string, sets: string, value: string) => Promise<number>
  busgateReclaim: (processing: string, retry: string, prodcons: string, prefix: string) => Promise<number>
}

interface ProduceCommand {
  busgateProduce: (key: string, channel: string, ...frames: Buffer[]) => Promise<[number, number]>
}

// Redis answers these while it cannot serve for now; a retry may succeed. Inside a script
// (Redis 6.2) they arrive wrapped: "ERR Error running script … -OOM …".
const TRANSIENT_REPLY = /(?:^|-)(LOADING|BUSY|MASTERDOWN|READONLY|OOM|TRYAGAIN|CLUSTERDOWN|NOREPLICAS)\b/

export class RedisEngine implements Engine {
  readonly kind = 'redis'
  #state: EngineState = 'connecting'
  #subscriberState: EngineState = 'ready'
  /** the WAIT producer's connection, when there is one: produces need it */
  #producerState: EngineState = 'ready'
  readonly #commands: Redis
  /** produces, when they WAIT for replicas */
  #producer: Redis | undefined
  #subscriber: Redis | undefined
  readonly #handlers = new Set<SubscriptionHandlers>()
  readonly #others = new Set<Redis>()
  #group: { members: PendingProduce[], frames: number, bytes: number } = { members: [], frames: 0, bytes: 0 }
  #flushScheduled = false

  /** how connections are made: standalone, Sentinel and Cluster differ only there */
  readonly #connections: RedisConnections

  constructor (private readonly options: EngineOptions & { redis: RedisTarget }, private readonly log: FastifyBaseLogger) {
    this.#connections = new RedisConnections(options, log, () => this.#state === 'closed')
    this.#commands = this.#connections.open('commands', {
      // A produce must fail fast rather than wait for a reconnect, and must never be replayed
      // behind the client's back after it was answered 503.
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
      commandTimeout: options.redisTimeoutMs
      // No auto-pipelining: produce() already sends one command per event-loop turn.
    })
    this.#commands.defineCommand('busgateProduce', { numberOfKeys: 1, lua: PRODUCE_LUA })
    this.#commands.defineCommand('busgateReclaim', { numberOfKeys: 3, lua: RECLAIM_LUA })
    this.#commands.defineCommand('busgateRecordHeard', { lua: RECORD_HEARD_LUA })
    this.#commands.defineCommand('busgateGiveBack', { numberOfKeys: 2, lua: GIVE_BACK_LUA })
    this.#commands.defineCommand('busgateDelay', { numberOfKeys: 2, lua: DELAY_LUA })
    this.#commands.defineCommand('busgateHashMerge', { numberOfKeys: 1, lua: HASH_MERGE_LUA })
    this.#commands.defineCommand('busgateHashSwap', { numberOfKeys: 2, lua: HASH_SWAP_LUA })
    this.#commands.defineCommand('busgateClaim', { lua: CLAIM_LUA })
    this.#commands.defineCommand('busgateRelease', { numberOfKeys: 3, lua: RELEASE_LUA })
    this.#commands.defineCommand('busgateLetterAdd', { numberOfKeys: 4, lua: LETTER_ADD_LUA })
    this.#commands.defineCommand('busgateLetterPage', { numberOfKeys: 3, lua: LETTER_PAGE_LUA })
    this.#commands.defineCommand('busgateLetterScan', { numberOfKeys: 2, lua: LETTER_SCAN_LUA })
    this.#commands.defineCommand('busgateLetterFrames', { numberOfKeys: 3, lua: LETTER_FRAMES_LUA })
    this.#commands.defineCommand('busgateLetterGet', { numberOfKeys: 3, lua: LETTER_GET_LUA })
    this.#commands.defineCommand('busgateLetterRemove', { numberOfKeys: 3, lua: LETTER_REMOVE_LUA })
    this.#commands.defineCommand('busgateLetterRedeliver', { numberOfKeys: 5, lua: LETTER_REDELIVER_LUA })
    this.#commands.defineCommand('busgateLetterRedeliverOldest', { numberOfKeys: 5, lua: LETTER_REDELIVER_OLDEST_LUA })
    this.#commands.defineCommand('busgateLetterImport', { numberOfKeys: 6, lua: LETTER_IMPORT_LUA })
    this.#commands.defineCommand('busgateLetterAdopt', { numberOfKeys: 5, lua: LETTER_ADOPT_LUA })
    this.#connections.watch(this.#commands, 'commands', (state) => { this.#state = state })
    // WAIT holds its connection until the replicas answer: produces get one of their own then,
    // so the other commands never queue behind it.
    if ((options.redisWaitReplicas ?? 0) > 0) {
      this.#producer = this.#connections.open('producer', {
        enableOfflineQueue: false,
        autoResendUnfulfilledCommands: false,
        maxRetriesPerRequest: 0,
        commandTimeout: options.redisTimeoutMs + (options.redisWaitTimeoutMs ?? 1000)
      })
      this.#producer.defineCommand('busgateProduce', { numberOfKeys: 1, lua: PRODUCE_LUA })
      this.#producerState = 'connecting'
      this.#connections.watch(this.#producer, 'producer', (state) => { this.#producerState = state })
      this.#others.add(this.#producer)
    }
  }

  get state (): EngineState {
    if (this.#state !== 'ready') return this.#state
    return this.#producerState === 'ready' ? this.#subscriberState : this.#producerState
  }

  async connect (): Promise<void> {
    if (this.#commands.status === 'ready') return
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        this.#commands.off('ready', done)
        resolve()
      }
      const timer = setTimeout(done, this.options.redisTimeoutMs)
      this.#commands.on('ready', done)
    })
  }

  /**
   * Produces are grouped: every produce that arrives before the event loop's next check phase
   * goes to Redis in one script call. The group is atomic as a whole, so each produce in it is
   * too, and their order in the group is their order in the list. One script call for many
   * events costs Redis a fraction of one call per event (the Lua call itself is most of it).
   */
  async produce (frames: readonly Uint8Array[]): Promise<ProduceResult> {
    checkFrameCount(frames)
    const buffers = frames.map((f) => (Buffer.isBuffer(f) ? f : Buffer.from(f.buffer, f.byteOffset, f.byteLength)))
    const bytes = buffers.reduce((sum, b) => sum + b.byteLength, 0)
    return await new Promise<ProduceResult>((resolve, reject) => {
      if (this.#group.frames + buffers.length > MAX_FRAMES_PER_PRODUCE || this.#group.bytes + bytes > GROUP_BYTES) this.#flush()
      this.#group.members.push({ frames: buffers, resolve, reject })
      this.#group.frames += buffers.length
      this.#group.bytes += bytes
      if (!this.#flushScheduled) {
        this.#flushScheduled = true
        setImmediate(() => {
          this.#flushScheduled = false
          this.#flush()
        })
      }
    })
  }

  #flush (): void {
    const group = this.#group
    if (group.members.length === 0) return
    this.#group = { members: [], frames: 0, bytes: 0 }
    // A WAIT holds the producer connection until the replicas answer: the next group goes when
    // it has, so none times out queued behind it (and is then written all the same).
    if (this.#waiting) {
      this.#backlog.push(group)
      return
    }
    this.#send(group.members)
  }

  /** Groups waiting for the WAIT in flight to answer (BUSGATE_REDIS_WAIT_REPLICAS only). */
  readonly #backlog: Array<{ members: PendingProduce[] }> = []
  #waiting = false

  #send (members: PendingProduce[]): void {
    const frames = members.length === 1 ? (members[0] as PendingProduce).frames : members.flatMap((m) => m.frames)
    const conn = this.#producer ?? this.#commands
    const produced = (conn as unknown as ProduceCommand).busgateProduce(this.options.prodconsKey, this.options.pubsubChannel, ...frames)
    // WAIT right behind the script on the same connection: it counts the replicas that hold
    // every write this connection made before it, this group's included.
    const replicas = this.options.redisWaitReplicas ?? 0
    if (replicas > 0) this.#waiting = true
    const confirmed = replicas === 0 ? Promise.resolve(0) : conn.wait(replicas, this.options.redisWaitTimeoutMs ?? 1000)
    Promise.all([produced, confirmed]).then(([[subscribers, finalLength], acked]) => {
      if (acked < replicas) {
        const err = new Errors.ReplicationUnconfirmed(`${acked} of the ${replicas} replicas asked for confirmed it within ${this.options.redisWaitTimeoutMs ?? 1000} ms`)
        for (const member of members) member.reject(err)
        return
      }
      let end = finalLength - frames.length
      for (const member of members) {
        end += member.frames.length
        member.resolve({ subscribers, queueLength: end })
      }
    }, (err: unknown) => {
      const translated = this.#translate(err)
      for (const member of members) member.reject(translated)
    }).finally(() => {
      if (replicas === 0) return
      this.#waiting = false
      const next = this.#backlog.shift()
      if (next !== undefined) this.#send(next.members)
    })
  }

  async subscribe (handlers: SubscriptionHandlers): Promise<() => Promise<void>> {
    const subscriber = this.#subscriber ?? this.#createSubscriber()
    this.#handlers.add(handlers)
    if (this.#handlers.size === 1) {
      // Queued until the connection is up: a Redis that is down must not hold the caller.
      const subscribed = subscriber.subscribe(this.options.pubsubChannel).then(() => undefined, () => undefined)
      await Promise.race([subscribed, sleep(this.options.redisTimeoutMs)])
    }
    return async () => {
      if (!this.#handlers.delete(handlers) || this.#handlers.size > 0) return
      // Nobody listens: stop Redis sending every message to this process. The connection stays.
      // Bounded as the subscribe is: a connection that is reconnecting must not hold the caller (a registry change waits on this).
      await Promise.race([subscriber.unsubscribe(this.options.pubsubChannel).catch(() => undefined), sleep(this.options.redisTimeoutMs)])
    }
  }

  history (options: HistoryOptions): Feed {
    if (!options.shared) return new LocalFeed(this)
    const prefix = options.keyPrefix
    return new RedisHistory(this.#commands, () => {
      // A blocking read: no command timeout, and it waits through reconnects.
      const reader = this.#connections.open('history', { maxRetriesPerRequest: null })
      this.#connections.watch(reader, 'history')
      this.#others.add(reader)
      reader.once('end', () => this.#others.delete(reader))
      return reader
    }, async (handlers) => await this.subscribe(handlers),
    { stream: `${prefix}history`, lease: `${prefix}history:recorder`, meta: `${prefix}history:meta` },
    options, options.metrics, this.log)
  }

  // One connection for the whole process, whatever the number of handlers. ioredis
  // resubscribes by itself after a reconnect; what was published meanwhile is gone.
  #createSubscriber (): Redis {
    const subscriber = this.#connections.open('subscriber', { maxRetriesPerRequest: null })
    this.#subscriber = subscriber
    this.#subscriberState = 'connecting'
    let lost = false
    this.#connections.watch(subscriber, 'subscriber', (state) => {
      this.#subscriberState = state
      if (state === 'down') lost = true
      if (state === 'ready' && lost) {
        lost = false
        for (const h of this.#handlers) h.gap?.()
      }
    })
    let failures = 0
    const onError = (err: unknown): void => {
      if (failures++ % 1000 === 0) this.log.error({ err, seen: failures }, 'a bus message handler failed')
    }
    subscriber.on('messageBuffer', (_channel: Buffer, message: Buffer) => {
      deliverMessage(this.#handlers, message, onError)
    })
    return subscriber
  }

  async queueLength (): Promise<number> {
    try {
      return await this.#commands.llen(this.options.prodconsKey)
    } catch (err) {
      throw this.#translate(err)
    }
  }

  async recordHeard (events: readonly HeardEvent[], ttlMs: number, max: number): Promise<{ recorded: boolean[], dropped: number }> {
    if (events.length === 0) return { recorded: [], dropped: 0 }
    const keys: string[] = []
    const args: Array<string | number | Buffer> = [ttlMs, max, events.length]
    for (const event of events) {
      keys.push(event.seenKey, ...event.copies.map((c) => c.list))
      args.push(event.occurrence, event.copies.length, ...event.copies.flatMap((c) => [c.webhook, c.value]))
    }
    const [recorded, dropped] = await this.#call(() => this.#scripts.busgateRecordHeard(keys.length, ...keys, ...args))
    return { recorded: recorded.map((r) => r === 1), dropped }
  }

  async delayedLength (delayKey: string): Promise<number> {
    return await this.#call(() => this.#commands.zcard(delayKey))
  }

  readonly store: Store = {
    hashGet: async (key, field) => await this.#call(() => this.#commands.hget(key, field)),
    hashGetAll: async (key) => await this.#call(() => this.#commands.hgetall(key)),
    hashSet: async (key, field, value) => { await this.#call(() => this.#commands.hset(key, field, value)) },
    hashMerge: async (key, fields, defaults, ttlMs, guard) => {
      const pairs = (record: Record<string, string>): string[] => [String(Object.keys(record).length), ...Object.entries(record).flat()]
      const args = [String(ttlMs), guard?.field ?? '', guard?.rising ?? '', String(guard?.values.length ?? 0), ...(guard?.values ?? []),
        ...pairs(fields), ...pairs(defaults)]
      return await this.#call(() => this.#scripts.busgateHashMerge(key, ...args)) === 1
    },
    hashDelete: async (key, field) => (await this.#call(() => this.#commands.hdel(key, field))) > 0,
    hashSwap: async (key, field, expected, value, counterKey) =>
      await this.#call(() => this.#scripts.busgateHashSwap(key, counterKey, field, expected === null ? '0' : '1', expected ?? '', value === null ? '0' : '1', value ?? '')),
    deleteKeys: async (...keys) => { if (keys.length > 0) await this.#call(() => this.#commands.del(...keys)) },
    setExpiring: async (key, value, ttlMs) => { await this.#call(() => this.#commands.set(key, value, 'PX', ttlMs)) },
    exists: async (key) => (await this.#call(() => this.#commands.exists(key))) > 0,
    setIfAbsent: async (key, value) => {
      // A key deleted between the two commands is set again: what comes back is always what Redis holds.
      for (;;) {
        await this.#call(() => this.#commands.set(key, value, 'NX'))
        const held = await this.#call(() => this.#commands.get(key))
        if (held !== null) return held
      }
    },
    keys: async (pattern) => {
      const found = new Set<string>()
      for (const node of this.#connections.masters(this.#commands)) {
        let cursor = '0'
        do {
          const [next, batch] = await this.#call(() => node.scan(cursor, 'MATCH', pattern, 'COUNT', 500))
          cursor = next
          for (const key of batch) found.add(key)
        } while (cursor !== '0')
      }
      return [...found]
    },
    listPushCapped: async (key, value, max) => {
      const [[pushErr, length], [trimErr]] = await this.#call(() => this.#commands.multi().lpush(key, ...(typeof value === 'string' ? [value] : value)).ltrim(key, 0, max - 1).exec()) as
        [[Error | null, number], [Error | null, unknown]]
      if (pushErr !== null || trimErr !== null) throw this.#translate(pushErr ?? trimErr)
      return length
    },
    listRange: async (key, start, stop) => await this.#call(() => this.#commands.lrange(key, start, stop)),
    listRemove: async (key, value) => await this.#call(() => this.#commands.lrem(key, 0, value)),
    listLength: async (key) => await this.#call(() => this.#commands.llen(key)),
    increment: async (key, by = 1) => await this.#call(() => this.#commands.incrby(key, by))
  }

  /**
   * Under `base`: `:ids` (a sorted set: id by sequence number, from the counter `:seq`), `:meta`
   * (a hash: id to its description) and `:frames` (a hash: id to the message's bytes).
   */
  deadLetterStore (base: string, retryKey: string): DeadLetterStore {
    const keys: LetterKeys = [`${base}:ids`, `${base}:meta`, `${base}:frames`]
    const seqKey = `${base}:seq`
    const { prodconsKey } = this.options
    const text = (b: Buffer | null): string | null => (b === null ? null : b.toString('utf8'))
    // Sequence numbers are integers well within a double; ZRANGEBYSCORE takes bounds as text.
    const below = (n: number): string => (n === Infinity ? '+inf' : `(${n}`)
    const above = (n: number): string => (n === -Infinity ? '-inf' : `(${n}`)
    return {
      add: async ({ id, meta, frame, returns }, max) => await this.#call(() => this.#scripts.busgateLetterAdd(...keys, seqKey, id, meta, frame, max, returns ?? '')),
      count: async () => await this.#call(() => this.#commands.zcard(keys[0])),
      get: async (id, maxFrameBytes) => {
        const found = await this.#call(() => this.#scripts.busgateLetterGetBuffer(...keys, id, maxFrameBytes))
        return found === null ? undefined : { id, meta: text(found[0]), frameBytes: found[1], frame: found[2] }
      },
      page: async (offset, limit, maxFrameBytes) => {
        const [total, ids, metas, sizes, frames] = await this.#call(() => this.#scripts.busgateLetterPageBuffer(...keys, offset, offset + limit - 1, maxFrameBytes))
        const letters: StoredLetter[] = ids.map((id, i) => ({ id: id.toString('utf8'), meta: text(metas[i] ?? null), frame: frames[i] ?? null, frameBytes: sizes[i] ?? 0 }))
        return { total, letters }
      },
      scan: async (before, count) => {
        const [found, metas] = await this.#call(() => this.#scripts.busgateLetterScan(keys[0], keys[1], below(before), count))
        return metas.map((meta, i) => ({ id: found[2 * i] as string, seq: Number(found[2 * i + 1]), meta }))
      },
      frames: async (ids, maxFrameBytes) => {
        if (ids.length === 0) return []
        const [sizes, frames] = await this.#call(() => this.#scripts.busgateLetterFramesBuffer(...keys, maxFrameBytes, ...ids))
        return ids.map((_, i) => ({ frame: frames[i] ?? null, frameBytes: sizes[i] ?? 0 }))
      },
      remove: async (id) => (await this.#call(() => this.#scripts.busgateLetterRemove(...keys, id))) === 1,
      redeliver: async (id) => (await this.#call(() => this.#scripts.busgateLetterRedeliver(...keys, prodconsKey, retryKey, id))) === 1,
      redeliverOldest: async (after, upto, count) => {
        const [moved, last] = await this.#call(() => this.#scripts.busgateLetterRedeliverOldest(...keys, prodconsKey, retryKey, above(after), String(upto), count))
        return { moved, last: last === '' ? null : Number(last) }
      },
      newest: async () => {
        const [, seq] = await this.#call(() => this.#commands.zrange(keys[0], -1, '-1', 'WITHSCORES'))
        return seq === undefined ? 0 : Number(seq)
      },
      importTail: async (listKey, tail, letters, max) => {
        if (tail.length === 0) return false
        const fields = letters.flatMap((l) => (l === null ? ['', '', ''] : [l.id, l.meta, l.frame]))
        const dropped = await this.#call(() => this.#scripts.busgateLetterImport(...keys, seqKey, listKey, `${base}:unreadable`, max, tail.length, ...tail, ...fields))
        return dropped >= 0
      },
      adoptHeld: async (listKey, { id, meta }, max) => {
        const adopted = await this.#call(() => this.#scripts.busgateLetterAdopt(...keys, seqKey, listKey, id, meta, max))
        return adopted === null ? null : { bytes: adopted[0], dropped: adopted[1] }
      }
    }
  }

  async #call<T> (command: () => Promise<T>): Promise<T> {
    try {
      return await command()
    } catch (err) {
      throw this.#translate(err)
    }
  }

  async ping (): Promise<void> {
    try {
      // Produces go through the WAIT producer when there is one: it must answer too.
      await Promise.all([this.#commands.ping(), this.#producer?.ping()])
    } catch (err) {
      throw this.#translate(err)
    }
  }

  async enqueue (frames: readonly Uint8Array[]): Promise<number> {
    checkFrameCount(frames)
    return await this.#call(() => this.#commands.rpush(this.options.prodconsKey, ...frames.map((f) => Buffer.from(f))))
  }

  get #scripts (): ScriptCommands {
    return this.#commands as unknown as ScriptCommands
  }

  async reclaim (processingKey: string, retryKey: string, envelopePrefix: string): Promise<number> {
    return await this.#call(() => this.#scripts.busgateReclaim(processingKey, retryKey, this.options.prodconsKey, envelopePrefix))
  }

  consumer (processingKey: string, retryKey?: string, delayKey?: string): Consumer {
    // Blocking pops get a connection each, without a command timeout (BLMOVE waits by design),
    // and wait through reconnects instead of failing.
    const conn = this.#connections.open('consumer', { maxRetriesPerRequest: null, autoResendUnfulfilledCommands: false, lazyConnect: true })
    this.#connections.watch(conn, 'consumer')
    this.#others.add(conn)
    const { prodconsKey } = this.options
    // A consumer without a retry list or a delay set looks at ones that nothing fills.
    const retry = retryKey ?? `${processingKey}:retry`
    const delayed = delayKey ?? `${processingKey}:delayed`
    // Only the blocking wait uses the consumer's own connection: the scripts go on the shared
    // one, whose commands time out, so a stop while Redis is away cannot hang on them.
    return {
      claim: async (timeoutMs, { max = 1, sharers = 1, done = [], oversized, take, sources = [], sourcesFirst = false, scanned } = {}) => {
        // A monotonic clock: a step of the wall clock must not stretch the wait.
        const deadline = performance.now() + timeoutMs
        for (let acks = done; ; acks = []) {
          // Acks and the non-blocking take in one script; the blocking wait only when it found
          // nothing, and no longer than until the next delayed message is due.
          const [taken, nextDueIn, aside, looked, unreadable] = await this.#call(() => this.#scripts.busgateClaimBuffer(5 + sources.length,
            processingKey, retry, prodconsKey, delayed, oversized?.key ?? `${processingKey}:oversized`, ...sources,
            max, sharers, oversized?.maxBytes ?? 0, take?.depth ?? 0, take?.globs.length ?? 0, sourcesFirst ? '1' : '0', ...(take?.globs ?? []), ...acks))
          if (aside > 0) oversized?.setAside(aside)
          if (take !== undefined) scanned?.(looked, unreadable)
          // A matching claim cannot wait in BLMOVE, which would take any message: the caller waits.
          if (taken.length > 0 || aside > 0 || max === 0 || take !== undefined) return taken
          const left = deadline - performance.now()
          const wait = Math.min(left, nextDueIn.length > 0 ? Number(nextDueIn.toString()) : Infinity)
          const frame = await this.#call(() => conn.blmoveBuffer(prodconsKey, processingKey, 'LEFT', 'RIGHT', Math.max(wait, 1) / 1000))
          if (frame !== null) return [frame]
          if (performance.now() >= deadline) return []
        }
      },
      release: async (frames, envelopePrefix) => {
        if (frames.length > 0) await this.#call(() => this.#scripts.busgateRelease(processingKey, retry, prodconsKey, envelopePrefix, ...frames))
      },
      giveBack: async (claimed, frame) => {
        await this.#call(() => this.#scripts.busgateGiveBack(processingKey, prodconsKey, claimed, frame))
      },
      delay: async (frame, next, delayMs) => {
        await this.#call(() => this.#scripts.busgateDelay(processingKey, delayed, frame, next, Math.max(0, Math.round(delayMs))))
      },
      ack: async (...frames) => {
        if (frames.length === 1) await this.#call(() => this.#commands.lrem(processingKey, 1, frames[0] as Buffer))
        else if (frames.length > 1) {
          await this.#call(() => this.#scripts.busgateClaimBuffer(5, processingKey, retry, prodconsKey, delayed, `${processingKey}:oversized`, 0, 1, 0, 0, 0, '0', ...frames))
        }
      },
      pending: async () => {
        try {
          return await this.#commands.llen(processingKey)
        } catch (err) {
          throw this.#translate(err)
        }
      },
      close: async () => {
        this.#others.delete(conn)
        await this.#quit(conn)
      }
    }
  }

  async close (): Promise<void> {
    this.#state = 'closed'
    const all = [this.#commands, ...(this.#subscriber === undefined ? [] : [this.#subscriber]), ...this.#others]
    this.#others.clear()
    await Promise.all(all.map((conn) => this.#quit(conn)))
  }

  // QUIT lets pending replies arrive; a Redis that does not answer is cut off after the bound.
  async #quit (conn: Redis): Promise<void> {
    if (conn.status === 'ready') {
      await Promise.race([conn.quit().catch(() => undefined), sleep(this.options.redisTimeoutMs)])
    }
    conn.disconnect()
  }

  #translate (err: unknown): Error {
    const message = (err as Error).message ?? ''
    if (err instanceof ReplyError) {
      const transient = TRANSIENT_REPLY.exec(message)
      // Anything else is a bug or a misconfiguration (WRONGTYPE…): a 500. A new Error, because
      // ioredis hangs the whole command, every frame of it, on its own, and that must not be logged.
      if (transient === null) return new Error(`Redis refused the command: ${message}`)
      return new Errors.RedisUnavailable(`Redis cannot serve right now (${transient[1] ?? 'error'})`)
    }
    return new Errors.RedisUnavailable(/timed out/i.test(message)
      ? 'Redis did not answer in time; the write may still have happened'
      : 'Redis is not reachable')
  }
}
