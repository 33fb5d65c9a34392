import { Type, type Static, type TSchema } from '@sinclair/typebox'

/** A string enum as one `{type: string, enum}` (TypeBox's Union of Literals renders as anyOf). */
export function StringEnum<const T extends readonly string[]> (values: T, options: { description?: string } = {}) {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options })
}

/** A reference to a shared schema (registered with addSchema), typed as the schema itself. */
export function Ref<T extends TSchema & { $id?: string }> (schema: T, description?: string) {
  if (schema.$id === undefined) throw new Error('Ref needs a schema with $id')
  return Type.Unsafe<Static<T>>({ $ref: schema.$id, ...(description === undefined ? {} : { description }) })
}

/** The token as a query parameter, for clients that cannot send an Authorization header. */
export const AccessToken = Type.String({
  description: 'the token, for clients that cannot send an Authorization header (EventSource); never logged'
})
