import { Histogram, type LabelValues } from 'prom-client'

type Label = 'method' | 'route' | 'status_code'

interface Tally {
  labels: LabelValues<Label>
  /** observations per bucket (not cumulative), the last one past every bound */
  buckets: Float64Array
  sum: number
  count: number
}

interface PromValue {
  labels: Record<string, string | number>
  sharedLabels: LabelValues<Label>
  value: number
  metricName: string
  /** none kept: null on buckets, undefined on the sum and count, as prom-client gives them */
  exemplar: null | undefined
}

/**
 * busgate_http_request_duration_seconds, tallied in plain arrays: prom-client's own observe
 * checks and hashes the label set on every call (about a microsecond, a fiftieth of a whole
 * produce). A scrape reads the tallies: the registry and prom-client's own `get()` both read a
 * histogram through `getForPromString()`, which gives them here in prom-client's own shape.
 */
export class RequestDurations extends Histogram<Label> {
  readonly #name: string
  readonly #help: string
  readonly #bounds: readonly number[]
  // A plain field: prom-client's constructor calls reset() before a subclass's # fields exist.
  private readonly tallies = new Map<string, Tally>()

  constructor (config: { name: string, help: string, buckets: number[], registers: NonNullable<ConstructorParameters<typeof Histogram>[0]['registers']> }) {
    super({ ...config, labelNames: ['method', 'route', 'status_code'] })
    this.#name = config.name
    this.#help = config.help
    this.#bounds = [...config.buckets].sort((a, b) => a - b)
  }

  record (method: string, route: string, statusCode: number, seconds: number): void {
    const key = `${method} ${statusCode} ${route}`
    let tally = this.tallies.get(key)
    if (tally === undefined) {
      tally = { labels: { method, route, status_code: String(statusCode) }, buckets: new Float64Array(this.#bounds.length + 1), sum: 0, count: 0 }
      this.tallies.set(key, tally)
    }
    let bucket = 0
    while (bucket < this.#bounds.length && seconds > (this.#bounds[bucket] as number)) bucket++
    ;(tally.buckets[bucket] as number)++
    tally.sum += seconds
    tally.count++
  }

  /** What the registry reads to write the text format: labels apart from the per-series ones, as prom-client's own histogram gives them. */
  async getForPromString (): Promise<{ name: string, help: string, type: 'histogram', values: PromValue[], aggregator: 'sum' }> {
    const values: PromValue[] = []
    const bucketName = `${this.#name}_bucket`
    for (const tally of this.tallies.values()) {
      let cumulative = 0
      this.#bounds.forEach((le, i) => {
        cumulative += tally.buckets[i] as number
        values.push({ labels: { le }, sharedLabels: tally.labels, value: cumulative, metricName: bucketName, exemplar: null })
      })
      values.push({ labels: { le: '+Inf' }, sharedLabels: tally.labels, value: tally.count, metricName: bucketName, exemplar: null })
      values.push({ labels: {}, sharedLabels: tally.labels, value: tally.sum, metricName: `${this.#name}_sum`, exemplar: undefined })
      values.push({ labels: {}, sharedLabels: tally.labels, value: tally.count, metricName: `${this.#name}_count`, exemplar: undefined })
    }
    return { name: this.#name, help: this.#help, type: 'histogram', values, aggregator: 'sum' }
  }

  override reset (): void {
    // Undefined while the base constructor runs (it resets a new metric).
    (this.tallies as Map<string, Tally> | undefined)?.clear()
  }
}
