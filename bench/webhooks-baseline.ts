import { Redis } from 'ioredis'
import { Agent, request } from 'undici'

// The baseline of bench/webhooks: bare loops of BLMOVE -> undici POST -> LREM to the same
// receiver, as many as the gateway's delivery loops, with no decoding, signing or bookkeeping.
const url = process.env.RECEIVER_URL as string
const loops = Number(process.env.LOOPS)
const agent = new Agent({ keepAliveTimeout: 30_000, connections: Math.max(4, loops) })
const commands = new Redis(process.env.REDIS_URL as string)
for (let n = 0; n < loops; n++) {
  const blocking = new Redis(process.env.REDIS_URL as string)
  const processing = `baseline:processing:${n}`
  const loop = async (): Promise<void> => {
    for (;;) {
      const frame = await blocking.blmoveBuffer('events.prodcons', processing, 'LEFT', 'RIGHT', 1)
      if (frame === null) continue
      const res = await request(url, { method: 'POST', dispatcher: agent, headers: { 'content-type': 'application/octet-stream' }, body: frame })
      await res.body.dump()
      if (res.statusCode >= 200 && res.statusCode < 300) await commands.lrem(processing, 1, frame)
    }
  }
  loop().catch((err: unknown) => { process.stderr.write(`baseline loop: ${String(err)}\n`) })
}
process.stdout.write('Server listening\n')
process.on('SIGTERM', () => process.exit(0))
