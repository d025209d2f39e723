/**
 * The PostgreSQL engine of the database agent: one call to `handleSession` per user connection
 * (cf. Teleport's lib/srv/db/postgres/engine.go).
 *
 *     client (after TLS at the proxy)         agent                        PostgreSQL
 *     StartupMessage ──────────────────────▶  route + RBAC check
 *                                             TCP, SSLRequest ──────────▶  'S'
 *                                             TLS, client cert (CN=db user, db CA)
 *                                             StartupMessage ───────────▶  AuthenticationOk
 *     AuthenticationOk, ParameterStatus… ◀──  relayed as they come          ParameterStatus…
 *     BackendKeyData (our key)           ◀──  replaced, mapping kept   ◀──  BackendKeyData
 *     ReadyForQuery                      ◀──  after db.session.start   ◀──  ReadyForQuery
 *     Query/Parse/Bind/Execute/CopyData… ──▶  parsed for audit, original bytes forwarded
 *     everything                         ◀──  raw bytes (frame boundaries tracked, nothing decoded)
 *
 * Refusals reach the client once, as an ErrorResponse built by `errorResponseFor`.
 */
import { randomBytes, randomInt, timingSafeEqual } from "node:crypto"
import * as net from "node:net"
import type { Duplex } from "node:stream"
import * as tls from "node:tls"
import { Clock, Deferred, Effect, Either, Exit, Queue } from "effect"
import type { Scope } from "effect"
import { AccessDenied, checkDatabaseAccess, disconnectExpiredCert } from "../../domain/Rbac.ts"
import { EngineError } from "../engine.ts"
import type { AuditRecord, DatabaseClientCredentials, DatabaseTls, Engine, SessionContext } from "../engine.ts"
import { SqlState, protocolErrorResponse, toErrorResponse } from "./errors.ts"
import { BackendCode, CANCEL_REQUEST_CODE, startupParameters } from "./messages.ts"
import type { Bind, CancelRequest, FrontendMessage, NoticeFields, StartupMessage } from "./messages.ts"
import { FrameSplitter, FrontendParser, decodeBackend } from "./parser.ts"
import type { ProtocolError } from "./parser.ts"
import { decodeText } from "./reader.ts"
import { serializeBackend, serializeFrontend } from "./serializer.ts"

// ---------------------------------------------------------------------------------------------
// Limits

/** How long a client may take to send its StartupMessage. */
const STARTUP_TIMEOUT_MS = 30_000
/** How long connecting, TLS and authentication with the database may take. */
const UPSTREAM_TIMEOUT_MS = 30_000
/** Audit records queued before the client's reads pause until the audit sink catches up. */
const AUDIT_HIGH_WATER = 1024
const AUDIT_LOW_WATER = 256
/** Binary parameters up to this size are audited as hex; larger ones as `$binary(len)`. */
const BINARY_PARAM_HEX_LIMIT = 64

/** 'N': we do not speak TLS or GSS encryption here (TLS ended at the proxy). */
const REFUSE_ENCRYPTION = Uint8Array.of(0x4e)
/** 'X' with length 4. */
const TERMINATE = Uint8Array.of(0x58, 0, 0, 0, 4)

// ---------------------------------------------------------------------------------------------
// Errors: the one place where a failure becomes ErrorResponse bytes

/** The database itself refused the session (bad database name, cert auth failed…): relayed verbatim. */
export class UpstreamRefused extends Error {
  readonly _tag = "UpstreamRefused"
  constructor(readonly fields: NoticeFields) {
    super(fields.message ?? "the database refused the connection")
  }
}

const sqlStateOf = (reason: EngineError["reason"]): string => {
  switch (reason) {
    case "ClientProtocol":
    case "UpstreamProtocol":
      return SqlState.ProtocolViolation
    case "RouteMismatch":
    case "CertificateExpired":
    case "UpstreamAuth":
      return SqlState.InvalidAuthorizationSpecification
    case "CertificateIssue":
      return SqlState.InternalError
    case "ClientClosed":
    case "UpstreamConnect":
    case "UpstreamTls":
    case "UpstreamClosed":
    case "Timeout":
      return SqlState.ConnectionFailure
  }
}

const isProtocolError = (u: unknown): u is ProtocolError =>
  typeof u === "object" && u !== null && (u as { kind?: unknown }).kind === "error" && typeof (u as { reason?: unknown }).reason === "string"

/**
 * The ErrorResponse (FATAL: every engine refusal ends the session) for any failure. Unknown
 * failures become a generic message: a client never sees a stack trace.
 */
