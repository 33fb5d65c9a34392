import t from 'tap'
import { RankedList, type Ranked } from '../../src/engines/ranked-list.js'

t.test('agrees with a plain sorted array through random appends and removals, compactions included', async (t) => {
  let seed = 42
  const random = (): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31
    return seed / 2 ** 31
  }
  const list = new RankedList<string>()
  const model: Array<Ranked<string>> = []
  let key = 0
  let mismatches = 0
  for (let step = 0; step < 20_000; step++) {
    if (random() < 0.55 || model.length === 0) {
      key += 1 + Math.floor(random() * 3)
      model.push(list.push(key, `v${key}`))
    } else {
      // Mostly the oldest (as trimming and redelivery take them), sometimes any.
      const i = random() < 0.5 ? 0 : Math.floor(random() * model.length)
      list.remove(model[i]!)
      model.splice(i, 1)
    }
    if (step % 97 === 0) {
      if (list.size !== model.length) mismatches++
      for (let r = 0; r < model.length; r += Math.max(1, Math.floor(model.length / 7))) if (list.at(r) !== model[r]) mismatches++
      const probe = Math.floor(random() * (key + 2))
      if (list.countBelow(probe) !== model.filter((m) => m.key < probe).length) mismatches++
      if (list.countBelow(probe, true) !== model.filter((m) => m.key <= probe).length) mismatches++
    }
  }
  t.equal(mismatches, 0)
  t.equal(list.at(-1), undefined)
  t.equal(list.at(model.length), undefined)
})

t.test('keys must rise; removing twice is harmless', async (t) => {
  const list = new RankedList<number>()
  const a = list.push(1, 1)
  t.throws(() => list.push(1, 2), RangeError)
  list.remove(a)
  list.remove(a)
  t.equal(list.size, 0)
  t.equal(list.at(0), undefined)
  t.equal(list.countBelow(5), 0)
  list.push(2, 2)
  t.equal(list.at(0)?.value, 2)
})
