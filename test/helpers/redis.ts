import { spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { Redis } from 'ioredis'

export interface RedisServer {
  port: number
  url: string
  /** a plain client of this server (database 0), for looking at what busgate wrote */
  client: Redis
  /** a new plain client of database `db` */
  connect (db?: number): Redis
  /** kills the server with SIGKILL, as in a crash */
  kill (): Promise<void>
  /** starts it again on the same port, empty */
  start (): Promise<void>
}

interface Teardown { teardown: (fn: () => unknown) => void }

export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}

/** Resolves with the process once redis-server says it is ready, or undefined when it exits first. */
async function launch (args: string[]): Promise<ChildProcess | undefined> {
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] })
  return await new Promise((resolve) => {
    let log = ''
    const timer = setTimeout(() => { child.kill('SIGKILL'); resolve(undefined) }, 10_000)
    child.stdout?.on('data', (chunk: Buffer) => {
      log += chunk.toString()
      if (log.includes('Ready to accept connections')) {
        clearTimeout(timer)
        child.stdout?.removeAllListeners('data')
        child.stdout?.resume()
        resolve(child)
      }
    })
    child.on('error', () => { clearTimeout(timer); resolve(undefined) })
    child.on('exit', () => { clearTimeout(timer); resolve(undefined) })
  })
}

/**
 * Starts a private redis-server for one test file: its own port, nothing kept on disk, killed at
 * teardown. `extra(port)` gives more redis-server options (`--requirepass`, TLS…); with TLS the
 * plain port is disabled and `port` is the TLS port.
 */
export async function startRedis (t: Teardown, extra: (port: number) => string[] = () => []): Promise<RedisServer> {
  const tls = extra(0).includes('--tls-port')
  const argsFor = (port: number): string[] => [
    ...(tls ? ['--port', '0'] : ['--port', String(port)]),
    '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...extra(port)
  ]
  let proc: ChildProcess | undefined
  let port = 0
  for (let attempt = 0; attempt < 5 && proc === undefined; attempt++) {
    port = await freePort()
    proc = await launch(argsFor(port))
  }
  if (proc === undefined) throw new Error('could not start redis-server (is it installed?)')

  const clients: Redis[] = []
  const connect = (db = 0): Redis => {
    const client = new Redis({ port, host: '127.0.0.1', db, lazyConnect: tls, maxRetriesPerRequest: 1, retryStrategy: () => 100 })
    client.on('error', () => {})
    clients.push(client)
    return client
  }
  const kill = async (): Promise<void> => {
    const p = proc
    proc = undefined
    if (p === undefined || p.exitCode !== null) return
    const exited = new Promise((resolve) => p.once('exit', resolve))
    p.kill('SIGKILL')
    await exited
  }
  const server: RedisServer = {
    port,
    url: `redis://127.0.0.1:${port}`,
    client: connect(),
    connect,
    kill,
    start: async () => {
      proc = await launch(argsFor(port))
      if (proc === undefined) throw new Error(`redis-server did not restart on port ${port}`)
    }
  }
  t.teardown(async () => {
    for (const client of clients) client.disconnect()
    await kill()
  })
  return server
}
