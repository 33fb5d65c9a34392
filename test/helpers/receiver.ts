import { createHmac, timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'

export interface Received {
  headers: IncomingHttpHeaders
  body: string
  json: { event_name: string, agent_id: string, args: unknown[] }
  at: number
}

export type Responder = (req: Received, n: number) => { status: number, headers?: Record<string, string>, delayMs?: number } | 'hang'

/** A webhook receiver on a real HTTP listener; `respond` decides each answer (200 by default). */
export async function startReceiver (t: { teardown: (fn: () => unknown) => void }, respond: Responder = () => ({ status: 200 })) {
  const received: Received[] = []
  const server = createServer((req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (c: string) => { body += c })
    req.on('end', () => {
      const r: Received = { headers: req.headers, body, json: JSON.parse(body), at: Date.now() }
      received.push(r)
      const answer = respond(r, received.length)
      if (answer === 'hang') return
      setTimeout(() => {
        res.writeHead(answer.status, answer.headers ?? {})
        res.end()
      }, answer.delayMs ?? 0)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const { port } = server.address() as { port: number }
  return {
    url: `http://127.0.0.1:${port}/hook`,
    received,
    waitFor: async (n: number, timeoutMs = 10_000) => {
      const deadline = Date.now() + timeoutMs
      while (received.length < n && Date.now() < deadline) await sleep(10)
      return received
    }
  }
}

/**
 * Checks a Standard Webhooks signature as a receiver would, written from the spec, not from
 * busgate's code: HMAC-SHA256 over "id.timestamp.body" with the base64 secret after whsec_.
 */
export function verifySignature (r: Received, secret: string): boolean {
  const id = r.headers['webhook-id']
  const timestamp = r.headers['webhook-timestamp']
  const signatures = String(r.headers['webhook-signature'] ?? '').split(' ')
  if (typeof id !== 'string' || typeof timestamp !== 'string') return false
  const expected = createHmac('sha256', Buffer.from(secret.slice('whsec_'.length), 'base64')).update(`${id}.${timestamp}.${r.body}`).digest()
  return signatures.some((s) => {
    const [version, sig] = s.split(',')
    const given = Buffer.from(sig ?? '', 'base64')
    return version === 'v1' && given.length === expected.length && timingSafeEqual(given, expected)
  })
}
