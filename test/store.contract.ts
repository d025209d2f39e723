/**
 * The contract every `EventStore` layer passes. A target supplies `fresh`: an empty storage
 * location (a SQLite file, a PostgreSQL database) and a function that opens a layer on it, which a
 * test may call again to reopen the store or to run a second instance beside the first.
 *
 * Tests use live clocks (`it.scopedLive`): tails poll with real timeouts.
 */
import { describe, expect, it } from "@effect/vitest"
import type { Scope } from "effect"
import { Chunk, Context, Effect, Either, Fiber, Layer, Stream } from "effect"
import type { EventDraft, EventStoreShape, StoreError, StoredEvent } from "../src/adapters/EventStore.ts"
import { EventStore } from "../src/adapters/EventStore.ts"
import { checkLink, GENESIS_HASH } from "../src/domain/Chain.ts"

export type OpenStore = () => Layer.Layer<EventStore, StoreError>
export type FreshStore = Effect.Effect<OpenStore, unknown, Scope.Scope>

/** Builds the layer in the current scope and returns the service. */
export const open = (layer: Layer.Layer<EventStore, StoreError>): Effect.Effect<EventStoreShape, StoreError, Scope.Scope> =>
  Effect.map(Layer.build(layer), Context.get(EventStore))

const draft = (type: string, payload: unknown = {}, extra: Partial<EventDraft> = {}): EventDraft => ({
  type,
  code: "T0000I",
  actor: "test",
  payload,
  ...extra
})

/** Reads the whole log and checks every link; returns the rows. */
export const verifyChain = (store: EventStoreShape) =>
  Effect.gen(function* () {
    const rows = yield* store.read(1, 1_000_000)
    let prev = GENESIS_HASH
    rows.forEach((row, i) => {
      expect(checkLink(row, i + 1, prev)).toBeUndefined()
      prev = row.hash
    })
    return rows
  })

