import { setTimeout as sleep } from 'node:timers/promises'

/** Polls until the condition holds or the time is up; the caller asserts on what it finds. */
export async function until (condition: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await condition()) && Date.now() < deadline) await sleep(10)
}
