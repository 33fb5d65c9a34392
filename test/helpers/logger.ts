import { Writable } from 'node:stream'
import pino from 'pino'
import type { FastifyBaseLogger, FastifyServerOptions } from 'fastify'
import { loggerOptions } from '../../src/app.js'

export function silentLogger (): FastifyBaseLogger {
  return pino({ level: 'silent' })
}

/** The gateway's own logger settings, writing to memory, to check what is (and is not) logged. */
export function capturingLogger (level = 'trace'): { logger: FastifyServerOptions['logger'], lines: () => string } {
  const chunks: string[] = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      chunks.push(chunk.toString())
      callback()
    }
  })
  return { logger: { ...(loggerOptions(level) as object), stream }, lines: () => chunks.join('') }
}
