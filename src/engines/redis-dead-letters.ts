import type { Result } from 'ioredis'
import type { RedisLink } from './redis-link.js'
import { LETTER_TRIM_MAX, READ_FRAME_BUDGET, type DeadLetterStore, type ImportedLetter, type LetterBytes, type StoredLetter } from './engine.js'

type LetterKeys = [ids: string, meta: string, frames: string]

declare module 'ioredis' {
  interface RedisCommander<Context> {
    busgateLetterAdd: (...args: [...LetterKeys, seq: string, id: string, meta: string, frame: Buffer, max: number, returns: Buffer | string]) => Result<number, Context>
    busgateLetterPageBuffer: (...args: [...LetterKeys, start: number, stop: number, maxFrameBytes: number]) =>
    Result<[total: number, ids: Buffer[], metas: Array<Buffer | null>, sizes: number[], frames: Array<Buffer | null>], Context>
    busgateLetterScan: (ids: string, meta: string, before: string, count: number) => Result<[idsAndSeqs: string[], metas: Array<string | null>], Context>
    busgateLetterFramesBuffer: (...args: [...LetterKeys, maxFrameBytes: number, ...ids: string[]]) => Result<[sizes: number[], frames: Array<Buffer | null>], Context>
    busgateLetterGetBuffer: (...args: [...LetterKeys, id: string, maxFrameBytes: number]) => Result<[meta: Buffer | null, size: number, frame: Buffer | null] | null, Context>
    busgateLetterRemove: (...args: [...LetterKeys, id: string]) => Result<number, Context>
    busgateLetterRedeliver: (...args: [...LetterKeys, prodcons: string, retry: string, id: string]) => Result<number, Context>
    busgateLetterRedeliverOldest: (...args: [...LetterKeys, prodcons: string, retry: string, after: string, upto: string, count: number]) => Result<[moved: number, last: string], Context>
    busgateLetterImport: (...args: [...LetterKeys, seq: string, list: string, unreadable: string, max: number, n: number, ...values: Array<string | Buffer>]) => Result<number, Context>
    busgateLetterAdopt: (...args: [...LetterKeys, seq: string, list: string, id: string, meta: string, max: number]) => Result<[bytes: number, dropped: number] | null, Context>
  }
}

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
// An id already there is an add sent again (its answer was lost): nothing more is written.
const LETTER_ADD_LUA = LETTERS_LUA + `
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
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

const text = (b: Buffer | null): string | null => (b === null ? null : b.toString('utf8'))
// Sequence numbers are integers well within a double; ZRANGEBYSCORE takes bounds as text.
const below = (n: number): string => (n === Infinity ? '+inf' : `(${n}`)
const above = (n: number): string => (n === -Infinity ? '-inf' : `(${n}`)

/**
 * Dead letters on Redis, under `base`: `:ids` (a sorted set: id by sequence number, from the
 * counter `:seq`), `:meta` (a hash: id to its description) and `:frames` (a hash: id to the
 * message's bytes). Every method is one script, so one atomic step.
 */
export class RedisDeadLetters implements DeadLetterStore {
  readonly #keys: LetterKeys
  readonly #seq: string

  /** Defines the scripts every store of the engine calls: once per connection. */
  static define (link: RedisLink): void {
    const define = (name: string, numberOfKeys: number, lua: string): void => link.commands.defineCommand(name, { numberOfKeys, lua })
    define('busgateLetterAdd', 4, LETTER_ADD_LUA)
    define('busgateLetterPage', 3, LETTER_PAGE_LUA)
    define('busgateLetterScan', 2, LETTER_SCAN_LUA)
    define('busgateLetterFrames', 3, LETTER_FRAMES_LUA)
    define('busgateLetterGet', 3, LETTER_GET_LUA)
    define('busgateLetterRemove', 3, LETTER_REMOVE_LUA)
    define('busgateLetterRedeliver', 5, LETTER_REDELIVER_LUA)
    define('busgateLetterRedeliverOldest', 5, LETTER_REDELIVER_OLDEST_LUA)
    define('busgateLetterImport', 6, LETTER_IMPORT_LUA)
    define('busgateLetterAdopt', 5, LETTER_ADOPT_LUA)
  }

  constructor (private readonly link: RedisLink, private readonly base: string, private readonly retryKey: string) {
    this.#keys = [`${base}:ids`, `${base}:meta`, `${base}:frames`]
    this.#seq = `${base}:seq`
  }

  get #redis (): RedisLink['commands'] {
    return this.link.commands
  }

  async add ({ id, meta, frame, returns }: ImportedLetter, max: number): Promise<number> {
    return await this.link.call(async () => await this.#redis.busgateLetterAdd(...this.#keys, this.#seq, id, meta, frame, max, returns ?? ''))
  }

  async count (): Promise<number> {
    return await this.link.call(async () => await this.#redis.zcard(this.#keys[0]))
  }

  async get (id: string, maxFrameBytes: number): Promise<StoredLetter | undefined> {
    const found = await this.link.call(async () => await this.#redis.busgateLetterGetBuffer(...this.#keys, id, maxFrameBytes))
    return found === null ? undefined : { id, meta: text(found[0]), frameBytes: found[1], frame: found[2] }
  }

  async page (offset: number, limit: number, maxFrameBytes: number): Promise<{ total: number, letters: StoredLetter[] }> {
    const [total, ids, metas, sizes, frames] = await this.link.call(async () =>
      await this.#redis.busgateLetterPageBuffer(...this.#keys, offset, offset + limit - 1, maxFrameBytes))
    const letters: StoredLetter[] = ids.map((id, i) => ({ id: id.toString('utf8'), meta: text(metas[i] ?? null), frame: frames[i] ?? null, frameBytes: sizes[i] ?? 0 }))
    return { total, letters }
  }

  async scan (before: number, count: number): Promise<Array<{ id: string, seq: number, meta: string | null }>> {
    const [found, metas] = await this.link.call(async () => await this.#redis.busgateLetterScan(this.#keys[0], this.#keys[1], below(before), count))
    return metas.map((meta, i) => ({ id: found[2 * i] as string, seq: Number(found[2 * i + 1]), meta }))
  }

  async frames (ids: readonly string[], maxFrameBytes: number): Promise<LetterBytes[]> {
    if (ids.length === 0) return []
    const [sizes, frames] = await this.link.call(async () => await this.#redis.busgateLetterFramesBuffer(...this.#keys, maxFrameBytes, ...ids))
    return ids.map((_, i) => ({ frame: frames[i] ?? null, frameBytes: sizes[i] ?? 0 }))
  }

  async remove (id: string): Promise<boolean> {
    return (await this.link.call(async () => await this.#redis.busgateLetterRemove(...this.#keys, id))) === 1
  }

  async redeliver (id: string): Promise<boolean> {
    const { prodconsKey } = this.link.options
    return (await this.link.call(async () => await this.#redis.busgateLetterRedeliver(...this.#keys, prodconsKey, this.retryKey, id))) === 1
  }

  async redeliverOldest (after: number, upto: number, count: number): Promise<{ moved: number, last: number | null }> {
    const { prodconsKey } = this.link.options
    const [moved, last] = await this.link.call(async () =>
      await this.#redis.busgateLetterRedeliverOldest(...this.#keys, prodconsKey, this.retryKey, above(after), String(upto), count))
    return { moved, last: last === '' ? null : Number(last) }
  }

  async newest (): Promise<number> {
    const [, seq] = await this.link.call(async () => await this.#redis.zrange(this.#keys[0], -1, '-1', 'WITHSCORES'))
    return seq === undefined ? 0 : Number(seq)
  }

  async importTail (listKey: string, tail: readonly string[], letters: ReadonlyArray<ImportedLetter | null>, max: number): Promise<boolean> {
    if (tail.length === 0) return false
    const fields = letters.flatMap((l) => (l === null ? ['', '', ''] : [l.id, l.meta, l.frame]))
    const dropped = await this.link.call(async () =>
      await this.#redis.busgateLetterImport(...this.#keys, this.#seq, listKey, `${this.base}:unreadable`, max, tail.length, ...tail, ...fields))
    return dropped >= 0
  }

  async adoptHeld (listKey: string, { id, meta }: { id: string, meta: string }, max: number): Promise<{ bytes: number, dropped: number } | null> {
    const adopted = await this.link.call(async () => await this.#redis.busgateLetterAdopt(...this.#keys, this.#seq, listKey, id, meta, max))
    return adopted === null ? null : { bytes: adopted[0], dropped: adopted[1] }
  }
}
