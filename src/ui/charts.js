// The dashboard's small live charts: what they read from GET /metrics (Prometheus text) and
// how they are drawn (inline SVG, so the page needs no library and nothing the CSP refuses).

const SVG = 'http://www.w3.org/2000/svg'

/** Prometheus text → Map of metric name → [{ labels, value }]; comments and malformed lines are skipped. */
export function parseMetrics (text) {
  const metrics = new Map()
  for (const line of text.split('\n')) {
    const sample = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line)
    if (sample === null) continue
    const [, name, labelText = '', value] = sample
    const labels = {}
    for (const [, key, raw] of labelText.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[key] = raw.replace(/\\(.)/g, (_, c) => c === 'n' ? '\n' : c)
    if (!metrics.has(name)) metrics.set(name, [])
    metrics.get(name).push({ labels, value: Number(value.replace(/^\+?Inf$/, 'Infinity')) })
  }
  return metrics
}

/**
 * The sum of a metric's samples whose labels `which` accepts. A counter nothing has counted yet
 * is left out of the text, so a metric not there is 0.
 */
export function total (metrics, name, which = () => true) {
  return (metrics.get(name) ?? []).filter((s) => which(s.labels)).reduce((sum, s) => sum + s.value, 0)
}

/**
 * Per-second rates of counters from successive scrapes. A scrape of another process (a restart,
 * or another instance behind a load balancer: its start time differs) gives no rate, since its
 * counters are not the same counters; the next one does.
 */
export class Rates {
  #last

  /** `counters`: name → value of this scrape; returns name → rate, or undefined the first time. */
  next (process, atMs, counters) {
    const last = this.#last
    this.#last = { process, atMs, counters }
    if (last === undefined || last.process !== process || atMs <= last.atMs) return undefined
    const rates = {}
    for (const [name, value] of Object.entries(counters)) {
      const before = last.counters[name]
      rates[name] = value === undefined || before === undefined || value < before ? undefined : (value - before) * 1000 / (atMs - last.atMs)
    }
    return rates
  }
}

function svgElement (name, attributes = {}) {
  const element = document.createElementNS(SVG, name)
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value))
  return element
}

const WIDTH = 240
const HEIGHT = 48

/**
 * One small chart of the latest `size` values, in a <figure> whose <figcaption> holds a
 * `.label` and a `.value`. Unknown values (undefined, NaN) leave a gap in the line. The figure's
 * `data-last` and `data-max` say what it shows, in numbers, for people who read the page's
 * source and for tests.
 */
export class Chart {
  #values = []

  constructor (figure, { size = 60, unit = '' } = {}) {
    this.figure = figure
    this.size = size
    this.unit = unit
    this.line = svgElement('path', { class: 'line' })
    this.top = svgElement('text', { x: 2, y: 9, class: 'axis' })
    const svg = svgElement('svg', { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: 'none', role: 'img' })
    svg.append(svgElement('line', { x1: 0, y1: HEIGHT - 0.5, x2: WIDTH, y2: HEIGHT - 0.5, class: 'base' }), this.line, this.top)
    figure.append(svg)
    this.svg = svg
    this.draw()
  }

  push (value) {
    this.#values.push(Number.isFinite(value) ? value : undefined)
    if (this.#values.length > this.size) this.#values.shift()
    this.draw()
  }

  draw () {
    const known = this.#values.filter((v) => v !== undefined)
    // At least 1, so a quiet bus is a flat line at the bottom, not one scaled up to fill the chart.
    const max = Math.max(1, ...known)
    const step = WIDTH / (this.size - 1)
    let path = ''
    let pen = 'M'
    this.#values.forEach((value, i) => {
      if (value === undefined) {
        pen = 'M'
        return
      }
      const x = (this.size - this.#values.length + i) * step
      const y = HEIGHT - 1 - (value / max) * (HEIGHT - 12)
      path += `${pen}${x.toFixed(1)},${y.toFixed(1)} `
      pen = 'L'
    })
    this.line.setAttribute('d', path.trim())
    this.top.textContent = `max ${format(max)}${this.unit}`
    const last = this.#values.at(-1)
    this.figure.querySelector('.value').textContent = last === undefined ? '–' : `${format(last)}${this.unit}`
    this.figure.dataset.last = last === undefined ? '' : String(last)
    this.figure.dataset.max = known.length === 0 ? '' : String(Math.max(...known))
    this.figure.dataset.samples = String(known.length)
    this.svg.setAttribute('aria-label', `${this.figure.querySelector('.label').textContent}: ${this.figure.querySelector('.value').textContent}`)
  }
}

function format (n) {
  if (n >= 100 || Number.isInteger(n)) return Math.round(n).toLocaleString()
  return n.toFixed(n >= 10 ? 1 : 2)
}
