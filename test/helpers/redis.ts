import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { connect as connectSocket, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Cluster, Redis } from 'ioredis'

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

/** Resolves with the process once redis-server says it is ready (`readyText`), or undefined when it exits first. */
async function launch (args: string[], readyText = 'Ready to accept connections'): Promise<ChildProcess | undefined> {
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] })
  return await new Promise((resolve) => {
    let log = ''
    const timer = setTimeout(() => { child.kill('SIGKILL'); resolve(undefined) }, 10_000)
    child.stdout?.on('data', (chunk: Buffer) => {
      log += chunk.toString()
      if (log.includes(readyText)) {
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
  // A directory of its own: a replica writes the master's data there (dump.rdb) when it syncs,
  // and any server started in that directory later would load it.
  const dir = await mkdtemp(join(tmpdir(), 'busgate-redis-'))
  const argsFor = (port: number): string[] => [
    ...(tls ? ['--port', '0'] : ['--port', String(port)]),
    '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...extra(port)
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
    await rm(dir, { recursive: true, force: true })
  })
  return server
}

/**
 * A Redis Sentinel in front of `master`: a plain redis-server in sentinel mode on a free port,
 * with a config file of its own (a sentinel rewrites it), quorum 1, fast failure detection.
 */
export async function startSentinel (t: Teardown, master: RedisServer, name = 'mymaster'): Promise<{ port: number, client: Redis }> {
  const dir = await mkdtemp(join(tmpdir(), 'busgate-sentinel-'))
  const port = await freePort()
  const file = join(dir, 'sentinel.conf')
  await writeFile(file, [`port ${port}`, 'bind 127.0.0.1', `dir ${dir}`, `sentinel monitor ${name} 127.0.0.1 ${master.port} 1`,
    `sentinel down-after-milliseconds ${name} 1000`, `sentinel failover-timeout ${name} 3000`, ''].join('\n'))
  const child = await launch([file, '--sentinel'], '+monitor master')
  if (child === undefined) throw new Error('redis-server --sentinel did not start')
  const client = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 1 })
  client.on('error', () => {})
  t.teardown(async () => {
    client.disconnect()
    if (child.exitCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGKILL')
      await exited
    }
    await rm(dir, { recursive: true, force: true })
  })
  return { port, client }
}

/** A Redis Cluster of three masters (no replicas) on free ports, each a plain redis-server; killed at teardown. */
export async function startCluster (t: Teardown): Promise<{ url: string, client: Cluster, ports: number[] }> {
  const nodes: RedisServer[] = []
  for (let i = 0; i < 3; i++) {
    nodes.push(await startRedis(t, (port) => ['--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', '2000']))
  }
  const ports = nodes.map((n) => n.port)
  await new Promise<void>((resolve, reject) => {
    const create = spawn('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-yes'], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    create.stdout?.on('data', (c: Buffer) => { out += c.toString() })
    create.stderr?.on('data', (c: Buffer) => { out += c.toString() })
    create.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`redis-cli --cluster create failed: ${out}`))))
  })
  for (const node of nodes) {
    for (let i = 0; i < 200 && !/cluster_state:ok/.test(String(await node.client.call('CLUSTER', 'INFO'))); i++) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const client = new Cluster(ports.map((port) => ({ host: '127.0.0.1', port })))
  client.on('error', () => {})
  t.teardown(() => client.disconnect())
  return { url: `redis+cluster://${ports.map((p) => `127.0.0.1:${p}`).join(',')}`, client, ports }
}

/**
 * Hears every command `port`'s server runs (MONITOR) on a plain socket, each as its name and
 * arguments (quoted as Redis prints them). Not ioredis' monitor(): it takes a MONITOR line that
 * comes in the same read as the +OK for a reply nobody asked for, and throws.
 */
export async function monitorCommands (t: Teardown, port: number, heard: (args: string[]) => void): Promise<void> {
  const socket = connectSocket(port, '127.0.0.1')
  t.teardown(() => { socket.destroy() })
  let rest = ''
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject)
    socket.on('data', (chunk: Buffer) => {
      const lines = (rest + chunk.toString('latin1')).split('\r\n')
      rest = lines.pop()!
      for (const line of lines) {
        if (line === '+OK') { resolve(); continue }
        heard([...line.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]!))
      }
    })
    socket.write('MONITOR\r\n')
  })
}

/** The ids of `server`'s client connections whose CLIENT LIST line matches every pattern (`name=busgate:consumer`, `cmd=blmove`…). */
export async function connectionIds (server: Redis, ...patterns: string[]): Promise<string[]> {
  const list = await server.call('CLIENT', 'LIST') as string
  return list.split('\n').filter((line) => patterns.every((p) => line.includes(` ${p} `))).map((line) => /^id=(\d+)/.exec(line)![1]!)
}

/** Cuts those connections from the server's side, as a network blip or a proxy restart would. */
export async function killConnections (server: Redis, ...patterns: string[]): Promise<void> {
  for (const id of await connectionIds(server, ...patterns)) await server.call('CLIENT', 'KILL', 'ID', id)
}
