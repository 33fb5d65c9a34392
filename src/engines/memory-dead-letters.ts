import { LETTER_TRIM_MAX, READ_FRAME_BUDGET, type DeadLetterStore, type ImportedLetter, type LetterBytes, type StoredLetter } from './engine.js'
import type { Letter, MemoryKeyspace } from './memory-keyspace.js'
import type { Ranked } from './ranked-list.js'

/**
 * The dead letters kept under `base` in the keyspace, redelivered to its consumer list or to
 * `retryKey`. Each call a synchronous step, so each is as atomic as a script is in Redis.
 */
export function memoryDeadLetters (keyspace: MemoryKeyspace, base: string, retryKey: string): DeadLetterStore {
  const letters = keyspace.letterSet(base)
  const { byId, order } = letters
  // As the scripts read them: bytes past the bound, or past what one read brings in, stay where
  // they are; only their size goes out.
  const reader = (maxFrameBytes: number): (frame: Buffer) => LetterBytes => {
    let budget = Math.max(maxFrameBytes, READ_FRAME_BUDGET)
    return (frame) => {
      const shown = frame.byteLength <= maxFrameBytes && frame.byteLength <= budget
      if (shown) budget -= frame.byteLength
      return { frame: shown ? frame : null, frameBytes: frame.byteLength }
    }
  }
  const stored = ({ value: { id, meta, frame } }: Ranked<Letter>, read: (frame: Buffer) => LetterBytes): StoredLetter => ({ id, meta, ...read(frame) })
  const forget = (item: Ranked<Letter>): void => {
    order.remove(item)
    byId.delete(item.value.id)
  }
  const put = ({ id, meta, frame, returns }: ImportedLetter): void => {
    const same = byId.get(id)
    if (same !== undefined) forget(same)
    byId.set(id, order.push(++letters.seq, { id, meta, frame: Buffer.from(frame), ...(returns === undefined ? {} : { returns: Buffer.from(returns) }) }))
  }
  const trim = (max: number): number => {
    let dropped = 0
    for (; order.size > max && dropped < LETTER_TRIM_MAX; dropped++) forget(order.at(0) as Ranked<Letter>)
    return dropped
  }
  // As the script does it: the bytes onto the consumer list and the letters out, together.
  const move = (items: ReadonlyArray<Ranked<Letter>>): number => {
    keyspace.assertOpen()
    for (const item of items) {
      forget(item)
      if (item.value.returns !== undefined) {
        keyspace.retryList(retryKey).push(item.value.returns)
        continue
      }
      keyspace.consumerList.push(item.value.frame)
    }
    keyspace.consumerList.serveWaiters()
    return items.length
  }
  return {
    add: async (letter, max) => {
      if (byId.has(letter.id)) return 0
      put(letter)
      return trim(max)
    },
    count: async () => order.size,
    get: async (id, maxFrameBytes) => {
      const item = byId.get(id)
      return item === undefined ? undefined : stored(item, reader(maxFrameBytes))
    },
    page: async (offset, limit, maxFrameBytes) => {
      const found: StoredLetter[] = []
      const read = reader(maxFrameBytes)
      for (let rank = order.size - 1 - offset; rank >= 0 && found.length < limit; rank--) found.push(stored(order.at(rank) as Ranked<Letter>, read))
      return { total: order.size, letters: found }
    },
    scan: async (before, count) => {
      const found: Array<{ id: string, seq: number, meta: string }> = []
      for (let rank = order.countBelow(before) - 1; rank >= 0 && found.length < count; rank--) {
        const { key, value } = order.at(rank) as Ranked<Letter>
        found.push({ id: value.id, seq: key, meta: value.meta })
      }
      return found
    },
    frames: async (ids, maxFrameBytes) => {
      const read = reader(maxFrameBytes)
      return ids.map((id) => {
        const item = byId.get(id)
        return item === undefined ? { frame: null, frameBytes: 0 } : read(item.value.frame)
      })
    },
    remove: async (id) => {
      const item = byId.get(id)
      if (item !== undefined) forget(item)
      return item !== undefined
    },
    redeliver: async (id) => {
      const item = byId.get(id)
      return item !== undefined && move([item]) === 1
    },
    redeliverOldest: async (after, upto, count) => {
      const items: Array<Ranked<Letter>> = []
      // As the script: no more than READ_FRAME_BUDGET bytes in one step, one letter at least.
      let bytes = 0
      for (let rank = order.countBelow(after, true); items.length < count; rank++) {
        const item = order.at(rank)
        if (item === undefined || item.key > upto) break
        if (items.length > 0 && bytes + item.value.frame.byteLength > READ_FRAME_BUDGET) break
        items.push(item)
        bytes += item.value.frame.byteLength
      }
      return { moved: move(items), last: items[items.length - 1]?.key ?? null }
    },
    newest: async () => order.at(order.size - 1)?.key ?? 0,
    importTail: async (listKey, tail, imported, max) => {
      const list = keyspace.lists.get(listKey) ?? []
      const end = list.slice(list.length - tail.length)
      if (tail.length === 0 || list.length < tail.length || end.some((v, i) => v !== tail[i])) return false
      const unreadable = keyspace.lists.get(`${base}:unreadable`) ?? []
      // The tail's last value is the list's oldest: in first, so the order stays.
      for (let i = tail.length - 1; i >= 0; i--) {
        const letter = imported[i]
        if (letter === undefined || letter === null) unreadable.push(tail[i] as string)
        else if (!byId.has(letter.id)) put(letter)
      }
      if (unreadable.length > 0) keyspace.lists.set(`${base}:unreadable`, unreadable)
      list.length -= tail.length
      if (list.length === 0) keyspace.lists.delete(listKey)
      trim(max)
      return true
    },
    adoptHeld: async (listKey, { id, meta }, max) => {
      const frame = keyspace.held.get(listKey)?.shift()
      if (frame === undefined) return null
      put({ id, meta, frame })
      return { bytes: frame.byteLength, dropped: trim(max) }
    }
  }
}
