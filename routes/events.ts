import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { Config } from '../src/config.js'
import { CodecError, msgpackArrayHead, parseWireEvent, parseWireEventAt, scanMsgpack, type BusEvent } from '../src/codec.js'
import { Errors } from '../src/errors.js'
import { packJsonEvents } from '../src/json-packer.js'
import { Ref } from '../schemas/common.js'
import { authErrors, errorResponses } from '../schemas/error.js'
import { Type } from '@sinclair/typebox'
import { makeFilter } from '../src/sse-hub.js'
import { streamHead } from '../src/sse-response.js'
import { EventInput, ProduceAccepted, STREAM_DESCRIPTION, StreamQuery, WireEvent, eventBatch, wireEventBatch } from '../schemas/event.js'

export const MSGPACK = 'application/msgpack'

// The bytes of each msgpack body, kept beside the decoded event so they reach Redis unchanged.
const wireBytes = new WeakMap<object, Buffer>()
// The same for a msgpack batch: each element's exact byte range of the body, in order.
const batchBytes = new WeakMap<object, Uint8Array[]>()

/** The answer to a body the codec refuses; a JSON body is never "undecodable" msgpack. */
function refusal (err: CodecError, where: string, json: boolean): Error {
  if (err.reason === 'too_large') return new Errors.MessageTooLarge(`${where}${err.message}`)
  return err.reason === 'undecodable' && !json ? new Errors.InvalidMsgpack(err.message) : new Errors.InvalidEvent(err.message)
}

/**
 * A msgpack `POST /events/batch` body: one array of event maps, each checked as a single msgpack
 * body is, and sliced out of the body as sent. Refusals name the element as the JSON batch's do
 * (`body/3/`); the array itself is refused in the JSON batch's words.
 */
function parseWireBatch (body: Buffer, batchMax: number, maxBytes: number): { events: BusEvent[], frames: Uint8Array[] } {
  const head = msgpackArrayHead(body)
  if (head === undefined) {
    let problem: string | undefined
    try {
      problem = scanMsgpack(body)
    } catch {
      problem = undefined
    }
    if (problem !== undefined) throw new Errors.InvalidMsgpack(problem)
    throw new Errors.ValidationFailed('body must be array (a msgpack array of event maps)')
  }
  if (head.count < 1) throw new Errors.ValidationFailed('body must NOT have fewer than 1 items')
  if (head.count > batchMax) throw new Errors.ValidationFailed(`body must NOT have more than ${batchMax} items (BUSGATE_BATCH_MAX)`)
  const events: BusEvent[] = []
  const frames: Uint8Array[] = []
  let pos = head.start
  for (let i = 0; i < head.count; i++) {
    try {
      const element = parseWireEventAt(body, pos)
      checkSize(element.bytes, maxBytes, `body/${i}/`)
      events.push(element.event)
      frames.push(element.bytes)
      pos += element.bytes.byteLength
    } catch (err) {
      if (!(err instanceof CodecError)) throw err
      throw refusal(new CodecError(err.reason, `body/${i}/${err.message}`), '', false)
    }
  }
  if (pos !== body.byteLength) throw new Errors.InvalidMsgpack(`${body.byteLength - pos} bytes left over after the array`)
  return { events, frames }
}

/**
 * What busgate's own readers would set aside (BUSGATE_BUS_MAX_MESSAGE_BYTES) it does not write:
 * an event JSON describes in fewer bytes than msgpack does (floats) can still be too large.
 */
function checkBytes (bytes: number, maxBytes: number, where: string): void {
  if (bytes > maxBytes) throw new Errors.MessageTooLarge(`${where}${bytes} bytes of msgpack, more than BUSGATE_BUS_MAX_MESSAGE_BYTES (${maxBytes})`)
}

function checkSize (frame: Uint8Array, maxBytes: number, where: string): Uint8Array {
  checkBytes(frame.byteLength, maxBytes, where)
  return frame
}

const SINGLE = (): string => 'body/'
const BATCH_ELEMENT = (i: number): string => `body/${i}/`

/**
 * The frames of events that entered as JSON, each at most BUSGATE_BUS_MAX_MESSAGE_BYTES, checked
 * as it is packed: the answer is the first refusal in array order, whichever kind it is.
 */
function encodeInputs (inputs: readonly EventInput[], defaultAgentId: string, maxBytes: number, where: (i: number) => string): Buffer[] {
  const checkFrame = (i: number, bytes: number): void => { checkBytes(bytes, maxBytes, where(i)) }
  try {
    return packJsonEvents(inputs, defaultAgentId, where, checkFrame)
  } catch (err) {
    if (err instanceof CodecError) throw refusal(err, '', true)
    throw err
  }
}

