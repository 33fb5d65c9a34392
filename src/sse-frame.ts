/**
 * One Server-Sent Events frame: every stream busgate serves writes its frames through here.
 * Each field must be one line, which the callers vouch for: ids are busgate's own, event names
 * are checked where they come in (a name with a line break is set aside), retry is a number and
 * data is JSON, which never holds a raw line break.
 */
export interface SseFields {
  id?: string
  event?: string
  retry?: number
  data?: string
}

export function sseFrame ({ id, event, retry, data }: SseFields): string {
  let frame = ''
  if (id !== undefined) frame += `id: ${id}\n`
  if (event !== undefined) frame += `event: ${event}\n`
  if (retry !== undefined) frame += `retry: ${retry}\n`
  if (data !== undefined) frame += `data: ${data}\n`
  return frame + '\n'
}

/** A comment line: keeps a quiet connection from being timed out by proxies. */
export const SSE_HEARTBEAT = ':\n\n'
