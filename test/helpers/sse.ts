import { request, type IncomingMessage } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { createParser, type EventSourceMessage } from 'eventsource-parser'

export interface Stream {
  status: number
  headers: IncomingMessage['headers']
  events: EventSourceMessage[]
  comments: string[]
  retries: number[]
  /** every byte received, as text */
  raw: () => string
  ended: Promise<void>
  /** resolves with the events once there are at least n, or with what came by the timeout: the caller asserts */
  waitFor: (n: number, timeoutMs?: number) => Promise<EventSourceMessage[]>
  close: () => void
}

/** Opens an SSE stream over plain HTTP and parses it with a spec-conforming parser (eventsource-parser). */
export async function openStream (url: string, headers: Record<string, string> = {}): Promise<Stream> {
  return await new Promise((resolve, reject) => {
    const req = request(url, { headers: { accept: 'text/event-stream', ...headers } }, (res) => {
      const events: EventSourceMessage[] = []
      const comments: string[] = []
      const retries: number[] = []
      let raw = ''
      const parser = createParser({
        onEvent: (e) => events.push(e),
        onComment: (c) => comments.push(c),
        onRetry: (r) => retries.push(r)
      })
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => {
        raw += chunk
        parser.feed(chunk)
      })
      const ended = new Promise<void>((resolve) => {
        res.on('end', () => resolve())
        res.on('close', () => resolve())
        res.on('error', () => resolve())
      })
      resolve({
        status: res.statusCode ?? 0,
        headers: res.headers,
        events,
        comments,
        retries,
        raw: () => raw,
        ended,
        waitFor: async (n, timeoutMs = 5000) => {
          const deadline = Date.now() + timeoutMs
          while (events.length < n && Date.now() < deadline) await sleep(10)
          return events
        },
        close: () => { req.destroy() }
      })
    })
    req.on('error', reject)
    req.end()
  })
}

export const dataOf = (e: EventSourceMessage): unknown => JSON.parse(e.data)
