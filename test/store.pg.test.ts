import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as EventStorePg from "../src/adapters/EventStorePg.ts"
import type { PostgresServer } from "./fixtures/postgres.ts"
import { startPostgres, startPostgresAsync } from "./fixtures/postgres.ts"
import { open, storeContract } from "./store.contract.ts"

let server: PostgresServer | undefined
let databases = 0

beforeAll(async () => {
  server = await startPostgresAsync({ fsync: false })
})
afterAll(async () => {
  await server?.stop()
})

storeContract(
  "PostgreSQL",
  Effect.promise(async () => {
    if (server === undefined) throw new Error("PostgreSQL fixture did not start")
    const url = await server.createDatabase(`store_${++databases}`)
    return () => EventStorePg.layer({ url })
  })
)

describe("EventStorePg failures", () => {
  it.scopedLive("a lost server fails appends with StoreError Unavailable", () =>
    Effect.gen(function* () {
      const pg = yield* startPostgres({ fsync: false })
      const store = yield* open(EventStorePg.layer({ url: pg.url, maxConnections: 2 }))
      yield* store.append({ stream: "s", expectedVersion: 0, events: [{ type: "t", code: "c", actor: "a", payload: {} }] })
      pg.kill()
      yield* Effect.sleep("200 millis")
      const results = yield* Effect.all(
        Array.from({ length: 4 }, () => Effect.flip(store.append({ stream: "s", expectedVersion: "any", events: [{ type: "t", code: "c", actor: "a", payload: {} }] }))),
        { concurrency: "unbounded" }
      )
      for (const e of results) expect(e).toMatchObject({ _tag: "StoreError", reason: "Unavailable" })
      expect(yield* Effect.flip(store.head)).toMatchObject({ _tag: "StoreError", reason: "Unavailable" })
    }))

  it.scopedLive("an unreachable server fails the layer with Unavailable", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(open(EventStorePg.layer({ url: "postgres://postgres@127.0.0.1:1/postgres" })))
      expect(error).toMatchObject({ _tag: "StoreError", reason: "Unavailable" })
    }))
})
