/**
 * Recordings on SQLite: a file of their own beside the event store (`<data_dir>/recordings.sqlite`
 * by default). Why not the event store's file: that file has one writer, a worker thread that
 * group-commits the chain (`internal/sqliteWriter.ts`); a second writing connection would compete
 * with it for the lock, and recordings need none of its ordering. WAL with `synchronous=FULL`, so
 * the length an upload acknowledges is on disk and the node may forget those bytes.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import { Effect, Layer } from "effect"
import type { StoreError } from "./EventStore.ts"
import { classifySqlite, toStoreError } from "./internal/eventStoreCommon.ts"
import { RecordingStore } from "./RecordingStore.ts"
import { make } from "./RecordingStoreSql.ts"

export interface SqliteRecordingOptions {
  /** Path of the database file (created when missing). */
  readonly filename: string
}

/** `RecordingStore` on a SQLite file; closed with the layer's scope. */
export const layer = (options: SqliteRecordingOptions): Layer.Layer<RecordingStore, StoreError> =>
  Layer.scoped(
    RecordingStore,
    Effect.gen(function* () {
      const mapError = toStoreError(classifySqlite)
      const sql = yield* SqliteClient.make({ filename: options.filename }).pipe(
        Effect.catchAllDefect((defect) => Effect.fail(mapError(defect))),
        Effect.provide(Reactivity.layer)
      )
      yield* Effect.mapError(Effect.all([sql.unsafe("PRAGMA busy_timeout = 5000"), sql.unsafe("PRAGMA synchronous = FULL")]), mapError)
      return yield* make(sql, { bytes: "BLOB", classify: classifySqlite })
    })
  )