export const errorResponseFor = (err: unknown): Uint8Array => {
  if (err instanceof UpstreamRefused) return serializeBackend({ kind: "errorResponse", fields: err.fields })
  if (err instanceof AccessDenied) {
    return toErrorResponse({ severity: "FATAL", code: SqlState.InvalidAuthorizationSpecification, message: err.message })
  }
  if (err instanceof EngineError) {
    if (err.reason === "ClientProtocol" && isProtocolError(err.cause)) return protocolErrorResponse(err.cause)
    return toErrorResponse({ severity: "FATAL", code: sqlStateOf(err.reason), message: err.message })
  }
  return toErrorResponse({ severity: "FATAL", code: SqlState.InternalError, message: "internal error in the database agent" })
}

const messageOf = (err: unknown): string =>
  err instanceof UpstreamRefused || err instanceof AccessDenied || err instanceof EngineError ? err.message : "internal error"

// ---------------------------------------------------------------------------------------------
// Cancel registry

/** A cancel key: the process id and secret a BackendKeyData carries. */
export interface CancelKey {
  readonly processId: number
  readonly secretKey: Uint8Array
}

interface CancelTarget {
  readonly sessionSecret: Uint8Array
  readonly upstreamKey: CancelKey
  readonly uri: string
  readonly tls: DatabaseTls
}

const secretBytes = (secret: Uint8Array | number): Uint8Array => {
  if (typeof secret !== "number") return secret
  const out = new Uint8Array(4)
  new DataView(out.buffer).setInt32(0, secret)
  return out
}

/**
 * Session cancel keys handed to clients, mapped to the database's own keys. A client's
 * CancelRequest (on a new connection) carries our key; `cancel` forwards the database's.
 */
export class CancelRegistry {
  private readonly sessions = new Map<number, CancelTarget>()

  /** A fresh key (random pid not in use, random 4-byte secret) for a new session. */
  newSessionKey(): CancelKey {
    for (;;) {
      const processId = randomInt(1, 2 ** 31 - 1)
      if (!this.sessions.has(processId)) return { processId, secretKey: new Uint8Array(randomBytes(4)) }
    }
  }

  register(sessionKey: CancelKey, upstreamKey: CancelKey, uri: string, tlsInfo: DatabaseTls): Effect.Effect<void> {
    return Effect.sync(() => {
      this.sessions.set(sessionKey.processId, { sessionSecret: sessionKey.secretKey, upstreamKey, uri, tls: tlsInfo })
    })
  }

  unregister(sessionKey: CancelKey): Effect.Effect<void> {
    return Effect.sync(() => {
      const t = this.sessions.get(sessionKey.processId)
      if (t !== undefined && sameBytes(t.sessionSecret, sessionKey.secretKey)) this.sessions.delete(sessionKey.processId)
    })
  }

  /** Number of live sessions (for tests and metrics). */
  get size(): number {
    return this.sessions.size
  }

  /**
   * Forwards a cancel for our key `(processId, secret)` to the database. True when the key was
   * known and the CancelRequest was delivered; PostgreSQL never answers one, so that is all we know.
   * Sent without TLS: the postmaster reads a CancelRequest before any authentication.
   */
  cancel(processId: number, secret: Uint8Array | number): Effect.Effect<boolean> {
    return Effect.suspend(() => {
      const t = this.sessions.get(processId)
      if (t === undefined || !sameBytes(t.sessionSecret, secretBytes(secret))) return Effect.succeed(false)
      const bytes = serializeFrontend({ kind: "cancelRequest", processId: t.upstreamKey.processId, secretKey: t.upstreamKey.secretKey })
      return sendCancel(t.uri, bytes)
    })
  }
}

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => a.length === b.length && timingSafeEqual(a, b)

const sendCancel = (uri: string, bytes: Uint8Array): Effect.Effect<boolean> =>
  Effect.async<boolean>((resume) => {
    const { host, port } = parseHostPort(uri)
    const socket = net.connect({ host, port })
    let sent = false
    socket.once("connect", () => {
      socket.end(bytes, () => {
        sent = true
      })
    })
    // The server closes the connection once it has read the request.
    socket.once("close", () => resume(Effect.succeed(sent)))
    socket.on("error", () => undefined)
    socket.setTimeout(5_000, () => socket.destroy())
    return Effect.sync(() => socket.destroy())
  })

/** The agent-wide registry of PostgreSQL cancel keys. */
export const PostgresCancelRegistry = new CancelRegistry()

/** Forwards a client's CancelRequest (our session key) to the database. */
export const cancelRequest = (processId: number, secret: Uint8Array | number): Effect.Effect<boolean> =>
  PostgresCancelRegistry.cancel(processId, secret)

/** True when `bytes` is a whole 16-byte CancelRequest (length 16, code 80877102). */
export const isCancelRequest = (bytes: Uint8Array): boolean => {
  if (bytes.length !== 16) return false
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  return v.getInt32(0) === 16 && v.getInt32(4) === CANCEL_REQUEST_CODE
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** `host:port`, `[v6]:port`; the port defaults to 5432. */
export const parseHostPort = (uri: string): { host: string; port: number } => {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(uri) ?? /^([^:]+)(?::(\d+))?$/.exec(uri)
  if (m === null) return { host: uri, port: 5432 }
  return { host: m[1]!, port: m[2] === undefined ? 5432 : Number(m[2]) }
}

const toBytes = (chunk: unknown): Uint8Array => (typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Uint8Array))

