/**
 * `tsh recordings ls` and `tsh play SESSION_ID`: session recordings from the user's side.
 *
 * Recordings are asciicast v2 files (a JSON header line, then `[seconds, code, data]` lines:
 * `o` output, `i` input, `r` a window change `COLSxROWS`), as the node (or, for agentless nodes,
 * the proxy) wrote them. `tsh play` fetches the file from the proxy in pages, checks its SHA-256
 * against the one auth computed and against the one the session's `session.end` event carries
 * (so a recording that does not match the hash-chained audit log is refused), then:
 *
 * - `--format=pty` (default) writes the output events to the terminal with their timing, at
 *   `--speed` times real time, with idle gaps cut to one second so a long pause does not stall;
 * - `--format=json` prints each event as one JSON line, `[seconds, code, data]`;
 * - `--format=cast` prints the file itself, for `asciinema play`.
 */
import { createHash } from "node:crypto"
import { Args, Command, Options } from "@effect/cli"
import { Console, Data, Effect, Schema } from "effect"
import * as Profiles from "../adapters/TshProfile.ts"
import * as WebApi from "../adapters/WebApiClient.ts"
import { RecordingChunk, RecordingsResponse } from "../domain/AuthApi.ts"

export class TshPlayError extends Data.TaggedError("TshPlayError")<{ readonly message: string }> {}

const withMessage = (e: { readonly message: string }) => new TshPlayError({ message: e.message })

/** Longest pause `--format=pty` keeps, in seconds of playback. */
export const MAX_IDLE_SECONDS = 1

// ---------------------------------------------------------------------------------------------
// asciicast v2

export type CastEvent = readonly [time: number, code: string, data: string]

export interface Cast {
  readonly header: Readonly<Record<string, unknown>>
  readonly events: ReadonlyArray<CastEvent>
  /** A last line cut short: the recording is still being uploaded. */
  readonly truncated: boolean
}

/** Parses an asciicast v2 file; a line that is not an event fails with its line number. */
export const parseCast = (text: string): Cast | { readonly error: string } => {
  const lines = text.split("\n")
  const truncated = lines[lines.length - 1] !== ""
  if (!truncated) lines.pop()
  let header: unknown
  try {
    header = JSON.parse(lines[0] ?? "")
  } catch {
    return { error: "the recording does not start with an asciicast header" }
  }
  if (header === null || typeof header !== "object" || (header as { version?: unknown }).version !== 2) {
    return { error: "the recording is not asciicast version 2" }
  }
  const events: Array<CastEvent> = []
  const last = truncated ? lines.length - 1 : lines.length
  for (let i = 1; i < last; i++) {
    let e: unknown
    try {
      e = JSON.parse(lines[i]!)
    } catch {
      return { error: `line ${i + 1} of the recording is not JSON` }
    }
    if (!Array.isArray(e) || e.length !== 3 || typeof e[0] !== "number" || typeof e[1] !== "string" || typeof e[2] !== "string") {
      return { error: `line ${i + 1} of the recording is not an asciicast event` }
    }
    events.push([e[0], e[1], e[2]])
  }
  return { header: header as Record<string, unknown>, events, truncated }
}

/** How long to wait before each output event: the recorded gap at `speed`, idle cut to `maxIdle`. */
export const playbackDelays = (events: ReadonlyArray<CastEvent>, speed: number, maxIdle = MAX_IDLE_SECONDS): Array<number> => {
  let prev = 0
  return events.map(([t]) => {
    const gap = Math.max(0, t - prev) / speed
    prev = t
    return Math.min(gap, maxIdle)
  })
}

// ---------------------------------------------------------------------------------------------
// The proxy

const profile = Effect.mapError(
  Effect.flatMap(Effect.sync(() => Profiles.tshHome()), (home) => Profiles.loadProfile(home)),
  withMessage
)

const clientCert = (p: Profiles.LoadedProfile): WebApi.ClientCertOptions => ({
  tlsCert: p.tlsCert,
  key: p.tlsPrivateKeyPem,
  ...(p.caCerts.includes("-----BEGIN CERTIFICATE-----") ? { caCerts: p.caCerts } : {})
})

const SESSION_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/

/** The whole recording, page by page, with what auth and the audit log say about it. */
const download = (p: Profiles.LoadedProfile, sid: string) =>
  Effect.gen(function* () {
    if (!SESSION_ID.test(sid)) return yield* new TshPlayError({ message: `${JSON.stringify(sid)} is not a session id; see 'tsh recordings ls'` })
    const parts: Array<Buffer> = []
    let offset = 0
    for (;;) {
      const page = yield* Effect.mapError(
        WebApi.getJson(p.file.web_proxy_addr, `/v1/webapi/recordings/${sid}?offset=${offset}`, RecordingChunk, "recording", clientCert(p)),
        withMessage
      )
      const data = Buffer.from(page.data, "base64")
      parts.push(data)
      offset += data.length
      if (data.length === 0 || offset >= page.size) return { info: page, bytes: Buffer.concat(parts) }
    }
  })

