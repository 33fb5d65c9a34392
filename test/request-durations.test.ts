import { Histogram, Registry } from 'prom-client'
import t from 'tap'
import { RequestDurations } from '../src/plugins/request-durations.js'
import { listeningApp } from './helpers/app.js'
import { openStream } from './helpers/sse.js'

const buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]
const observations: Array<[string, string, number, number]> = [
  ['POST', '/events', 202, 0.0004], ['POST', '/events', 202, 0.0005], ['POST', '/events', 202, 0.0007],
  ['POST', '/events', 400, 0.002], ['GET', '/webhooks/:id', 200, 3], ['GET', '/webhooks/:id', 200, 0.1],
  ['POST', '/events', 202, 2.5], ['GET', 'unmatched', 404, 0]
]

/** The same observations through prom-client's own histogram: what a scrape must read. */
function both (): { ours: RequestDurations, theirs: Histogram, oursRegistry: Registry, theirsRegistry: Registry } {
  const oursRegistry = new Registry()
  const theirsRegistry = new Registry()
  const name = 'busgate_http_request_duration_seconds'
  const help = 'Time from request to response, by route'
  const ours = new RequestDurations({ name, help, buckets, registers: [oursRegistry] })
  const theirs = new Histogram({ name, help, buckets, labelNames: ['method', 'route', 'status_code'], registers: [theirsRegistry] })
  for (const [method, route, status, seconds] of observations) {
    ours.record(method, route, status, seconds)
    theirs.observe({ method, route, status_code: String(status) }, seconds)
  }
  return { ours, theirs, oursRegistry, theirsRegistry }
}

t.test('a scrape reads what prom-client\'s own histogram would give, bucket by bucket', async (t) => {
  const { oursRegistry, theirsRegistry } = both()
  const text = await oursRegistry.metrics()
  t.equal(text, await theirsRegistry.metrics())
  t.match(text, /^busgate_http_request_duration_seconds_bucket\{le="0.0005",method="POST",route="\/events",status_code="202"\} 2$/m, 'a bound is inclusive')
  t.match(text, /^busgate_http_request_duration_seconds_count\{method="POST",route="\/events",status_code="202"\} 4$/m)
  t.match(text, /^busgate_http_request_duration_seconds_bucket\{le="2.5",method="GET",route="\/webhooks\/:id",status_code="200"\} 1$/m, 'past the last bound only in +Inf')
})

t.test('get() and reset() behave as the library\'s', async (t) => {
  const { ours, theirs } = both()
  t.same(await ours.get(), await theirs.get())
  ours.reset()
  theirs.reset()
  t.same((await ours.get()).values, [])
  t.same(await ours.get(), await theirs.get())
  ours.record('POST', '/events', 202, 0.01)
  t.equal((await ours.get()).values.find((v) => v.metricName?.endsWith('_count'))?.value, 1, 'tallies start afresh')
})

t.test('in the app: each route once per request with its real duration, unmatched requests, streams left out', async (t) => {
  const { base } = await listeningApp(t, undefined)
  for (let i = 0; i < 2; i++) t.equal((await fetch(`${base}/events`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"event_name":"a"}' })).status, 202)
  t.equal((await fetch(`${base}/healthz`, { method: 'HEAD' })).status, 200)
  t.equal((await fetch(`${base}/no-such-route`)).status, 404)
  const stream = await openStream(`${base}/events/stream`)
  t.equal(stream.status, 200)
  stream.close()
  await stream.ended
  const text = await (await fetch(`${base}/metrics`)).text()
  const series = (route: string, method: string, status: number, what: string): number | undefined => {
    const line = text.split('\n').find((l) => l.startsWith(`busgate_http_request_duration_seconds_${what}{method="${method}",route="${route}",status_code="${status}"}`))
    return line === undefined ? undefined : Number(line.split(' ').at(-1))
  }
  t.equal(series('/events', 'POST', 202, 'count'), 2, 'once per request')
  t.ok((series('/events', 'POST', 202, 'sum') ?? 0) > 0, 'a real duration, in a silent app too')
  t.equal(series('/healthz', 'HEAD', 200, 'count'), 1, 'a HEAD route made from a GET counts once')
  t.equal(series('unmatched', 'GET', 404, 'count'), 1)
  t.notMatch(text, /route="\/events\/stream"/, 'a stream\'s lifetime is no request duration')
})
