/**
 * Event store benchmark: `npm run bench:events [-- --events=N]`.
 *
 * - appends/s from 1 and from 64 concurrent writers, SQLite (WAL, synchronous=FULL) and PostgreSQL
 *   (a throwaway server with fsync on, or $REMOTELER_BENCH_PG_URL);
 * - audit search p50/p99 by time range + type over N events (SQLite, indexed with indexAudit);
 * - replay of N events: `read` in pages, JSON decoded, every link checked with `checkLink`.
 *
 * Progress goes to stdout as it happens; the last line is one JSON object with the figures.
 */
import { mkdtempSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Context, Effect, Layer } from "effect"
import type { AuditIndexEntry, EventStoreShape, StoreError } from "../src/adapters/EventStore.ts"
import { EventStore } from "../src/adapters/EventStore.ts"
import * as EventStorePg from "../src/adapters/EventStorePg.ts"
import * as EventStoreSqlite from "../src/adapters/EventStoreSqlite.ts"
import { checkLink, GENESIS_HASH } from "../src/domain/Chain.ts"
import { startPostgres } from "../test/fixtures/postgres.ts"

const arg = (name: string): string | undefined =>
  process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3)
const EVENTS = Number(arg("events") ?? 1_000_000)
const SEARCHES = Number(arg("searches") ?? 1000)

