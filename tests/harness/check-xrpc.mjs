// Validates XRPC answers against their lexicons with Bluesky's own validator
// (@atproto/lexicon, installed with the PDS harness).
//
// usage: node check-xrpc.mjs LEXICON_DIR < answers.jsonl
// Each input line is {"nsid": "...", "output": {...}}; each output line is
// {"ok": true} or {"ok": false, "error": "..."}, in the same order.
import { readFileSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { Lexicons } from '@atproto/lexicon'

function walk(dir, out = []) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name)
    if (statSync(p).isDirectory()) walk(p, out)
    else if (name.endsWith('.json')) out.push(JSON.parse(readFileSync(p, 'utf8')))
  }
  return out
}

const lex = new Lexicons(walk(process.argv[2]))
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue
  const { nsid, output } = JSON.parse(line)
  try {
    lex.assertValidXrpcOutput(nsid, output)
    console.log(JSON.stringify({ ok: true }))
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: String(e.message ?? e) }))
  }
}
