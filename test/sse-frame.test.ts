import t from 'tap'
import { createParser, type EventSourceMessage } from 'eventsource-parser'
import { SSE_HEARTBEAT, sseFrame } from '../src/sse-frame.js'

/** What a spec-following EventSource makes of the bytes. */
function parse (text: string): { messages: EventSourceMessage[], retries: number[] } {
  const messages: EventSourceMessage[] = []
  const retries: number[] = []
  const parser = createParser({ onEvent: (m) => messages.push(m), onRetry: (r) => retries.push(r) })
  parser.feed(text)
  return { messages, retries }
}

t.test('a frame carries each field it is given, in the order clients expect, and ends the event', async (t) => {
  t.equal(sseFrame({ id: 'a:1', event: 'kernel_started', data: '{"x":1}' }), 'id: a:1\nevent: kernel_started\ndata: {"x":1}\n\n')
  t.equal(sseFrame({ event: 'task_done', retry: 2000, data: '{}' }), 'event: task_done\nretry: 2000\ndata: {}\n\n')
  t.equal(sseFrame({ retry: 500 }), 'retry: 500\n\n')
  const parsed = parse(sseFrame({ id: 'a:2', event: 'x', data: '{"y":"z"}' }) + SSE_HEARTBEAT + sseFrame({ retry: 1500 }))
  t.same(parsed.messages.map(({ id, event, data }) => ({ id, event, data })), [{ id: 'a:2', event: 'x', data: '{"y":"z"}' }])
  t.same(parsed.retries, [1500])
})