const log = (line: string) => console.log(`[bench] ${line}`)
const round = (n: number, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits

const open = (layer: Layer.Layer<EventStore, StoreError>) => Effect.map(Layer.build(layer), Context.get(EventStore))

const TYPES = [
  "db.session.query",
  "db.session.start",
  "db.session.end",
  "session.start",
  "session.end",
  "user.login",
  "cert.create",
  "role.created"
] as const
const CODES: Record<string, string> = { "db.session.query": "TDB02I", "db.session.start": "TDB00I", "user.login": "T1000I" }

const auditPayload = (i: number, type: string, time: string) => ({
  event: type,
  time,
  uid: `uid-${i}`,
  user: `user${i % 100}`,
  sid: `sid-${i % 10_000}`,
  cluster_name: "bench",
  db_service: "pg-prod",
  db_protocol: "postgres",
  db_user: "postgres",
  db_name: "app",
  db_query: `SELECT * FROM orders WHERE id = ${i}`,
  success: true
})

/** Appends/s: `writers` fibers, each appending one event per request to its own stream. */
const appendRate = (store: EventStoreShape, writers: number, perWriter: number, label: string) =>
  Effect.gen(function* () {
    const start = performance.now()
    yield* Effect.all(
      Array.from({ length: writers }, (_, w) =>
        Effect.gen(function* () {
          const stream = `bench/${label}/${w}/${Date.now()}`
          for (let v = 0; v < perWriter; v++) {
            yield* store.append({
              stream,
              expectedVersion: v,
              events: [{ type: "db.session.query", code: "TDB02I", actor: `user${w}`, payload: auditPayload(v, "db.session.query", "") }]
            })
          }
        })),
      { concurrency: "unbounded" }
    )
    const seconds = (performance.now() - start) / 1000
    const rate = Math.round((writers * perWriter) / seconds)
    log(`${label}: ${writers} writer(s) x ${perWriter} appends in ${round(seconds, 2)}s = ${rate} appends/s`)
    return rate
  })

const appendRates = (store: EventStoreShape, label: string) =>
  Effect.gen(function* () {
    const one = yield* appendRate(store, 1, 500, `${label} 1 writer`)
    const many = yield* appendRate(store, 64, 400, `${label} 64 writers`)
    return { writers1: one, writers64: many }
  })

const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0

const main = Effect.gen(function* () {
  const dir = mkdtempSync(join(tmpdir(), "remoteler-bench-"))
  yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
  log(`events=${EVENTS} searches=${SEARCHES} dir=${dir}`)

  // 1. Append throughput, SQLite durable.
  const sqliteRates = yield* Effect.scoped(
    Effect.flatMap(open(EventStoreSqlite.layer({ filename: join(dir, "appends.db") })), (s) => appendRates(s, "sqlite"))
  )

  // 2. Append throughput, PostgreSQL.
  const pgRates = yield* Effect.scoped(
    Effect.gen(function* () {
      const external = process.env["REMOTELER_BENCH_PG_URL"]
      let url = external
      if (url === undefined) {
        log("starting PostgreSQL (fsync on)")
        url = (yield* startPostgres({ fsync: true })).url
      }
      const store = yield* open(EventStorePg.layer({ url, maxConnections: 4 }))
      return yield* appendRates(store, "pg")
    })
  )

  // 3. Bulk load N events into a fresh SQLite file and index them.
  const bulkFile = join(dir, "bulk.db")
  const { loadSeconds, indexSeconds, search } = yield* Effect.scoped(
    Effect.gen(function* () {
      const store = yield* open(EventStoreSqlite.layer({ filename: bulkFile }))
      const base = Date.parse("2024-01-01T00:00:00.000Z")
      const spanMs = 30 * 24 * 3600 * 1000 // a month of audit
      const timeOf = (i: number) => new Date(base + Math.floor((i * spanMs) / EVENTS)).toISOString()
      const typeOf = (i: number) => TYPES[(i * 7919) % TYPES.length]!
      const perRequest = 1000
      const requests = Math.ceil(EVENTS / perRequest)
      let loaded = 0
      let lastReport = performance.now()
      const t0 = performance.now()
      yield* Effect.forEach(
        Array.from({ length: requests }, (_, r) => r),
        (r) =>
          Effect.gen(function* () {
            const from = r * perRequest
            const to = Math.min(EVENTS, from + perRequest)
            const events = []
            for (let i = from; i < to; i++) {
              const type = typeOf(i)
              const time = timeOf(i)
              events.push({ type, code: CODES[type] ?? "T9999I", actor: `user${i % 100}`, time, payload: auditPayload(i, type, time) })
            }
            yield* store.append({ stream: `session/sid-${r % 10_000}`, expectedVersion: "any", events })
            loaded += events.length
            if (performance.now() - lastReport > 5000) {
              lastReport = performance.now()
              log(`bulk load: ${loaded}/${EVENTS} (${Math.round(loaded / ((lastReport - t0) / 1000))} events/s)`)
            }
          }),
        { concurrency: 4, discard: true }
      )
      const loadSeconds = (performance.now() - t0) / 1000
      log(`bulk load: ${EVENTS} events in ${round(loadSeconds, 1)}s`)

      const t1 = performance.now()
      const page = 10_000
      for (let from = 1; from <= EVENTS; from += page) {
        const rows = yield* store.read(from, page)
        const entries: Array<AuditIndexEntry> = rows.map((e) => {
          const p = e.payload as { user?: string; sid?: string }
          return { seq: e.seq, time: e.time, type: e.type, user: p.user ?? null, sid: p.sid ?? null }
        })
        const last = rows[rows.length - 1]
        if (last !== undefined) yield* store.indexAudit(entries, "audit", last.seq)
        const done = Math.min(EVENTS, from + page - 1)
        if (done % 100_000 === 0) log(`indexing: ${done}/${EVENTS}`)
      }
      const indexSeconds = (performance.now() - t1) / 1000
      log(`audit index: ${EVENTS} entries in ${round(indexSeconds, 1)}s`)

      // Searches: a random one-hour window and one type, newest first, a page of 100.
      const latencies: Array<number> = []
      let hits = 0
      for (let q = 0; q < SEARCHES; q++) {
        const from = base + Math.floor(Math.random() * (spanMs - 3600_000))
        const s = performance.now()
        const rows = yield* store.searchAudit({
          fromTime: new Date(from).toISOString(),
          toTime: new Date(from + 3600_000).toISOString(),
          types: [TYPES[q % TYPES.length]!],
          limit: 100,
          descending: q % 2 === 0
        })
        latencies.push(performance.now() - s)
        hits += rows.length
      }
      latencies.sort((a, b) => a - b)
      const search = { p50: round(percentile(latencies, 50), 2), p99: round(percentile(latencies, 99), 2), avgHits: round(hits / SEARCHES) }
      log(`audit search (1h window + type, limit 100): p50 ${search.p50}ms p99 ${search.p99}ms, ${search.avgHits} rows on average`)
      return { loadSeconds, indexSeconds, search }
    })
  )
  log(`database file: ${round(statSync(bulkFile).size / 1024 / 1024)} MiB`)

  // 4. Replay: reopen the file, read everything in pages, decode, verify the chain.
  const replay = yield* Effect.scoped(
    Effect.gen(function* () {
      const store = yield* open(EventStoreSqlite.layer({ filename: bulkFile }))
      const t0 = performance.now()
      let prev = GENESIS_HASH
      let next = 1
      let lastReport = t0
      for (;;) {
        const rows = yield* store.read(next, 10_000)
        if (rows.length === 0) break
        for (const row of rows) {
          const broken = checkLink(row, next, prev)
          if (broken !== undefined) return yield* Effect.dieMessage(`chain broken at ${broken.seq}: ${broken.reason}`)
          prev = row.hash
          next++
        }
        if (performance.now() - lastReport > 5000) {
          lastReport = performance.now()
          log(`replay: ${next - 1}/${EVENTS}`)
        }
      }
      const seconds = (performance.now() - t0) / 1000
      log(`replay + verify: ${next - 1} events in ${round(seconds, 2)}s (${Math.round((next - 1) / seconds)} events/s)`)
      return { events: next - 1, seconds: round(seconds, 2) }
    })
  )

  return {
    events: EVENTS,
    sqlite: { appendsPerSec1Writer: sqliteRates.writers1, appendsPerSec64Writers: sqliteRates.writers64 },
    pg: { appendsPerSec1Writer: pgRates.writers1, appendsPerSec64Writers: pgRates.writers64 },
    bulkLoadSeconds: round(loadSeconds, 2),
    auditIndexSeconds: round(indexSeconds, 2),
    auditSearchMs: { p50: search.p50, p99: search.p99 },
    replay
  }
})

Effect.runPromise(Effect.scoped(main)).then(
  (result) => console.log(JSON.stringify(result)),
  (error: unknown) => {
    console.error(error)
    process.exitCode = 1
  }
)