export const storeContract = (name: string, fresh: FreshStore) =>
  describe(`EventStore contract: ${name}`, () => {
    it.scopedLive("append then read round-trips, with versions, seqs and the chain", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        expect(yield* store.head).toBe(0)
        const written = yield* store.append({
          stream: "user/alice",
          expectedVersion: 0,
          events: [
            draft("user.create", { name: "alice", roles: ["dev"], n: 1.5, nested: { b: 1, a: [null, true] } }),
            draft("user.update", { name: "alice", roles: ["dev", "admin"] }, { id: "0b7e7d3c-5a59-4c59-9d57-5d3c0a7f6c11", time: "2024-05-01T10:00:00.000Z" })
          ]
        })
        expect(written.map((e) => [e.seq, e.version, e.stream])).toEqual([[1, 1, "user/alice"], [2, 2, "user/alice"]])
        expect(written[0]!.prev_hash).toBe(GENESIS_HASH)
        expect(written[1]!.prev_hash).toBe(written[0]!.hash)
        expect(written[1]!.id).toBe("0b7e7d3c-5a59-4c59-9d57-5d3c0a7f6c11")
        expect(written[1]!.time).toBe("2024-05-01T10:00:00.000Z")
        expect(written[0]!.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
        const read = yield* store.read(1, 10)
        expect(read).toEqual(written)
        for (const e of read) expect(e.payload).toEqual((JSON.parse(e.body) as { payload: unknown }).payload)
        expect(read[0]!.payload).toEqual({ name: "alice", roles: ["dev"], n: 1.5, nested: { b: 1, a: [null, true] } })
        expect(yield* store.read(2, 10)).toEqual([written[1]])
        expect(yield* store.read(3, 10)).toEqual([])
        expect(yield* store.readSeqs([2, 1, 2, 99])).toEqual(written)
        expect(yield* store.head).toBe(2)
        expect(yield* store.streamVersion("user/alice")).toBe(2)
        expect(yield* store.streamVersion("user/bob")).toBe(0)
        yield* verifyChain(store)
      }))

    it.scopedLive("seq is gap-free across streams and the hash chain verifies", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        for (let i = 0; i < 5; i++) {
          yield* store.append({ stream: `role/r${i % 2}`, expectedVersion: "any", events: [draft("role.created"), draft("role.updated", { i })] })
        }
        yield* store.append({ stream: "empty", expectedVersion: 0, events: [] })
        const rows = yield* verifyChain(store)
        expect(rows.map((r) => r.seq)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1))
        expect(yield* store.streamVersion("role/r0")).toBe(6)
        expect(yield* store.streamVersion("role/r1")).toBe(4)
      }))

    it.scopedLive("a version conflict fails only its own request, typed", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        yield* store.append({ stream: "user/bob", expectedVersion: 0, events: [draft("user.create")] })
        const stale = yield* Effect.either(store.append({ stream: "user/bob", expectedVersion: 0, events: [draft("user.update")] }))
        expect(Either.isLeft(stale) && stale.left._tag === "VersionConflict" && stale.left).toMatchObject({
          stream: "user/bob",
          expected: 0,
          actual: 1
        })
        // Many concurrent requests (group-committed together): of those expecting bob at 1, exactly
        // one wins, whatever batch they land in; the requests to other streams all commit.
        const results = yield* Effect.all(
          Array.from({ length: 24 }, (_, i) =>
            Effect.either(
              i % 3 === 0
                ? store.append({ stream: "user/bob", expectedVersion: 1, events: [draft("user.update", { i })] })
                : store.append({ stream: `user/u${i}`, expectedVersion: 0, events: [draft("user.create", { i })] })
            )),
          { concurrency: "unbounded" }
        )
        const bob = results.filter((_, i) => i % 3 === 0)
        const others = results.filter((_, i) => i % 3 !== 0)
        expect(bob.filter(Either.isRight)).toHaveLength(1)
        for (const r of bob.filter(Either.isLeft)) {
          expect(r.left._tag).toBe("VersionConflict")
          expect(r.left).toMatchObject({ stream: "user/bob", expected: 1, actual: 2 })
        }
        expect(others.every(Either.isRight)).toBe(true)
        const rows = yield* verifyChain(store)
        expect(rows).toHaveLength(1 + 1 + 16)
        expect(yield* store.streamVersion("user/bob")).toBe(2)
      }))

    it.scopedLive("a duplicate event id fails only its own request", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        const id = "5f0c8a5e-36f4-4ad8-9ac5-1f3c1bd2f001"
        yield* store.append({ stream: "s/1", expectedVersion: "any", events: [draft("x", {}, { id })] })
        const [dup, ok] = yield* Effect.all(
          [
            Effect.either(store.append({ stream: "s/2", expectedVersion: "any", events: [draft("x", {}, { id })] })),
            Effect.either(store.append({ stream: "s/3", expectedVersion: "any", events: [draft("x")] }))
          ],
          { concurrency: "unbounded" }
        )
        expect(Either.isLeft(dup) && dup.left._tag).toBe("StoreError")
        expect(Either.isRight(ok)).toBe(true)
        expect((yield* verifyChain(store)).length).toBe(2)
      }))

    it.scopedLive("64 concurrent appenders all commit with distinct, gap-free seqs", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        const perWriter = 10
        const written = yield* Effect.all(
          Array.from({ length: 64 }, (_, w) =>
            Effect.gen(function* () {
              const out: Array<StoredEvent> = []
              for (let v = 0; v < perWriter; v++) {
                out.push(...(yield* store.append({ stream: `session/${w}`, expectedVersion: v, events: [draft("db.session.query", { w, v })] })))
              }
              return out
            })),
          { concurrency: "unbounded" }
        )
        const seqs = written.flat().map((e) => e.seq).sort((a, b) => a - b)
        expect(seqs).toEqual(Array.from({ length: 64 * perWriter }, (_, i) => i + 1))
        for (const events of written) expect(events.map((e) => e.version)).toEqual(Array.from({ length: perWriter }, (_, i) => i + 1))
        const rows = yield* verifyChain(store)
        expect(rows).toHaveLength(64 * perWriter)
        expect(yield* store.head).toBe(64 * perWriter)
      }))

    it.scopedLive("tail delivers existing events, then new ones as they commit, in order", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        for (let i = 0; i < 3; i++) yield* store.append({ stream: "t", expectedVersion: i, events: [draft("t", { i })] })
        const fromStart = yield* store.tail(1).pipe(Stream.take(8), Stream.runCollect, Effect.fork)
        const fromTwo = yield* store.tail(2).pipe(Stream.take(7), Stream.runCollect, Effect.fork)
        yield* Effect.sleep("50 millis")
        yield* store.append({ stream: "t", expectedVersion: 3, events: [draft("t", { i: 3 }), draft("t", { i: 4 })] })
        yield* Effect.all(
          [5, 6, 7].map((i) => store.append({ stream: `t${i}`, expectedVersion: 0, events: [draft("t", { i })] })),
          { concurrency: "unbounded" }
        )
        const all = Chunk.toReadonlyArray(yield* Fiber.join(fromStart).pipe(Effect.timeout("10 seconds")))
        const two = Chunk.toReadonlyArray(yield* Fiber.join(fromTwo).pipe(Effect.timeout("10 seconds")))
        expect(all.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
        expect(two.map((e) => e.seq)).toEqual([2, 3, 4, 5, 6, 7, 8])
        expect(all).toEqual(yield* store.read(1, 100))
      }))

    it.scopedLive("secrets: put, get, overwrite, delete", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        const bytes = new Uint8Array([0, 1, 2, 255, 0, 128])
        expect(yield* store.getSecret("ca/host")).toBeUndefined()
        yield* store.putSecret("ca/host", bytes)
        const got = yield* store.getSecret("ca/host")
        expect(got).toBeInstanceOf(Uint8Array)
        expect(Array.from(got!)).toEqual(Array.from(bytes))
        yield* store.putSecret("ca/host", new Uint8Array([9]))
        expect(Array.from((yield* store.getSecret("ca/host"))!)).toEqual([9])
        yield* store.putSecret("ca/user", new Uint8Array(0))
        expect(Array.from((yield* store.getSecret("ca/user"))!)).toEqual([])
        yield* store.deleteSecret("ca/host")
        expect(yield* store.getSecret("ca/host")).toBeUndefined()
        yield* store.deleteSecret("never")
        // Secrets are not events: nothing was appended.
        expect(yield* store.head).toBe(0)
      }))

    it.scopedLive("checkpoints default to 0 and keep the last value", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        expect(yield* store.getCheckpoint("outbox")).toBe(0)
        yield* store.setCheckpoint("outbox", 7)
        yield* store.setCheckpoint("projector", 3)
        yield* store.setCheckpoint("outbox", 12)
        expect(yield* store.getCheckpoint("outbox")).toBe(12)
        expect(yield* store.getCheckpoint("projector")).toBe(3)
      }))

    it.scopedLive("audit index: search by time, type, user, sid, with limit and order; reset", () =>
      Effect.gen(function* () {
        const store = yield* open((yield* fresh)())
        const specs = [
          { type: "user.login", time: "2024-05-01T10:00:00.000Z", user: "alice", sid: null },
          { type: "db.session.start", time: "2024-05-01T10:01:00.000Z", user: "alice", sid: "s1" },
          { type: "db.session.query", time: "2024-05-01T10:02:00.000Z", user: "alice", sid: "s1" },
          { type: "db.session.query", time: "2024-05-01T10:03:00.000Z", user: "alice", sid: "s1" },
          { type: "db.session.start", time: "2024-05-01T11:00:00.000Z", user: "bob", sid: "s2" },
          { type: "db.session.query", time: "2024-05-01T11:01:00.000Z", user: "bob", sid: "s2" },
          { type: "user.login", time: "2024-05-02T09:00:00.000Z", user: "bob", sid: null }
        ] as const
        const events: Array<StoredEvent> = []
        for (const s of specs) {
          events.push(
            ...(yield* store.append({
              stream: s.sid ? `session/${s.sid}` : `user/${s.user}`,
              expectedVersion: "any",
              events: [draft(s.type, { user: s.user, sid: s.sid }, { time: s.time })]
            }))
          )
        }
        // An event that is not indexed is never found.
        yield* store.append({ stream: "role/x", expectedVersion: "any", events: [draft("role.created")] })
        const entries = events.map((e, i) => ({ seq: e.seq, time: e.time, type: e.type, user: specs[i]!.user, sid: specs[i]!.sid }))
        yield* store.indexAudit(entries.slice(0, 4), "audit", 4)
        expect(yield* store.getCheckpoint("audit")).toBe(4)
        yield* store.indexAudit(entries.slice(4), "audit", 7)
        yield* store.indexAudit(entries.slice(6), "audit", 7) // idempotent re-index
        expect(yield* store.getCheckpoint("audit")).toBe(7)

        const seqs = (rows: ReadonlyArray<StoredEvent>) => rows.map((r) => r.seq)
        expect(seqs(yield* store.searchAudit({ limit: 100 }))).toEqual([1, 2, 3, 4, 5, 6, 7])
        expect(seqs(yield* store.searchAudit({ limit: 100, descending: true }))).toEqual([7, 6, 5, 4, 3, 2, 1])
        expect(seqs(yield* store.searchAudit({ limit: 2, descending: true }))).toEqual([7, 6])
        expect(seqs(yield* store.searchAudit({ limit: 2 }))).toEqual([1, 2])
        expect(
          seqs(yield* store.searchAudit({ fromTime: "2024-05-01T10:01:00.000Z", toTime: "2024-05-01T11:00:00.000Z", limit: 100 }))
        ).toEqual([2, 3, 4, 5])
        expect(seqs(yield* store.searchAudit({ types: ["db.session.query"], limit: 100 }))).toEqual([3, 4, 6])
        expect(seqs(yield* store.searchAudit({ types: ["db.session.query", "user.login"], limit: 100, descending: true }))).toEqual([
          7,
          6,
          4,
          3,
          1
        ])
        expect(seqs(yield* store.searchAudit({ user: "bob", limit: 100 }))).toEqual([5, 6, 7])
        expect(seqs(yield* store.searchAudit({ sid: "s1", limit: 100 }))).toEqual([2, 3, 4])
        expect(
          seqs(yield* store.searchAudit({ user: "alice", types: ["db.session.query"], fromTime: "2024-05-01T10:02:30.000Z", limit: 100 }))
        ).toEqual([4])
        expect(yield* store.searchAudit({ user: "carol", limit: 100 })).toEqual([])
        const found = yield* store.searchAudit({ sid: "s2", limit: 1 })
        expect(found).toEqual([events[4]])

        yield* store.resetAudit("audit")
        expect(yield* store.searchAudit({ limit: 100 })).toEqual([])
        expect(yield* store.getCheckpoint("audit")).toBe(0)
        // Resetting the index leaves the log alone.
        expect(yield* store.head).toBe(8)
      }))

    it.scopedLive("reopening the store keeps events, secrets, checkpoints and the index", () =>
      Effect.gen(function* () {
        const openLayer = yield* fresh
        const before = yield* Effect.scoped(
          Effect.gen(function* () {
            const store = yield* open(openLayer())
            const written = yield* store.append({ stream: "user/alice", expectedVersion: 0, events: [draft("user.create"), draft("user.update")] })
            yield* store.putSecret("k", new Uint8Array([1, 2, 3]))
            yield* store.indexAudit([{ seq: 1, time: written[0]!.time, type: "user.create", user: "alice", sid: null }], "audit", 2)
            return written
          })
        )
        const store = yield* open(openLayer())
        expect(yield* store.read(1, 10)).toEqual(before)
        expect(Array.from((yield* store.getSecret("k"))!)).toEqual([1, 2, 3])
        expect(yield* store.getCheckpoint("audit")).toBe(2)
        expect(yield* store.searchAudit({ user: "alice", limit: 10 })).toEqual([before[0]])
        const next = yield* store.append({ stream: "user/alice", expectedVersion: 2, events: [draft("user.delete")] })
        expect(next[0]).toMatchObject({ seq: 3, version: 3, prev_hash: before[1]!.hash })
        yield* verifyChain(store)
      }))

    it.scopedLive("two instances on one storage append concurrently into one verified chain", () =>
      Effect.gen(function* () {
        const openLayer = yield* fresh
        const [a, b] = yield* Effect.all([open(openLayer()), open(openLayer())], { concurrency: "unbounded" })
        // b's tail sees a's commits (by polling or a notification from the other instance).
        const tailB = yield* b.tail(1).pipe(Stream.take(2 * 16 * 10), Stream.runCollect, Effect.fork)
        const writers = (store: EventStoreShape, tag: string) =>
          Array.from({ length: 16 }, (_, w) =>
            Effect.gen(function* () {
              for (let v = 0; v < 10; v++) {
                yield* store.append({ stream: `${tag}/${w}`, expectedVersion: v, events: [draft("x", { tag, w, v })] })
              }
            }))
        // Both instances also write to one shared stream with "any": versions stay unique.
        const shared = (store: EventStoreShape) =>
          Effect.forEach(Array.from({ length: 10 }), () => store.append({ stream: "shared", expectedVersion: "any", events: [draft("y")] }))
        yield* Effect.all([...writers(a, "a"), ...writers(b, "b"), shared(a), shared(b)], { concurrency: "unbounded" })
        const rows = yield* verifyChain(a)
        expect(rows).toHaveLength(2 * 16 * 10 + 20)
        expect(yield* b.head).toBe(rows.length)
        expect(yield* a.streamVersion("shared")).toBe(20)
        const tailed = Chunk.toReadonlyArray(yield* Fiber.join(tailB).pipe(Effect.timeout("10 seconds")))
        expect(tailed).toEqual(rows.slice(0, tailed.length))
      }))
  })