/** Ends a stream after writing `bytes`, waiting (briefly) until they are flushed. */
const endStream = (stream: Duplex, bytes?: Uint8Array): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (stream.destroyed || stream.writableEnded) {
      resume(Effect.void)
      return
    }
    const done = () => resume(Effect.void)
    stream.once("finish", done)
    stream.once("close", done)
    const timer = setTimeout(done, 5_000)
    if (bytes === undefined) stream.end()
    else stream.end(bytes)
    return Effect.sync(() => {
      clearTimeout(timer)
      stream.off("finish", done)
      stream.off("close", done)
    })
  })

/** Parameters of a Bind as audited: text as strings, small binary as `\x..` hex, large as `$binary(len)`. */
export const formatParameters = (bind: Bind): Array<string | null> =>
  bind.values.map((v, i) => {
    if (v === null) return null
    const f = bind.paramFormats.length === 0 ? 0 : bind.paramFormats.length === 1 ? bind.paramFormats[0] : bind.paramFormats[i]
    if (f === 0) return decodeText(v)
    return v.length <= BINARY_PARAM_HEX_LIMIT ? `\\x${Buffer.from(v.buffer, v.byteOffset, v.length).toString("hex")}` : `$binary(${v.length})`
  })

// ---------------------------------------------------------------------------------------------
// Startup

interface StartupRead {
  readonly message: StartupMessage | CancelRequest
  /** Typed messages that arrived in the same chunks after the StartupMessage. */
  readonly extra: ReadonlyArray<FrontendMessage>
}

/** Reads the client's startup packet, refusing SSLRequest/GSSENCRequest with 'N'. */
const readStartup = (client: Duplex, parser: FrontendParser): Effect.Effect<StartupRead, EngineError> =>
  Effect.async<StartupRead, EngineError>((resume) => {
    let finished = false
    const finish = (e: Effect.Effect<StartupRead, EngineError>) => {
      if (finished) return
      finished = true
      cleanup()
      resume(e)
    }
    const onData = (chunk: unknown) => {
      const msgs = parser.push(toBytes(chunk))
      for (let i = 0; i < msgs.length; i++) {
        const m = msgs[i]!
        switch (m.kind) {
          case "error":
            return finish(Effect.fail(new EngineError({ reason: "ClientProtocol", message: m.detail, cause: m })))
          case "sslRequest":
          case "gssEncRequest":
            client.write(REFUSE_ENCRYPTION)
            parser.rearmStartup()
            break
          case "startup":
          case "cancelRequest":
            return finish(Effect.succeed({ message: m, extra: msgs.slice(i + 1) as Array<FrontendMessage> }))
          case "unknownRequest":
            return finish(
              Effect.fail(
                new EngineError({
                  reason: "ClientProtocol",
                  message: `unsupported frontend protocol ${m.code >>> 16}.${m.code & 0xffff}: server supports 3.0 to 3.2`
                })
              )
            )
          default:
            return finish(Effect.fail(new EngineError({ reason: "ClientProtocol", message: `unexpected message before startup` })))
        }
      }
    }
    const onEnd = () => finish(Effect.fail(new EngineError({ reason: "ClientClosed", message: "client closed the connection before startup" })))
    const cleanup = () => {
      client.off("data", onData)
      client.off("end", onEnd)
      client.off("close", onEnd)
      client.pause()
    }
    client.on("data", onData)
    client.once("end", onEnd)
    client.once("close", onEnd)
    client.resume()
    return Effect.sync(() => {
      finished = true
      cleanup()
    })
  })

// ---------------------------------------------------------------------------------------------
// Upstream

const SSL_REQUEST = serializeFrontend({ kind: "sslRequest" })

