import { once } from 'node:events'
import { Command, Redis } from 'ioredis'
import t from 'tap'
import { BulkScript } from '../../src/engines/bulk-script.js'
import { startRedis } from '../helpers/redis.js'

// The produce script's call, written in one pass: the same bytes ioredis would write, EVAL
// first on each socket, and a Redis that forgot the script is sent its text again.
const server = await startRedis(t)

const LUA = `
local n = redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
return {n, ARGV[1]}
`

const frames = [
  Buffer.from('first'),
  Buffer.alloc(0),
  Buffer.from('ünïcödé \r\n$3\r\n* not framing'),
  Buffer.alloc(70_000, 0xab),
  // a view into a larger buffer: only its own bytes go
  new Uint8Array(Buffer.from('xxinsidexx').buffer, Buffer.from('xxinsidexx').byteOffset + 2, 6)
]

t.test('the bytes are those ioredis writes for the same command: EVAL on a new socket, EVALSHA after', async (t) => {
  const script = new BulkScript(LUA, 1)
  const keys = ['kéy:1']
  const args = ['a channel ✓', ...frames]
  const socket = {}
  // What ioredis' own Command writes for these arguments (the view copied into a Buffer, as ioredis needs).
  const theirs = (name: string, first: string): Buffer => new Command(name, [first, '1', ...keys, ...args.map((a) => (typeof a === 'string' ? a : Buffer.from(a)))])
    .toWritable(socket) as Buffer
  const written: Buffer[] = []
  const fake = { sendCommand: (command: Command) => { written.push(command.toWritable(socket) as Buffer); command.resolve('ok') } }
  await script.call(fake as unknown as Redis, keys, args)
  await script.call(fake as unknown as Redis, keys, args)
  t.ok(written[0]!.equals(theirs('eval', LUA)), 'the first on a socket carries the text')
  t.ok(written[1]!.equals(theirs('evalsha', script.sha)), 'then the sha')
  await script.call({ sendCommand: (command: Command) => { written.push(command.toWritable({}) as Buffer); command.resolve('ok') } } as unknown as Redis, keys, args)
  t.ok(written[2]!.equals(theirs('eval', LUA)), 'another socket: the text again')
})

t.test('against Redis: the frames land byte for byte, and a SCRIPT FLUSH is recovered from', async (t) => {
  const script = new BulkScript(LUA, 1)
  const conn = new Redis(server.url)
  t.teardown(() => conn.disconnect())
  const key = 'bulk-script:list'
  t.same(await script.call(conn, [key], ['chan', ...frames]), [frames.length, 'chan'])
  t.same(await script.call(conn, [key], ['chan', Buffer.from('second call')]), [frames.length + 1, 'chan'])
  let resends = 0
  t.same(await script.call(conn, [key], ['chan', Buffer.from('second call')], () => resends++), [frames.length + 2, 'chan'])
  t.equal(resends, 0)
  await server.client.script('FLUSH')
  t.same(await script.call(conn, [key], ['chan', Buffer.from('after a flush')], () => resends++), [frames.length + 3, 'chan'], 'NOSCRIPT: sent again with its text')
  t.equal(resends, 1, 'and the caller told (a WAIT behind the first try does not count the second)')
  const stored = await server.client.lrangeBuffer(key, 0, -1)
  t.same(stored.map((b) => b.toString('hex')), [...frames, Buffer.from('second call'), Buffer.from('second call'), Buffer.from('after a flush')].map((f) => Buffer.from(f).toString('hex')))
})

t.test('a Redis restarted behind the connection: the new socket is sent the text', async (t) => {
  const own = await startRedis(t)
  const script = new BulkScript(LUA, 1)
  const conn = new Redis(own.url, { retryStrategy: () => 50 })
  t.teardown(() => conn.disconnect())
  t.same(await script.call(conn, ['k'], ['c', Buffer.from('before')]), [1, 'c'])
  const closed = once(conn, 'close')
  await own.kill()
  await closed
  const ready = once(conn, 'ready')
  await own.start()
  await ready
  t.same(await script.call(conn, ['k'], ['c', Buffer.from('after')]), [1, 'c'], 'an empty Redis, which has never seen the script')
})

t.test('an error of the script is the caller\'s; the wrong number of keys is refused before sending', async (t) => {
  const conn = new Redis(server.url)
  t.teardown(() => conn.disconnect())
  await server.client.set('bulk-script:string', 'x')
  await t.rejects(new BulkScript(LUA, 1).call(conn, ['bulk-script:string'], ['c', Buffer.from('x')]), /WRONGTYPE/)
  await t.rejects(new BulkScript(LUA, 1).call(conn, ['a', 'b'], []), /takes 1 keys, not 2/)
})
