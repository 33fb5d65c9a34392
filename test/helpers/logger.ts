import { Writable } from 'node:stream'
import pino from 'pino'
import type { FastifyBaseLogger } from 'fastify'

export function silentLogger (): FastifyBaseLogger {
  return pino({ level: 'silent' })
}

/** A logger whose lines are kept, to check what is (and is not) logged. */
export function capturingLogger (level = 'trace'): { logger: FastifyBaseLogger, lines: () => string } {
  const chunks: string[] = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      chunks.push(chunk.toString())
      callback()
    }
  })
  return { logger: pino({ level }, stream), lines: () => chunks.join('') }
}
