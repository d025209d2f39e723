/**
 * The recording store, on SQLite and on a real PostgreSQL: uploads in order, idempotent resume
 * (overlapping bytes skipped), gap refusal (nothing stored, the stored length answered),
 * completion with the file's SHA-256, refusals (another host, bytes after done), and reads that
 * cross upload boundaries. On PostgreSQL two stores on one database stand for two auth instances.
 * Then through a real cluster: a node's host certificate uploads through the proxy, users read
 * with `tsh recordings ls` and `tsh play` as their roles allow.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as fs from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import type { Layer, Scope } from "effect"
import { Context, Effect, Layer as L } from "effect"
import type { StoreError } from "../src/adapters/EventStore.ts"
import type { RecordingStoreShape } from "../src/adapters/RecordingStore.ts"
import { MAX_READ_BYTES, planUpload, RecordingStore } from "../src/adapters/RecordingStore.ts"
import * as RecordingStorePg from "../src/adapters/RecordingStorePg.ts"
import * as RecordingStoreSqlite from "../src/adapters/RecordingStoreSqlite.ts"
import type { PostgresServer } from "./fixtures/postgres.ts"
import { startPostgresAsync } from "./fixtures/postgres.ts"
import * as X509 from "../src/adapters/x509.ts"
import { playbackDelays } from "../src/cli/tshPlay.ts"
import type { Cluster } from "./fixtures/cluster.ts"
import { request, startCluster, stopCluster } from "./fixtures/cluster.ts"
import type { UserCerts } from "./fixtures/users.ts"
import { addUser, certLogin, tshLogin } from "./fixtures/users.ts"

const open = (layer: Layer.Layer<RecordingStore, StoreError>): Effect.Effect<RecordingStoreShape, StoreError, Scope.Scope> =>
  Effect.map(L.build(layer), Context.get(RecordingStore))

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex")
const castFile = (bytes: number) => {
  const header = JSON.stringify({ version: 2, width: 80, height: 24, timestamp: 1_700_000_000 }) + "\n"
  let body = ""
  let t = 0
  while (header.length + body.length < bytes) {
    t += 0.013
    body += JSON.stringify([Number(t.toFixed(3)), "o", randomBytes(24).toString("hex")]) + "\n"
  }
  return new Uint8Array(Buffer.from((header + body).slice(0, bytes)))
}

/** One suite, run against every layer. `fresh` gives a layer on an empty database; `twin`, a second store on the same one. */
const contract = (name: string, fresh: Effect.Effect<() => Layer.Layer<RecordingStore, StoreError>, never, Scope.Scope>) =>
  describe(`RecordingStore on ${name}`, () => {
    it.scopedLive("uploads in order, reads any range back, completes with the file's SHA-256", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        const sid = randomUUID()
        const file = castFile(300_000)
        const cuts = [0, 1, 4_096, 70_001, 200_000, file.length]
        for (let i = 0; i + 1 < cuts.length; i++) {
          const r = yield* store.upload({ hostId: "node-1", sessionId: sid, offset: cuts[i]!, data: file.subarray(cuts[i]!, cuts[i + 1]!), done: i + 2 === cuts.length })
          expect(r).toMatchObject({ stored: cuts[i + 1], gap: false, done: i + 2 === cuts.length })
        }
        const info = yield* store.info(sid)
        expect(info).toMatchObject({ sessionId: sid, hostId: "node-1", size: file.length, done: true, sha256: sha(file) })
        // Ranges that start and end inside uploads, and one past the end.
        for (const [from, len] of [[0, 10], [3, 4_100], [69_999, 5], [150_000, 140_000], [file.length - 3, 100]] as const) {
          const got = yield* store.read(sid, from, len)
          expect(Buffer.from(got).equals(Buffer.from(file.subarray(from, from + len)))).toBe(true)
        }
        // A read is capped, so a whole file comes in pages.
        expect((yield* store.read(sid, 0, 10 * MAX_READ_BYTES)).length).toBe(Math.min(file.length, MAX_READ_BYTES))
        expect(yield* store.info(randomUUID())).toBeUndefined()
      }))

    it.scopedLive("resumes idempotently: overlapping bytes are skipped, a full repeat changes nothing", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        const sid = randomUUID()
        const file = castFile(50_000)
        expect(yield* store.upload({ hostId: "n", sessionId: sid, offset: 0, data: file.subarray(0, 20_000), done: false })).toMatchObject({ stored: 20_000 })
        // The node did not hear the answer and resends from 10 000 with more bytes.
        expect(yield* store.upload({ hostId: "n", sessionId: sid, offset: 10_000, data: file.subarray(10_000, 30_000), done: false })).toMatchObject({ stored: 30_000, gap: false })
        // A stale repeat of the first upload.
        expect(yield* store.upload({ hostId: "n", sessionId: sid, offset: 0, data: file.subarray(0, 20_000), done: false })).toMatchObject({ stored: 30_000, gap: false })
        // The rest, done; then the same final upload again (its answer was lost too).
        const last = { hostId: "n", sessionId: sid, offset: 25_000, data: file.subarray(25_000), done: true }
        expect(yield* store.upload(last)).toMatchObject({ stored: file.length, done: true, sha256: sha(file) })
        expect(yield* store.upload(last)).toMatchObject({ stored: file.length, done: true, sha256: sha(file) })
        expect(Buffer.from(yield* store.read(sid, 0, file.length)).equals(Buffer.from(file))).toBe(true)
      }))

    it.scopedLive("refuses a gap: nothing is stored and the answer is the stored length", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        const sid = randomUUID()
        const file = castFile(9_000)
        // Before anything is held: a gap from 0.
        expect(yield* store.upload({ hostId: "n", sessionId: sid, offset: 100, data: file.subarray(100, 200), done: false })).toMatchObject({ stored: 0, gap: true })
        expect(yield* store.info(sid)).toBeUndefined()
        yield* store.upload({ hostId: "n", sessionId: sid, offset: 0, data: file.subarray(0, 3_000), done: false })
        const gap = yield* store.upload({ hostId: "n", sessionId: sid, offset: 5_000, data: file.subarray(5_000), done: true })
        expect(gap).toMatchObject({ stored: 3_000, gap: true, done: false })
        expect(yield* store.info(sid)).toMatchObject({ size: 3_000, done: false, sha256: undefined })
        // The node resends from the answer.
        expect(yield* store.upload({ hostId: "n", sessionId: sid, offset: gap.stored, data: file.subarray(gap.stored), done: true })).toMatchObject({ stored: file.length, done: true, sha256: sha(file) })
      }))

    it.scopedLive("refuses another host's session and new bytes after done", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        const sid = randomUUID()
        const file = castFile(2_000)
        yield* store.upload({ hostId: "node-a", sessionId: sid, offset: 0, data: file.subarray(0, 1_000), done: false })
        const other = yield* Effect.flip(store.upload({ hostId: "node-b", sessionId: sid, offset: 1_000, data: file.subarray(1_000), done: false }))
        expect(other).toMatchObject({ _tag: "RecordingConflict" })
        expect(other.message).toContain("node-a")
        yield* store.upload({ hostId: "node-a", sessionId: sid, offset: 1_000, data: file.subarray(1_000), done: true })
        const after = yield* Effect.flip(store.upload({ hostId: "node-a", sessionId: sid, offset: file.length, data: new Uint8Array([1, 2, 3]), done: false }))
        expect(after).toMatchObject({ _tag: "RecordingConflict" })
        expect(yield* store.info(sid)).toMatchObject({ size: file.length, done: true, sha256: sha(file) })
        // An empty session (no output at all) completes with the empty file's hash.
        const empty = randomUUID()
        expect(yield* store.upload({ hostId: "n", sessionId: empty, offset: 0, data: new Uint8Array(0), done: true })).toMatchObject({ stored: 0, done: true, sha256: sha(new Uint8Array(0)) })
      }))

    it.scopedLive("lists recordings newest first", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        const ids = [randomUUID(), randomUUID(), randomUUID()]
        for (const sid of ids) {
          yield* store.upload({ hostId: "n", sessionId: sid, offset: 0, data: castFile(100), done: false })
          yield* Effect.sleep("5 millis")
        }
        const listed = yield* store.list
        expect(listed.map((r) => r.sessionId)).toEqual([...ids].reverse())
        expect(listed.every((r) => r.size === 100 && !r.done)).toBe(true)
      }))
  })

