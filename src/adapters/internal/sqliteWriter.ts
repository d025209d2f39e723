/**
 * The SQLite store's writer: a worker thread (`sqliteWriterWorker.ts`) that owns the write
 * connection. This side posts requests and hands each caller its outcome.
 *
 * Why: better-sqlite3 is synchronous, so on the main thread every commit's fsync (3–7 ms on a
 * disk) stopped everything: the store's readers, tails, and appenders preparing their requests.
 * With the commit on another thread, the main thread goes on (canonicalising payloads, serving
 * reads) while the disk syncs, and the SQL work of a batch runs on a second core.
 *
 * Why it stays correct:
 * - Order: requests go to the outbox in the order they are made, a MessagePort delivers in posting
 *   order, and the worker handles one item at a time, so writes and group commits run in the
 *   order they were made, one transaction at a time.
 * - seq and prev_hash: assigned inside the worker's transaction, under the write lock (see
 *   `commitAppends`), exactly as the shared `commitBatch` does; a failed transaction fails its
 *   requests and is rolled back whole, so it consumes no seq.
 * - Reads: the store reads on its own connection in WAL mode. A caller hears of a commit only
 *   after COMMIT returned in the worker, so any read it starts afterwards sees it.
 * - Other writes (secrets, checkpoints, the audit index) go through the worker as well: one
 *   connection writes, so nothing waits on a busy lock it could starve on.
 * - Shutdown: closing the scope posts Close behind everything already posted, so those requests
 *   still commit and are answered; then the worker closes the file and exits. A worker that dies
 *   fails whatever is outstanding with `Unavailable`.
 */
import type { Statement } from "@effect/sql/Statement"
import type { MessagePort } from "node:worker_threads"
import { MessageChannel, Worker } from "node:worker_threads"
import type { Scope } from "effect"
import { Effect } from "effect"
import { StoreError } from "../EventStore.ts"
import type { PlanOutcome, PlanRequest } from "./appendPlan.ts"
import type { Writer } from "./eventStoreCommon.ts"
import { classifySqlite } from "./eventStoreCommon.ts"

/** What the worker is started with. */
export interface WriterData {
  readonly port: MessagePort
  readonly filename: string
  readonly busyTimeoutMs: number
  readonly maxPageCount: number | undefined
}

/** An engine error as it crosses the thread: better-sqlite3's `code` is what classifies it. */
export interface WireError {
  readonly message: string
  readonly code?: string
  /** Set when the worker itself decided (a missing chain_head row is `Corrupt`). */
  readonly reason?: StoreError["reason"]
}

export type WriterItem =
  | { readonly _tag: "Append"; readonly id: number; readonly request: PlanRequest }
  | { readonly _tag: "Write"; readonly id: number; readonly statements: ReadonlyArray<readonly [string, ReadonlyArray<unknown>]> }

export type ToWriter =
  | { readonly _tag: "Items"; readonly items: ReadonlyArray<WriterItem> }
  | { readonly _tag: "Close" }

export type FromWriter =
  | { readonly _tag: "Ready" }
  | { readonly _tag: "OpenFailed"; readonly error: WireError }
  | { readonly _tag: "Appended"; readonly results: ReadonlyArray<{ readonly id: number; readonly outcome: PlanOutcome }> }
  | { readonly _tag: "Written"; readonly id: number }
  | { readonly _tag: "Failed"; readonly ids: ReadonlyArray<number>; readonly error: WireError }

export interface SqliteWriterOptions {
  readonly filename: string
  readonly busyTimeoutMs: number
  readonly maxPageCount: number | undefined
}

const toStoreError = (error: WireError): StoreError => {
  const cause = Object.assign(new Error(error.message), error.code === undefined ? {} : { code: error.code })
  return new StoreError({ reason: error.reason ?? classifySqlite(cause), message: error.message, cause })
}

/** Events in the outbox that are worth a commit of their own while another one runs. */
const EAGER_EVENTS = 512

const closedError = () => new StoreError({ reason: "Unavailable", message: "event store closed" })

