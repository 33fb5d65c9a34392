import { createHmac } from 'node:crypto'

/**
 * The Standard Webhooks signature header: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` for
 * each secret, space-separated (two while a rotated-out secret is still in its overlap).
 */
export function signatureHeader (id: string, timestamp: number, body: string, secrets: readonly string[]): string {
  return secrets.map((secret) => `v1,${createHmac('sha256', keyOf(secret)).update(`${id}.${timestamp}.${body}`).digest('base64')}`).join(' ')
}

// Secrets change rarely; decoding one per delivery would be waste.
const keys = new Map<string, Buffer>()

function keyOf (secret: string): Buffer {
  let key = keys.get(secret)
  if (key === undefined) {
    key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64')
    if (keys.size > 1000) keys.clear()
    keys.set(secret, key)
  }
  return key
}