// ---------------------------------------------------------------------------------------------

const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "remoteler-recordings-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

contract(
  "SQLite",
  Effect.map(tempDir, (dir) => () => RecordingStoreSqlite.layer({ filename: join(dir, "recordings.sqlite") }))
)

let pg: PostgresServer | undefined
let databases = 0
beforeAll(async () => {
  pg = await startPostgresAsync({ fsync: false })
})
afterAll(async () => {
  await pg?.stop()
})
const pgDatabase = Effect.promise(async () => {
  if (pg === undefined) throw new Error("PostgreSQL fixture did not start")
  return pg.createDatabase(`recordings_${++databases}`)
})

contract(
  "PostgreSQL",
  Effect.map(pgDatabase, (url) => () => RecordingStorePg.layer({ url }))
)

describe("RecordingStore durability and sharing", () => {
  it.scopedLive("SQLite: what was acknowledged is there after the file is reopened", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const filename = join(dir, "recordings.sqlite")
      const sid = randomUUID()
      const file = castFile(40_000)
      yield* Effect.scoped(
        Effect.gen(function* () {
          const store = yield* open(RecordingStoreSqlite.layer({ filename }))
          yield* store.upload({ hostId: "n", sessionId: sid, offset: 0, data: file.subarray(0, 25_000), done: false })
        })
      )
      const again = yield* open(RecordingStoreSqlite.layer({ filename }))
      expect(yield* again.info(sid)).toMatchObject({ size: 25_000, done: false })
      expect(yield* again.upload({ hostId: "n", sessionId: sid, offset: 25_000, data: file.subarray(25_000), done: true })).toMatchObject({ stored: file.length, sha256: sha(file) })
    }))

  it.scopedLive("PostgreSQL: two auth instances see one recording, and racing retries store each byte once", () =>
    Effect.gen(function* () {
      const url = yield* pgDatabase
      const a = yield* open(RecordingStorePg.layer({ url }))
      const b = yield* open(RecordingStorePg.layer({ url }))
      const sid = randomUUID()
      const file = castFile(200_000)
      // Every upload goes to both instances at once, as a node's retry through another proxy would.
      for (let at = 0; at < file.length; at += 30_000) {
        const part = { hostId: "n", sessionId: sid, offset: at, data: file.subarray(at, at + 30_000), done: at + 30_000 >= file.length }
        const [ra, rb] = yield* Effect.all([a.upload(part), b.upload(part)], { concurrency: 2 })
        expect(ra.stored).toBe(Math.min(file.length, at + 30_000))
        expect(rb.stored).toBe(ra.stored)
      }
      expect(yield* b.info(sid)).toMatchObject({ size: file.length, done: true, sha256: sha(file) })
      expect(Buffer.from(yield* a.read(sid, 0, file.length)).equals(Buffer.from(file))).toBe(true)
      const chunks = yield* Effect.promise(() => pg!.psql(`SELECT count(*), sum(len) FROM session_recording_chunks WHERE session_id = '${sid}'`, url.slice(url.lastIndexOf("/") + 1)))
      expect(chunks.trim().split("\n").pop()).toBe(`7|${file.length}`)
    }))
})

