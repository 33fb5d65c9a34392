import type { Static, TSchema } from '@sinclair/typebox'
import { Ajv, type Options, type ValidateFunction } from 'ajv'
import * as ajvFormats from 'ajv-formats'

// ajv-formats is CommonJS whose default export NodeNext types see one level down.
const addFormats = ajvFormats.default.default

function makeAjv (options: Options, schemas: Record<string, unknown>): Ajv {
  const ajv = new Ajv({ useDefaults: true, removeAdditional: false, allErrors: false, addUsedSchema: false, strict: true, ...options })
  addFormats(ajv)
  for (const schema of Object.values(schemas)) ajv.addSchema(schema as object)
  return ajv
}

/**
 * Bodies are validated as sent: no coercion (`"args": "x"` must fail, not become `["x"]`) and
 * no silent removal of unknown properties. Query strings and params arrive as text and are coerced.
 */
export function buildValidator (externalSchemas: Record<string, unknown>): (route: { schema: unknown, httpPart?: string }) => ValidateFunction {
  const body = makeAjv({ coerceTypes: false }, externalSchemas)
  const text = makeAjv({ coerceTypes: 'array' }, externalSchemas)
  return ({ schema, httpPart }) => (httpPart === 'body' ? body : text).compile(schema as object)
}

let stored: Ajv | undefined

/**
 * A check for what busgate reads back from its own keys, where a hand edit can leave anything:
 * as strict as a body, and nothing filled in.
 */
export function storedRecordCheck<T extends TSchema> (schema: T): (value: unknown) => value is Static<T> {
  stored ??= makeAjv({ coerceTypes: false, useDefaults: false }, {})
  return stored.compile<Static<T>>(schema)
}
