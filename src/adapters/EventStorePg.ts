/**
 * The cluster event store on PostgreSQL. Several nodes may append to one database at once: the
 * append transaction locks the one-row `chain_head` table first (see `commitBatch` in
 * `internal/eventStoreCommon.ts`), so every node extends the same gap-free chain. Commits are
 * announced with NOTIFY so tails on other nodes wake at once; they also poll.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import { Effect, Layer, Redacted } from "effect"
import { EventStore } from "./EventStore.ts"
import type { StoreError } from "./EventStore.ts"
import { classifyPg, make, schemaStatements, toStoreError } from "./internal/eventStoreCommon.ts"

export interface PgStoreOptions {
  /** `postgres://user@host:port/db` */
  readonly url: string
  /** Pool size. Appends use one connection at a time; reads, tails and the index use the rest. */
  readonly maxConnections?: number
}

const CHANNEL = "remoteler_events"
/** Arbitrary constant key of the advisory lock that serialises migrations across nodes. */
const MIGRATION_LOCK = 727_274_001

const ddl = schemaStatements({ seqKey: "BIGINT PRIMARY KEY", bigint: "BIGINT", bytes: "BYTEA" })

/** `EventStore` on PostgreSQL; the pool is closed when the layer's scope closes. */
export const layer = (options: PgStoreOptions): Layer.Layer<EventStore, StoreError> =>
  Layer.scoped(
    EventStore,
    Effect.gen(function* () {
      const sql = yield* PgClient.make({
        url: Redacted.make(options.url),
        maxConnections: options.maxConnections ?? 10,
        applicationName: "remoteler-events"
      }).pipe(Effect.mapError(toStoreError(classifyPg)), Effect.provide(Reactivity.layer))
      return yield* make(sql, {
        name: "pg",
        ddl,
        // CREATE TABLE IF NOT EXISTS is not safe against a concurrent identical CREATE.
        migrationLock: (sql) => sql`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`,
        notifyCommit: (sql, lastSeq) => sql`SELECT pg_notify(${CHANNEL}, ${String(lastSeq)})`,
        externalCommits: sql.listen(CHANNEL),
        classify: classifyPg,
        pollInterval: "500 millis"
      })
    })
  )
