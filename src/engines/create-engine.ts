import type { FastifyBaseLogger } from 'fastify'
import type { Engine, EngineOptions } from './engine.js'

/** The memory engine without REDIS_URL; otherwise Redis (standalone, Sentinel or Cluster: only its connections differ). */
export async function createEngine (options: EngineOptions, log: FastifyBaseLogger): Promise<Engine> {
  if (options.redis === undefined) {
    const { MemoryEngine } = await import('./memory-engine.js')
    return new MemoryEngine(options)
  }
  const { RedisEngine } = await import('./redis-engine.js')
  return new RedisEngine({ ...options, redis: options.redis }, log)
}
