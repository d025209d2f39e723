/**
 * Recordings on PostgreSQL: tables `session_recordings` and `session_recording_chunks` in the
 * event store's database, so every auth instance sees (and resumes) every recording. Uploads of
 * one session are serialised across instances by a transaction-scoped advisory lock on its id.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import { Effect, Layer, Redacted } from "effect"
import type { StoreError } from "./EventStore.ts"
import { classifyPg, toStoreError } from "./internal/eventStoreCommon.ts"
import { RecordingStore } from "./RecordingStore.ts"
import { make } from "./RecordingStoreSql.ts"

export interface PgRecordingOptions {
  /** `postgres://user@host:port/db` */
  readonly url: string
  readonly maxConnections?: number
}

/** Arbitrary constant key of the advisory lock that serialises these migrations across nodes. */
const MIGRATION_LOCK = 727_274_002

/** `RecordingStore` on PostgreSQL; the pool is closed with the layer's scope. */
export const layer = (options: PgRecordingOptions): Layer.Layer<RecordingStore, StoreError> =>
  Layer.scoped(
    RecordingStore,
    Effect.gen(function* () {
      const sql = yield* PgClient.make({
        url: Redacted.make(options.url),
        maxConnections: options.maxConnections ?? 4,
        applicationName: "remoteler-recordings"
      }).pipe(Effect.mapError(toStoreError(classifyPg)), Effect.provide(Reactivity.layer))
      return yield* make(sql, {
        bytes: "BYTEA",
        migrationLock: (sql) => sql`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`,
        // Two keys: a namespace, and the session id's hash (a collision only serialises two sessions).
        sessionLock: (sql, sessionId) => sql`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK}, hashtext(${sessionId}))`,
        classify: classifyPg
      })
    })
  )
