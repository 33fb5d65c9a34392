import t from 'tap'
import { RingBuffer } from '../src/ring-buffer.js'

t.test('keeps the last items, oldest first, and says what it drops', async (t) => {
  const ring = new RingBuffer<number>(3)
  t.equal(ring.push(1), undefined)
  ring.push(2)
  ring.push(3)
  t.equal(ring.push(4), 1, 'full: the oldest goes')
  t.same([ring.at(0), ring.at(1), ring.at(2), ring.at(3), ring.at(-1)], [2, 3, 4, undefined, undefined])
  t.equal(ring.shift(), 2)
  t.equal(ring.length, 2)
  ring.push(5)
  ring.push(6)
  t.same([ring.at(0), ring.at(1), ring.at(2)], [4, 5, 6], 'wraps around after a shift')
  t.equal(ring.shift(), 4)
  t.equal(ring.shift(), 5)
  t.equal(ring.shift(), 6)
  t.equal(ring.shift(), undefined)
  t.equal(new RingBuffer<number>(0).push(1), 1, 'a ring of no capacity keeps nothing')
})
