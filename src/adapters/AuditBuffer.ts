/**
 * The agent's durable audit buffer: every event is appended to a file in the data dir before the
 * session goes on, and removed only after auth has stored it. A session that runs while the proxy
 * or auth is unreachable keeps its events here until the uploader gets through; a retried upload
 * repeats event ids, which auth recognises, so nothing is stored twice.
 *
 *   audit-buffer.jsonl    one JSON event per line, appended
 *   audit-buffer.offset   how many bytes of it auth has acknowledged
 *
 * What is guaranteed, and when:
 *
 * - `write` returns once the line is in the file (a `write(2)` to the kernel): from then on the
 *   event survives the agent's death (kill -9, a crash, an OOM kill), because the kernel holds it.
 *   Sessions call it on the query's path, before the query is forwarded, so nothing reaches the
 *   database that is not in the buffer first.
 * - Surviving the machine's death (power loss, kernel panic) needs an fsync. That runs grouped, on
 *   libuv's thread pool: one fsync covers every line written before it began, started when there
 *   is something new, at most one at a time and at most one per `SYNC_INTERVAL_MS` (each one wakes
 *   the event loop and a pool thread, which under thousands of queries a second cost more CPU than
 *   the writes). The event loop never waits on the disk, and a line is durable within
 *   `SYNC_INTERVAL_MS` plus two fsync times of its write. `append` and `flush` wait for that
 *   fsync, for callers that want it (session start and end, shutdown).
 * - Nothing on the event loop fsyncs, renames or reads the disk synchronously while sessions run,
 *   other than the `write` itself; acknowledging an upload persists the offset on the thread pool.
 */
import { randomUUID } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect } from "effect"

export interface BufferedEvent {
  readonly id: string
  readonly type: string
  readonly code: string
  readonly time: string
  readonly payload: Readonly<Record<string, unknown>>
}

export type EventDraft = Omit<BufferedEvent, "id" | "time">

/** Least time from one fsync's start to the next one's; see the module comment. */
const SYNC_INTERVAL_MS = 10

