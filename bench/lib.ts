import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'

export { freePort } from '../test/helpers/redis.js'

/** Spawns a process and waits until its output contains `readyText`. */
export async function startProcess (command: string, args: string[], env: Record<string, string>, readyText: string): Promise<ChildProcess> {
  const proc = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  const onData = (d: Buffer): void => { out += d.toString() }
  proc.stdout?.on('data', onData)
  proc.stderr?.on('data', onData)
  for (let i = 0; i < 400 && !out.includes(readyText); i++) {
    if (proc.exitCode !== null) throw new Error(`${command} exited: ${out}`)
    await sleep(25)
  }
  if (!out.includes(readyText)) throw new Error(`${command} did not start: ${out}`)
  // Keep draining output so a chatty process never blocks on a full pipe.
  proc.stdout?.off('data', onData)
  proc.stderr?.off('data', onData)
  proc.stdout?.resume()
  proc.stderr?.resume()
  return proc
}

export async function stopProcess (proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null) return
  const exited = new Promise((resolve) => proc.once('exit', resolve))
  proc.kill('SIGTERM')
  await Promise.race([exited, sleep(5000)])
  if (proc.exitCode === null) proc.kill('SIGKILL')
}

export function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid] as number : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2
}

export function table (rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)))
  const line = (r: string[]): string => `| ${r.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`
  return [line(rows[0]!), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.slice(1).map(line)].join('\n')
}

/**
 * CPU seconds a process has used (user + system, all its threads), from Linux's /proc; undefined
 * elsewhere. Read around a run, it tells what each request cost the machine, which moves far
 * less with a shared machine's mood than requests per second do.
 */
export function cpuSeconds (pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The fields after the command name (which may hold spaces, hence the last ')'): utime and
    // stime are the 12th and 13th, in clock ticks (100 a second on Linux).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return undefined
  }
}
