import Fastify from 'fastify'
import { encode } from '@msgpack/msgpack'
import { Redis } from 'ioredis'

// The second baseline of bench/ingest: what a hand-written gateway would do, one Fastify route
// packing the JSON body with msgpack and producing it with one Lua script (RPUSH + PUBLISH), no
// validation beyond Fastify's JSON parse.
const PRODUCE = `local n = redis.call('RPUSH', KEYS[1], ARGV[1])
return {redis.call('PUBLISH', KEYS[2], ARGV[1]), n}`
const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379')
redis.defineCommand('produce', { numberOfKeys: 2, lua: PRODUCE })
const produce = async (frame: Uint8Array): Promise<[number, number]> =>
  await (redis as unknown as { produce: (a: string, b: string, c: Buffer) => Promise<[number, number]> }).produce('events.prodcons', 'events.pubsub', Buffer.from(frame))

const app = Fastify({ logger: false })
app.post('/events', async (request, reply) => {
  const body = request.body as { event_name: string, agent_id?: string, args?: unknown[] }
  const [subscribers, queueLength] = await produce(encode({ event_name: body.event_name, agent_id: body.agent_id ?? 'manager', args: body.args ?? [] }))
  return reply.code(202).send({ accepted: 1, subscribers, queue_length: queueLength })
})
await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT) })
process.stdout.write('Server listening\n')
process.on('SIGTERM', () => { app.close().then(() => { redis.disconnect(); process.exit(0) }, () => process.exit(1)) })
