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
  const readOffset = () => (fs.existsSync(offsetFile) ? Number(fs.readFileSync(offsetFile, "utf8")) || 0 : 0)
  const writeOffset = (n: number) => {
    const tmp = `${offsetFile}.tmp`
    fs.writeFileSync(tmp, String(n))
    const t = fs.openSync(tmp, "r")
    fs.fsyncSync(t)
    fs.closeSync(t)
    fs.renameSync(tmp, offsetFile)
  }

  const append = (e: Omit<BufferedEvent, "id" | "time">) =>
    Effect.sync(() => {
      const line = JSON.stringify({ ...e, id: randomUUID(), time: new Date().toISOString() } satisfies BufferedEvent) + "\n"
      fs.writeSync(fd, line)
      fs.fsyncSync(fd)
    })

  /** The oldest unacknowledged events (at most `max`) and the offset that acknowledges them. */
  const pending = (max: number) =>
    Effect.sync(() => {
      const from = readOffset()
      const size = fs.fstatSync(fd).size
      if (size <= from) return { events: [] as Array<BufferedEvent>, next: from }
      const len = Math.min(size - from, 4 * 1024 * 1024)
      const buf = Buffer.alloc(len)
      // The append fd is write-only; a read fd per call, closed again (the uploader polls twice a second).
      const rfd = fs.openSync(file, "r")
      try {
        fs.readSync(rfd, buf, 0, len, from)
      } finally {
        fs.closeSync(rfd)
      }
      const text = buf.toString("utf8")
      const events: Array<BufferedEvent> = []
      let consumed = 0
      for (const line of text.split("\n")) {
        // A line without its newline is still being written (or was torn by a crash): stop there.
        if (consumed + line.length >= text.length || events.length >= max) break
        consumed += Buffer.byteLength(line) + 1
        if (line.trim() !== "") events.push(JSON.parse(line) as BufferedEvent)
      }
      return { events, next: from + consumed }
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