/** TCP to the database, SSLRequest, then TLS with the db-CA client certificate. */
const connectUpstream = (
  uri: string,
  dbName: string,
  tlsInfo: DatabaseTls,
  creds: DatabaseClientCredentials
): Effect.Effect<tls.TLSSocket, EngineError> =>
  Effect.async<tls.TLSSocket, EngineError>((resume) => {
    const { host, port } = parseHostPort(uri)
    const raw = net.connect({ host, port })
    let secure: tls.TLSSocket | undefined
    let finished = false
    const fail = (reason: EngineError["reason"], message: string, cause?: unknown) => {
      if (finished) return
      finished = true
      raw.destroy()
      secure?.destroy()
      resume(Effect.fail(new EngineError({ reason, message, cause })))
    }
    raw.setNoDelay(true)
    raw.on("error", (e) => fail("UpstreamConnect", `cannot connect to database ${dbName} at ${uri}: ${e.message}`, e))
    raw.once("close", () => fail("UpstreamConnect", `database ${dbName} at ${uri} closed the connection during the TLS handshake`))
    raw.once("connect", () => raw.write(SSL_REQUEST))
    const onData = (chunk: Buffer) => {
      raw.off("data", onData)
      raw.pause()
      if (chunk[0] !== 0x53) {
        return fail("UpstreamTls", `database ${dbName} at ${uri} does not accept TLS connections`)
      }
      // Bytes after 'S' arrived unencrypted and could be injected (CVE-2021-23222).
      if (chunk.length > 1) return fail("UpstreamProtocol", `database ${dbName} sent unencrypted data after its TLS answer`)
      const ca = tlsInfo.caCertPem !== undefined ? [tlsInfo.caCertPem] : [...creds.caPems]
      const serverName = tlsInfo.serverName ?? host
      const options: tls.ConnectionOptions = {
        socket: raw,
        cert: creds.certPem,
        key: creds.keyPem,
        ca,
        rejectUnauthorized: tlsInfo.mode !== "insecure",
        checkServerIdentity:
          tlsInfo.mode === "verify-full" ? (_host, cert) => tls.checkServerIdentity(serverName, cert) : () => undefined
      }
      if (net.isIP(serverName) === 0) options.servername = serverName
      secure = tls.connect(options)
      secure.on("error", (e) => fail("UpstreamTls", `TLS with database ${dbName} at ${uri} failed: ${e.message}`, e))
      secure.once("secureConnect", () => {
        if (finished) return
        finished = true
        raw.removeAllListeners("close")
        raw.removeAllListeners("error")
        raw.on("error", () => undefined)
        secure!.removeAllListeners("error")
        secure!.on("error", () => undefined)
        secure!.setNoDelay(true)
        resume(Effect.succeed(secure!))
      })
    }
    raw.on("data", onData)
    return Effect.sync(() => {
      finished = true
      raw.destroy()
      secure?.destroy()
    })
  })

interface Handshake {
  /** Frames for the client up to and including ReadyForQuery; BackendKeyData already replaced. */
  readonly toClient: ReadonlyArray<Uint8Array>
  /** The database's cancel key, if it sent one. */
  readonly upstreamKey: CancelKey | undefined
  /** Bytes after ReadyForQuery that arrived with it, to relay raw. */
  readonly trailing: Uint8Array
}

/** Sends the StartupMessage and reads the database's answer up to the first ReadyForQuery. */
const upstreamHandshake = (
  upstream: tls.TLSSocket,
  startup: Uint8Array,
  dbName: string,
  sessionKey: CancelKey
): Effect.Effect<Handshake, EngineError | UpstreamRefused> =>
  Effect.async<Handshake, EngineError | UpstreamRefused>((resume) => {
    const splitter = new FrameSplitter()
    const toClient: Array<Uint8Array> = []
    let upstreamKey: CancelKey | undefined
    let pushed = 0
    let emitted = 0
    let finished = false
    const finish = (e: Effect.Effect<Handshake, EngineError | UpstreamRefused>) => {
      if (finished) return
      finished = true
      cleanup()
      resume(e)
    }
    const protocol = (detail: string) =>
      finish(Effect.fail(new EngineError({ reason: "UpstreamProtocol", message: `database ${dbName}: ${detail}` })))
    const onData = (chunk: Buffer) => {
      pushed += chunk.length
      for (const f of splitter.push(chunk)) {
        if (f.kind === "error") return protocol(f.detail)
        emitted += f.bytes.length
        switch (f.code) {
          case BackendCode.Authentication: {
            const m = decodeBackend(f.code, f.body)
            if (m.kind === "error") return protocol(m.detail)
            if (m.kind !== "authenticationOk") {
              return finish(
                Effect.fail(
                  new EngineError({
                    reason: "UpstreamAuth",
                    message:
                      `database ${dbName} asked for ${m.kind.replace(/^authentication/, "")} authentication; ` +
                      `the database agent authenticates with client certificates only (pg_hba.conf: hostssl ... cert)`
                  })
                )
              )
            }
            toClient.push(f.bytes)
            break
          }
          case BackendCode.BackendKeyData: {
            const m = decodeBackend(f.code, f.body)
            if (m.kind !== "backendKeyData") return protocol(m.kind === "error" ? m.detail : "bad BackendKeyData")
            upstreamKey = { processId: m.processId, secretKey: new Uint8Array(m.secretKey) }
            toClient.push(serializeBackend({ kind: "backendKeyData", ...sessionKey }))
            break
          }
          case BackendCode.ErrorResponse: {
            const m = decodeBackend(f.code, f.body)
            if (m.kind !== "errorResponse") return protocol(m.kind === "error" ? m.detail : "bad ErrorResponse")
            return finish(Effect.fail(new UpstreamRefused(m.fields)))
          }
          case BackendCode.ReadyForQuery: {
            toClient.push(f.bytes)
            // Everything after ReadyForQuery in this chunk is relayed raw, whole frames or not.
            const trailing = chunk.subarray(chunk.length - (pushed - emitted))
            return finish(Effect.succeed({ toClient, upstreamKey, trailing }))
          }
          default:
            // ParameterStatus, NoticeResponse, NegotiateProtocolVersion: the client's business.
            toClient.push(f.bytes)
        }
      }
    }
    const onClose = () =>
      finish(Effect.fail(new EngineError({ reason: "UpstreamClosed", message: `database ${dbName} closed the connection during startup` })))
    const cleanup = () => {
      upstream.off("data", onData)
      upstream.off("end", onClose)
      upstream.off("close", onClose)
      upstream.pause()
    }
    upstream.on("data", onData)
    upstream.once("end", onClose)
    upstream.once("close", onClose)
    upstream.write(startup)
    return Effect.sync(() => {
      finished = true
      cleanup()
    })
  })

