import { readFileSync } from 'node:fs'
import autocannon from 'autocannon'
import { freePort, startProcess, stopProcess } from './lib.js'
const ticks = (pid: number): number => { const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' '); return Number(f[11]) + Number(f[12]) }
const body = JSON.stringify({ event_name: 'kernel_started', agent_id: 'i-ag01', args: ['6f0c9a3e-3f4e-4b3a-9d4c-2a7c1f0e5b11', 'kern-0001', { cpu: 2, mem: '4g' }] })
const redisPort = await freePort()
const redis = await startProcess('redis-server', ['--port', String(redisPort), '--save', '', '--appendonly', 'no'], {}, 'Ready to accept connections')
const root = '/work/main/'
const kinds: Record<string, [string[], Record<string, string>]> = {
  bare: [['--import', 'tsx', `${root}bench/bare-server.ts`], {}],
  naive: [['--import', 'tsx', `${root}bench/naive-redis-server.ts`], { REDIS_URL: `redis://127.0.0.1:${redisPort}/0` }],
  gateway: [[`${root}dist/src/server.js`], { REDIS_URL: `redis://127.0.0.1:${redisPort}/0` }],
  gwsemi: [['--max-semi-space-size=32', `${root}dist/src/server.js`], { REDIS_URL: `redis://127.0.0.1:${redisPort}/0` }]
}
for (let r = 0; r < Number(process.argv[2] ?? 2); r++) {
  for (const [name, [args, env]] of Object.entries(kinds).filter(([k]) => (process.env.KINDS ?? 'bare,naive,gateway,gwsemi').split(',').includes(k))) {
    const port = await freePort()
    const p = await startProcess(process.execPath, args, { PORT: String(port), ...env }, 'Server listening')
    const run = async (d: number) => await autocannon({ url: `http://127.0.0.1:${port}/events`, method: 'POST', headers: { 'content-type': 'application/json' }, body, connections: 64, duration: d, overallRate: Number(process.env.RATE ?? 0) || undefined })
    await run(2)
    const t0 = ticks(p.pid!); const r0 = ticks(redis.pid!); const s0 = ticks(process.pid)
    const res = await run(5)
    const t1 = ticks(p.pid!); const r1 = ticks(redis.pid!); const s1 = ticks(process.pid)
    const n = res.requests.total
    const us = (t: number) => (t * 10000 / n).toFixed(1) // ticks are 10 ms
    console.log(`${name.padEnd(8)} ${res.requests.average.toFixed(0).padStart(6)} req/s  server ${us(t1 - t0)} µs/req  redis ${us(r1 - r0)} µs/req  loadgen ${us(s1 - s0)} µs/req  server util ${((t1 - t0) / 5).toFixed(0)}%`)
    await stopProcess(p)
  }
}
await stopProcess(redis)