/** Refuses bytes that are not what auth stored, or not what the audit log vouches for. */
const check = (info: typeof RecordingChunk.Type, bytes: Buffer) =>
  Effect.gen(function* () {
    const sha256 = createHash("sha256").update(bytes).digest("hex")
    if (info.done && info.sha256 !== undefined && info.sha256 !== sha256) {
      return yield* new TshPlayError({ message: `the recording of ${info.session_id} changed in transit (SHA-256 ${sha256}, auth holds ${info.sha256})` })
    }
    if (info.done && info.session_end_sha256 !== undefined && info.session_end_sha256 !== sha256) {
      return yield* new TshPlayError({
        message: `the recording of ${info.session_id} does not match the SHA-256 in its session.end audit event (${info.session_end_sha256}); it was altered`
      })
    }
    if (!info.done) yield* Console.error(`note: the recording of ${info.session_id} is incomplete (${info.size} bytes so far); the node is still uploading it`)
  })

const write = (text: string) =>
  Effect.async<void>((resume) => {
    if (process.stdout.write(text)) resume(Effect.void)
    else process.stdout.once("drain", () => resume(Effect.void))
  })

// ---------------------------------------------------------------------------------------------
// Commands

const formatOpt = (choices: readonly [string, ...Array<string>], dflt: string) =>
  Options.choice("format", choices).pipe(Options.withDescription(`output format: ${choices.join(", ")}`), Options.withDefault(dflt))

const humanSize = (n: number) => (n < 1024 ? `${n} B` : n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`)

const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) => cells.map((c, i) => c.padEnd(widths[i]!)).join(" ").trimEnd()
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n")
}

const recordingsLs = Command.make("ls", { format: formatOpt(["text", "json"], "text") }, (o) =>
  Effect.gen(function* () {
    const p = yield* profile
    const res = yield* Effect.mapError(
      WebApi.getJson(p.file.web_proxy_addr, "/v1/webapi/recordings", RecordingsResponse, "recordings", clientCert(p)),
      withMessage
    )
    if (o.format === "json") return yield* Console.log(JSON.stringify(Schema.encodeSync(RecordingsResponse)(res).recordings, null, 2))
    yield* Console.log(
      table(
        ["Session ID", "User", "Login", "Node", "Started", "Size", "Status"],
        res.recordings.map((r) => [
          r.session_id,
          r.user ?? "",
          r.login ?? "",
          r.server ?? r.host_id,
          r.start ?? r.created,
          humanSize(r.size),
          r.done ? "complete" : "uploading"
        ])
      )
    )
  })
).pipe(Command.withDescription("List the session recordings you may watch: your own sessions, or all with a role that may read sessions."))

export const recordingsCommand = Command.make("recordings").pipe(
  Command.withDescription("Session recordings."),
  Command.withSubcommands([recordingsLs])
)

export const playCommand = Command.make(
  "play",
  {
    sessionId: Args.text({ name: "session-id" }).pipe(Args.withDescription("the session to replay (from tsh recordings ls)")),
    format: formatOpt(["pty", "json", "cast"], "pty"),
    speed: Options.float("speed").pipe(Options.withDescription("playback speed for --format=pty (2 is twice as fast)"), Options.withDefault(1))
  },
  (o) =>
    Effect.gen(function* () {
      if (!(o.speed > 0)) return yield* new TshPlayError({ message: "--speed must be above 0" })
      const p = yield* profile
      const { info, bytes } = yield* download(p, o.sessionId)
      yield* check(info, bytes)
      if (o.format === "cast") return yield* write(bytes.toString("utf8"))
      const cast = parseCast(bytes.toString("utf8"))
      if ("error" in cast) return yield* new TshPlayError({ message: `cannot play ${o.sessionId}: ${cast.error}` })
      if (o.format === "json") {
        for (const e of cast.events) yield* write(JSON.stringify(e) + "\n")
        return
      }
      const output = cast.events.filter(([, code]) => code === "o")
      const delays = playbackDelays(output, o.speed)
      for (let i = 0; i < output.length; i++) {
        if (delays[i]! > 0) yield* Effect.sleep(`${Math.round(delays[i]! * 1000)} millis`)
        yield* write(output[i]![2])
      }
    })
).pipe(Command.withDescription("Replay a recorded session: to the terminal with its timing (pty), as JSON lines (json), or the asciicast file (cast)."))