// ---------------------------------------------------------------------------------------------
// Relay

/**
 * Tracks typed-frame boundaries in a byte stream without buffering it: a few operations per
 * frame, so the server-to-client direction stays a raw pipe while we can still insert an
 * ErrorResponse between two frames.
 */
class FrameBoundaries {
  private readonly header = new Uint8Array(5)
  private headerFill = 0
  private remaining = 0
  /** Set when a length is impossible: boundaries are unknown from then on. */
  broken = false

  get atBoundary(): boolean {
    return !this.broken && this.headerFill === 0 && this.remaining === 0
  }

  /** Consumes `chunk`; with `stopAtBoundary`, stops at the first boundary and returns its offset. */
  advance(chunk: Uint8Array, stopAtBoundary: boolean): number {
    let off = 0
    const n = chunk.length
    while (off < n) {
      if (stopAtBoundary && this.atBoundary) return off
      if (this.remaining > 0) {
        const k = Math.min(this.remaining, n - off)
        this.remaining -= k
        off += k
        continue
      }
      this.header[this.headerFill++] = chunk[off++]!
      if (this.headerFill === 5) {
        const len = new DataView(this.header.buffer).getInt32(1)
        this.headerFill = 0
        if (len < 4) this.broken = true
        this.remaining = Math.max(0, len - 4)
      }
    }
    return off
  }
}

type EndReason =
  | { readonly kind: "client-terminated" }
  | { readonly kind: "client-closed" }
  | { readonly kind: "client-protocol"; readonly error: ProtocolError }
  | { readonly kind: "upstream-closed"; readonly message: string }
  | { readonly kind: "expired" }
  | { readonly kind: "audit-failed"; readonly message: string }

interface PipeHooks {
  /** Called for each message the client sends, before its bytes go upstream. */
  readonly onClientMessage: (m: FrontendMessage) => void
  readonly onEnd: (reason: EndReason) => void
  readonly lostMessage: string
}

/** The byte relay between client and database, with backpressure both ways. */
class SessionPipe {
  private readonly boundaries = new FrameBoundaries()
  private readonly clientPauses = new Set<"upstream" | "audit" | "stopped">()
  private ended = false
  private clientTerminated = false
  /** An ErrorResponse waiting for the next frame boundary in the server stream. */
  private pendingInjection: Uint8Array | undefined
  private afterInjection: EndReason | undefined

  constructor(
    private readonly client: Duplex,
    private readonly upstream: Duplex,
    private readonly parser: FrontendParser,
    private readonly hooks: PipeHooks
  ) {}

  /** True once the session is ending: nothing more goes upstream. */
  get stopped(): boolean {
    return this.ended || this.clientPauses.has("stopped")
  }

  start(initialToClient: Uint8Array): void {
    if (this.ended) return
    const { client, upstream } = this
    client.on("data", this.onClientData)
    client.once("end", this.onClientEnd)
    client.once("close", this.onClientEnd)
    upstream.on("data", this.onUpstreamData)
    upstream.once("end", this.onUpstreamEnd)
    upstream.once("close", this.onUpstreamEnd)
    upstream.on("error", this.onUpstreamError)
    if (initialToClient.length > 0) this.onUpstreamData(initialToClient)
    upstream.resume()
    client.resume()
  }

  pauseClient(why: "upstream" | "audit" | "stopped"): void {
    this.clientPauses.add(why)
    this.client.pause()
  }

  resumeClient(why: "upstream" | "audit"): void {
    if (!this.clientPauses.delete(why) || this.clientPauses.size > 0 || this.ended) return
    this.client.resume()
  }

  /** Stops reading the client, sends `error` at the next frame boundary, then ends with `reason`. */
  terminate(error: Uint8Array, reason: EndReason): void {
    if (this.ended || this.pendingInjection !== undefined) return
    this.pauseClient("stopped")
    if (this.boundaries.atBoundary) {
      this.client.end(error)
      this.finish(reason)
      return
    }
    this.pendingInjection = error
    this.afterInjection = reason
    // A database that never finishes its frame does not keep the session open.
    setTimeout(() => {
      if (this.ended) return
      this.client.end()
      this.finish(reason)
    }, 5_000).unref()
  }