describe("planUpload", () => {
  it("decides from the held size alone", () => {
    expect(planUpload(undefined, { hostId: "n", offset: 0, length: 10, done: false })).toEqual({ _tag: "Store", skip: 0, position: 0, complete: false, stored: 10 })
    expect(planUpload(undefined, { hostId: "n", offset: 5, length: 10, done: false })).toEqual({ _tag: "Gap", stored: 0 })
    const held = { hostId: "n", size: 10, done: false }
    expect(planUpload(held, { hostId: "n", offset: 4, length: 10, done: true })).toEqual({ _tag: "Store", skip: 6, position: 10, complete: true, stored: 14 })
    expect(planUpload(held, { hostId: "n", offset: 0, length: 4, done: true })).toEqual({ _tag: "Store", skip: 4, position: 10, complete: false, stored: 10 })
    expect(planUpload(held, { hostId: "x", offset: 10, length: 4, done: false })._tag).toBe("Refuse")
    expect(planUpload({ ...held, done: true }, { hostId: "n", offset: 8, length: 2, done: true })).toMatchObject({ _tag: "Store", skip: 2 })
    expect(planUpload({ ...held, done: true }, { hostId: "n", offset: 8, length: 3, done: false })._tag).toBe("Refuse")
  })
})

describe("playbackDelays", () => {
  it("keeps the recorded gaps at the given speed and cuts idle time to one second", () => {
    const events = [[0.5, "o", "a"], [0.75, "o", "b"], [30, "o", "c"], [30.5, "o", "d"]] as const
    expect(playbackDelays(events, 1)).toEqual([0.5, 0.25, 1, 0.5])
    expect(playbackDelays(events, 2)).toEqual([0.25, 0.125, 1, 0.25])
    expect(playbackDelays(events, 0.25)).toEqual([1, 1, 1, 1])
  })
})

