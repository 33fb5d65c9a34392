import { Agent, request } from 'undici'

// The baseline of bench/webhooks' latency run: a bare undici client keeping IN_FLIGHT POSTs
// open at once to the same delayed receiver until TOTAL were answered, with no Redis, decoding,
// signing or bookkeeping: what this machine and the receiver allow at that latency.
const url = process.env.RECEIVER_URL as string
const inFlight = Number(process.env.IN_FLIGHT)
const total = Number(process.env.TOTAL)
const agent = new Agent({ keepAliveTimeout: 30_000, connections: inFlight })
// About the size of a delivery the gateway sends for the same event.
const body = JSON.stringify({
  id: '00000000-0000-4000-8000-000000000000',
  event_name: 'kernel_started',
  agent_id: 'i-ag01',
  args: [0, '6f0c9a3e-3f4e-4b3a-9d4c-2a7c1f0e5b11'],
  received_at: new Date().toISOString()
})
let sent = 0
const worker = async (): Promise<void> => {
  while (sent < total) {
    sent++
    const res = await request(url, { method: 'POST', dispatcher: agent, headers: { 'content-type': 'application/json', 'user-agent': 'busgate-bench' }, body })
    await res.body.dump()
  }
}
process.stdout.write('Server listening\n')
Promise.all(Array.from({ length: inFlight }, worker)).then(
  () => { process.stdout.write('done\n') },
  (err: unknown) => { process.stderr.write(`latency baseline: ${String(err)}\n`); process.exitCode = 1 })
process.on('SIGTERM', () => process.exit(0))
