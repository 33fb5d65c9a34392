import { createHmac } from 'node:crypto'

/**
 * The Standard Webhooks signature header: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` for
 * each secret, space-separated (two while a rotated-out secret is still in its overlap).
 */
export function signatureHeader (id: string, timestamp: number, body: string, secrets: readonly string[]): string {
  return secrets.map((secret) => {
    const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64')
    return `v1,${createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest('base64')}`
  }).join(' ')
}