describe("recordings through the proxy", () => {
  let c: Cluster
  let carol: Awaited<ReturnType<typeof tshLogin>>
  const certs: Record<string, UserCerts> = {}
  const get = (user: string, urlPath: string) => request(c.port, "GET", urlPath, { cert: certs[user]!.tlsCert, key: certs[user]!.tlsKey })

  beforeAll(async () => {
    c = await startCluster("off")
    fs.writeFileSync(
      join(c.dir, "no-sessions.yaml"),
      ["kind: role", "version: v7", "metadata: { name: no-sessions }", "spec:", "  deny:", "    rules: [{ resources: [session], verbs: ['*'] }]", ""].join("\n")
    )
    expect((await c.tctl("create", join(c.dir, "no-sessions.yaml"))).code).toBe(0)
    for (const [user, roles] of [["alice", "access"], ["carol", "auditor"], ["dave", "auditor,no-sessions"]] as const) {
      await addUser(c, user, roles)
      certs[user] = await certLogin(c, user)
    }
    carol = await tshLogin(c, "carol")
  })
  afterAll(() => stopCluster(c))

  it("takes a node's upload in parts (a gap is answered with the stored length), and plays it to those who may read it", async () => {
    // A host certificate for a node, as `remoteler start --roles=node` gets one.
    const token = /The invite token: ([0-9a-f]{32})/.exec((await c.tctl("tokens", "add", "--type=node")).stdout)![1]!
    const keys = await Effect.runPromise(X509.generateEcdsaKeyPair())
    const joined = await request(c.port, "POST", "/v1/webapi/host/join", { body: { token, role: "node", node_name: "node-1", tls_pub_key: keys.publicKeyPem } })
    expect(joined.status).toBe(200)
    const nodeCert = { cert: (JSON.parse(joined.body) as { tls_cert: string }).tls_cert, key: keys.privateKeyPem }
    const upload = (body: unknown, who: { cert?: string; key?: string } = nodeCert) => request(c.port, "POST", "/v1/webapi/agent/recording", { body, ...who })

    const sid = randomUUID()
    const file = Buffer.concat([
      Buffer.from(JSON.stringify({ version: 2, width: 80, height: 24, timestamp: 1_700_000_000 }) + "\n"),
      Buffer.from([[0.1, "o", "$ "], [0.5, "i", "echo hi\r"], [0.6, "o", "echo hi\r\n"], [0.7, "o", "hi\r\n"], [9.2, "r", "100x30"], [9.3, "o", "$ exit\r\n"]].map((e) => JSON.stringify(e)).join("\n") + "\n")
    ])
    const part = (from: number, to: number, done = false) => ({ session_id: sid, offset: from, data: file.subarray(from, to).toString("base64"), done })

    expect(await upload(part(0, 60))).toMatchObject({ status: 200, body: JSON.stringify({ stored: 60 }) })
    // A gap: nothing is taken, the answer says where to resume.
    const gap = await upload(part(100, file.length, true))
    expect(gap.status).toBe(200)
    expect(JSON.parse(gap.body)).toEqual({ stored: 60 })
    // Resume from 40 (overlapping what auth holds), to the end.
    const last = await upload(part(40, file.length, true))
    expect(JSON.parse(last.body)).toEqual({ stored: file.length, sha256: sha(file) })

    // Only nodes upload: not without a certificate, not with a user's.
    expect((await upload(part(0, 10), {})).status).toBe(401)
    expect((await upload(part(0, 10), { cert: certs["alice"]!.tlsCert, key: certs["alice"]!.tlsKey })).status).toBe(401)

    // carol audits: she lists it and plays it back in every format.
    const ls = await carol.tsh(["recordings", "ls", "--format=json"])
    expect(ls.stderr).toBe("")
    expect(JSON.parse(ls.stdout)).toEqual([expect.objectContaining({ session_id: sid, size: file.length, done: true, sha256: sha(file) })])
    const json = await carol.tsh(["play", sid, "--format=json"])
    expect(json.code).toBe(0)
    expect(json.stdout.trim().split("\n").map((l: string) => JSON.parse(l))).toEqual(file.toString().trim().split("\n").slice(1).map((l) => JSON.parse(l)))
    const pty = await carol.tsh(["play", sid, "--format=pty", "--speed=4"])
    expect(pty.code).toBe(0)
    expect(pty.stdout).toBe("$ echo hi\r\nhi\r\n$ exit\r\n")
    const raw = await get("carol", `/v1/webapi/recordings/${sid}?offset=40&limit=20`)
    expect(Buffer.from((JSON.parse(raw.body) as { data: string }).data, "base64").equals(file.subarray(40, 60))).toBe(true)

    // alice (access) may read only her own sessions: this one is not hers, so it is not there.
    expect(JSON.parse((await get("alice", "/v1/webapi/recordings")).body)).toEqual({ recordings: [] })
    const notHers = await get("alice", `/v1/webapi/recordings/${sid}`)
    expect(notHers.status).toBe(404)
    expect(notHers.body).toMatch(/no recording of session/)
    // dave's auditor role allows, his no-sessions role denies: deny wins.
    for (const urlPath of ["/v1/webapi/recordings", `/v1/webapi/recordings/${sid}`]) {
      const dave = await get("dave", urlPath)
      expect(dave.status).toBe(403)
      expect(dave.body).toMatch(/denied by role no-sessions/)
    }
    expect((await request(c.port, "GET", "/v1/webapi/recordings")).status).toBe(401)
  })
})
