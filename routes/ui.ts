import { existsSync, readFileSync } from 'node:fs'
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsync } from 'fastify'

// From routes/ (tsx) or dist/routes/ (built): the page's files stay in src/ui, which needs no build.
const UI_DIR = [new URL('../src/ui/', import.meta.url), new URL('../../src/ui/', import.meta.url)]
  .find((dir) => existsSync(new URL('index.html', dir)))

const FILES = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/ui/dashboard.js': { file: 'dashboard.js', type: 'text/javascript; charset=utf-8' },
  '/ui/charts.js': { file: 'charts.js', type: 'text/javascript; charset=utf-8' },
  '/ui/msgpack.js': { file: 'msgpack.js', type: 'text/javascript; charset=utf-8' },
  '/ui/dashboard.css': { file: 'dashboard.css', type: 'text/css; charset=utf-8' }
} as const

// The page runs only its own script and talks only to this gateway.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/**
 * The dashboard: a page, its script modules and its styles, read once at start. They hold no
 * data (the page asks the API, with the user's token), so they are public, like /docs.
 */
const ui: FastifyPluginAsync = async (app) => {
  if (UI_DIR === undefined) throw new Error('the dashboard files (src/ui) are missing')
  for (const [url, { file, type }] of Object.entries(FILES)) {
    const body = readFileSync(new URL(file, UI_DIR))
    // The page is a view of the API, so the spec lists it; its files are not.
    const schema = url === '/'
      ? {
          operationId: 'dashboard',
          tags: ['dashboard'],
          summary: 'The dashboard: live events, background tasks, webhooks and dead letters',
          description: 'An HTML page that uses this API with the token the user gives it (kept for the browser tab only). Public: it holds no data.',
          response: { 200: { description: 'The page', content: { 'text/html': { schema: Type.String() } } } }
        }
      : { hide: true }
    app.get(url, { schema, config: { scope: 'public' } }, async (_request, reply) => {
      return await reply
        .header('content-type', type)
        .header('cache-control', 'no-cache')
        .header('content-security-policy', CSP)
        .header('x-content-type-options', 'nosniff')
        .header('referrer-policy', 'no-referrer')
        .send(body)
    })
  }
}

export default ui
