/**
 * The agent's durable audit buffer: every event is appended (and fsynced) to a file in the data
 * dir before the session goes on, and removed only after auth has stored it. A session that runs
 * while the proxy or auth is unreachable keeps its events here until the uploader gets through;
 * a retried upload repeats event ids, which auth recognises, so nothing is stored twice.
 *
 *   audit-buffer.jsonl    one JSON event per line, appended
 *   audit-buffer.offset   how many bytes of it auth has acknowledged
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

export const open = (dataDir: string) => {
  const file = path.join(dataDir, "audit-buffer.jsonl")
  const offsetFile = path.join(dataDir, "audit-buffer.offset")
  const fd = fs.openSync(file, "a", 0o600)
  // A crash mid-append leaves a line without its newline: end it, so the next event starts a line of its own.
  const size0 = fs.fstatSync(fd).size
  if (size0 > 0) {
    const last = Buffer.alloc(1)
    const r = fs.openSync(file, "r")
    fs.readSync(r, last, 0, 1, size0 - 1)
    fs.closeSync(r)
    if (last[0] !== 0x0a) fs.writeSync(fd, "\n")
  }
  const readOffset = () => (fs.existsSync(offsetFile) ? Number(fs.readFileSync(offsetFile, "utf8")) || 0 : 0)
  const writeOffset = (n: number) => {
    const tmp = `${offsetFile}.tmp`
    fs.writeFileSync(tmp, String(n))
    const t = fs.openSync(tmp, "r")
    fs.fsyncSync(t)
    fs.closeSync(t)
    fs.renameSync(tmp, offsetFile)
  }

  // Group fsync: every append waits for an fsync that started after its write, but concurrent
  // sessions share one. The fsync runs on libuv's thread pool, so the event loop (and every other
  // session's bytes) keeps moving while the disk flushes.
  let waiting: Array<(failure?: Error) => void> = []
  let flushing = false
  const flush = () => {
    if (flushing || waiting.length === 0) return
    const batch = waiting
    waiting = []
    flushing = true
    fs.fsync(fd, (err) => {
      flushing = false
      for (const done of batch) done(err ?? undefined)
      flush()
    })
  }

  const append = (e: Omit<BufferedEvent, "id" | "time">) =>
    Effect.async<void>((resume) => {
      const line = JSON.stringify({ ...e, id: randomUUID(), time: new Date().toISOString() } satisfies BufferedEvent) + "\n"
      fs.writeSync(fd, line)
      waiting.push((failure) => resume(failure === undefined ? Effect.void : Effect.die(failure)))
      flush()
    })

  /**
   * The oldest unacknowledged events (at most `max`, and about `maxBytes` of JSON, but always the
   * first one however long) and the offset that acknowledges them.
   */
  const pending = (max: number, maxBytes = 1024 * 1024) =>
    Effect.sync(() => {
      const from = readOffset()
      const size = fs.fstatSync(fd).size
      if (size <= from) return { events: [] as Array<BufferedEvent>, from, next: from }
      // The append fd is write-only; a read fd per call, closed again (the uploader polls twice a second).
      const rfd = fs.openSync(file, "r")
      let buf: Buffer
      try {
        // Read a window; a first line longer than it (one very long query) doubles the window.
        let len = Math.min(size - from, Math.max(maxBytes, 64 * 1024))
        for (;;) {
          buf = Buffer.alloc(len)
          len = fs.readSync(rfd, buf, 0, len, from)
          buf = buf.subarray(0, len)
          if (len === 0 || buf.includes(0x0a) || from + len >= size) break
          len = Math.min(size - from, len * 2)
        }
      } finally {
        fs.closeSync(rfd)
      }
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
    })

  const acknowledge = (next: number) =>
    Effect.sync(() => {
      writeOffset(next)
      // Everything sent: start the file over, so it does not grow forever.
      if (fs.fstatSync(fd).size === next) {
        fs.ftruncateSync(fd, 0)
        fs.fsyncSync(fd)
        writeOffset(0)
      }
    })

  const close = Effect.sync(() => fs.closeSync(fd))
  return { append, pending, acknowledge, close }
}

export type AuditBuffer = ReturnType<typeof open>