  /** Removes our listeners (sockets are destroyed by the session's scope). */
  stop(): void {
    this.ended = true
    const { client, upstream } = this
    client.off("data", this.onClientData)
    client.off("end", this.onClientEnd)
    client.off("close", this.onClientEnd)
    upstream.off("data", this.onUpstreamData)
    upstream.off("end", this.onUpstreamEnd)
    upstream.off("close", this.onUpstreamEnd)
  }

  private finish(reason: EndReason): void {
    if (this.ended) return
    this.stop()
    this.hooks.onEnd(reason)
  }

  private readonly onClientData = (chunk: unknown): void => {
    if (this.ended || this.clientPauses.has("stopped")) return
    const bytes = toBytes(chunk)
    for (const m of this.parser.push(bytes)) {
      if (m.kind === "error") {
        this.terminate(protocolErrorResponse(m), { kind: "client-protocol", error: m })
        return
      }
      if (m.kind === "terminate") this.clientTerminated = true
      this.hooks.onClientMessage(m)
      // A hook may end the session (the audit could not be written): then nothing goes upstream.
      if (this.stopped) return
    }
    if (!this.upstream.write(bytes)) {
      this.pauseClient("upstream")
      this.upstream.once("drain", () => this.resumeClient("upstream"))
    }
  }

  private readonly onClientEnd = (): void => {
    if (this.ended) return
    // A client that vanished mid-session gets a Terminate sent on its behalf, when that is a whole frame.
    if (!this.clientTerminated && this.parser.pendingBytes === 0 && this.upstream.writable) this.upstream.write(TERMINATE)
    this.upstream.end()
    this.finish(this.clientTerminated ? { kind: "client-terminated" } : { kind: "client-closed" })
  }

  private readonly onUpstreamData = (chunk: unknown): void => {
    if (this.ended) return
    let bytes = toBytes(chunk)
    if (this.pendingInjection !== undefined) {
      const upTo = this.boundaries.advance(bytes, true)
      bytes = bytes.subarray(0, upTo)
      if (this.boundaries.atBoundary) {
        this.client.write(bytes)
        this.client.end(this.pendingInjection)
        this.finish(this.afterInjection!)
        return
      }
    } else {
      this.boundaries.advance(bytes, false)
    }
    if (!this.client.write(bytes)) {
      this.upstream.pause()
      this.client.once("drain", () => {
        if (!this.ended) this.upstream.resume()
      })
    }
  }

  private lastUpstreamError: string | undefined

  private readonly onUpstreamError = (e: Error): void => {
    this.lastUpstreamError = e.message
  }

  private readonly onUpstreamEnd = (): void => {
    if (this.ended) return
    if (this.clientTerminated) {
      this.client.end()
      this.finish({ kind: "client-terminated" })
      return
    }
    const message = this.hooks.lostMessage + (this.lastUpstreamError === undefined ? "" : `: ${this.lastUpstreamError}`)
    const reason: EndReason = { kind: "upstream-closed", message }
    // Mid-frame, an ErrorResponse would corrupt the stream; the client only sees the close then.
    if (this.boundaries.atBoundary) {
      this.client.end(toErrorResponse({ severity: "FATAL", code: SqlState.ConnectionFailure, message }))
    } else {
      this.client.end()
    }
    this.finish(reason)
  }
}

// ---------------------------------------------------------------------------------------------
// The session

type AuditItem = { readonly record: AuditRecord } | { readonly flushed: Deferred.Deferred<void> }

/** Sends `err` as an ErrorResponse and ends the client connection. */
const refuse = (client: Duplex, err: unknown): Effect.Effect<void> => endStream(client, errorResponseFor(err))

