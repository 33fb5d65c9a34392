import { createHash } from 'node:crypto'
import fp from 'fastify-plugin'
import type { FastifyRequest } from 'fastify'
import type { Scope, TokenGrant } from '../config.js'
import { Errors } from '../errors.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** the scope a token needs; `public` needs none; unset (a 404, say) needs any valid token */
    scope?: Scope | 'public'
    /** whether `?access_token=` may stand in for the header (EventSource cannot set headers) */
    queryToken?: boolean
  }
  interface FastifyRequest {
    /** the digest of the valid token this request presented; null without auth, or on a public route */
    tokenDigest: string | null
  }
}

const digest = (token: string): string => createHash('sha256').update(token).digest('hex')

function presentedToken (request: FastifyRequest): string | undefined {
  const header = request.headers.authorization
  if (header !== undefined) {
    const match = /^Bearer +(\S+) *$/i.exec(header)
    return match?.[1] ?? ''
  }
  if (request.routeOptions.config.queryToken === true) {
    const value = (request.query as Record<string, unknown> | undefined)?.access_token
    if (typeof value === 'string') return value
  }
  return undefined
}

/**
 * Bearer tokens with scopes. Tokens are compared by digest and never logged (the request
 * serializer in app.ts strips them from URLs). Also marks every protected route in the OpenAPI
 * document, whether or not tokens are configured, so the spec does not depend on the deployment.
 */
export default fp<{ tokens: readonly TokenGrant[] | undefined }>(async (app, { tokens }) => {
  app.decorateRequest('tokenDigest', null)
  app.addHook('onRoute', (route) => {
    const scope = route.config?.scope
    if (scope === undefined || scope === 'public') return
    const schema = (route.schema ?? {}) as Record<string, unknown>
    const note = `Needs a token with the \`${scope}\` scope when BUSGATE_TOKENS is set.`
    route.schema = {
      ...schema,
      security: [{ bearerAuth: [] }],
      description: typeof schema.description === 'string' ? `${schema.description}\n\n${note}` : note
    }
  })

  if (tokens === undefined) {
    app.log.warn('BUSGATE_TOKENS is unset: every route is open to anyone who can reach this port')
    return
  }
  const scopesByDigest = new Map(tokens.map((grant) => [digest(grant.token), grant.scopes]))

  app.addHook('onRequest', async (request) => {
    const needed = request.routeOptions.config.scope
    // CORS preflights carry no credentials by design; they reveal nothing and change nothing.
    if (needed === 'public' || request.method === 'OPTIONS') return
    const token = presentedToken(request)
    if (token === undefined) throw new Errors.Unauthorized('This route needs a token: send Authorization: Bearer <token>')
    const presented = token === '' ? undefined : digest(token)
    const scopes = presented === undefined ? undefined : scopesByDigest.get(presented)
    if (scopes === undefined) throw new Errors.Unauthorized('The token is not valid')
    if (needed !== undefined && !scopes.has(needed)) throw new Errors.Forbidden(`The token lacks the "${needed}" scope this route needs`)
    // Only a valid token names a client: the rate limiter counts by it (a made-up one got its 401 above).
    request.tokenDigest = presented ?? null
  })
}, { name: 'busgate-auth', fastify: '5.x' })
