/**
 * The recording store written once against `@effect/sql`'s `SqlClient`; the SQLite and PostgreSQL
 * layers supply the client and a `RecordingDialect`.
 *
 * Layout: `session_recordings` holds one row a session (owner host, size, done, sha256);
 * `session_recording_chunks` holds the bytes as uploaded, one row an upload, keyed by position.
 * Appending a row per upload keeps an upload O(its own size), where rewriting one growing BLOB
 * would cost the whole file each time.
 *
 * An upload reads the recording's state and writes under a per-session lock inside one
 * transaction (SQLite: its one write connection; PostgreSQL: a transaction-scoped advisory lock on
 * the session id), so two auth instances taking retries of one upload at once store it once.
 */
import { createHash } from "node:crypto"
import type { SqlClient } from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import type { Scope } from "effect"
import { Effect } from "effect"
import type { StoreError } from "./EventStore.ts"
import type { StoreErrorReason } from "./internal/eventStoreCommon.ts"
import { toStoreError } from "./internal/eventStoreCommon.ts"
import type { RecordingInfo, RecordingStoreShape, UploadRequest } from "./RecordingStore.ts"
import { MAX_READ_BYTES, planUpload, RecordingConflict } from "./RecordingStore.ts"

export interface RecordingDialect {
  /** BLOB or BYTEA. */
  readonly bytes: string
  /** Runs first in the migration transaction. */
  readonly migrationLock?: (sql: SqlClient) => Effect.Effect<unknown, SqlError>
  /** Runs first in an upload's transaction: serialises uploads of one session. */
  readonly sessionLock?: (sql: SqlClient, sessionId: string) => Effect.Effect<unknown, SqlError>
  readonly classify: (cause: unknown) => StoreErrorReason
}

const ddl = (bytes: string): ReadonlyArray<string> => [
  `CREATE TABLE IF NOT EXISTS session_recordings (
    session_id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    size BIGINT NOT NULL,
    done INTEGER NOT NULL,
    sha256 TEXT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
  )`,
  `CREATE TABLE IF NOT EXISTS session_recording_chunks (
    session_id TEXT NOT NULL,
    pos BIGINT NOT NULL,
    len BIGINT NOT NULL,
    data ${bytes} NOT NULL,
    PRIMARY KEY (session_id, pos)
  )`,
  `CREATE INDEX IF NOT EXISTS session_recordings_created ON session_recordings (created)`
]

interface Row {
  readonly session_id: string
  readonly host_id: string
  readonly size: number | string
  readonly done: number | string | boolean
  readonly sha256: string | null
  readonly created: string
  readonly updated: string
}

const toInfo = (r: Row): RecordingInfo => ({
  sessionId: r.session_id,
  hostId: r.host_id,
  size: Number(r.size),
  done: Number(r.done) === 1 || r.done === true,
  sha256: r.sha256 ?? undefined,
  created: r.created,
  updated: r.updated
})

export const make = (sql: SqlClient, dialect: RecordingDialect): Effect.Effect<RecordingStoreShape, StoreError, Scope.Scope> =>
  Effect.gen(function* () {
    const mapError = toStoreError(dialect.classify)
    yield* Effect.mapError(
      sql.withTransaction(
        Effect.gen(function* () {
          if (dialect.migrationLock) yield* dialect.migrationLock(sql)
          for (const stmt of ddl(dialect.bytes)) yield* sql.unsafe(stmt)
        })
      ),
      mapError
    )

    const selectInfo = (sessionId: string) =>
      Effect.map(
        sql<Row>`SELECT session_id, host_id, size, done, sha256, created, updated FROM session_recordings WHERE session_id = ${sessionId}`,
        (rows) => (rows[0] === undefined ? undefined : toInfo(rows[0]))
      )

    /** Bytes in [offset, offset + limit), from the chunks that overlap it. */
    const readRange = (sessionId: string, offset: number, limit: number) =>
      Effect.gen(function* () {
        const end = offset + limit
        const rows = yield* sql<{ pos: number | string; data: Uint8Array }>`
          SELECT pos, data FROM session_recording_chunks
          WHERE session_id = ${sessionId} AND pos < ${end} AND pos + len > ${offset}
          ORDER BY pos`
        const parts: Array<Uint8Array> = []
        for (const r of rows) {
          const pos = Number(r.pos)
          const data = r.data
          parts.push(data.subarray(Math.max(0, offset - pos), Math.min(data.length, end - pos)))
        }
        return new Uint8Array(Buffer.concat(parts))
      })

    const sha256Of = (sessionId: string, size: number) =>
      Effect.gen(function* () {
        const hash = createHash("sha256")
        for (let at = 0; at < size; at += 8 * MAX_READ_BYTES) hash.update(yield* readRange(sessionId, at, Math.min(8 * MAX_READ_BYTES, size - at)))
        return hash.digest("hex")
      })

    const upload = (req: UploadRequest) =>
      sql.withTransaction(
        Effect.gen(function* () {
          if (dialect.sessionLock) yield* dialect.sessionLock(sql, req.sessionId)
          const current = yield* selectInfo(req.sessionId)
          const plan = planUpload(current, { hostId: req.hostId, offset: req.offset, length: req.data.length, done: req.done })
          if (plan._tag === "Refuse") return yield* new RecordingConflict({ message: plan.message })
          if (plan._tag === "Gap") return { stored: plan.stored, gap: true, done: false, sha256: undefined }
          const now = new Date().toISOString()
          if (current === undefined) {
            yield* sql`INSERT INTO session_recordings (session_id, host_id, size, done, sha256, created, updated)
              VALUES (${req.sessionId}, ${req.hostId}, 0, 0, NULL, ${now}, ${now})`
          }
          const fresh = req.data.subarray(plan.skip)
          if (fresh.length > 0) {
            yield* sql`INSERT INTO session_recording_chunks (session_id, pos, len, data)
              VALUES (${req.sessionId}, ${plan.position}, ${fresh.length}, ${Buffer.from(fresh.buffer, fresh.byteOffset, fresh.length)})`
          }
          const sha256 = plan.complete ? yield* sha256Of(req.sessionId, plan.stored) : current?.sha256
          if (fresh.length > 0 || plan.complete || current === undefined) {
            yield* sql`UPDATE session_recordings SET size = ${plan.stored}, done = ${plan.complete || current?.done === true ? 1 : 0},
              sha256 = ${sha256 ?? null}, updated = ${now} WHERE session_id = ${req.sessionId}`
          }
          return { stored: plan.stored, gap: false, done: plan.complete || current?.done === true, sha256 }
        })
      ).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(mapError(e))))

    const list = Effect.map(
      sql<Row>`SELECT session_id, host_id, size, done, sha256, created, updated FROM session_recordings ORDER BY created DESC, session_id`,
      (rows) => rows.map(toInfo)
    ).pipe(Effect.mapError(mapError))

    return {
      upload,
      list,
      info: (sessionId) => Effect.mapError(selectInfo(sessionId), mapError),
      read: (sessionId, offset, limit) => Effect.mapError(readRange(sessionId, Math.max(0, offset), Math.max(0, Math.min(limit, MAX_READ_BYTES))), mapError)
    } satisfies RecordingStoreShape
  })
