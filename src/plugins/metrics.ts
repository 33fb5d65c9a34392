import fp from 'fastify-plugin'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type CounterConfiguration, type LabelValues } from 'prom-client'
import { RequestDurations } from './request-durations.js'

/**
 * A gauge read from the bus at each scrape: unknown while the bus is down, so NaN then, rather
 * than a stale value or a false zero.
 */
export function busCountGauge (registry: Registry, name: string, help: string, read: () => Promise<number>): void {
  new Gauge({ // eslint-disable-line no-new
    name,
    help: `${help} (NaN while the bus is unreachable)`,
    registers: [registry],
    async collect () {
      this.set(await read().catch(() => Number.NaN))
    }
  })
}

/** One label set of a counter, counted on a hot path. */
export interface Tally {
  inc: (n?: number) => void
}

/**
 * A counter for a hot path: prom-client's own inc() hashes and checks the label set on every
 * call, a few per cent of a produce. A tally adds to a plain number, and the counter takes the
 * sums in when it is read (prom-client calls `collect` before every read). Make each label set's
 * tally once, where the route is set up: each one lives as long as the counter. No exemplars:
 * the counter's inc() takes other arguments with them.
 */
export function talliedCounter<T extends string> (config: Omit<CounterConfiguration<T>, 'enableExemplars' | 'collect'>): (labels: LabelValues<T>) => Tally {
  const tallies: Array<{ labels: LabelValues<T>, n: number }> = []
  class Tallied extends Counter<T> {
    // What is not yet taken in goes too: a reset must leave nothing to come back at the next read.
    override reset (): void {
      super.reset()
      for (const tally of tallies) tally.n = 0
    }
  }
  new Tallied({ // eslint-disable-line no-new
    ...config,
    collect () {
      for (const tally of tallies) {
        if (tally.n === 0) continue
        this.inc(tally.labels, tally.n)
        tally.n = 0
      }
    }
  })
  return (labels) => {
    const tally = { labels, n: 0 }
    tallies.push(tally)
    return {
      inc: (n = 1) => {
        // Refused here, as prom-client refuses it, rather than at every later read.
        if (!(n >= 0 && Number.isFinite(n))) throw new RangeError(`a counter only goes up, by a finite number: not ${n}`)
        tally.n += n
      }
    }
  }
}

export interface Metrics {
  registry: Registry
  produced: (labels: LabelValues<'route' | 'format'>) => Tally
  rejected: Counter<'reason'>
  clientErrors: Counter<'code'>
  httpDuration: RequestDurations
  malformed: Counter<'source' | 'reason'>
  sseClients: Gauge
  sseEvents: Counter
  sseDeliveries: Counter
  sseSlowDisconnects: Counter
  sseResumes: Counter<'result'>
  historyRecorded: Counter<'kind'>
  historyRecording: Gauge
  webhookDeliveries: Counter<'outcome'>
  webhookSeconds: Histogram
  deadLettered: Counter<'reason'>
  deadLettersDropped: Counter
  webhookCircuitOpen: Gauge<'webhook'>
  webhookScanLooked: Gauge
  webhookScanUnreadable: Gauge
  webhookGivenBack: Counter
  webhookDisabled: Counter
  webhookOrphaned: Counter
  subscriberHeard: Counter<'outcome'>
  subscriberTrimmed: Counter
  subscriberGaps: Counter
  invalidRecords: Counter<'kind'>
  rateLimited: Counter<'route' | 'client'>
}

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Metrics
  }
  interface FastifyContextConfig {
    /** a long-lived response (SSE): left out of the request duration histogram */
    stream?: boolean
  }
}

