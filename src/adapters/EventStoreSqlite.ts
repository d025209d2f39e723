/**
 * The embedded event store: one SQLite file in WAL mode with `synchronous=FULL`, so a commit is
 * on disk when `append` returns. Group commit (see `internal/eventStoreCommon.ts`) turns many
 * concurrent appends into one transaction and one fsync. Every write is committed by a worker
 * thread that owns the write connection (`internal/sqliteWriter.ts`), so the fsync does not stop
 * this thread; reads run here, on a connection of their own.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import { Effect, Layer } from "effect"
import { EventStore, StoreError } from "./EventStore.ts"
import { classifySqlite, make, schemaStatements, toStoreError } from "./internal/eventStoreCommon.ts"
import * as SqliteWriter from "./internal/sqliteWriter.ts"

export interface SqliteStoreOptions {
  /** Path of the database file (created when missing). */
  readonly filename: string
  /** How long a writer waits for another connection's write lock before failing. Default 5000. */
  readonly busyTimeoutMs?: number
  /** Caps the file at this many pages (a quota; tests use it to make the disk "full"). */
  readonly maxPageCount?: number
}

const ddl = schemaStatements({ seqKey: "INTEGER PRIMARY KEY", bigint: "INTEGER", bytes: "BLOB" })

/** `EventStore` on a SQLite file; the file is closed when the layer's scope closes. */
export const layer = (options: SqliteStoreOptions): Layer.Layer<EventStore, StoreError> =>
  Layer.scoped(
    EventStore,
    Effect.gen(function* () {
      const mapError = toStoreError(classifySqlite)
      const busyTimeoutMs = Math.max(0, Math.floor(options.busyTimeoutMs ?? 5000))
      const maxPageCount = options.maxPageCount === undefined ? undefined : Math.max(1, Math.floor(options.maxPageCount))
      // better-sqlite3 throws from its constructor (bad path, not a database): a defect we classify.
      const sql = yield* SqliteClient.make({ filename: options.filename }).pipe(
        Effect.catchAllDefect((defect) => Effect.fail(mapError(defect))),
        Effect.provide(Reactivity.layer)
      )
      // SqliteClient has already set journal_mode=WAL (a property of the file, so the writer's
      // connection has it too). This connection writes only the migrations; the writer thread
      // sets the same pragmas on its own. FULL syncs the WAL at every commit: a returned append
      // survives power loss, not only a process crash.
      yield* Effect.mapError(
        Effect.all([
          sql.unsafe(`PRAGMA busy_timeout = ${busyTimeoutMs}`),
          sql.unsafe("PRAGMA synchronous = FULL"),
          ...(maxPageCount === undefined ? [] : [sql.unsafe(`PRAGMA max_page_count = ${maxPageCount}`)])
        ]),
        mapError
      )
      const journal = yield* Effect.mapError(sql.unsafe<{ journal_mode: string }>("PRAGMA journal_mode"), mapError)
      if (journal[0]?.journal_mode !== "wal") {
        return yield* new StoreError({ reason: "Unavailable", message: `cannot enable WAL on ${options.filename}` })
      }
      return yield* make(sql, {
        name: "sqlite",
        ddl,
        classify: classifySqlite,
        pollInterval: "250 millis",
        writer: SqliteWriter.make({ filename: options.filename, busyTimeoutMs, maxPageCount })
      })
    })
  )
