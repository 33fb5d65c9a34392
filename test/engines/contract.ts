import type { Test } from 'tap'
import { isUnavailable } from '../../src/errors.js'
import { busContract } from './bus-contract.js'
import { deadLetterContract } from './dead-letter-contract.js'
import { freshEngine, frame, type ContractOptions, type EngineFactory } from './contract-kit.js'
import { storeContract } from './store-contract.js'
import { workQueueContract } from './work-queue-contract.js'

export type { EngineFactory }

/**
 * What both engines promise, part by part (the bus, the work queue with its dead letters, the
 * store), each part's suite run on one engine built by `make`: the parts share its keyspace.
 */
export function engineContract (t: Test, make: EngineFactory, options: ContractOptions = {}): void {
  t.test('bus', async (t) => { busContract(t, make, options) })
  t.test('work queue', async (t) => { workQueueContract(t, make) })
  t.test('dead letters', async (t) => { deadLetterContract(t, make) })
  t.test('store', async (t) => { storeContract(t, make) })

  t.test('ping answers; after close, produce fails as unavailable', async (t) => {
    const engine = await freshEngine(t, make)
    await t.resolves(engine.ping())
    await engine.close()
    t.equal(engine.state, 'closed')
    const err = await engine.bus.produce([frame('x')]).then(() => undefined, (e: unknown) => e)
    t.ok(isUnavailable(err), 'a 503-coded error')
  })
}
