/**
 * The recording store, on SQLite and on a real PostgreSQL: uploads in order, idempotent resume
 * (overlapping bytes skipped), gap refusal (nothing stored, the stored length answered),
 * completion with the file's SHA-256, refusals (another host, bytes after done), and reads that
 * cross upload boundaries. On PostgreSQL two stores on one database stand for two auth instances.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
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