const events: FastifyPluginAsyncTypebox<{ config: Config }> = async (app, { config }) => {
  const produced = {
    json: app.metrics.produced({ route: 'single', format: 'json' }),
    msgpack: app.metrics.produced({ route: 'single', format: 'msgpack' }),
    batch: app.metrics.produced({ route: 'batch', format: 'json' }),
    msgpackBatch: app.metrics.produced({ route: 'batch', format: 'msgpack' })
  }

  // Only this route takes msgpack: its parser lives in this context alone, so other routes answer 415.
  await app.register(async (single) => {
    single.addContentTypeParser(MSGPACK, { parseAs: 'buffer' }, (_request, body: Buffer, done) => {
      try {
        const event = parseWireEvent(body)
        wireBytes.set(event, body)
        done(null, event)
      } catch (err) {
        if (!(err instanceof CodecError)) return done(err as Error)
        done(refusal(err, '', false))
      }
    })

    single.post('/events', {
      schema: {
        operationId: 'produceEvent',
        tags: ['events'],
        summary: 'Put one event on the bus',
        description: 'Writes one copy to the broadcast channel (PUBLISH) and one to the consumer list (RPUSH), atomically: ' +
          '`202` means Redis holds both, an error means it holds neither.',
        body: {
          content: {
            'application/json': { schema: Ref(EventInput) },
            [MSGPACK]: { schema: Ref(WireEvent) }
          }
        },
        response: { 202: Ref(ProduceAccepted), ...authErrors, ...errorResponses(400, 413, 415, 503) }
      },
      config: { scope: 'publish', countsRejections: true }
    }, async (request, reply) => {
      const body = request.body as EventInput | WireEvent | undefined
      // Per-content-type schemas validate only the content types they name: a request without
      // a body (no Content-Type) reaches no schema at all.
      if (body === undefined) {
        throw new Errors.BadRequest(`This route needs a body: JSON (application/json) or msgpack (${MSGPACK})`)
      }
      const raw = wireBytes.get(body)
      const frame = raw === undefined ? encodeInputs([body as EventInput], config.agentId, config.busMaxMessageBytes, SINGLE)[0] as Buffer : checkSize(raw, config.busMaxMessageBytes, '')
      const recording = app.tasks.recordProduced([body])
      if (recording !== undefined) await recording
      const result = await app.engine.bus.produce([frame])
      const counter = raw === undefined ? produced.json : produced.msgpack
      counter.inc()
      return reply.code(202).send({ accepted: 1, subscribers: result.subscribers, queue_length: result.queueLength })
    })
  })

  // Its own context too: the batch's msgpack parser reads an array, and no other route takes msgpack.
  await app.register(async (batch) => {
    batch.addContentTypeParser(MSGPACK, { parseAs: 'buffer' }, (_request, body: Buffer, done) => {
      try {
        const { events, frames } = parseWireBatch(body, config.batchMax, config.busMaxMessageBytes)
        batchBytes.set(events, frames)
        done(null, events)
      } catch (err) {
        done(err as Error)
      }
    })

    batch.post('/events/batch', {
      schema: {
        operationId: 'produceEvents',
        tags: ['events'],
        summary: 'Put several events on the bus, all or none',
        description: 'The events are written in one atomic step, in array order: each to the channel and to the consumer list. ' +
          `As \`${MSGPACK}\`, the body is one msgpack array of wire-format maps: each is checked as a single msgpack body ` +
          'to `POST /events` is and written unchanged, its own bytes sliced from the body (refusals name it: `body/3/…`, ' +
          'byte offsets counted from the start of the body).',
        body: {
          content: {
            'application/json': { schema: eventBatch(config.batchMax) },
            [MSGPACK]: { schema: wireEventBatch(config.batchMax) }
          }
        },
        response: { 202: Ref(ProduceAccepted), ...authErrors, ...errorResponses(400, 413, 415, 503) }
      },
      config: { scope: 'publish', countsRejections: true }
    }, async (request, reply) => {
      const body = request.body as EventInput[] | WireEvent[] | undefined
      if (body === undefined) {
        throw new Errors.BadRequest(`This route needs a body: a JSON (application/json) or msgpack (${MSGPACK}) array of events`)
      }
      const raw = batchBytes.get(body)
      const frames = raw === undefined
        ? encodeInputs(body as EventInput[], config.agentId, config.busMaxMessageBytes, BATCH_ELEMENT)
        : raw // each checked for size as it was sliced
      const recording = app.tasks.recordProduced(body)
      if (recording !== undefined) await recording
      const result = await app.engine.bus.produce(frames)
      const counter = raw === undefined ? produced.batch : produced.msgpackBatch
      counter.inc(frames.length)
      return reply.code(202).send({ accepted: frames.length, subscribers: result.subscribers, queue_length: result.queueLength })
    })
  })

  app.get('/events/stream', {
    // A HEAD copy of this route would write stream bytes after a bodiless answer.
    exposeHeadRoute: false,
    sse: { kind: 'manual', heartbeat: false },
    schema: {
      operationId: 'streamEvents',
      tags: ['events'],
      summary: 'Watch the bus live, as Server-Sent Events',
      description: STREAM_DESCRIPTION,
      querystring: StreamQuery,
      response: {
        200: { description: 'An endless event stream', content: { 'text/event-stream': { schema: Type.String() } } },
        ...authErrors,
        ...errorResponses(400, 503)
      }
    },
    config: { scope: 'subscribe', queryToken: true, stream: true }
  }, async (request, reply) => {
    if (app.hub.full) throw new Errors.TooManyStreams(config.sseMaxClients)
    const { event_name: eventNames, agent_id: agentIds, last_event_id: queryLastId } = request.query
    const header = request.headers['last-event-id']
    const writeHead = streamHead(reply)
    request.log.debug({ req: request, clients: app.hub.clientCount + 1 }, 'stream opened')
    await app.hub.open(reply.raw, makeFilter(eventNames, agentIds), typeof header === 'string' ? header : queryLastId, writeHead)
  })
}

export default events
