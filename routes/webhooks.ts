import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { Config } from '../src/config.js'
import { Errors } from '../src/errors.js'
import { UnsafeUrlError, checkWebhookUrl } from '../src/webhooks/ssrf.js'
import { toPublic, type StoredWebhook } from '../src/webhooks/registry.js'
import { Ref } from '../schemas/common.js'
import { authErrors, errorResponses } from '../schemas/error.js'
import { SecretRotated, Webhook, WebhookCreated, WebhookInput, WebhookList, WebhookParams, WebhookPatch } from '../schemas/webhook.js'
import { AttemptList } from '../schemas/dead-letter.js'

const webhooks: FastifyPluginAsyncTypebox<{ config: Config }> = async (app, { config }) => {
  const adminOnly = { scope: 'admin' as const }
  const tags = ['webhooks']

  async function safeUrl (url: string): Promise<string> {
    try {
      return (await checkWebhookUrl(url, config.webhookAllowPrivate)).href
    } catch (err) {
      if (err instanceof UnsafeUrlError) throw new Errors.UnsafeWebhookUrl(err.message)
      throw err
    }
  }

  function found (webhook: StoredWebhook | undefined, id: string): StoredWebhook {
    if (webhook === undefined) throw new Errors.NotFound(`No webhook ${id}`)
    return webhook
  }

  /** What the API shows of a webhook: never its secrets; its health as every instance shares it. */
  function shown (webhook: StoredWebhook): Webhook {
    return { ...toPublic(webhook), health: app.webhookHealth.view(webhook.id, webhook.enabled) }
  }

  app.post('/webhooks', {
    schema: {
      operationId: 'createWebhook',
      tags,
      summary: 'Register a webhook: a consumer of the consumer list, or a subscriber of the broadcast channel',
      description: 'The URL must be http(s) and, unless BUSGATE_WEBHOOK_ALLOW_PRIVATE is set, resolve only to public addresses. ' +
        'The answer holds the signing secret, shown this once.',
      body: Ref(WebhookInput),
      response: { 201: Ref(WebhookCreated), ...authErrors, ...errorResponses(400, 415, 503) }
    },
    config: adminOnly
  }, async (request, reply) => {
    const { url, event_names: eventNames = ['*'], description = '', enabled = true, role = 'consumer', max_in_flight: maxInFlight, rate_limit: rateLimit } = request.body
    const created = await app.webhooks.create({
      url: await safeUrl(url), event_names: eventNames, description, enabled, role, max_in_flight: maxInFlight ?? null, rate_limit: rateLimit ?? null
    })
    return reply.code(201).send({ ...shown(created), secret: created.secrets[0]?.value ?? '' })
  })

  app.get('/webhooks', {
    schema: {
      operationId: 'listWebhooks',
      tags,
      summary: 'List the webhooks',
      response: { 200: Ref(WebhookList), ...authErrors, ...errorResponses(503) }
    },
    config: adminOnly
  }, async () => {
    const webhooks = await app.webhooks.list()
    await app.webhookHealth.read()
    return { webhooks: webhooks.map(shown) }
  })

  app.get('/webhooks/:id', {
    schema: {
      operationId: 'getWebhook',
      tags,
      summary: 'Read one webhook',
      params: WebhookParams,
      response: { 200: Ref(Webhook), ...authErrors, ...errorResponses(400, 404, 503) }
    },
    config: adminOnly
  }, async (request) => {
    const webhook = found(await app.webhooks.get(request.params.id), request.params.id)
    await app.webhookHealth.read()
    return shown(webhook)
  })

  app.patch('/webhooks/:id', {
    schema: {
      operationId: 'updateWebhook',
      tags,
      summary: 'Change a webhook: URL, events, description, enabled',
      params: WebhookParams,
      body: Ref(WebhookPatch),
      response: { 200: Ref(Webhook), ...authErrors, ...errorResponses(400, 404, 415, 503) }
    },
    config: adminOnly
  }, async (request) => {
    const changes = { ...request.body }
    if (changes.url !== undefined) changes.url = await safeUrl(changes.url)
    const wasEnabled = (await app.webhooks.get(request.params.id))?.enabled
    const updated = found(await app.webhooks.update(request.params.id, changes), request.params.id)
    // Enabled again (after a 410, after failing for days, by hand): it starts afresh, not set aside by its past.
    if (changes.enabled === true && wasEnabled !== true) await app.webhookHealth.reset(updated.id)
    return shown(updated)
  })

  app.delete('/webhooks/:id', {
    schema: {
      operationId: 'deleteWebhook',
      tags,
      summary: 'Remove a webhook',
      description: 'It gets no new delivery attempt after the answer, on any instance within 100 ms; a subscriber\'s waiting copies go with it.',
      params: WebhookParams,
      response: { 204: { description: 'Removed', type: 'null' }, ...authErrors, ...errorResponses(400, 404, 503) }
    },
    config: adminOnly
  }, async (request, reply) => {
    if (!(await app.webhooks.delete(request.params.id))) throw new Errors.NotFound(`No webhook ${request.params.id}`)
    await app.dispatcher.forget(request.params.id)
    return reply.code(204).send()
  })

  app.get('/webhooks/:id/attempts', {
    schema: {
      operationId: 'listWebhookAttempts',
      tags,
      summary: 'The latest delivery attempts of a webhook',
      params: WebhookParams,
      response: { 200: Ref(AttemptList), ...authErrors, ...errorResponses(400, 404, 503) }
    },
    config: adminOnly
  }, async (request) => {
    found(await app.webhooks.get(request.params.id), request.params.id)
    return { attempts: await app.attemptLog.read(request.params.id) }
  })

  app.post('/webhooks/:id/rotate-secret', {
    schema: {
      operationId: 'rotateWebhookSecret',
      tags,
      summary: 'Give a webhook a new signing secret',
      description: 'Deliveries are signed with both the new and the previous secret for BUSGATE_WEBHOOK_SECRET_OVERLAP_MS, ' +
        'so receivers can switch without losing a message.',
      params: WebhookParams,
      response: { 200: Ref(SecretRotated), ...authErrors, ...errorResponses(400, 404, 503) }
    },
    config: adminOnly
  }, async (request) => {
    const rotated = await app.webhooks.rotateSecret(request.params.id, config.webhookSecretOverlapMs)
    if (rotated === undefined) throw new Errors.NotFound(`No webhook ${request.params.id}`)
    return { secret: rotated.secret, previous_secret_expires_at: rotated.previousExpiresAt }
  })
}

export default webhooks
