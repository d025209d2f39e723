import { afterAll, beforeAll } from "@effect/vitest"
import { Effect } from "effect"
import * as EventStorePg from "../src/adapters/EventStorePg.ts"
import type { PostgresServer } from "./fixtures/postgres.ts"
import { startPostgresAsync } from "./fixtures/postgres.ts"
import { storeContract } from "./store.contract.ts"

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
