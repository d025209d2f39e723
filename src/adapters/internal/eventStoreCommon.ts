/**
 * The event store written once against `@effect/sql`'s `SqlClient`; `EventStoreSqlite` and
 * `EventStorePg` only supply a client and a `Dialect` (DDL, locks, error classification, wake-ups,
 * and optionally their own `Writer`).
 *
 * Appends are group-committed: the writer takes every request queued while the previous
 * transaction was in flight and commits them in one transaction (one fsync for the batch).
 */
import { randomUUID } from "node:crypto"
import type { SqlClient } from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import type { Statement } from "@effect/sql/Statement"
import type { Duration, Scope } from "effect"
import { Cause, Chunk, Deferred, Effect, Exit, Option, PubSub, Queue, Schedule, Stream } from "effect"
import { canonicalize, GENESIS_HASH } from "../../domain/Chain.ts"
import type { PlanOutcome, PlannedDraft, PlanRequest } from "./appendPlan.ts"
import { planBatch } from "./appendPlan.ts"
import type {
  AuditIndexEntry,
  AuditQuery,
  EventStoreShape,
  StoredEvent
} from "../EventStore.ts"
import { StoreError, VersionConflict } from "../EventStore.ts"

export type StoreErrorReason = StoreError["reason"]

/** What differs between the engines. Everything else is shared. */
export interface Dialect {
  readonly name: "sqlite" | "pg"
  /** Idempotent schema statements, run in one transaction when the layer is built. */
  readonly ddl: ReadonlyArray<string>
  /** Runs first in the migration transaction (PG: an advisory lock so two nodes do not race). */
  readonly migrationLock?: (sql: SqlClient) => Effect.Effect<unknown, SqlError>
  /** Runs inside the append transaction after the inserts (PG: `pg_notify`, delivered at commit). */
  readonly notifyCommit?: (sql: SqlClient, lastSeq: number) => Effect.Effect<unknown, SqlError>
  /** Signals of commits made elsewhere (PG: LISTEN); tails also poll, so this is only latency. */
  readonly externalCommits?: Stream.Stream<unknown, unknown>
  /** How the engine's own error (the `cause` of a `SqlError`) maps to a `StoreError` reason. */
  readonly classify: (cause: unknown) => StoreErrorReason
  /** How often a tail re-reads when no in-process commit woke it. */
  readonly pollInterval: Duration.DurationInput
  /**
   * Commits appends and writes somewhere other than `sql` (SQLite: a thread that owns the write
   * connection, see `sqliteWriter.ts`). Started after the migrations, stopped with the scope.
   * Absent: a writer fiber group-commits on `sql`.
   */
  readonly writer?: Effect.Effect<Writer, StoreError, Scope.Scope>
}

/** Where the store's writes are committed, in the order they are made. */
export interface Writer {
  /**
   * Group-commits the request with whatever else is pending: seq, prev_hash and the version
   * check are decided under the write lock (`planBatch`). Fails only when the transaction did.
   */
  readonly append: (request: PlanRequest) => Effect.Effect<PlanOutcome, StoreError>
  /** Runs the statements in one transaction. */
  readonly write: (statements: ReadonlyArray<Statement<unknown>>) => Effect.Effect<void, StoreError>
}

/** Rows per multi-row INSERT: 11 parameters a row stays far below SQLite's and PG's limits. */
const INSERT_CHUNK = 500
/** Requests per group commit: bounds the transaction's size and the time the lock is held. */
const MAX_BATCH = 2048
const TAIL_PAGE = 1000
/** Streams whose version the writer remembers between commits (cleared when exceeded). */
const VERSION_CACHE_MAX = 100_000

interface EventRow {
  readonly seq: number | string
  readonly id: string
  readonly type: string
  readonly code: string
  readonly time: string
  readonly stream: string
  readonly version: number | string
  readonly actor: string
  readonly body: string
  readonly prev_hash: string
  readonly hash: string
}

/** A row as the engine returns it (PG returns BIGINT as a string) to the StoredEvent callers see. */
export const rowToStored = (r: EventRow): StoredEvent => ({
  seq: Number(r.seq),
  id: r.id,
  type: r.type,
  code: r.code,
  time: r.time,
  stream: r.stream,
  version: Number(r.version),
  actor: r.actor,
  payload: (JSON.parse(r.body) as { payload: unknown }).payload,
  body: r.body,
  prev_hash: r.prev_hash,
  hash: r.hash
})

