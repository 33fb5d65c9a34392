import Fastify from 'fastify'

// The baseline of bench/ingest: Fastify parsing the same JSON body and answering 202, no Redis.
const app = Fastify({ logger: false })
app.post('/events', async (_request, reply) => reply.code(202).send({ accepted: 1, subscribers: 0, queue_length: 0 }))
await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT) })
process.stdout.write('Server listening\n')
process.on('SIGTERM', () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
