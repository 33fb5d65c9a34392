import { EventEmitter } from 'node:events'
import { isIP } from 'node:net'
import { Agent } from 'undici'
import { activeSecrets, type StoredWebhook } from './registry.js'
import { signatureHeader } from './signing.js'
import { guardedLookup, isPrivateAddress, urlHost } from './ssrf.js'

/** What one POST to a receiver came to. */
export interface Attempt {
  ok: boolean
  status: number | null
  error: string | null
  retryAfterMs: number | null
  seconds: number
}

export interface SenderOptions {
  timeoutMs: number
  allowPrivate: boolean
  /** most deliveries in flight at once: the pool of each receiver's origin is as large */
  connections: number
}

interface Target { url: URL, path: string, privateLiteral: boolean }

/**
 * POSTs a delivery, signed, to a webhook's URL, within one bound for the whole answer. Keep-alive
 * pools per origin; every connection's addresses pass the SSRF check again, so a name that later
 * resolves somewhere private (rebinding) is refused at connect time.
 */
export class WebhookSender {
  readonly #agent: Agent
  /** parsed URLs, and whether each is a private IP literal, by URL string */
  readonly #targets = new Map<string, Target>()

  constructor (private readonly options: SenderOptions) {
    this.#agent = new Agent({
      keepAliveTimeout: 30_000,
      connections: Math.max(4, options.connections),
      connect: { timeout: options.timeoutMs, ...(options.allowPrivate ? {} : { lookup: guardedLookup }) }
    })
  }

  async send (webhook: StoredWebhook, id: string, body: string): Promise<Attempt> {
    const started = performance.now()
    const timestamp = Math.floor(Date.now() / 1000)
    const seconds = (): number => (performance.now() - started) / 1000
    let deadline: Deadline | undefined
    try {
      const { url, path, privateLiteral } = this.#target(webhook.url)
      // An IP literal never goes through the connect-time lookup: checked here instead.
      if (!this.options.allowPrivate && privateLiteral) throw new Error(`${url.hostname} is a private address; refused`)
      // One bound for the whole answer, body included: a receiver that drips its body must not
      // hold the attempt. undici takes an EventEmitter for a signal: one 'abort' ends the request,
      // or the body once the head is in. Cheaper than an AbortController (an EventTarget) per
      // delivery, and its timer is cleared when the answer is in (AbortSignal.timeout's cannot
      // be: each delivery would hold one for the whole bound).
      deadline = new Deadline(this.options.timeoutMs)
      // The agent itself, with the origin and path parsed once per URL: undici's request() parses the URL again on every call.
      const res = await this.#agent.request({
        origin: url.origin,
        path,
        method: 'POST',
        signal: deadline,
        headers: {
          'content-type': 'application/json',
          'user-agent': 'busgate',
          'webhook-id': id,
          'webhook-timestamp': String(timestamp),
          'webhook-signature': signatureHeader(id, timestamp, body, activeSecrets(webhook))
        },
        body,
        headersTimeout: this.options.timeoutMs,
        bodyTimeout: this.options.timeoutMs
      })
      // The receiver has answered: a body it then drips is cut at the bound, and a 2xx still
      // stands (failing it would deliver the message again to a receiver that took it).
      await res.body.dump({ limit: 64 * 1024 }).catch(() => undefined)
      const ok = res.statusCode >= 200 && res.statusCode < 300
      return { ok, status: res.statusCode, error: ok ? null : `HTTP ${res.statusCode}`, retryAfterMs: retryAfter(res.headers['retry-after']), seconds: seconds() }
    } catch (err) {
      return { ok: false, status: null, error: (err as Error).message, retryAfterMs: null, seconds: seconds() }
    } finally {
      deadline?.clear()
    }
  }

  async close (): Promise<void> {
    await this.#agent.close()
  }

  #target (raw: string): Target {
    let target = this.#targets.get(raw)
    if (target === undefined) {
      const url = new URL(raw)
      const host = urlHost(url)
      target = { url, path: url.pathname + url.search, privateLiteral: isIP(host) !== 0 && isPrivateAddress(host) }
      if (this.#targets.size > 1000) this.#targets.clear()
      this.#targets.set(raw, target)
    }
    return target
  }
}

/** What undici takes as a signal: an emitter that says 'abort' once, with the reason, when `ms` have passed; clear() when the answer is in. */
class Deadline extends EventEmitter {
  aborted = false
  reason: Error | undefined
  readonly #timer: NodeJS.Timeout

  constructor (ms: number) {
    super()
    this.#timer = setTimeout(() => {
      this.aborted = true
      this.reason = new DOMException('The operation was aborted due to timeout', 'TimeoutError')
      this.emit('abort')
    }, ms)
  }

  clear (): void {
    clearTimeout(this.#timer)
  }
}

/** A Retry-After header (seconds or an HTTP date) in ms from now, at most an hour. */
export function retryAfter (value: string | string[] | undefined): number | null {
  const text = Array.isArray(value) ? value[0] : value
  if (text === undefined) return null
  if (/^\d+$/.test(text.trim())) return Math.min(Number(text.trim()) * 1000, 3_600_000)
  const at = Date.parse(text)
  return Number.isNaN(at) ? null : Math.min(Math.max(0, at - Date.now()), 3_600_000)
}