const handleSession = (ctx: SessionContext): Effect.Effect<void, never, Scope.Scope> => {
  const { client, identity, database } = ctx
  const route = identity.routeToDatabase
  return Effect.gen(function* () {
    // Socket errors surface as 'close'; an unhandled 'error' event would take the agent down.
    client.on("error", () => undefined)
    yield* Effect.addFinalizer(() => Effect.sync(() => client.destroy()))
    const parser = new FrontendParser()
    const first = yield* readStartup(client, parser).pipe(
      Effect.timeoutFail({
        duration: STARTUP_TIMEOUT_MS,
        onTimeout: () => new EngineError({ reason: "Timeout", message: "timeout waiting for the startup packet" })
      }),
      Effect.tapError((e) => (e.reason === "ClientClosed" ? Effect.void : refuse(client, e))),
      Effect.either
    )
    if (Either.isLeft(first)) return
    if (first.right.message.kind === "cancelRequest") {
      const { processId, secretKey } = first.right.message
      yield* PostgresCancelRegistry.cancel(processId, secretKey)
      return yield* endStream(client)
    }
    const startup = first.right.message
    const params = startupParameters(startup)
    const dbUser = route.username
    const requestedDb = params["database"] ?? params["user"] ?? ""
    const dbName = route.database !== undefined && route.database !== "" ? route.database : requestedDb

    let ei = 0
    const fields = {
      user: identity.username,
      sid: ctx.sessionId,
      cluster_name: ctx.clusterName,
      server_id: ctx.hostId,
      db_service: database.name,
      db_protocol: "postgres",
      db_uri: database.uri,
      db_user: dbUser,
      db_name: dbName
    }
    const record = (type: string, code: string, extra: Record<string, unknown>): AuditRecord => ({
      type,
      code,
      fields: { ...fields, ei: ei++, ...extra }
    })

    const sessionKey = PostgresCancelRegistry.newSessionKey()
    const established = yield* Effect.gen(function* () {
      if (params["user"] !== dbUser) {
        return yield* new EngineError({
          reason: "RouteMismatch",
          message: `the certificate is for db user ${dbUser}, but the client asked for db user ${params["user"] ?? "(none)"}`
        })
      }
      if (requestedDb !== dbName) {
        return yield* new EngineError({
          reason: "RouteMismatch",
          message: `the certificate is for database ${dbName}, but the client asked for database ${requestedDb}`
        })
      }
      if (route.serviceName !== database.name) {
        return yield* new EngineError({
          reason: "RouteMismatch",
          message: `the certificate routes to db ${route.serviceName}, not to db ${database.name}`
        })
      }
      const nowMs = ctx.now !== undefined ? ctx.now().getTime() : yield* Clock.currentTimeMillis
      if (identity.expires.getTime() <= nowMs) {
        return yield* new EngineError({ reason: "CertificateExpired", message: `certificate expired at ${identity.expires.toISOString()}` })
      }
      const decision = checkDatabaseAccess(ctx.roles, identity.traits, { name: database.name, labels: database.labels }, dbUser, dbName)
      if (Either.isLeft(decision)) return yield* decision.left

      const creds = yield* ctx.issueClientCert(dbUser)
      const upstream = yield* Effect.acquireRelease(connectUpstream(database.uri, database.name, database.tls, creds), (s) =>
        Effect.sync(() => s.destroy())
      )
      // The database sees what the client asked for, with the user and database the certificate allows.
      const upstreamParams = startup.parameters.map(([k, v]) =>
        k === "user" ? ([k, dbUser] as const) : k === "database" ? ([k, dbName] as const) : ([k, v] as const)
      )
      if (params["database"] === undefined) upstreamParams.push(["database", dbName])
      const startupBytes = serializeFrontend({ kind: "startup", protocolVersion: startup.protocolVersion, parameters: upstreamParams })
      const handshake = yield* upstreamHandshake(upstream, startupBytes, database.name, sessionKey)
      return { upstream, handshake }
    }).pipe(
      Effect.timeoutFail({
        duration: UPSTREAM_TIMEOUT_MS,
        onTimeout: () => new EngineError({ reason: "Timeout", message: `timeout connecting to database ${database.name}` })
      }),
      Effect.tapError((e) =>
        Effect.zipRight(
          ctx.audit(record("db.session.start", "TDB00W", { success: false, error: messageOf(e) })),
          refuse(client, e)
        )
      ),
      Effect.either
    )
    if (Either.isLeft(established)) return
    const { upstream, handshake } = established.right

    if (handshake.upstreamKey !== undefined) {
      yield* Effect.acquireRelease(
        PostgresCancelRegistry.register(sessionKey, handshake.upstreamKey, database.uri, database.tls),
        () => PostgresCancelRegistry.unregister(sessionKey)
      )
    }
    yield* ctx.audit(record("db.session.start", "TDB00I", { success: true }))

    // Audit records go through one queue, consumed in order; reads from the client pause while
    // the sink is far behind, so a slow sink slows the session instead of losing records.
    const audits = yield* Queue.unbounded<AuditItem>()
    let backlog = 0
    const done = yield* Deferred.make<EndReason>()
    const pipe = new SessionPipe(client, upstream, parser, {
      onClientMessage: (m) => onClientMessage(m),
      onEnd: (reason) => Deferred.unsafeDone(done, Exit.succeed(reason)),
      lostMessage: `connection to database ${database.name} lost`
    })
    yield* Effect.forkScoped(
      Effect.forever(
        Effect.flatMap(Queue.take(audits), (item) =>
          "flushed" in item
            ? Deferred.succeed(item.flushed, undefined)
            : Effect.zipRight(
                ctx.audit(item.record),
                Effect.sync(() => {
                  backlog--
                  if (backlog <= AUDIT_LOW_WATER) pipe.resumeClient("audit")
                })
              )
        )
      )
    )
    const appendAudit = ctx.appendAudit
    const emit =
      appendAudit !== undefined
        ? // The record is in the agent's buffer before the message that caused it is forwarded (the
          // pipe writes upstream after its hooks ran); no queue, no await per query. A record that
          // cannot be written ends the session: nothing runs that is not audited.
          (r: AuditRecord) => {
            try {
              appendAudit(r)
            } catch (e) {
              const message = `cannot write the audit log: ${e instanceof Error ? e.message : String(e)}`
              pipe.terminate(toErrorResponse({ severity: "FATAL", code: SqlState.InternalError, message }), { kind: "audit-failed", message })
            }
          }
        : (r: AuditRecord) => {
            backlog++
            Queue.unsafeOffer(audits, { record: r })
            if (backlog >= AUDIT_HIGH_WATER) pipe.pauseClient("audit")
          }

    // Extended protocol: statement name -> SQL, portal -> SQL and parameters, audited on Execute.
    const statements = new Map<string, string>()
    const portals = new Map<string, { readonly query: string; readonly parameters: Array<string | null> }>()
    const query = (text: string, parameters?: Array<string | null>) =>
      emit(
        record("db.session.query", "TDB02I", {
          db_query: text,
          ...(parameters !== undefined ? { db_query_parameters: parameters } : {}),
          success: true
        })
      )
    const onClientMessage = (m: FrontendMessage): void => {
      switch (m.kind) {
        case "query":
          return query(m.text)
        case "parse":
          statements.set(m.name, m.text)
          return
        case "bind":
          portals.set(m.portal, { query: statements.get(m.statement) ?? "", parameters: formatParameters(m) })
          return
        case "execute": {
          const p = portals.get(m.portal)
          if (p !== undefined) query(p.query, p.parameters)
          return
        }
        case "close":
          if (m.target === "S") statements.delete(m.name)
          else portals.delete(m.name)
          return
        default:
          return
      }
    }

    const toClient = Buffer.concat([...handshake.toClient, handshake.trailing])
    // Messages the client pipelined behind its StartupMessage: audited and sent on now.
    for (const m of first.right.extra) {
      onClientMessage(m)
      if (pipe.stopped) break
      upstream.write(serializeFrontend(m))
    }
    const activePipe = pipe
    activePipe.start(toClient)
    yield* Effect.addFinalizer(() => Effect.sync(() => activePipe.stop()))

    if (disconnectExpiredCert(ctx.roles)) {
      const nowMs = ctx.now !== undefined ? ctx.now().getTime() : yield* Clock.currentTimeMillis
      yield* Effect.forkScoped(
        Effect.sleep(Math.max(0, identity.expires.getTime() - nowMs)).pipe(
          Effect.andThen(
            Effect.sync(() =>
              activePipe.terminate(
                toErrorResponse({
                  severity: "FATAL",
                  code: SqlState.InvalidAuthorizationSpecification,
                  message: `certificate expired at ${identity.expires.toISOString()}; session ended`
                }),
                { kind: "expired" }
              )
            )
          )
        )
      )
    }

    const endSession = (reason: EndReason | undefined) =>
      Effect.gen(function* () {
        const flushed = yield* Deferred.make<void>()
        yield* Queue.offer(audits, { flushed })
        yield* Deferred.await(flushed)
        const error =
          reason === undefined
            ? "session interrupted"
            : reason.kind === "upstream-closed"
              ? reason.message
              : reason.kind === "client-protocol"
                ? reason.error.detail
                : reason.kind === "expired"
                  ? "certificate expired"
                  : reason.kind === "audit-failed"
                    ? reason.message
                    : undefined
        yield* ctx.audit(record("db.session.end", "TDB01I", error === undefined ? {} : { reason: error }))
      })

    const reason = yield* Deferred.await(done).pipe(Effect.onInterrupt(() => endSession(undefined)))
    // Closing the socket does not stop a running statement (the backend notices only when it next
    // writes), so a session we end ourselves also cancels what it was running.
    if (reason.kind === "expired" && handshake.upstreamKey !== undefined) {
      yield* sendCancel(database.uri, serializeFrontend({ kind: "cancelRequest", ...handshake.upstreamKey }))
    }
    yield* endStream(client)
    yield* endSession(reason)
  }).pipe(
    Effect.catchAllDefect((defect) =>
      Effect.zipRight(Effect.logError("postgres session failed", defect), refuse(client, defect))
    )
  )
}

/** Writes `err` as an ErrorResponse (without closing the connection). */
const sendError = (client: Duplex, err: unknown): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (client.destroyed || client.writableEnded) return resume(Effect.void)
    client.write(errorResponseFor(err), () => resume(Effect.void))
  })

/** The PostgreSQL engine. */
export const PostgresEngine: Engine = {
  protocol: "postgres",
  handleSession,
  sendError
}