/** Owns the Prometheus registry: one per app, so apps built side by side (tests) never share counters. */
export default fp(async (app) => {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'busgate_' })
  const metrics: Metrics = {
    registry,
    produced: talliedCounter({
      name: 'busgate_events_produced_total',
      help: 'Events written to the bus through HTTP, by route and body format',
      labelNames: ['route', 'format'],
      registers: [registry]
    }),
    rejected: new Counter({
      name: 'busgate_events_rejected_total',
      help: 'Event requests refused, by error code',
      labelNames: ['reason'],
      registers: [registry]
    }),
    clientErrors: new Counter({
      name: 'busgate_http_client_errors_total',
      help: 'Requests that were malformed, too slow or abandoned by their client before they could be served, by error code',
      labelNames: ['code'],
      registers: [registry]
    }),
    httpDuration: new RequestDurations({
      name: 'busgate_http_request_duration_seconds',
      help: 'Time from request to response, by route',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry]
    }),
    malformed: new Counter({
      name: 'busgate_bus_malformed_total',
      help: 'Messages read from the bus that are not events (set aside, never forwarded), by where and why',
      labelNames: ['source', 'reason'],
      registers: [registry]
    }),
    sseClients: new Gauge({ name: 'busgate_sse_clients', help: 'Open event streams', registers: [registry] }),
    sseEvents: new Counter({ name: 'busgate_sse_events_total', help: 'Events taken from the broadcast channel and framed for streams', registers: [registry] }),
    sseDeliveries: new Counter({ name: 'busgate_sse_deliveries_total', help: 'Framed events written to stream clients (fan-out)', registers: [registry] }),
    sseSlowDisconnects: new Counter({
      name: 'busgate_sse_slow_disconnects_total',
      help: 'Stream clients cut off because their unsent bytes passed BUSGATE_SSE_MAX_BUFFER_BYTES',
      registers: [registry]
    }),
    historyRecorded: new Counter({
      name: 'busgate_history_recorded_total',
      help: 'Entries this instance wrote to the shared stream history: message, or break (messages may be missing there)',
      labelNames: ['kind'],
      registers: [registry]
    }),
    historyRecording: new Gauge({
      name: 'busgate_history_recorder',
      help: 'Whether this instance is the one that records the shared stream history (1) or not (0)',
      registers: [registry]
    }),
    sseResumes: new Counter({
      name: 'busgate_sse_resumes_total',
      help: 'Reconnects with Last-Event-ID: hit (replayed from history) or the reason of the gap',
      labelNames: ['result'],
      registers: [registry]
    }),
    webhookDeliveries: new Counter({
      name: 'busgate_webhook_deliveries_total',
      help: 'Webhook delivery attempts by outcome: delivered (2xx), failed, gone (410), throttled (429/503 with Retry-After)',
      labelNames: ['outcome'],
      registers: [registry]
    }),
    webhookSeconds: new Histogram({
      name: 'busgate_webhook_delivery_seconds',
      help: 'Time from sending a delivery to its answer',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry]
    }),
    deadLettered: new Counter({ name: 'busgate_dead_lettered_total', help: 'Messages moved to the dead-letter list, by reason', labelNames: ['reason'], registers: [registry] }),
    deadLettersDropped: new Counter({
      name: 'busgate_dead_letters_dropped_total',
      help: 'Oldest dead letters dropped because the list was full (BUSGATE_DEAD_LETTER_MAX)',
      registers: [registry]
    }),
    webhookCircuitOpen: new Gauge({
      name: 'busgate_webhook_circuit_open',
      help: '1 while a webhook has failed BUSGATE_WEBHOOK_CIRCUIT_FAILURES times in a row (the health every instance shares): set aside, then probed',
      labelNames: ['webhook'],
      registers: [registry]
    }),
    webhookScanLooked: new Gauge({
      name: 'busgate_webhook_list_scanned',
      help: 'Values of the consumer list the last matching claim looked at (at most BUSGATE_WEBHOOK_SCAN_DEPTH)',
      registers: [registry]
    }),
    webhookScanUnreadable: new Gauge({
      name: 'busgate_webhook_list_unreadable',
      help: 'Of those, values it could not read as a bus event (or larger than BUSGATE_BUS_MAX_MESSAGE_BYTES): left in the list for the other consumers',
      registers: [registry]
    }),
    webhookDisabled: new Counter({
      name: 'busgate_webhook_disabled_total',
      help: 'Webhooks disabled because they failed without a success for BUSGATE_WEBHOOK_DISABLE_AFTER_MS',
      registers: [registry]
    }),
    webhookGivenBack: new Counter({
      name: 'busgate_webhook_given_back_total',
      help: 'Messages taken for a consumer webhook that was disabled or deleted before delivery: put back at the head of the consumer list',
      registers: [registry]
    }),
    webhookOrphaned: new Counter({
      name: 'busgate_webhook_orphaned_copies_total',
      help: 'Copies for a subscriber webhook that was deleted: dropped',
      registers: [registry]
    }),
    subscriberHeard: new Counter({
      name: 'busgate_webhook_subscriber_events_total',
      help: 'Broadcast events matching a subscriber webhook, by outcome: recorded here, duplicate (another instance recorded it), dropped (Redis could not take it in time)',
      labelNames: ['outcome'],
      registers: [registry]
    }),
    subscriberTrimmed: new Counter({
      name: 'busgate_webhook_subscriber_trimmed_total',
      help: 'Oldest copies dropped because a subscriber webhook had BUSGATE_WEBHOOK_SUBSCRIBER_QUEUE_MAX waiting',
      registers: [registry]
    }),
    subscriberGaps: new Counter({
      name: 'busgate_webhook_subscriber_gaps_total',
      help: 'Times this instance\'s bus subscription was lost and re-made while subscriber webhooks were enabled: events published meanwhile were not seen by it',
      registers: [registry]
    }),
    rateLimited: new Counter({
      name: 'busgate_rate_limited_total',
      help: 'Requests refused with 429 because their client (a token, or an address without one) was past BUSGATE_RATE_LIMIT, by route and kind of client',
      labelNames: ['route', 'client'],
      registers: [registry]
    }),
    invalidRecords: new Counter({
      name: 'busgate_invalid_records_total',
      help: 'Records read back from busgate\'s own keys that did not check (a hand edit, another version), by kind: left out, never trusted',
      labelNames: ['kind'],
      registers: [registry]
    })
  }
  app.decorate('metrics', metrics)

  app.addHook('onResponse', (request, reply, done) => {
    // A stream's "latency" would be its lifetime: not a request duration.
    // Read once: Fastify builds a new object of a dozen fields on every read of routeOptions.
    const options = request.routeOptions
    if (options.config.stream !== true) metrics.httpDuration.record(request.method, options.url ?? 'unmatched', reply.statusCode, reply.elapsedTime / 1000)
    done()
  })
}, { name: 'busgate-metrics', fastify: '5.x' })