const codeOf = (cause: unknown): string | undefined =>
  typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "string"
    ? cause.code
    : undefined

/**
 * A UUIDv7 (RFC 9562) for events whose appender gave no id: the current millisecond in the
 * first 48 bits, then randomUUID's version-4 randomness. Ids made one after another sort
 * together, so the UNIQUE(id) index takes each batch's ids at its right edge instead of at
 * as many random leaf pages, and every commit writes (and fsyncs) that many fewer pages.
 */
export const eventId = (): string => {
  const ms = Date.now().toString(16).padStart(12, "0")
  // randomUUID: xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx; its variant bits are v7's too.
  return `${ms.slice(0, 8)}-${ms.slice(8)}-7${randomUUID().slice(15)}`
}

/** SQLite result codes (better-sqlite3 puts them on `error.code`, extended codes included). */
export const classifySqlite = (cause: unknown): StoreErrorReason => {
  const code = codeOf(cause) ?? ""
  if (code === "SQLITE_FULL") return "DiskFull"
  if (code.startsWith("SQLITE_CORRUPT") || code === "SQLITE_NOTADB") return "Corrupt"
  if (/^SQLITE_(BUSY|LOCKED|CANTOPEN|READONLY|IOERR|PROTOCOL)/.test(code)) return "Unavailable"
  // better-sqlite3's constructor throws a plain TypeError for a missing directory.
  if (cause instanceof Error && /cannot open database|does not exist/i.test(cause.message)) return "Unavailable"
  return "Unknown"
}

/** SQLSTATE classes and socket errors from node-postgres. */
export const classifyPg = (cause: unknown): StoreErrorReason => {
  const code = codeOf(cause) ?? ""
  if (code === "53100") return "DiskFull"
  if (code === "XX001" || code === "XX002") return "Corrupt"
  if (/^(08|57P|53)/.test(code)) return "Unavailable"
  if (/^E(CONN|PIPE|TIMEDOUT|NOTFOUND|HOSTUNREACH|NETUNREACH|AI_AGAIN)/.test(code)) return "Unavailable"
  const message = cause instanceof Error ? cause.message : String(cause)
  if (/connect|terminat|timeout|closed|ended/i.test(message)) return "Unavailable"
  return "Unknown"
}

const describe = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

/** Any failure of the engine as a StoreError with a reason and the original cause. */
export const toStoreError = (classify: (cause: unknown) => StoreErrorReason) => (e: unknown): StoreError => {
  if (e instanceof StoreError) return e
  if (e instanceof SqlError) {
    const reason = classify(e.cause)
    // A failed connect has no SQLSTATE: node-postgres rejects with a socket error or a timeout.
    const fixed = reason === "Unknown" && /connect|acquire|timed out/i.test(e.message) ? "Unavailable" : reason
    return new StoreError({ reason: fixed, message: `${e.message}: ${describe(e.cause)}`, cause: e.cause })
  }
  return new StoreError({ reason: classify(e), message: describe(e), cause: e })
}

const causeToStoreError = (classify: (cause: unknown) => StoreErrorReason) => (cause: Cause.Cause<unknown>): StoreError => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) return toStoreError(classify)(failure.value)
  const defect = Cause.dieOption(cause)
  if (Option.isSome(defect)) return toStoreError(classify)(defect.value)
  return new StoreError({ reason: "Unavailable", message: "append interrupted (store closing)", cause: Cause.pretty(cause) })
}

interface Pending {
  readonly request: PlanRequest
  readonly deferred: Deferred.Deferred<PlanOutcome, StoreError>
}

const chunksOf = <A>(items: ReadonlyArray<A>, size: number): Array<ReadonlyArray<A>> => {
  const out: Array<ReadonlyArray<A>> = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}

