#!/usr/bin/env node
import { readFileSync } from 'node:fs'
import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { ConfigError, HELP, loadConfig, type Config } from './config.js'
import { VERSION } from './version.js'

function fail (message: string, code = 2): never {
  process.stderr.write(`busgate: ${message}\n`)
  process.exit(code)
}

/** The process's open-files limit, where Linux tells it. */
function openFilesLimit (): number | undefined {
  try {
    const soft = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1]
    return soft === undefined ? undefined : Number(soft)
  } catch {
    return undefined
  }
}

async function main (): Promise<void> {
  let config: Config
  try {
    const action = loadConfig(process.env, process.argv.slice(2))
    if (action.kind !== 'run') {
      process.stdout.write(`${action.kind === 'help' ? HELP : VERSION}\n`)
      return
    }
    config = action.config
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message)
    throw err
  }

  const app = await buildApp(config)
  try {
    await app.listen({ host: config.host, port: config.port })
  } catch (err) {
    const { code, message } = err as NodeJS.ErrnoException
    await app.close()
    fail(code === 'EADDRINUSE' ? `cannot listen on ${config.host}:${config.port}: the address is in use` : `cannot listen: ${message}`, 1)
  }

  const files = openFilesLimit()
  if (files !== undefined && config.maxConnections + 1000 > files) {
    app.log.warn({ openFilesLimit: files, maxConnections: config.maxConnections },
      'BUSGATE_MAX_CONNECTIONS leaves no room under the open-files limit (ulimit -n) for Redis and webhook connections: lower it, or raise the limit')
  }

  // close-with-grace keeps each promise the README makes of a shutdown: one close of the app
  // (new requests 503, streams end with a retry hint, deliveries finish), bounded by
  // BUSGATE_SHUTDOWN_TIMEOUT_MS, a second signal exits at once, and the code says how it went.
  // An uncaught exception or rejection closes the same way before exiting 1.
  closeWithGrace({
    delay: config.shutdownTimeoutMs,
    logger: { error: (err: unknown) => { app.log.error({ err }, 'shutdown failed') } },
    onSecondSignal: (signal) => { app.log.warn({ signal }, 'second signal: exiting without waiting') },
    onSecondError: (err) => { app.log.fatal({ err }, 'uncaught exception while shutting down') },
    onTimeout: () => { app.log.error('shutdown took longer than BUSGATE_SHUTDOWN_TIMEOUT_MS; exiting anyway') }
  }, async ({ signal, err }) => {
    if (err !== undefined) app.log.fatal({ err }, 'uncaught exception: shutting down')
    else app.log.info({ signal, timeoutMs: config.shutdownTimeoutMs }, 'shutting down: finishing in-flight requests')
    await app.close()
    app.log.info('stopped')
  })
}

await main()
