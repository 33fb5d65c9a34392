/** An item of a RankedList; `slot` belongs to the list. */
export interface Ranked<T> {
  readonly key: number
  readonly value: T
  slot: number
}

/**
 * Items in the order of rising keys, appended at the end, removed from anywhere: append,
 * remove, the item at a rank and the rank of a key each cost O(log n), as a sorted set's do.
 * A removed item leaves a hole (a Fenwick tree counts the live ones); the holes are squeezed
 * out once they outnumber the items, so that costs O(1) per removal, amortized.
 */
export class RankedList<T> {
  #slots: Array<Ranked<T> | undefined> = []
  /** the key of every slot, a hole's too: they stay sorted, for binary search */
  #keys: number[] = []
  /** 1-based: #tree[i] counts the live slots in (i - lowbit(i), i] */
  #tree: number[] = [0]
  #size = 0

  get size (): number {
    return this.#size
  }

  /** Appends; `key` must be above every key it holds. */
  push (key: number, value: T): Ranked<T> {
    const last = this.#keys[this.#keys.length - 1]
    if (last !== undefined && key <= last) throw new RangeError(`key ${key} is not above ${last}`)
    const item: Ranked<T> = { key, value, slot: this.#slots.length }
    this.#slots.push(item)
    this.#keys.push(key)
    const i = this.#slots.length
    this.#tree[i] = 1 + this.#prefix(i - 1) - this.#prefix(i - (i & -i))
    this.#size++
    return item
  }

  remove (item: Ranked<T>): void {
    if (this.#slots[item.slot] !== item) return
    this.#slots[item.slot] = undefined
    for (let i = item.slot + 1; i < this.#tree.length; i += i & -i) this.#tree[i] = (this.#tree[i] as number) - 1
    this.#size--
    const holes = this.#slots.length - this.#size
    if (holes > 1024 && holes > this.#size) this.#compact()
  }

  /** The item at `rank`, 0 the one with the lowest key. */
  at (rank: number): Ranked<T> | undefined {
    if (rank < 0 || rank >= this.#size) return undefined
    const n = this.#slots.length
    let pos = 0
    let left = rank + 1
    for (let step = 2 ** Math.floor(Math.log2(n)); step > 0; step = Math.floor(step / 2)) {
      const next = pos + step
      if (next <= n && (this.#tree[next] as number) < left) {
        pos = next
        left -= this.#tree[next] as number
      }
    }
    return this.#slots[pos]
  }

  /** How many items have a key below `key` (or at most `key`, when `inclusive`). */
  countBelow (key: number, inclusive = false): number {
    let lo = 0
    let hi = this.#keys.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      const k = this.#keys[mid] as number
      if (k < key || (inclusive && k === key)) lo = mid + 1
      else hi = mid
    }
    return this.#prefix(lo)
  }

  /** live slots among the first `n` */
  #prefix (n: number): number {
    let sum = 0
    for (let i = n; i > 0; i -= i & -i) sum += this.#tree[i] as number
    return sum
  }

  #compact (): void {
    const live = this.#slots.filter((item): item is Ranked<T> => item !== undefined)
    live.forEach((item, slot) => { item.slot = slot })
    this.#slots = live
    this.#keys = live.map((item) => item.key)
    this.#tree = [0, ...live.map(() => 1)]
    for (let i = 1; i < this.#tree.length; i++) {
      const parent = i + (i & -i)
      if (parent < this.#tree.length) this.#tree[parent] = (this.#tree[parent] as number) + (this.#tree[i] as number)
    }
  }
}
