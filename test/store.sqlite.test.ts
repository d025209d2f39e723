import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as EventStoreSqlite from "../src/adapters/EventStoreSqlite.ts"
import { open, storeContract } from "./store.contract.ts"

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
