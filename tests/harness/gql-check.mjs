// GraphQL conformance with graphql-js: introspect the server, rebuild the
// schema with buildClientSchema, check it with assertValidSchema, then
// validate every operation given on stdin against it.
//
// usage: node gql-check.mjs URL < operations.graphql
// Prints one JSON line: {"ok": true, "types": N} or {"ok": false, "error": "..."}.
import { readFileSync } from 'node:fs'
import {
  buildClientSchema,
  assertValidSchema,
  getIntrospectionQuery,
  parse,
  validate,
} from 'graphql'

const url = process.argv[2]
const ops = readFileSync(0, 'utf8')
try {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ query: getIntrospectionQuery() }),
  })
  const body = await res.json()
  if (body.errors) throw new Error('introspection: ' + JSON.stringify(body.errors))
  const schema = buildClientSchema(body.data)
  assertValidSchema(schema)
  const errors = validate(schema, parse(ops))
  if (errors.length) throw new Error(errors.map((e) => e.message).join('; '))
  console.log(JSON.stringify({ ok: true, types: Object.keys(schema.getTypeMap()).length }))
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e.message ?? e) }))
}