export const open = (dataDir: string) => {
  const file = path.join(dataDir, "audit-buffer.jsonl")
  const offsetFile = path.join(dataDir, "audit-buffer.offset")
  const fd = fs.openSync(file, "a", 0o600)
  // Start-up only, so synchronous I/O is fine here.
  // A crash mid-append leaves a line without its newline: end it, so the next event starts a line of its own.
  let size = fs.fstatSync(fd).size
  if (size > 0) {
    const last = Buffer.alloc(1)
    const r = fs.openSync(file, "r")
    fs.readSync(r, last, 0, 1, size - 1)
    fs.closeSync(r)
    if (last[0] !== 0x0a) size += fs.writeSync(fd, "\n")
  }
  /** Bytes of the file auth has acknowledged (mirrored in `offsetFile`). */
  let offset = fs.existsSync(offsetFile) ? Number(fs.readFileSync(offsetFile, "utf8")) || 0 : 0
  // An offset past the end or inside a line cannot be from this file's contents (a truncation whose
  // new offset was lost): send everything again; auth drops the ids it already has.
  if (offset < 0 || offset > size || (offset > 0 && !lineEndsAt(file, offset))) offset = 0

  // The append fd is write-only; one read fd for the uploader, kept open (it polls twice a second).
  const readFd = fs.openSync(file, "r")

  // Group fsync. `written` counts every byte ever written (it does not go back on truncation);
  // `synced` is how much of it the last finished fsync covered.
  let written = 0
  let synced = 0
  let syncing = false
  let lastSyncAt = 0
  let timer: ReturnType<typeof setTimeout> | undefined
  let syncError: Error | undefined
  let waiters: Array<{ readonly upTo: number; readonly done: (failure?: Error) => void }> = []
  const sync = () => {
    if (syncing || timer !== undefined || synced === written) return
    const wait = lastSyncAt + SYNC_INTERVAL_MS - Date.now()
    if (wait > 0) {
      timer = setTimeout(() => {
        timer = undefined
        sync()
      }, wait)
      return
    }
    syncing = true
    lastSyncAt = Date.now()
    const upTo = written
    fs.fsync(fd, (err) => {
      syncing = false
      if (err !== null) syncError = err
      else synced = upTo
      const ready = waiters.filter((w) => err !== null || w.upTo <= synced)
      waiters = waiters.filter((w) => !ready.includes(w))
      for (const w of ready) w.done(err ?? undefined)
      if (err === null) sync()
    })
  }

  /**
   * Writes one event to the file, synchronously, and starts a grouped fsync in the background.
   * On return the event survives the agent's death; see the module comment. Throws when the
   * file cannot be written (disk full): the caller must not go on as if it were audited.
   */
  const write = (e: EventDraft): void => {
    if (syncError !== undefined) throw syncError
    const line = JSON.stringify({ ...e, id: randomUUID(), time: new Date().toISOString() } satisfies BufferedEvent) + "\n"
    const n = fs.writeSync(fd, line)
    size += n
    written += n
    sync()
  }

  /** Waits until everything written so far is fsynced. */
  const flush: Effect.Effect<void> = Effect.async<void>((resume) => {
    if (syncError !== undefined) return resume(Effect.die(syncError))
    if (synced === written) return resume(Effect.void)
    waiters.push({ upTo: written, done: (failure) => resume(failure === undefined ? Effect.void : Effect.die(failure)) })
    sync()
  })

  /** `write`, then wait for the fsync that covers it. */
  const append = (e: EventDraft): Effect.Effect<void> =>
    Effect.suspend(() => {
      write(e)
      return flush
    })

  /**
   * The oldest unacknowledged events (at most `max`, and about `maxBytes` of JSON, but always the
   * first one however long) and the offset that acknowledges them.
   */
  const pending = (max: number, maxBytes = 1024 * 1024) =>
    Effect.async<{ events: Array<BufferedEvent>; from: number; next: number }>((resume) => {
      const from = offset
      if (size <= from) return resume(Effect.succeed({ events: [], from, next: from }))
      // Read on the thread pool: a backlog of megabytes must not hold up the sessions.
      let len = Math.min(size - from, Math.max(maxBytes, 64 * 1024))
      const attempt = () => {
        const buf = Buffer.allocUnsafe(len)
        fs.read(readFd, buf, 0, len, from, (err, n) => {
          if (err !== null) return resume(Effect.die(err))
          const got = buf.subarray(0, n)
          // A first line longer than the window (one very long query) doubles the window.
          if (n > 0 && !got.includes(0x0a) && from + n < size) {
            len = Math.min(size - from, len * 2)
            return attempt()
          }
          resume(Effect.succeed(parseLines(got, from, max, maxBytes)))
        })
      }
      attempt()
    })

  /** Persists `value` as the offset, on the thread pool: write a temporary file, fsync, rename. */
  const persistOffset = (value: number, done: (err: Error | null) => void) => {
    const tmp = `${offsetFile}.tmp`
    fs.open(tmp, "w", 0o600, (err, t) => {
      if (err !== null) return done(err)
      fs.write(t, String(value), (err) => {
        if (err !== null) return fs.close(t, () => done(err))
        fs.fsync(t, (err) => {
          fs.close(t, () => (err !== null ? done(err) : fs.rename(tmp, offsetFile, done)))
        })
      })
    })
  }

  /**
   * Records that auth stored everything before `next`. When that is the whole file, the file starts
   * over: the offset 0 is made durable first and the file truncated only then, and only if nothing
   * was written meanwhile, so a crash at any point leaves an offset that fits the file (at worst one
   * that sends some events again).
   */
  const acknowledge = (next: number) =>
    Effect.async<void>((resume) => {
      offset = Math.max(offset, next)
      const all = size === next
      persistOffset(all ? 0 : next, (err) => {
        if (err !== null) return resume(Effect.die(err))
        if (all && size === next && offset === next) {
          fs.ftruncateSync(fd, 0)
          size = 0
          offset = 0
        }
        resume(Effect.void)
      })
    })

  const close = Effect.sync(() => {
    if (timer !== undefined) clearTimeout(timer)
    // Whatever the grouped fsync had not reached yet.
    if (syncError === undefined && synced !== written) fs.fsyncSync(fd)
    fs.closeSync(readFd)
    fs.closeSync(fd)
  })
  return { write, append, flush, pending, acknowledge, close }
}

export type AuditBuffer = ReturnType<typeof open>

/** Whether the byte before `offset` in `file` is a newline. */
const lineEndsAt = (file: string, offset: number): boolean => {
  const b = Buffer.alloc(1)
  const r = fs.openSync(file, "r")
  try {
    return fs.readSync(r, b, 0, 1, offset - 1) === 1 && b[0] === 0x0a
  } finally {
    fs.closeSync(r)
  }
}

/** Whole lines of `buf` (read at file offset `from`) as events; see `pending`. */
const parseLines = (buf: Buffer, from: number, max: number, maxBytes: number) => {
  const events: Array<BufferedEvent> = []
  let consumed = 0
  // Only whole lines: a line without its newline is still being written (or was torn by a crash).
  for (let nl = buf.indexOf(0x0a, consumed); nl !== -1; nl = buf.indexOf(0x0a, consumed)) {
    if (events.length >= max || (events.length > 0 && nl + 1 > maxBytes)) break
    const line = buf.subarray(consumed, nl).toString("utf8")
    consumed = nl + 1
    // A line torn by a crash cannot be sent: skip it rather than stop every later upload.
    if (line.trim() === "") continue
    try {
      events.push(JSON.parse(line) as BufferedEvent)
    } catch {
      continue
    }
  }
  return { events, from, next: from + consumed }
}