/** The shared DDL with the engine's types for the seq key and for bytes. */
export const schemaStatements = (types: { seqKey: string; bigint: string; bytes: string }): ReadonlyArray<string> => [
  `CREATE TABLE IF NOT EXISTS events (
    seq ${types.seqKey},
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    code TEXT NOT NULL,
    time TEXT NOT NULL,
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    actor TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (stream, version)
  )`,
  // The head of the chain in one row: appenders lock it, so seq and prev_hash are assigned in order.
  `CREATE TABLE IF NOT EXISTS chain_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq ${types.bigint} NOT NULL,
    hash TEXT NOT NULL
  )`,
  `INSERT INTO chain_head (id, seq, hash)
    SELECT 1, COALESCE((SELECT MAX(seq) FROM events), 0),
      COALESCE((SELECT hash FROM events ORDER BY seq DESC LIMIT 1), '${GENESIS_HASH}')
    WHERE NOT EXISTS (SELECT 1 FROM chain_head)`,
  `CREATE TABLE IF NOT EXISTS secrets (key_id TEXT PRIMARY KEY, value ${types.bytes} NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, seq ${types.bigint} NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS audit_index (
    seq ${types.seqKey},
    time TEXT NOT NULL,
    type TEXT NOT NULL,
    "user" TEXT,
    sid TEXT
  )`,
  `CREATE INDEX IF NOT EXISTS audit_index_time ON audit_index (time)`,
  `CREATE INDEX IF NOT EXISTS audit_index_type_time ON audit_index (type, time)`,
  `CREATE INDEX IF NOT EXISTS audit_index_user_time ON audit_index ("user", time)`,
  `CREATE INDEX IF NOT EXISTS audit_index_sid ON audit_index (sid)`
]

/**
 * Builds the store on a client: runs the migrations, starts the group-commit writer (stopped with
 * the scope) and returns the service.
 */
