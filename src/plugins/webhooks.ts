import fp from 'fastify-plugin'
import { Gauge } from 'prom-client'
import type { Config } from '../config.js'
import { AttemptLog } from '../webhooks/attempt-log.js'
import { DeadLetters } from '../webhooks/dead-letters.js'
import { WebhookDispatcher } from '../webhooks/dispatcher.js'
import { HealthBook } from '../webhooks/health-book.js'
import { WebhookRegistry } from '../webhooks/registry.js'
import { busCountGauge } from './metrics.js'

declare module 'fastify' {
  interface FastifyInstance {
    webhooks: WebhookRegistry
    deadLetters: DeadLetters
    attemptLog: AttemptLog
    dispatcher: WebhookDispatcher
    webhookHealth: HealthBook
  }
}

/**
 * Owns the webhook registry, the dead letters, the webhooks' shared health and the dispatcher
 * that consumes the consumer list for the webhooks; the dispatcher stops, and hands back what it
 * holds, on close.
 */
export default fp<{ config: Config }>(async (app, { config }) => {
  const { metrics } = app
  const registry = new WebhookRegistry(app.engine.store, config.keyPrefix, (id, why) => {
    metrics.invalidRecords.inc({ kind: 'webhook' })
    app.log.warn({ webhook: id, why }, 'a stored webhook record does not check: left out until it is fixed or deleted')
  })
  const attemptLog = new AttemptLog(app.engine.store, config.keyPrefix, (id) => {
    metrics.invalidRecords.inc({ kind: 'attempt' })
    app.log.warn({ webhook: id }, 'stored attempt-log lines do not check: left out')
  })
  const deadLetters = new DeadLetters(app.engine, config.keyPrefix, { max: config.deadLetterMax, maxFrameBytes: config.busMaxMessageBytes }, app.log)
  const outcomes = {
    delivered: metrics.webhookDeliveries.labels({ outcome: 'delivered' }),
    failed: metrics.webhookDeliveries.labels({ outcome: 'failed' }),
    gone: metrics.webhookDeliveries.labels({ outcome: 'gone' }),
    throttled: metrics.webhookDeliveries.labels({ outcome: 'throttled' })
  }
  const health = new HealthBook(app.engine.store, config.keyPrefix, {
    circuitFailures: config.webhookCircuitFailures,
    circuitCooldownMs: config.webhookCircuitCooldownMs,
    disableAfterMs: config.webhookDisableAfterMs
  }, {
    circuit: (webhook, open) => metrics.webhookCircuitOpen.set({ webhook }, open ? 1 : 0),
    setAside: (webhook) => app.log.warn({ webhook }, 'webhook keeps failing: set aside for a while'),
    // The health book tells of this only once the dispatcher below has started.
    disable: (webhook) => { dispatcher.disableFailing(webhook) },
    invalid: (webhook) => {
      metrics.invalidRecords.inc({ kind: 'health' })
      app.log.warn({ webhook }, 'a stored webhook health record does not check: taken as healthy')
    }
  })
  const dispatcher = new WebhookDispatcher(app.engine, registry, deadLetters, attemptLog, health, {
    keyPrefix: config.keyPrefix,
    concurrency: config.webhookConcurrency,
    timeoutMs: config.webhookTimeoutMs,
    maxAttempts: config.webhookMaxAttempts,
    maxAgeMs: config.webhookMaxAgeMs,
    backoffMs: config.webhookBackoffMs,
    backoffMaxMs: config.webhookBackoffMaxMs,
    disableAfterMs: config.webhookDisableAfterMs,
    instanceTtlMs: config.instanceTtlMs,
    allowPrivate: config.webhookAllowPrivate,
    maxMessageBytes: config.busMaxMessageBytes,
    take: config.webhookTake,
    scanDepth: config.webhookScanDepth,
    pollMs: config.webhookPollMs,
    subscriberQueueMax: config.webhookSubscriberQueueMax
  }, {
    delivery: (outcome, seconds) => {
      outcomes[outcome].inc()
      metrics.webhookSeconds.observe(seconds)
    },
    deadLettered: (reason, dropped) => {
      metrics.deadLettered.inc({ reason })
      if (dropped > 0) metrics.deadLettersDropped.inc(dropped)
    },
    disabled: () => metrics.webhookDisabled.inc(),
    scanned: (looked, unreadable) => {
      metrics.webhookScanLooked.set(looked)
      metrics.webhookScanUnreadable.set(unreadable)
    },
    givenBack: () => metrics.webhookGivenBack.inc(),
    orphaned: () => metrics.webhookOrphaned.inc(),
    subscriberGap: () => metrics.subscriberGaps.inc(),
    recorder: {
      heard: (outcome, count) => { if (count > 0) metrics.subscriberHeard.inc({ outcome }, count) },
      trimmed: (count) => metrics.subscriberTrimmed.inc(count)
    }
  }, app.log)
  app.decorate('webhooks', registry)
  app.decorate('deadLetters', deadLetters)
  app.decorate('attemptLog', attemptLog)
  app.decorate('dispatcher', dispatcher)
  app.decorate('webhookHealth', health)
  new Gauge({ // eslint-disable-line no-new
    name: 'busgate_webhook_in_flight',
    help: 'Messages held by this process for delivery',
    registers: [metrics.registry],
    collect () { this.set(dispatcher.inFlight) }
  })
  busCountGauge(metrics.registry, 'busgate_webhook_delayed', 'Messages waiting for their next delivery round, all instances',
    async () => await dispatcher.delayed())
  busCountGauge(metrics.registry, 'busgate_dead_letters', 'Messages in the dead-letter list', async () => await deadLetters.count())
  // Letters an older version kept in its one list move in before anything adds more; and again
  // now and then, for those an older instance still running adds during a rolling upgrade.
  const migrate = async (): Promise<void> => {
    const moved = await deadLetters.migrate().catch((err: unknown) => {
      app.log.warn({ err: { message: (err as Error).message } }, 'could not move the old dead-letter list yet; will try again')
      return 0
    })
    if (moved > 0) app.log.info({ moved }, 'moved dead letters from the old list to the current layout')
  }
  let migration: NodeJS.Timeout | undefined
  app.addHook('onReady', async () => {
    await migrate()
    migration = setInterval(() => { migrate().catch(() => undefined) }, 60_000)
    migration.unref()
    await registry.start(dispatcher.instance)
    await health.start()
    await dispatcher.start()
  })
  app.addHook('preClose', async () => {
    clearInterval(migration)
    await dispatcher.stop()
    await health.stop()
    await registry.stop()
  })
}, { name: 'busgate-webhooks', fastify: '5.x', dependencies: ['busgate-engine', 'busgate-metrics'] })