/** Starts the writer thread on `filename` (whose schema must exist) and stops it with the scope. */
export const make = (options: SqliteWriterOptions): Effect.Effect<Writer, StoreError, Scope.Scope> =>
  Effect.gen(function* () {
    const { port1: port, port2 } = new MessageChannel()
    const data: WriterData = { port: port2, filename: options.filename, busyTimeoutMs: options.busyTimeoutMs, maxPageCount: options.maxPageCount }
    const worker = new Worker(new URL("./sqliteWriter.worker.mjs", import.meta.url), { workerData: data, transferList: [port2] })
    // The port keeps the process alive while the worker starts and while a request is
    // outstanding, and only then.
    worker.unref()

    type Resume = (result: Effect.Effect<unknown, StoreError>) => void
    const waiting = new Map<number, Resume>()
    let nextId = 1
    let state: "starting" | "open" | "closed" = "starting"
    let onStarted: ((error: StoreError | undefined) => void) | undefined
    let exited = false
    let onExit: (() => void) | undefined

    // Items made while the worker is busy wait here, and go over in one message when it has
    // answered everything posted before, at the end of that event-loop turn: the callers it just
    // answered have appended again by then (their fibers resume in microtasks). So each commit
    // takes every caller; posting at once would split them into two alternating halves, each
    // paying a whole fsync, which is slower whenever an fsync costs more than the main thread's
    // work for a batch (on a disk, it does). An outbox of EAGER_EVENTS or more is worth an fsync
    // of its own: it goes at once, so big requests (imports, bulk loads) are prepared here while
    // the worker commits the ones before.
    let outbox: Array<WriterItem> = []
    let outboxEvents = 0
    let posted = 0
    let flushScheduled = false
    const flush = () => {
      flushScheduled = false
      if (outbox.length === 0 || state !== "open") return
      posted += outbox.length
      port.postMessage({ _tag: "Items", items: outbox } satisfies ToWriter)
      outbox = []
      outboxEvents = 0
    }
    const scheduleFlush = () => {
      if (flushScheduled || outbox.length === 0 || (posted > 0 && outboxEvents < EAGER_EVENTS)) return
      flushScheduled = true
      setImmediate(flush)
    }
    const answered = (n: number) => {
      posted -= n
      scheduleFlush()
    }

    const settle = (id: number, result: Effect.Effect<unknown, StoreError>) => {
      const resume = waiting.get(id)
      if (resume === undefined) return // the caller was interrupted; the outcome stands unheard
      waiting.delete(id)
      if (waiting.size === 0) port.unref()
      resume(result)
    }
    const failAll = (error: StoreError) => {
      for (const id of [...waiting.keys()]) settle(id, Effect.fail(error))
    }
    const stop = (error: StoreError) => {
      state = "closed"
      port.unref()
      onStarted?.(error)
      onStarted = undefined
      failAll(error)
    }

    port.on("message", (message: FromWriter) => {
      switch (message._tag) {
        case "Ready":
          state = "open"
          if (waiting.size === 0) port.unref()
          onStarted?.(undefined)
          onStarted = undefined
          return
        case "OpenFailed":
          return stop(toStoreError(message.error))
        case "Appended":
          for (const r of message.results) settle(r.id, Effect.succeed(r.outcome))
          return answered(message.results.length)
        case "Written":
          settle(message.id, Effect.void)
          return answered(1)
        case "Failed": {
          const error = Effect.fail(toStoreError(message.error))
          for (const id of message.ids) settle(id, error)
          return answered(message.ids.length)
        }
      }
    })
    worker.on("error", (cause) =>
      stop(new StoreError({ reason: "Unavailable", message: `event store writer failed: ${cause.message}`, cause })))
    worker.on("exit", () => {
      exited = true
      stop(closedError())
      onExit?.()
    })

    yield* Effect.async<void, StoreError>((resume) => {
      if (state === "closed") return resume(Effect.fail(closedError()))
      onStarted = (error) => resume(error === undefined ? Effect.void : Effect.fail(error))
    })
    yield* Effect.addFinalizer(() =>
      Effect.async<void>((resume) => {
        if (exited) return resume(Effect.void)
        state = "closed"
        onExit = () => resume(Effect.void)
        worker.ref()
        // What is still in the outbox was accepted: it goes first, and is answered.
        if (outbox.length > 0) port.postMessage({ _tag: "Items", items: outbox } satisfies ToWriter)
        outbox = []
        outboxEvents = 0
        port.postMessage({ _tag: "Close" } satisfies ToWriter)
        // A worker stuck in a busy wait still ends: terminate() interrupts it.
        const timer = setTimeout(() => void worker.terminate(), 30_000)
        timer.unref()
      }))

    const request = <A>(make: (id: number) => WriterItem) =>
      Effect.async<A, StoreError>((resume) => {
        if (state !== "open") return resume(Effect.fail(closedError()))
        const id = nextId++
        if (waiting.size === 0) port.ref()
        waiting.set(id, resume as Resume)
        const item = make(id)
        outbox.push(item)
        outboxEvents += item._tag === "Append" ? item.request.drafts.length : 1
        scheduleFlush()
        return Effect.sync(() => {
          waiting.delete(id)
          if (waiting.size === 0) port.unref()
        })
      })

    return {
      append: (req: PlanRequest) => request<PlanOutcome>((id) => ({ _tag: "Append", id, request: req })),
      write: (statements: ReadonlyArray<Statement<unknown>>) =>
        Effect.suspend(() => {
          const compiled = statements.map((s) => s.compile())
          return request<void>((id) => ({ _tag: "Write", id, statements: compiled }))
        })
    } satisfies Writer
  })
