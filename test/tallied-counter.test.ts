import { Counter, Registry } from 'prom-client'
import t from 'tap'
import { talliedCounter } from '../src/plugins/metrics.js'

t.test('a tallied counter reads as prom-client\'s own, cumulative across scrapes', async (t) => {
  const ours = new Registry()
  const theirs = new Registry()
  const config = { name: 'busgate_events_produced_total', help: 'Events', labelNames: ['route', 'format'] as const }
  const tally = talliedCounter({ ...config, labelNames: [...config.labelNames], registers: [ours] })
  const counter = new Counter({ ...config, labelNames: [...config.labelNames], registers: [theirs] })
  const single = tally({ route: 'single', format: 'json' })
  const batch = tally({ route: 'batch', format: 'msgpack' })
  t.equal(await ours.metrics(), await theirs.metrics(), 'no series before the first count, as the library')
  single.inc()
  single.inc()
  batch.inc(100)
  counter.inc({ route: 'single', format: 'json' }, 2)
  counter.inc({ route: 'batch', format: 'msgpack' }, 100)
  t.equal(await ours.metrics(), await theirs.metrics())
  t.match(await ours.metrics(), /^busgate_events_produced_total\{route="single",format="json"\} 2$/m, 'a second read does not count twice')
  single.inc()
  counter.inc({ route: 'single', format: 'json' })
  t.equal(await ours.metrics(), await theirs.metrics())
  t.match(await ours.metrics(), /^busgate_events_produced_total\{route="single",format="json"\} 3$/m)
})

t.test('a reset leaves nothing to come back; a bad increment is refused where it is made', async (t) => {
  const registry = new Registry()
  const tally = talliedCounter({ name: 'busgate_events_produced_total', help: 'Events', labelNames: ['route', 'format'], registers: [registry] })
  const single = tally({ route: 'single', format: 'json' })
  single.inc(5)
  registry.resetMetrics()
  t.notMatch(await registry.metrics(), /route="single"/, 'counts not yet read are reset too')
  t.throws(() => { single.inc(-1) }, RangeError)
  t.throws(() => { single.inc(Number.NaN) }, RangeError)
  single.inc(2)
  t.match(await registry.metrics(), /^busgate_events_produced_total\{route="single",format="json"\} 2$/m, 'the scrape still reads')
})
