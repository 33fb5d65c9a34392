/** The last `capacity` items pushed, oldest first, with O(1) push and indexed reads. */
export class RingBuffer<T> {
  readonly #items: Array<T | undefined>
  #start = 0
  #length = 0

  constructor (readonly capacity: number) {
    this.#items = new Array<T | undefined>(capacity)
  }

  get length (): number {
    return this.#length
  }

  /** Adds an item; when full, drops the oldest and returns it. */
  push (item: T): T | undefined {
    if (this.capacity === 0) return item
    if (this.#length < this.capacity) {
      this.#items[(this.#start + this.#length++) % this.capacity] = item
      return undefined
    }
    const dropped = this.#items[this.#start]
    this.#items[this.#start] = item
    this.#start = (this.#start + 1) % this.capacity
    return dropped
  }

  /** Removes and returns the oldest item. */
  shift (): T | undefined {
    if (this.#length === 0) return undefined
    const item = this.#items[this.#start]
    this.#items[this.#start] = undefined
    this.#start = (this.#start + 1) % this.capacity
    this.#length--
    return item
  }

  /** The i-th item, 0 being the oldest held. */
  at (i: number): T | undefined {
    return i >= 0 && i < this.#length ? this.#items[(this.#start + i) % this.capacity] : undefined
  }
}
