import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Test } from 'tap'
import type { Engine } from '../../src/engines/engine.js'

/** Builds a fresh engine on its own channel and list names; the suite closes it. */
export type EngineFactory = (names: { pubsubChannel: string, prodconsKey: string }) => Promise<Engine>

export interface ContractOptions {
  /** Redis Cluster: a produce's `subscribers` counts those of one node (PUBLISH counts its own) */
  nodeSubscribers?: boolean
}

export const frame = (s: string): Buffer => Buffer.from(s)
export const RETRY = `{test}.retry.${randomUUID()}`

export async function freshEngine (t: Test, make: EngineFactory): Promise<Engine> {
  const id = randomUUID()
  const engine = await make({ pubsubChannel: `{test}.pubsub.${id}`, prodconsKey: `{test}.prodcons.${id}` })
  t.teardown(() => engine.close())
  await engine.connect()
  return engine
}

export async function collect (engine: Engine): Promise<{ got: Buffer[], stop: () => Promise<void>, until: (n: number) => Promise<Buffer[]> }> {
  const got: Buffer[] = []
  const stop = await engine.bus.subscribe({ message: (f) => got.push(f) })
  const until = async (n: number): Promise<Buffer[]> => {
    for (let i = 0; i < 200 && got.length < n; i++) await sleep(10)
    return got
  }
  return { got, stop, until }
}
