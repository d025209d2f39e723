import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import * as EventStoreSqlite from "../src/adapters/EventStoreSqlite.ts"
import { open, storeContract, verifyChain } from "./store.contract.ts"

const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "remoteler-sqlite-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

storeContract(
  "SQLite",
  Effect.map(tempDir, (dir) => () => EventStoreSqlite.layer({ filename: join(dir, "events.db") }))
)

describe("EventStoreSqlite", () => {
  it.scopedLive("fails with a typed StoreError when the file cannot be opened", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(open(EventStoreSqlite.layer({ filename: "/nonexistent/dir/events.db" })))
      expect(error._tag).toBe("StoreError")
      expect(error.reason).toBe("Unavailable")
    }))
})

describe("EventStoreSqlite failures", () => {
  it.scopedLive("a full disk fails the whole batch with DiskFull, consumes no seq, keeps what was committed", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const store = yield* open(EventStoreSqlite.layer({ filename: join(dir, "full.db"), maxPageCount: 48 }))
      const first = yield* store.append({ stream: "s", expectedVersion: 0, events: [{ type: "t", code: "c", actor: "a", payload: { n: 0 } }] })
      const big = "x".repeat(20_000)
      const results = yield* Effect.all(
        Array.from({ length: 40 }, (_, i) =>
          Effect.either(store.append({ stream: `big/${i}`, expectedVersion: 0, events: [{ type: "t", code: "c", actor: "a", payload: { big, i } }] }))),
        { concurrency: 4 }
      )
      const failed = results.filter(Either.isLeft)
      expect(failed.length).toBeGreaterThan(0)
      for (const f of failed) expect(f.left).toMatchObject({ _tag: "StoreError", reason: "DiskFull" })
      const committed = results.filter(Either.isRight).flatMap((r) => r.right)
      const rows = yield* verifyChain(store)
      expect(rows[0]).toEqual(first[0])
      expect(rows.length).toBe(1 + committed.length)
      expect(yield* store.head).toBe(rows.length)
      expect(rows.slice(1)).toEqual([...committed].sort((a, b) => a.seq - b.seq))
    }))
})
