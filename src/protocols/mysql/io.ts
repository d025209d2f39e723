/**
 * Stream helpers for the handshake phases, where each side waits for one packet before it
 * answers: the proxy front (greeting, SSLRequest, HandshakeResponse41) and the engine (header,
 * the client's response, the server's greeting and auth exchange). After the handshake both relay
 * raw bytes and frame them with the incremental parsers instead.
 */
import * as net from "node:net"
import type { Duplex } from "node:stream"
import { Effect, Schedule } from "effect"
import type { Scope } from "effect"
import { MAX_PACKET_PAYLOAD } from "./messages.ts"
import { decodeHandshake } from "./parser.ts"

/** One wire packet (handshake packets never need continuation packets). */
export interface WirePacket {
  readonly sequenceId: number
  readonly payload: Uint8Array
}

/** Why no packet came: the peer closed, or announced more than the phase allows. */
export interface ReadFailure {
  readonly reason: "closed" | "too-large"
  /** The sequence id of the refused packet (too-large). */
  readonly sequenceId?: number
  readonly length?: number
}

const toBuffer = (chunk: unknown): Buffer => (typeof chunk === "string" ? Buffer.from(chunk) : Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array))

/**
 * Reads one whole packet from `stream` and pushes any bytes after it back (`unshift`), leaving the
 * stream paused: the next reader (another `readPacket`, a TLS layer, the relay) gets them in order.
 * A header announcing more than `maxLength` fails at once, before its bytes are awaited.
 */
export const readPacket = (stream: Duplex, maxLength: number): Effect.Effect<WirePacket, ReadFailure> =>
  Effect.async<WirePacket, ReadFailure>((resume) => {
    let buf: Buffer = Buffer.alloc(0)
    let done = false
    const cleanup = () => {
      stream.off("data", onData)
      stream.off("end", onEnd)
      stream.off("close", onEnd)
      stream.pause()
    }
    const onData = (chunk: unknown) => {
      if (done) return
      buf = buf.length === 0 ? toBuffer(chunk) : Buffer.concat([buf, toBuffer(chunk)])
      if (buf.length < 4) return
      const length = buf[0]! | (buf[1]! << 8) | (buf[2]! << 16)
      const sequenceId = buf[3]!
      if (length > Math.min(maxLength, MAX_PACKET_PAYLOAD - 1)) {
        done = true
        cleanup()
        return resume(Effect.fail({ reason: "too-large", sequenceId, length }))
      }
      if (buf.length < 4 + length) return
      done = true
      cleanup()
      const rest = buf.subarray(4 + length)
      if (rest.length > 0) stream.unshift(rest)
      resume(Effect.succeed({ sequenceId, payload: new Uint8Array(buf.buffer, buf.byteOffset + 4, length) }))
    }
    const onEnd = () => {
      if (done) return
      done = true
      cleanup()
      resume(Effect.fail({ reason: "closed" }))
    }
    stream.on("data", onData)
    stream.once("end", onEnd)
    stream.once("close", onEnd)
    if (stream.destroyed) onEnd()
    else stream.resume()
    return Effect.sync(() => {
      done = true
      cleanup()
    })
  })

/** What a MySQL server says about itself in its greeting. */
export interface ServerInfo {
  readonly serverVersion: string
  readonly capabilities: number
  readonly charset: number
}

/**
 * Connects to `host:port`, reads the greeting and hangs up: the server speaks first, so its version
 * and capabilities come without logging in. Fails when the server cannot be reached or refuses
 * (e.g. "Host is blocked").
 */
export const probeServer = (host: string, port: number, timeoutMs = 5_000): Effect.Effect<ServerInfo, Error> =>
  Effect.acquireUseRelease(
    Effect.async<net.Socket, Error>((resume) => {
      const s = net.connect({ host, port })
      const onError = (e: Error) => resume(Effect.fail(e))
      s.once("error", onError)
      s.once("connect", () => {
        s.off("error", onError)
        s.on("error", () => undefined)
        resume(Effect.succeed(s))
      })
      return Effect.sync(() => s.destroy())
    }),
    (s) =>
      readPacket(s, 64 * 1024).pipe(
        Effect.mapError((f) => new Error(f.reason === "closed" ? "the server closed the connection before its greeting" : "the greeting is too large")),
        Effect.flatMap((p) => {
          const hs = p.payload[0] === 0xff ? undefined : decodeHandshake(p.payload)
          if (hs === undefined) return Effect.fail(new Error(`the server refused the connection: ${Buffer.from(p.payload.subarray(3)).toString("utf8")}`))
          if (hs.kind === "error") return Effect.fail(new Error(hs.detail))
          return Effect.succeed({ serverVersion: hs.serverVersion, capabilities: hs.capabilities, charset: hs.charset })
        })
      ),
    (s) => Effect.sync(() => s.destroy())
  ).pipe(Effect.timeoutFail({ duration: timeoutMs, onTimeout: () => new Error(`no greeting within ${timeoutMs} ms`) }))

/**
 * The greeting of each MySQL database in `databases`: a first round before the agent advertises
 * anything (so the proxy's greeting is right from the start), then, for those that could not be
 * reached, retries in the background until they answer, each result handed to `onLearned`.
 * Only the greeting is read: no login, and one connection per database and attempt.
 */
export const learnServers = (
  databases: ReadonlyArray<{ readonly name: string; readonly protocol: string; readonly uri: string }>,
  onLearned: (name: string, info: ServerInfo) => Effect.Effect<void>
): Effect.Effect<ReadonlyMap<string, ServerInfo>, never, Scope.Scope> =>
  Effect.gen(function* () {
    const mysql = databases.filter((d) => d.protocol === "mysql")
    const probe = (uri: string, timeoutMs: number) => {
      const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(uri) ?? /^([^:]+)(?::(\d+))?$/.exec(uri)
      return probeServer(m?.[1] ?? uri, m?.[2] === undefined ? 3306 : Number(m[2]), timeoutMs)
    }
    const first = yield* Effect.forEach(mysql, (d) => Effect.option(probe(d.uri, 2_000)).pipe(Effect.map((o) => [d, o] as const)), { concurrency: "unbounded" })
    const known = new Map<string, ServerInfo>()
    for (const [d, o] of first) {
      if (o._tag === "Some") known.set(d.name, o.value)
      else {
        yield* probe(d.uri, 5_000).pipe(
          Effect.tapError((e) => Effect.logDebug(`mysql ${d.name}: no greeting yet (${e.message})`)),
          Effect.retry(Schedule.spaced("5 seconds")),
          Effect.flatMap((info) => onLearned(d.name, info)),
          Effect.forkScoped
        )
      }
    }
    return known
  })
