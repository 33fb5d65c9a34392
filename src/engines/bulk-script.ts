import { createHash } from 'node:crypto'
import { Command, type Redis } from 'ioredis'

const CR = 13
const LF = 10
const DOLLAR = 36
const STAR = 42

/**
 * A Lua script called with many Buffer arguments (the produce script: one frame per event),
 * written to the socket as one buffer built in one pass. ioredis writes such a command in
 * pieces: for every argument a header string, measured twice and written by a call into C++,
 * then the argument copied by another call; for a batch of 100 events that was about a sixth of
 * the gateway's CPU (0.7 µs a frame, against 0.1 µs here). It is sent with `sendCommand`, so
 * queueing, timeouts, reconnects, resends and Cluster routing stay ioredis' own; the first call
 * on each socket is an EVAL and the later ones EVALSHA, as with ioredis' own scripts.
 */
export class BulkScript {
  readonly sha: string
  /** sockets whose Redis has been sent the script's text */
  readonly #loaded = new WeakSet<object>()

  constructor (readonly lua: string, readonly numberOfKeys: number) {
    this.sha = createHash('sha1').update(lua).digest('hex')
  }

  /** `onResend` is told when the call goes again with the script's text (its Redis did not know the script). */
  async call (conn: Redis, keys: readonly string[], args: ReadonlyArray<string | Uint8Array>, onResend?: () => void): Promise<unknown> {
    if (keys.length !== this.numberOfKeys) throw new Error(`the script takes ${this.numberOfKeys} keys, not ${keys.length}`)
    const first = new BulkScriptCommand(this, this.#loaded, keys, args)
    try {
      conn.sendCommand(first)
      return await first.promise
    } catch (err) {
      if (!(err instanceof Error) || !err.message.includes('NOSCRIPT')) throw err
      // Its Redis forgot the script (SCRIPT FLUSH, or a restart the socket did not see): once more, with the text.
      if (first.socket !== undefined) this.#loaded.delete(first.socket)
      const again = new BulkScriptCommand(this, this.#loaded, keys, args)
      onResend?.()
      conn.sendCommand(again)
      return await again.promise
    }
  }
}

class BulkScriptCommand extends Command {
  /** where it was last written: a NOSCRIPT answer means that socket's Redis lacks the script */
  socket: object | undefined

  constructor (
    private readonly script: BulkScript,
    private readonly loaded: WeakSet<object>,
    keys: readonly string[],
    private readonly bulk: ReadonlyArray<string | Uint8Array>
  ) {
    // What ioredis reads of a command's arguments (its keys, for Cluster routing) only; the bulk is written here.
    // Replies as ioredis' own scripts give them: strings, not Buffers.
    super('evalsha', [script.sha, String(keys.length), ...keys], { replyEncoding: 'utf8' })
  }

  // Called for each write: again after a reconnect or a Cluster redirection, to another socket.
  override toWritable (socket: object): Buffer {
    this.socket = socket
    const known = this.loaded.has(socket)
    if (!known) this.loaded.add(socket)
    const head = [known ? 'evalsha' : 'eval', known ? this.script.sha : this.script.lua, ...this.args.slice(1).map(String)]
    // Strings (the command, its keys, a channel) are few: Buffers of their own. The frames are written as they are.
    const parts: Uint8Array[] = head.map((s) => Buffer.from(s))
    for (const b of this.bulk) parts.push(typeof b === 'string' ? Buffer.from(b) : b)
    let total = 1 + digits(parts.length) + 2
    for (const part of parts) total += 5 + digits(part.byteLength) + part.byteLength
    const out = Buffer.allocUnsafe(total)
    out[0] = STAR
    let pos = writeCount(out, 1, parts.length)
    for (const part of parts) pos = writeBulk(out, pos, part)
    return out
  }
}

// A Cluster client sends a command again when its node connection closes ("Connection is
// closed."), whether or not the node ran it; that is right for one never written (the node was
// not ready) and wrong for a produce that was: it could be written twice and answered once. The
// client does it by reading the command's own `reject` (kept, and called for every outcome it
// does not retry) and putting a wrapper in its place; read after that, `reject` sends that one
// error of a command written once past the wrapper, so the caller hears of it (a 503 that says
// the write may have happened). Unwrapped (no Cluster), it is the command's own.
const CONNECTION_CLOSED = 'Connection is closed.'
type Reject = (err: Error) => void
const rejects = new WeakMap<BulkScriptCommand, { own: Reject, guarded?: Reject }>()
Object.defineProperty(BulkScriptCommand.prototype, 'reject', {
  set (this: BulkScriptCommand, fn: Reject) {
    const own = rejects.get(this)?.own
    if (own === undefined) {
      rejects.set(this, { own: fn })
      return
    }
    rejects.set(this, { own, guarded: (err) => { (this.socket !== undefined && err.message === CONNECTION_CLOSED ? own : fn)(err) } })
  },
  get (this: BulkScriptCommand) {
    const { own, guarded } = rejects.get(this)!
    return guarded ?? own
  }
})

function digits (n: number): number {
  if (n < 10) return 1
  if (n < 100) return 2
  if (n < 1000) return 3
  let d = 4
  for (let m = 10_000; n >= m; m *= 10) d++
  return d
}

/** `n` in decimal, then CRLF; returns the position after. */
function writeCount (out: Buffer, pos: number, n: number): number {
  const end = pos + digits(n)
  let at = end
  do {
    out[--at] = 48 + (n % 10)
    n = Math.floor(n / 10)
  } while (n > 0)
  out[end] = CR
  out[end + 1] = LF
  return end + 2
}

/** One bulk string: `$<length>\r\n<bytes>\r\n`. */
function writeBulk (out: Buffer, pos: number, part: Uint8Array): number {
  out[pos] = DOLLAR
  pos = writeCount(out, pos + 1, part.byteLength)
  out.set(part, pos)
  pos += part.byteLength
  out[pos] = CR
  out[pos + 1] = LF
  return pos + 2
}
