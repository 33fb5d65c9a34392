import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Errors } from '../src/errors.js'
import { Ref } from '../schemas/common.js'
import { DeadLetter, DeadLetterList, DeadLetterParams, DeadLetterQuery, Redelivered } from '../schemas/dead-letter.js'
import { authErrors, errorResponses } from '../schemas/error.js'

const deadLetters: FastifyPluginAsyncTypebox = async (app) => {
  const adminOnly = { scope: 'admin' as const }
  const tags = ['webhooks']

  app.get('/dead-letters', {
    schema: {
      operationId: 'listDeadLetters',
      tags,
      summary: 'List the messages that could not be delivered',
      querystring: DeadLetterQuery,
      response: { 200: Ref(DeadLetterList), ...authErrors, ...errorResponses(400, 503) }
    },
    config: adminOnly
  }, async (request) => {
    const { offset, limit, reason, event_name: eventName } = request.query
    const { deadLetters: list, total } = await app.deadLetters.list(offset, limit, { reason, event_name: eventName })
    return { dead_letters: list, total }
  })

  app.get('/dead-letters/:id', {
    schema: {
      operationId: 'getDeadLetter',
      tags,
      summary: 'Read one dead letter',
      params: DeadLetterParams,
      response: { 200: Ref(DeadLetter), ...authErrors, ...errorResponses(400, 404, 503) }
    },
    config: adminOnly
  }, async (request) => {
    const letter = await app.deadLetters.get(request.params.id)
    if (letter === undefined) throw new Errors.NotFound(`No dead letter ${request.params.id}`)
    return letter
  })

  app.post('/dead-letters/:id/redeliver', {
    schema: {
      operationId: 'redeliverDeadLetter',
      tags,
      summary: 'Put one dead letter back on the consumer list',
      params: DeadLetterParams,
      response: { 202: Ref(Redelivered), ...authErrors, ...errorResponses(400, 404, 503) }
    },
    config: adminOnly
  }, async (request, reply) => {
    if (!await app.deadLetters.redeliver(request.params.id)) throw new Errors.NotFound(`No dead letter ${request.params.id}`)
    return reply.code(202).send({ redelivered: 1 })
  })

  app.post('/dead-letters/redeliver', {
    schema: {
      operationId: 'redeliverAllDeadLetters',
      tags,
      summary: 'Put every dead letter back on the consumer list, oldest first',
      response: { 202: Ref(Redelivered), ...authErrors, ...errorResponses(503) }
    },
    config: adminOnly
  }, async (_request, reply) => {
    return reply.code(202).send({ redelivered: await app.deadLetters.redeliverAll() })
  })

  app.delete('/dead-letters/:id', {
    schema: {
      operationId: 'deleteDeadLetter',
      tags,
      summary: 'Drop one dead letter for good',
      params: DeadLetterParams,
      response: { 204: { description: 'Dropped', type: 'null' }, ...authErrors, ...errorResponses(400, 404, 503) }
    },
    config: adminOnly
  }, async (request, reply) => {
    if (!await app.deadLetters.remove(request.params.id)) throw new Errors.NotFound(`No dead letter ${request.params.id}`)
    return reply.code(204).send()
  })
}

export default deadLetters