export const make = (
  sql: SqlClient,
  dialect: Dialect
): Effect.Effect<EventStoreShape, StoreError, Scope.Scope> =>
  Effect.gen(function* () {
    const mapError = toStoreError(dialect.classify)
    const orStoreError = <A, R>(eff: Effect.Effect<A, SqlError, R>): Effect.Effect<A, StoreError, R> =>
      Effect.mapError(eff, mapError)

    yield* orStoreError(
      sql.withTransaction(
        Effect.gen(function* () {
          if (dialect.migrationLock) yield* dialect.migrationLock(sql)
          for (const stmt of dialect.ddl) yield* sql.unsafe(stmt)
        })
      )
    )

    // Wakes tails: every in-process commit, and (PG) every NOTIFY from other processes.
    const commits = yield* PubSub.sliding<void>(1)
    if (dialect.externalCommits) {
      yield* dialect.externalCommits.pipe(
        Stream.runForEach(() => PubSub.publish(commits, undefined)),
        Effect.retry(Schedule.spaced("1 second")),
        Effect.ignore,
        Effect.forkScoped
      )
    }

    const cache = { head: -1, versions: new Map<string, number>() }

    /** Current versions of the given streams, read inside the append transaction. */
    const streamVersions = (streams: ReadonlyArray<string>) =>
      Effect.gen(function* () {
        const versions = new Map<string, number>()
        // One scalar subquery a stream, so each is an index lookup of MAX(version) (a GROUP BY
        // over an IN list would scan every version of a long audit stream).
        for (const chunk of chunksOf(streams, 200)) {
          const parts = chunk.map(
            (s, i) =>
              sql`SELECT ${sql.literal(String(i))} AS i, (SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ${s}) AS v`
          )
          const rows = yield* sql<{ i: number | string; v: number | string }>`${sql.join(" UNION ALL ", false)(parts)}`
          for (const r of rows) versions.set(chunk[Number(r.i)]!, Number(r.v))
        }
        return versions
      })

    /** Ids given by callers that already exist (retries, duplicates): only those requests fail. */
    const existingIds = (ids: ReadonlyArray<string>) =>
      Effect.gen(function* () {
        const found = new Set<string>()
        for (const chunk of chunksOf(ids, 500)) {
          const rows = yield* sql<{ id: string }>`SELECT id FROM events WHERE ${sql.in("id", chunk)}`
          for (const r of rows) found.add(r.id)
        }
        return found
      })

    /**
     * One group commit. Runs inside a transaction.
     *
     * Why seq and prev_hash are assigned atomically, also with several processes on one database:
     * the first statement updates the single `chain_head` row. That takes the row's write lock
     * (PG: a row lock held to commit; SQLite: the database write lock, waited for with
     * busy_timeout), so appenders are serialised from that point to their commit. Under READ
     * COMMITTED, PG re-reads the row after the lock wait, so RETURNING yields the head the
     * previous appender committed, and every later statement (stream versions, duplicate ids) sees
     * that appender's rows. We then number our events head+1, head+2, … chaining each hash to the
     * one before, insert them and move the head, all before the lock is released. A rolled back
     * transaction leaves the head untouched, so no seq is consumed. UNIQUE(seq) and
     * UNIQUE(stream, version) would reject any violation instead of storing it.
     */
    const commitBatch = (batch: ReadonlyArray<Pending>) =>
      Effect.gen(function* () {
        const heads = yield* sql<{ seq: number | string; hash: string }>`
          UPDATE chain_head SET id = 1 WHERE id = 1 RETURNING seq, hash`
        const head = heads[0]
        if (head === undefined) {
          return yield* new StoreError({ reason: "Corrupt", message: "chain_head row is missing" })
        }
        const seq = Number(head.seq)
        // Versions cached by earlier commits of this instance hold only while nobody else has
        // appended since: the head is still where our last commit (or read) left it.
        if (seq !== cache.head || cache.versions.size > VERSION_CACHE_MAX) cache.versions.clear()
        const streams = [...new Set(batch.map((p) => p.request.stream))]
        const versions = yield* streamVersions(streams.filter((s) => !cache.versions.has(s)))
        for (const s of streams) {
          const v = cache.versions.get(s)
          if (v !== undefined) versions.set(s, v)
        }
        const explicit = batch.flatMap((p) => p.request.drafts.filter((d) => d.explicitId).map((d) => d.id))
        const taken = explicit.length > 0 ? yield* existingIds(explicit) : new Set<string>()
        const plan = planBatch(batch.map((p) => p.request), { seq, hash: head.hash }, versions, taken)
        if (plan.rows.length > 0) {
          // (Spread: `sql.insert` takes mutable records, the plan hands out readonly rows.)
          for (const chunk of chunksOf(plan.rows, INSERT_CHUNK)) {
            yield* sql`INSERT INTO events ${sql.insert(chunk.map((r) => ({ ...r })))}`
          }
          yield* sql`UPDATE chain_head SET seq = ${plan.head.seq}, hash = ${plan.head.hash} WHERE id = 1`
          if (dialect.notifyCommit) yield* dialect.notifyCommit(sql, plan.head.seq)
        }
        return { outcomes: plan.outcomes, head: plan.head.seq, versions }
      })

    /** The writer on `sql`: a queue, and a fiber that commits whatever queued as one transaction. */
    const sqlWriter = Effect.gen(function* () {
      const queue = yield* Queue.unbounded<Pending>()
      // A batch that has been taken runs uninterruptibly, so its callers always hear how it ended.
      const loop = Effect.gen(function* () {
        const first = yield* Queue.take(queue)
        yield* Effect.uninterruptible(
          Effect.gen(function* () {
            const rest = yield* Queue.takeUpTo(queue, MAX_BATCH - 1)
            const batch = [first, ...rest]
            const exit = yield* Effect.exit(sql.withTransaction(commitBatch(batch)))
            if (Exit.isSuccess(exit)) {
              const { head, outcomes, versions } = exit.value
              cache.head = head
              for (const [stream, version] of versions) cache.versions.set(stream, version)
              for (let i = 0; i < batch.length; i++) yield* Deferred.succeed(batch[i]!.deferred, outcomes[i]!)
            } else {
              const error = causeToStoreError(dialect.classify)(exit.cause)
              yield* Effect.forEach(batch, (p) => Deferred.fail(p.deferred, error), { discard: true })
            }
          })
        )
      }).pipe(Effect.forever)
      yield* Effect.forkScoped(loop)
      yield* Effect.addFinalizer(() =>
        Effect.flatMap(Queue.takeAll(queue), (items) =>
          Effect.forEach(items, (p) => Deferred.fail(p.deferred, new StoreError({ reason: "Unavailable", message: "event store closed" })), {
            discard: true
          })).pipe(Effect.zipRight(Queue.shutdown(queue))))
      return {
        append: (request) =>
          Effect.gen(function* () {
            const deferred = yield* Deferred.make<PlanOutcome, StoreError>()
            const offered = yield* Queue.offer(queue, { request, deferred })
            if (!offered) return yield* new StoreError({ reason: "Unavailable", message: "event store closed" })
            return yield* Deferred.await(deferred)
          }),
        write: (statements) =>
          orStoreError(sql.withTransaction(Effect.forEach(statements, (s) => s, { discard: true })))
      } satisfies Writer
    })

    const writer = yield* (dialect.writer ?? sqlWriter)

    const append: EventStoreShape["append"] = (req) =>
      Effect.suspend(() => {
        const now = new Date().toISOString()
        const drafts: Array<PlannedDraft> = []
        const payloads: Array<unknown> = []
        for (const d of req.events) {
          const payload = d.payload ?? null
          // Canonicalised here, in the caller's fiber, where it can run beside other appenders'
          // work; the commit only writes the members out and hashes.
          let payloadJson: string
          try {
            payloadJson = canonicalize(payload)
          } catch (cause) {
            return Effect.fail(new StoreError({ reason: "Unknown", message: `payload is not JSON: ${describe(cause)}`, cause }))
          }
          payloads.push(payload)
          drafts.push({
            id: d.id ?? eventId(),
            time: d.time ?? now,
            type: d.type,
            code: d.code,
            actor: d.actor,
            payloadJson,
            explicitId: d.id !== undefined
          })
        }
        const settle = (outcome: PlanOutcome): Effect.Effect<ReadonlyArray<StoredEvent>, VersionConflict | StoreError> => {
          switch (outcome._tag) {
            case "VersionConflict":
              return Effect.fail(new VersionConflict({ stream: outcome.stream, expected: outcome.expected, actual: outcome.actual }))
            case "Rejected":
              return Effect.fail(new StoreError({ reason: "Unknown", message: outcome.message }))
            case "Committed": {
              const stored = drafts.map((d, i): StoredEvent => ({
                seq: outcome.seq + i,
                id: d.id,
                type: d.type,
                code: d.code,
                time: d.time,
                stream: req.stream,
                version: outcome.version + i,
                actor: d.actor,
                payload: payloads[i],
                body: outcome.bodies[i]!,
                prev_hash: i === 0 ? outcome.prevHash : outcome.hashes[i - 1]!,
                hash: outcome.hashes[i]!
              }))
              return stored.length > 0 ? Effect.as(PubSub.publish(commits, undefined), stored) : Effect.succeed(stored)
            }
          }
        }
        return Effect.flatMap(writer.append({ stream: req.stream, expectedVersion: req.expectedVersion, drafts }), settle)
      })

    const read: EventStoreShape["read"] = (fromSeq, limit) =>
      orStoreError(sql<EventRow>`SELECT * FROM events WHERE seq >= ${fromSeq} ORDER BY seq LIMIT ${limit}`).pipe(
        Effect.map((rows) => rows.map(rowToStored))
      )

    const readSeqs: EventStoreShape["readSeqs"] = (seqs) =>
      Effect.gen(function* () {
        const out: Array<StoredEvent> = []
        for (const chunk of chunksOf([...new Set(seqs)], 500)) {
          const rows = yield* orStoreError(sql<EventRow>`SELECT * FROM events WHERE ${sql.in("seq", chunk)}`)
          for (const r of rows) out.push(rowToStored(r))
        }
        return out.sort((a, b) => a.seq - b.seq)
      })

    const tail: EventStoreShape["tail"] = (fromSeq) =>
      Stream.unwrapScoped(
        Effect.gen(function* () {
          // Subscribed before the first read: a commit landing between a read that came back
          // empty and the wait below is still in the subscription, so it is never missed.
          const wake = yield* PubSub.subscribe(commits)
          const nextPage = (next: number): Effect.Effect<readonly [Chunk.Chunk<StoredEvent>, Option.Option<number>], StoreError> =>
            Effect.gen(function* () {
              for (;;) {
                const rows = yield* read(next, TAIL_PAGE)
                const last = rows[rows.length - 1]
                if (last !== undefined) return [Chunk.unsafeFromArray(rows.slice()), Option.some(last.seq + 1)] as const
                yield* Effect.timeout(wake.take, dialect.pollInterval).pipe(Effect.ignore)
                yield* wake.takeAll
              }
            })
          return Stream.paginateChunkEffect(Math.max(1, fromSeq), nextPage)
        })
      )

    const head: EventStoreShape["head"] = orStoreError(sql<{ seq: number | string }>`SELECT seq FROM chain_head WHERE id = 1`).pipe(
      Effect.map((rows) => Number(rows[0]?.seq ?? 0))
    )

    const streamVersion: EventStoreShape["streamVersion"] = (stream) =>
      orStoreError(sql<{ v: number | string }>`SELECT COALESCE(MAX(version), 0) AS v FROM events WHERE stream = ${stream}`).pipe(
        Effect.map((rows) => Number(rows[0]?.v ?? 0))
      )

    const putSecret: EventStoreShape["putSecret"] = (keyId, value) =>
      Effect.suspend(() =>
        writer.write([
          sql`INSERT INTO secrets (key_id, value) VALUES (${keyId}, ${Buffer.from(value)})
            ON CONFLICT (key_id) DO UPDATE SET value = excluded.value`
        ]))

    const getSecret: EventStoreShape["getSecret"] = (keyId) =>
      orStoreError(sql<{ value: Uint8Array }>`SELECT value FROM secrets WHERE key_id = ${keyId}`).pipe(
        Effect.map((rows) => (rows[0] === undefined ? undefined : new Uint8Array(rows[0].value)))
      )

    const deleteSecret: EventStoreShape["deleteSecret"] = (keyId) =>
      Effect.suspend(() => writer.write([sql`DELETE FROM secrets WHERE key_id = ${keyId}`]))

    const getCheckpoint: EventStoreShape["getCheckpoint"] = (name) =>
      orStoreError(sql<{ seq: number | string }>`SELECT seq FROM checkpoints WHERE name = ${name}`).pipe(
        Effect.map((rows) => Number(rows[0]?.seq ?? 0))
      )

    const upsertCheckpoint = (name: string, seq: number) =>
      sql`INSERT INTO checkpoints (name, seq) VALUES (${name}, ${seq})
        ON CONFLICT (name) DO UPDATE SET seq = excluded.seq`

    const setCheckpoint: EventStoreShape["setCheckpoint"] = (name, seq) =>
      Effect.suspend(() => writer.write([upsertCheckpoint(name, seq)]))

    const indexAudit: EventStoreShape["indexAudit"] = (entries, checkpointName, checkpoint) =>
      Effect.suspend(() => {
        const rows = entries.map((e: AuditIndexEntry) => ({ seq: e.seq, time: e.time, type: e.type, user: e.user, sid: e.sid }))
        // Upsert: re-indexing after a crash between the index write and a later step is harmless.
        const inserts = chunksOf(rows, 1000).map((chunk) =>
          sql`INSERT INTO audit_index ${sql.insert(chunk)}
            ON CONFLICT (seq) DO UPDATE SET time = excluded.time, type = excluded.type,
              "user" = excluded."user", sid = excluded.sid`)
        return writer.write([...inserts, upsertCheckpoint(checkpointName, checkpoint)])
      })

    const resetAudit: EventStoreShape["resetAudit"] = (checkpointName) =>
      Effect.suspend(() => writer.write([sql`DELETE FROM audit_index`, sql`DELETE FROM checkpoints WHERE name = ${checkpointName}`]))

    /** An empty or absent `types` means every type. */
    const searchAudit: EventStoreShape["searchAudit"] = (q: AuditQuery) => {
      const where = []
      if (q.fromTime !== undefined) where.push(sql`a.time >= ${q.fromTime}`)
      if (q.toTime !== undefined) where.push(sql`a.time <= ${q.toTime}`)
      if (q.types !== undefined && q.types.length > 0) where.push(sql.in("a.type", q.types))
      if (q.user !== undefined) where.push(sql`a."user" = ${q.user}`)
      if (q.sid !== undefined) where.push(sql`a.sid = ${q.sid}`)
      const order = q.descending === true ? sql.literal("a.time DESC, a.seq DESC") : sql.literal("a.time ASC, a.seq ASC")
      return orStoreError(sql<EventRow>`
        SELECT e.* FROM audit_index a JOIN events e ON e.seq = a.seq
        WHERE ${sql.and(where)}
        ORDER BY ${order}
        LIMIT ${Math.max(0, Math.floor(q.limit))}`).pipe(Effect.map((rows) => rows.map(rowToStored)))
    }

    return {
      append,
      read,
      readSeqs,
      tail,
      head,
      streamVersion,
      putSecret,
      getSecret,
      deleteSecret,
      getCheckpoint,
      setCheckpoint,
      indexAudit,
      resetAudit,
      searchAudit
    } satisfies EventStoreShape
  })

