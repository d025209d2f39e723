/**
 * Session recordings on the node: asciicast v2 files, written as the session runs and kept until
 * auth has them.
 *
 *     <data_dir>/recordings/<sid>.cast       header line, then one event per line:
 *                                            {"version":2,"width":80,"height":24,"timestamp":...,"env":{...}}
 *                                            [0.123456, "o", "output"]   terminal output
 *                                            [1.5, "r", "100x30"]        a window change
 *     <data_dir>/recordings/<sid>.done       the session ended: the file is complete
 *     <data_dir>/recordings/<sid>.uploaded   how many bytes of the file auth holds
 *
 * Durability: events are appended in batches and fsynced at most `flushMs` apart (and at the end),
 * so a crash loses at most that much of a session and never tears the file before a newline that
 * a reader could not step over. The uploader (`uploadRecordings`) sends the bytes in order from
 * the offset auth acknowledges, so a node that loses its tunnel mid-session uploads the rest later.
 */
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { StringDecoder } from "node:string_decoder"

export const recordingsDir = (dataDir: string) => path.join(dataDir, "recordings")

/** Session ids are UUIDs; anything else never names a file. */
const SID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

export interface Recorder {
  readonly output: (data: Buffer) => void
  readonly input: (data: Buffer) => void
  readonly resize: (cols: number, rows: number) => void
  /** Flushes, fsyncs and marks the recording complete; the SHA-256 and size of the whole file. */
  readonly finish: () => Promise<{ readonly sha256: string; readonly bytes: number }>
}

export const startRecording = (options: {
  readonly dataDir: string
  readonly sessionId: string
  readonly cols: number
  readonly rows: number
  readonly env: Readonly<Record<string, string>>
  readonly flushMs?: number
}): Recorder => {
  if (!SID.test(options.sessionId)) throw new Error(`bad session id ${options.sessionId}`)
  const dir = recordingsDir(options.dataDir)
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  const file = path.join(dir, `${options.sessionId}.cast`)
  const fd = fs.openSync(file, "a", 0o600)
  const started = process.hrtime.bigint()
  const hash = createHash("sha256")
  let bytes = 0
  let queue: Array<string> = []
  let writing: Promise<void> = Promise.resolve()
  let timer: NodeJS.Timeout | undefined
  let closed = false
  const flushMs = options.flushMs ?? 200

  const flush = (): Promise<void> => {
    if (timer !== undefined) {
      clearTimeout(timer)
      timer = undefined
    }
    if (queue.length === 0) return writing
    const chunk = Buffer.from(queue.join(""), "utf8")
    queue = []
    hash.update(chunk)
    bytes += chunk.length
    // Writes are chained, so the file keeps the order events happened in.
    writing = writing.then(
      () =>
        new Promise<void>((resolve) =>
          fs.write(fd, chunk, 0, chunk.length, null, () => fs.fdatasync(fd, () => resolve()))
        )
    )
    return writing
  }
  const push = (line: string) => {
    if (closed) return
    queue.push(line + "\n")
    if (timer === undefined) timer = setTimeout(() => void flush(), flushMs)
  }
  const elapsed = () => Math.round(Number(process.hrtime.bigint() - started) / 1_000) / 1_000_000

  push(
    JSON.stringify({
      version: 2,
      width: options.cols,
      height: options.rows,
      timestamp: Math.floor(Date.now() / 1000),
      env: options.env
    })
  )
  // A UTF-8 character split across two reads is written whole.
  const out = new StringDecoder("utf8")
  const event = (code: "o" | "r", text: string) => {
    if (text !== "") push(JSON.stringify([elapsed(), code, text]))
  }
  return {
    output: (data) => event("o", out.write(data)),
    // Keystrokes are not recorded (Teleport does the same): what a user types at a prompt that does
    // not echo (a sudo password) would be in the file. What they see, echo included, is output.
    input: () => undefined,
    resize: (cols, rows) => event("r", `${cols}x${rows}`),
    finish: async () => {
      if (!closed) {
        event("o", out.end())
        closed = true
      }
      await flush()
      fs.fsyncSync(fd)
      fs.closeSync(fd)
      const done = path.join(dir, `${options.sessionId}.done`)
      fs.writeFileSync(done, "")
      const dfd = fs.openSync(dir, "r")
      fs.fsyncSync(dfd)
      fs.closeSync(dfd)
      return { sha256: hash.digest("hex"), bytes }
    }
  }
}

/** What the proxy's `POST /v1/webapi/agent/recording` takes (see the SSH contract). */
export interface RecordingChunk {
  readonly session_id: string
  readonly offset: number
  readonly data: string
  readonly done: boolean
  /** With `done`: SHA-256 (hex) of the whole file, which auth checks against what it holds. */
  readonly sha256?: string
}

/** Largest chunk per request: what auth takes in one upload (RecordingStore's MAX_UPLOAD_BYTES). */
const CHUNK = 512 * 1024

const fileSha256 = (file: string): string => createHash("sha256").update(fs.readFileSync(file)).digest("hex")

/**
 * One pass over the recordings dir: for every recording, sends what auth does not hold yet, in
 * order, from the offset auth acknowledged. A complete recording that auth holds in full is
 * deleted. Errors stop only that recording's pass; the next pass tries again.
 */
export const uploadRecordings = async (
  dataDir: string,
  post: (chunk: RecordingChunk) => Promise<{ readonly stored: number }>
): Promise<{ readonly uploaded: number; readonly errors: ReadonlyArray<string> }> => {
  const dir = recordingsDir(dataDir)
  if (!fs.existsSync(dir)) return { uploaded: 0, errors: [] }
  const errors: Array<string> = []
  let uploaded = 0
  for (const name of fs.readdirSync(dir)) {
    const m = /^(.+)\.cast$/.exec(name)
    if (m === null || !SID.test(m[1]!)) continue
    const sid = m[1]!
    const file = path.join(dir, name)
    const offsetFile = path.join(dir, `${sid}.uploaded`)
    const doneFile = path.join(dir, `${sid}.done`)
    try {
      const done = fs.existsSync(doneFile)
      let offset = fs.existsSync(offsetFile) ? Number(fs.readFileSync(offsetFile, "utf8")) || 0 : 0
      const size = fs.statSync(file).size
      for (;;) {
        if (offset >= size && !done) break
        const length = Math.min(CHUNK, Math.max(0, size - offset))
        const buf = Buffer.alloc(length)
        if (length > 0) {
          const fd = fs.openSync(file, "r")
          try {
            fs.readSync(fd, buf, 0, length, offset)
          } finally {
            fs.closeSync(fd)
          }
        }
        const last = done && offset + length >= size
        const r = await post({ session_id: sid, offset, data: buf.toString("base64"), done: last, ...(last ? { sha256: fileSha256(file) } : {}) })
        if (!Number.isFinite(r.stored) || r.stored < 0 || r.stored > size) throw new Error(`auth acknowledged ${r.stored} of ${size} bytes`)
        const progressed = r.stored !== offset
        uploaded += Math.max(0, r.stored - offset)
        offset = r.stored
        fs.writeFileSync(offsetFile, String(offset))
        if (last && offset >= size) {
          for (const f of [file, offsetFile, doneFile]) fs.rmSync(f, { force: true })
          break
        }
        // Auth holds less than we sent it (it lost some, or another chunk raced): resend from there.
        if (!progressed && length > 0) break
        if (offset >= size && !done) break
      }
    } catch (e) {
      errors.push(`${sid}: ${(e as Error).message}`)
    }
  }
  return { uploaded, errors }
}
