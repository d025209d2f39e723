/**
 * The SQLite writer thread: owns the store's only write connection and commits, in the order they
 * were posted, group commits of appends and the store's other writes (secrets, checkpoints, the
 * audit index). better-sqlite3 blocks the thread it runs on for the whole commit, fsync included;
 * here that thread is not the one running the store's callers, which meanwhile prepare the next
 * requests. Started by `sqliteWriter.ts`; speaks the messages defined there.
 */
import Database from "better-sqlite3"
import type { MessagePort } from "node:worker_threads"
import { receiveMessageOnPort, workerData } from "node:worker_threads"
import type { ChainHead, PlanRequest } from "./appendPlan.ts"
import { planBatch } from "./appendPlan.ts"
import type { FromWriter, ToWriter, WireError, WriterData, WriterItem } from "./sqliteWriter.ts"

/** Requests per group commit: bounds the transaction's size and the time the lock is held. */
const MAX_BATCH = 2048
/** Streams whose version the writer remembers between commits (cleared when exceeded). */
const VERSION_CACHE_MAX = 100_000
const STATEMENT_CACHE_MAX = 200

const data = workerData as WriterData
const port: MessagePort = data.port

const toWire = (cause: unknown): WireError => ({
  message: cause instanceof Error ? cause.message : String(cause),
  ...(typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "string" ? { code: cause.code } : {})
})

const send = (message: FromWriter) => port.postMessage(message)

const run = (db: Database.Database) => {
  const selectHead = db.prepare<[], { seq: number; hash: string }>("SELECT seq, hash FROM chain_head WHERE id = 1")
  const selectVersion = db.prepare<[string], { v: number }>("SELECT COALESCE(MAX(version), 0) AS v FROM events WHERE stream = ?")
  const selectId = db.prepare<[string], { id: string }>("SELECT id FROM events WHERE id = ?")
  const insertEvent = db.prepare(
    `INSERT INTO events (seq, id, type, code, time, stream, version, actor, body, prev_hash, hash)
     VALUES (@seq, @id, @type, @code, @time, @stream, @version, @actor, @body, @prev_hash, @hash)`
  )
  const updateHead = db.prepare<[number, string]>("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1")
  const statements = new Map<string, Database.Statement>()

  const cache = { head: -1, versions: new Map<string, number>() }

  const rollback = () => {
    try {
      if (db.inTransaction) db.exec("ROLLBACK")
    } catch {
      // The transaction is gone already (SQLite rolls back itself on some I/O errors).
    }
  }

  /**
   * One group commit. Why seq and prev_hash are assigned atomically, also beside other connections
   * and processes on the file: BEGIN IMMEDIATE takes the database's write lock before anything is
   * read, so the head, the stream versions and the taken ids are read under the lock and nobody
   * can append until COMMIT. The events are numbered from that head, inserted, and the head moved,
   * all in this transaction; a failed one is rolled back whole, leaving the head (so no seq is
   * consumed) and this writer's version cache (cleared) as if it had not run.
   */
  const commitAppends = (group: ReadonlyArray<{ readonly id: number; readonly request: PlanRequest }>) => {
    try {
      db.exec("BEGIN IMMEDIATE")
      const row = selectHead.get()
      if (row === undefined) {
        rollback()
        send({ _tag: "Failed", ids: group.map((g) => g.id), error: { message: "chain_head row is missing", reason: "Corrupt" } })
        return
      }
      const head: ChainHead = { seq: row.seq, hash: row.hash }
      // Versions cached by earlier commits hold only while nobody else has appended since: the
      // head is still where our last commit left it.
      if (head.seq !== cache.head || cache.versions.size > VERSION_CACHE_MAX) cache.versions.clear()
      const versions = new Map<string, number>()
      const taken = new Set<string>()
      for (const { request } of group) {
        if (!versions.has(request.stream)) {
          versions.set(request.stream, cache.versions.get(request.stream) ?? selectVersion.get(request.stream)?.v ?? 0)
        }
        for (const d of request.drafts) if (d.explicitId && selectId.get(d.id) !== undefined) taken.add(d.id)
      }
      const plan = planBatch(group.map((g) => g.request), head, versions, taken)
      if (plan.rows.length > 0) {
        for (const r of plan.rows) insertEvent.run(r)
        updateHead.run(plan.head.seq, plan.head.hash)
      }
      db.exec("COMMIT")
      cache.head = plan.head.seq
      for (const [stream, version] of versions) cache.versions.set(stream, version)
      send({ _tag: "Appended", results: group.map((g, i) => ({ id: g.id, outcome: plan.outcomes[i]! })) })
    } catch (cause) {
      rollback()
      cache.head = -1
      cache.versions.clear()
      send({ _tag: "Failed", ids: group.map((g) => g.id), error: toWire(cause) })
    }
  }

  const prepared = (sql: string) => {
    let stmt = statements.get(sql)
    if (stmt === undefined) {
      if (statements.size >= STATEMENT_CACHE_MAX) statements.clear()
      stmt = db.prepare(sql)
      statements.set(sql, stmt)
    }
    return stmt
  }

  /** A structured clone turns a Buffer into a plain Uint8Array, which better-sqlite3 will not bind. */
  const bindable = (param: unknown) =>
    param instanceof Uint8Array && !Buffer.isBuffer(param) ? Buffer.from(param.buffer, param.byteOffset, param.byteLength) : param

  const runWrite = (id: number, sqls: ReadonlyArray<readonly [string, ReadonlyArray<unknown>]>) => {
    try {
      db.exec("BEGIN IMMEDIATE")
      for (const [sql, params] of sqls) prepared(sql).run(...params.map(bindable))
      db.exec("COMMIT")
      send({ _tag: "Written", id })
    } catch (cause) {
      rollback()
      send({ _tag: "Failed", ids: [id], error: toWire(cause) })
    }
  }

  const close = () => {
    port.off("message", onMessage)
    try {
      db.close()
    } finally {
      port.close()
    }
  }

  /**
   * Whatever waits on the port is drained at once, and processed in posting order: consecutive
   * appends share one transaction (one fsync), up to MAX_BATCH.
   */
  const onMessage = (first: ToWriter) => {
    const messages: Array<ToWriter> = [first]
    for (let next = receiveMessageOnPort(port); next !== undefined; next = receiveMessageOnPort(port)) {
      messages.push(next.message as ToWriter)
    }
    let group: Array<{ readonly id: number; readonly request: PlanRequest }> = []
    const flush = () => {
      if (group.length > 0) commitAppends(group)
      group = []
    }
    const handle = (item: WriterItem) => {
      switch (item._tag) {
        case "Append":
          group.push(item)
          if (group.length >= MAX_BATCH) flush()
          return
        case "Write":
          flush()
          return runWrite(item.id, item.statements)
      }
    }
    for (const m of messages) {
      if (m._tag === "Close") {
        flush()
        return close()
      }
      for (const item of m.items) handle(item)
    }
    flush()
  }

  port.on("message", onMessage)
  send({ _tag: "Ready" })
}

let opened: Database.Database | undefined
try {
  opened = new Database(data.filename)
  opened.pragma(`busy_timeout = ${data.busyTimeoutMs}`)
  // FULL syncs the WAL at every commit: a returned append survives power loss.
  opened.pragma("synchronous = FULL")
  if (data.maxPageCount !== undefined) opened.pragma(`max_page_count = ${data.maxPageCount}`)
  run(opened)
} catch (cause) {
  opened?.close()
  send({ _tag: "OpenFailed", error: toWire(cause) })
  port.close()
}
