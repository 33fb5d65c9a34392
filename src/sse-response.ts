import type { FastifyReply } from 'fastify'

/**
 * Readies a reply for a hub stream and returns what sends its head. The body runs until the
 * connection closes (no chunked framing; the hub writes frames to the socket as they are), and
 * the connection is not reused, so shutdown can end it at once.
 */
export function streamHead (reply: FastifyReply): () => void {
  reply.header('cache-control', 'no-cache, no-transform')
  reply.header('connection', 'close')
  reply.raw.useChunkedEncodingByDefault = false
  reply.sse.keepAlive()
  return () => {
    reply.sse.sendHeaders(200)
    reply.raw.flushHeaders()
  }
}
