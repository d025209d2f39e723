/**
 * The MySQL/MariaDB engine of the database agent: one call to `handleSession` per user connection
 * (cf. Teleport's lib/srv/db/mysql/engine.go).
 *
 * MySQL servers speak first, so the proxy front greets the client itself (with the real server's
 * version and capabilities, learned by the agent), terminates TLS and hands over:
 *
 *     proxy front                        agent (this engine)                      MySQL/MariaDB
 *     session header, client's     ──▶  route + RBAC (db_users, db_names)
 *     HandshakeResponse41                TCP ──────────────────────────────────▶  HandshakeV10
 *                                        SSLRequest, TLS with the db-CA client cert
 *                                        HandshakeResponse41 (db user, no password) ▶  OK / AuthSwitch…
 *     OK (the server's, re-sequenced) ◀─ after db.session.start
 *     COM_* packets                   ──▶ framed, audited, checked (COM_INIT_DB, USE, COM_CHANGE_USER)
 *     everything                      ◀── raw bytes (framed on the side to learn prepared statements)
 *
 * Refusals reach the client as an ERR packet naming the user, the database and the rule.
 */
import * as net from "node:net"
import type { Duplex } from "node:stream"
import * as tls from "node:tls"
import { Clock, Deferred, Effect, Either, Exit, Runtime } from "effect"
import type { Scope } from "effect"
import { AccessDenied, checkDatabaseAccess, disconnectExpiredCert } from "../../domain/Rbac.ts"
import { EngineError } from "../engine.ts"
import type { AuditRecord, DatabaseClientCredentials, DatabaseTls, Engine, SessionContext } from "../engine.ts"
import { decodeText } from "../internal/text.ts"
import { readPacket } from "./io.ts"
import type { ReadFailure, WirePacket } from "./io.ts"
import { Capability, ColumnType, Command } from "./messages.ts"
import type { BinaryValue, BoundParam, ErrPacket, HandshakeResponse41, HandshakeV10 } from "./messages.ts"
import { PacketSplitter, framePacket } from "./packet.ts"
import type { ProtocolError } from "./packet.ts"
import { ServerPacketParser, decodeAuthResponse, decodeCommand, decodeErr, decodeHandshake, decodeHandshakeResponse } from "./parser.ts"
import type { ParamType, StatementInfo } from "./parser.ts"
import { ErrorCode, errPacket, protocolErrPacket, serializeClient, serializeServer } from "./serializer.ts"

// ---------------------------------------------------------------------------------------------
// Limits and constants

/** How long the proxy may take to hand over the client's handshake response. */
const HELLO_TIMEOUT_MS = 30_000
/** How long connecting, TLS and authentication with the database may take. */
const UPSTREAM_TIMEOUT_MS = 30_000
/** Handshake packets are small; anything larger in those phases is a lie. */
const MAX_HANDSHAKE_PACKET = 64 * 1024
/** Audit records queued before the client's reads pause until the audit sink catches up. */
const AUDIT_HIGH_WATER = 1024
const AUDIT_LOW_WATER = 256
/** Binary parameters up to this size are audited as hex; larger ones as `$binary(len)`. */
const BINARY_PARAM_HEX_LIMIT = 64
/** Text parameters are audited up to this many characters, the rest cut with its length noted. */
const TEXT_PARAM_AUDIT_LIMIT = 1024
/**
 * Query text is audited up to this many characters: a 20 MiB INSERT would otherwise make one audit
 * event larger than an agent's upload may be, and hold back every event after it.
 */
const QUERY_AUDIT_LIMIT = 1024 * 1024

/** `s`, or its first `limit` characters and how long it was. */
const cut = (s: string, limit: number): string => (s.length <= limit ? s : `${s.slice(0, limit)}…(${s.length} characters)`)

/**
 * Capabilities that change what goes over the wire after the handshake: the client negotiated
 * them with the proxy's greeting, and the server must grant the same ones, or the relayed bytes
 * mean something else on each side.
 */
const WIRE_CAPABILITIES =
  Capability.PROTOCOL_41 |
  Capability.DEPRECATE_EOF |
  Capability.SESSION_TRACK |
  Capability.QUERY_ATTRIBUTES |
  Capability.OPTIONAL_RESULTSET_METADATA |
  Capability.MULTI_RESULTS |
  Capability.PS_MULTI_RESULTS |
  Capability.COMPRESS |
  Capability.ZSTD_COMPRESSION

/**
 * What the proxy may advertise: everything but compression (bytes are audited, so they must be
 * readable), MFA and the capability extension (neither is relayed), and the bits the proxy sets itself.
 */
export const RELAYABLE_CAPABILITIES =
  (0xffffffff &
    ~Capability.COMPRESS &
    ~Capability.ZSTD_COMPRESSION &
    ~Capability.MULTI_FACTOR_AUTHENTICATION &
    ~Capability.CAPABILITY_EXTENSION &
    ~Capability.SSL_VERIFY_SERVER_CERT &
    ~Capability.REMEMBER_OPTIONS) >>>
  0

/** When nothing is known of the server: what MySQL >= 5.7 and MariaDB >= 10.2 all grant. */
export const DEFAULT_CAPABILITIES =
  (Capability.LONG_PASSWORD |
    Capability.FOUND_ROWS |
    Capability.LONG_FLAG |
    Capability.CONNECT_WITH_DB |
    Capability.ODBC |
    Capability.LOCAL_FILES |
    Capability.IGNORE_SPACE |
    Capability.PROTOCOL_41 |
    Capability.INTERACTIVE |
    Capability.SSL |
    Capability.IGNORE_SIGPIPE |
    Capability.TRANSACTIONS |
    Capability.SECURE_CONNECTION |
    Capability.MULTI_STATEMENTS |
    Capability.MULTI_RESULTS |
    Capability.PS_MULTI_RESULTS |
    Capability.PLUGIN_AUTH |
    Capability.CONNECT_ATTRS |
    Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA |
    Capability.CAN_HANDLE_EXPIRED_PASSWORDS |
    Capability.SESSION_TRACK |
    Capability.DEPRECATE_EOF) >>>
  0

export const DEFAULT_SERVER_VERSION = "8.0.36-Remoteler"

// ---------------------------------------------------------------------------------------------
// The session header the proxy front writes before the client's HandshakeResponse41

const HEADER_MAGIC = Buffer.from("RMY1", "ascii")

/**
 * The first packet of a tunnel stream: "RMY1", then int<4> the capabilities the proxy advertised
 * to the client (the negotiated set is the client's flags AND these). The client's
 * HandshakeResponse41 follows as it arrived, with its sequence id.
 */
export const sessionHeader = (advertised: number): Uint8Array => {
  const payload = Buffer.alloc(8)
  HEADER_MAGIC.copy(payload, 0)
  payload.writeUInt32LE(advertised >>> 0, 4)
  return framePacket(payload, 0)
}

const decodeSessionHeader = (p: WirePacket): number | undefined =>
  p.payload.length === 8 && Buffer.from(p.payload.subarray(0, 4)).equals(HEADER_MAGIC)
    ? Buffer.from(p.payload).readUInt32LE(4)
    : undefined

// ---------------------------------------------------------------------------------------------
// Errors: the one place where a failure becomes ERR bytes

/** The database itself refused (bad database name, certificate not accepted…): relayed as it said. */
export class UpstreamRefused extends Error {
  readonly _tag = "UpstreamRefused"
  constructor(readonly err: ErrPacket) {
    super(err.message)
  }
}

/** A client packet broke the protocol; answered with the ERR a MySQL server would send. */
class ClientProtocolError extends Error {
  readonly _tag = "ClientProtocolError"
  constructor(readonly error: ProtocolError) {
    super(error.detail)
  }
}

const errFor = (reason: EngineError["reason"]): readonly [number, string] => {
  switch (reason) {
    case "RouteMismatch":
    case "CertificateExpired":
    case "UpstreamAuth":
      return [ErrorCode.AccessDenied, "28000"]
    case "ClientProtocol":
    case "UpstreamProtocol":
      return [ErrorCode.MalformedPacket, "HY000"]
    case "CertificateIssue":
      return [1105, "HY000"]
    case "ClientClosed":
    case "UpstreamConnect":
    case "UpstreamTls":
    case "UpstreamClosed":
    case "Timeout":
      // CR_CONN_HOST_ERROR ("Can't connect to MySQL server"): what the client would say had it dialed the database itself.
      return [2003, "HY000"]
  }
}

/** The ERR packet for any failure; unknown failures get a generic message, never a stack trace. */
export const errPacketFor = (err: unknown): ErrPacket => {
  if (err instanceof UpstreamRefused) return err.err
  if (err instanceof ClientProtocolError) return protocolErrPacket(err.error)
  if (err instanceof AccessDenied) {
    return errPacket(err.field === "db_names" ? ErrorCode.DbAccessDenied : ErrorCode.AccessDenied, err.field === "db_names" ? "42000" : "28000", deniedMessage(err))
  }
  if (err instanceof EngineError) {
    const [code, state] = errFor(err.reason)
    return errPacket(code, state, err.message)
  }
  return errPacket(1105, "HY000", "internal error in the database agent")
}

/** A refusal names the rule: a deny rule's message does already; "no role allows" says which field to look at. */
const deniedMessage = (err: AccessDenied): string => (err.side === "none" ? `${err.message} (allow.${err.field})` : err.message)

const messageOf = (err: unknown): string =>
  err instanceof AccessDenied
    ? deniedMessage(err)
    : err instanceof UpstreamRefused || err instanceof EngineError || err instanceof ClientProtocolError
      ? err.message
      : "internal error"

const errBytes = (err: unknown, sequenceId: number): Uint8Array => serializeServer(errPacketFor(err), { sequenceId: sequenceId & 0xff })

// ---------------------------------------------------------------------------------------------
// Helpers

/** `host:port`, `[v6]:port`; the port defaults to 3306. */
export const parseHostPort = (uri: string): { host: string; port: number } => {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(uri) ?? /^([^:]+)(?::(\d+))?$/.exec(uri)
  if (m === null) return { host: uri, port: 3306 }
  return { host: m[1]!, port: m[2] === undefined ? 3306 : Number(m[2]) }
}

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

const pad = (n: number, width = 2) => String(n).padStart(width, "0")
const strictUtf8 = new TextDecoder("utf-8", { fatal: true })

const TEXT_TYPES: ReadonlySet<number> = new Set([
  ColumnType.VARCHAR,
  ColumnType.VAR_STRING,
  ColumnType.STRING,
  ColumnType.DECIMAL,
  ColumnType.NEWDECIMAL,
  ColumnType.JSON,
  ColumnType.ENUM,
  ColumnType.SET
])

/** One bound parameter as audited: numbers and text as strings, dates as SQL literals, small binary as hex. */
export const formatParameter = (p: BoundParam): string | null => {
  const v: BinaryValue = p.value
  if (v === null) return null
  if (typeof v === "number" || typeof v === "bigint") return String(v)
  if (v instanceof Uint8Array) {
    if (TEXT_TYPES.has(p.type) || p.type === ColumnType.BLOB || p.type === ColumnType.TINY_BLOB || p.type === ColumnType.MEDIUM_BLOB || p.type === ColumnType.LONG_BLOB) {
      try {
        return cut(strictUtf8.decode(v), TEXT_PARAM_AUDIT_LIMIT)
      } catch {
        // binary: below
      }
    }
    return v.length <= BINARY_PARAM_HEX_LIMIT ? `\\x${Buffer.from(v.buffer, v.byteOffset, v.length).toString("hex")}` : `$binary(${v.length})`
  }
  if (v.kind === "datetime") {
    const date = `${pad(v.year, 4)}-${pad(v.month)}-${pad(v.day)}`
    if (p.type === ColumnType.DATE) return date
    return `${date} ${pad(v.hour)}:${pad(v.minute)}:${pad(v.second)}${v.microsecond === 0 ? "" : `.${pad(v.microsecond, 6)}`}`
  }
  const hours = v.days * 24 + v.hours
  return `${v.negative ? "-" : ""}${pad(hours)}:${pad(v.minutes)}:${pad(v.seconds)}${v.microseconds === 0 ? "" : `.${pad(v.microseconds, 6)}`}`
}

/**
 * The databases `USE` statements in `sql` switch to. MySQL takes `USE db` only as a statement of
 * its own, so it is looked for at the start of each statement (after comments), with the name
 * bare, backquoted or quoted.
 */
export const useTargets = (sql: string): Array<string> => {
  const out: Array<string> = []
  for (const stmt of splitStatements(sql)) {
    const s = stmt.replace(/^(?:\s+|--[^\n]*(?:\n|$)|#[^\n]*(?:\n|$)|\/\*(?!!)[\s\S]*?\*\/)*/, "")
    const m = /^use(?:\s+|(?=[`'"]))(`(?:[^`]|``)+`|'[^']*'|"[^"]*"|[^\s;]+)\s*$/i.exec(s.replace(/;\s*$/, ""))
    if (m === null) continue
    const raw = m[1]!
    out.push(raw.startsWith("`") ? raw.slice(1, -1).replaceAll("``", "`") : raw.startsWith("'") || raw.startsWith('"') ? raw.slice(1, -1) : raw)
  }
  return out
}

/** Splits on `;` outside quotes, backquotes and comments (enough to find statement starts). */
const splitStatements = (sql: string): Array<string> => {
  const out: Array<string> = []
  let start = 0
  let i = 0
  while (i < sql.length) {
    const c = sql[i]!
    if (c === "'" || c === '"' || c === "`") {
      i++
      while (i < sql.length && sql[i] !== c) i += sql[i] === "\\" && c !== "`" ? 2 : 1
      i++
    } else if (c === "-" && sql[i + 1] === "-") {
      while (i < sql.length && sql[i] !== "\n") i++
    } else if (c === "#") {
      while (i < sql.length && sql[i] !== "\n") i++
    } else if (c === "/" && sql[i + 1] === "*") {
      const end = sql.indexOf("*/", i + 2)
      i = end < 0 ? sql.length : end + 2
    } else if (c === ";") {
      out.push(sql.slice(start, i))
      start = ++i
    } else i++
  }
  out.push(sql.slice(start))
  return out
}

const readFailure = (who: string) => (f: ReadFailure) =>
  f.reason === "closed"
    ? new EngineError({ reason: who === "client" ? "ClientClosed" : "UpstreamClosed", message: `${who} closed the connection during the handshake` })
    : new EngineError({ reason: who === "client" ? "ClientProtocol" : "UpstreamProtocol", message: `${who} sent a ${f.length ?? 0}-byte packet during the handshake` })

// ---------------------------------------------------------------------------------------------
// Upstream

interface Upstream {
  readonly socket: tls.TLSSocket
  /** The server's greeting. */
  readonly greeting: HandshakeV10
  /** The capabilities we sent (the client's, within what the server grants). */
  readonly capabilities: number
  /** The payload of the server's final OK, to hand to the client re-sequenced. */
  readonly ok: Uint8Array
}

const connectTcp = (host: string, port: number, dbName: string, uri: string) =>
  Effect.async<net.Socket, EngineError>((resume) => {
    const raw = net.connect({ host, port })
    raw.setNoDelay(true)
    const onError = (e: Error) => resume(Effect.fail(new EngineError({ reason: "UpstreamConnect", message: `cannot connect to database ${dbName} at ${uri}: ${e.message}`, cause: e })))
    raw.once("error", onError)
    raw.once("connect", () => {
      raw.off("error", onError)
      raw.on("error", () => undefined)
      resume(Effect.succeed(raw))
    })
    return Effect.sync(() => raw.destroy())
  })

const upgradeTls = (raw: net.Socket, host: string, tlsInfo: DatabaseTls, creds: DatabaseClientCredentials, dbName: string, uri: string) =>
  Effect.async<tls.TLSSocket, EngineError>((resume) => {
    const ca = tlsInfo.caCertPem !== undefined ? [tlsInfo.caCertPem] : [...creds.caPems]
    const serverName = tlsInfo.serverName ?? host
    const options: tls.ConnectionOptions = {
      socket: raw,
      cert: creds.certPem,
      key: creds.keyPem,
      ca,
      rejectUnauthorized: tlsInfo.mode !== "insecure",
      checkServerIdentity: tlsInfo.mode === "verify-full" ? (_host, cert) => tls.checkServerIdentity(serverName, cert) : () => undefined
    }
    if (net.isIP(serverName) === 0) options.servername = serverName
    const secure = tls.connect(options)
    const onError = (e: Error) => resume(Effect.fail(new EngineError({ reason: "UpstreamTls", message: `TLS with database ${dbName} at ${uri} failed: ${e.message}`, cause: e })))
    secure.once("error", onError)
    secure.once("secureConnect", () => {
      secure.off("error", onError)
      secure.on("error", () => undefined)
      secure.setNoDelay(true)
      resume(Effect.succeed(secure))
    })
    return Effect.sync(() => secure.destroy())
  })

/** The auth response for an empty password under `plugin`; undefined for a plugin we cannot answer. */
const emptyPasswordResponse = (plugin: string): Uint8Array | undefined => {
  switch (plugin) {
    case "mysql_native_password":
    case "caching_sha2_password":
    case "sha256_password":
      return new Uint8Array(0)
    case "mysql_clear_password":
      return Uint8Array.of(0)
    default:
      return undefined
  }
}

/**
 * TCP, the server's greeting, SSLRequest, TLS with the db-CA certificate for `dbUser`, then the
 * HandshakeResponse41 as the client sent it but for `dbUser` and `dbName`, with no password: the
 * server trusts the certificate (`REQUIRE X509`/`REQUIRE SUBJECT`). Auth switches to plugins that
 * take an empty password are answered; anything asking for a real secret is refused with a reason.
 */
const connectUpstream = (
  uri: string,
  dbName: string,
  tlsInfo: DatabaseTls,
  creds: DatabaseClientCredentials,
  hello: HandshakeResponse41,
  negotiated: number,
  dbUser: string,
  schema: string | undefined
): Effect.Effect<Upstream, EngineError | UpstreamRefused, Scope.Scope> =>
  Effect.gen(function* () {
    const { host, port } = parseHostPort(uri)
    const raw = yield* Effect.acquireRelease(connectTcp(host, port, dbName, uri), (s) => Effect.sync(() => s.destroy()))
    const first = yield* Effect.mapError(readPacket(raw, MAX_HANDSHAKE_PACKET), readFailure(`database ${dbName}`))
    if (first.payload[0] === 0xff) {
      const err = decodeErr(first.payload)
      return yield* err.kind === "err"
        ? Effect.fail(new UpstreamRefused(err))
        : Effect.fail(new EngineError({ reason: "UpstreamProtocol", message: `database ${dbName}: ${err.detail}` }))
    }
    const greeting = decodeHandshake(first.payload)
    if (greeting.kind === "error") return yield* new EngineError({ reason: "UpstreamProtocol", message: `database ${dbName}: ${greeting.detail}` })
    if ((greeting.capabilities & Capability.SSL) === 0) {
      return yield* new EngineError({ reason: "UpstreamTls", message: `database ${dbName} at ${uri} does not accept TLS connections (start it with ssl-cert and ssl-key)` })
    }
    const missing = (negotiated & WIRE_CAPABILITIES & ~greeting.capabilities) >>> 0
    if (missing !== 0) {
      return yield* new EngineError({
        reason: "UpstreamProtocol",
        message: `database ${dbName} no longer grants capabilities 0x${missing.toString(16)} the proxy advertised (was it upgraded or replaced?); reconnect`
      })
    }
    const capabilities =
      ((negotiated & greeting.capabilities & RELAYABLE_CAPABILITIES & ~Capability.CONNECT_WITH_DB) |
        Capability.PROTOCOL_41 |
        Capability.SECURE_CONNECTION |
        Capability.PLUGIN_AUTH |
        Capability.SSL |
        (schema !== undefined && schema !== "" ? Capability.CONNECT_WITH_DB : 0)) >>>
      0
    let seq = first.sequenceId + 1
    raw.write(
      serializeClient(
        { kind: "sslRequest", capabilities, maxPacketSize: hello.maxPacketSize, charset: hello.charset, mariadbCapabilities: 0 },
        { sequenceId: seq & 0xff }
      )
    )
    const socket = yield* Effect.acquireRelease(upgradeTls(raw, host, tlsInfo, creds, dbName, uri), (s) => Effect.sync(() => s.destroy()))
    const plugin = greeting.authPluginName ?? "mysql_native_password"
    seq++
    socket.write(
      serializeClient(
        {
          kind: "handshakeResponse41",
          capabilities,
          maxPacketSize: hello.maxPacketSize,
          charset: hello.charset,
          mariadbCapabilities: 0,
          username: dbUser,
          authResponse: emptyPasswordResponse(plugin) ?? new Uint8Array(0),
          ...(schema !== undefined && schema !== "" ? { database: schema } : {}),
          authPluginName: plugin,
          ...((capabilities & Capability.CONNECT_ATTRS) !== 0 ? { attributes: hello.attributes ?? [] } : {})
        },
        { sequenceId: seq & 0xff }
      )
    )
    for (;;) {
      const p = yield* Effect.mapError(readPacket(socket, MAX_HANDSHAKE_PACKET), readFailure(`database ${dbName}`))
      const m = decodeAuthResponse(p.payload, capabilities)
      const reply = (bytes: Uint8Array) => socket.write(framePacket(bytes, (p.sequenceId + 1) & 0xff))
      switch (m.kind) {
        case "ok":
          return { socket, greeting, capabilities, ok: p.payload }
        case "err":
          return yield* Effect.fail(new UpstreamRefused(m))
        case "authSwitchRequest": {
          const r = emptyPasswordResponse(m.pluginName)
          if (r === undefined) {
            return yield* new EngineError({
              reason: "UpstreamAuth",
              message: `database ${dbName} asks db user ${dbUser} for ${m.pluginName} authentication; the agent logs in with its certificate only (CREATE USER ... REQUIRE X509)`
            })
          }
          reply(r)
          break
        }
        case "authMoreData":
          // caching_sha2_password: 3 = fast auth done (OK follows), 4 = send the password (empty, over TLS).
          if (m.data[0] === 3) break
          if (m.data[0] === 4) {
            reply(Uint8Array.of(0))
            break
          }
          return yield* new EngineError({ reason: "UpstreamAuth", message: `database ${dbName} asked for more authentication data than the agent has` })
        case "oldAuthSwitchRequest":
          return yield* new EngineError({ reason: "UpstreamAuth", message: `database ${dbName} asked for pre-4.1 password authentication` })
        case "error":
          return yield* new EngineError({ reason: "UpstreamProtocol", message: `database ${dbName}: ${m.detail}` })
        default:
          return yield* new EngineError({ reason: "UpstreamProtocol", message: `database ${dbName} sent ${m.kind} during authentication` })
      }
    }
  })

// ---------------------------------------------------------------------------------------------
// The relay

type EndReason =
  | { readonly kind: "client-quit" }
  | { readonly kind: "client-closed" }
  | { readonly kind: "upstream-closed"; readonly message: string }
  | { readonly kind: "refused"; readonly message: string }
  | { readonly kind: "expired" }

interface RelayHooks {
  readonly audit: (type: string, code: string, extra: Record<string, unknown>) => void
  /** db_names for `USE`/COM_INIT_DB: an AccessDenied, or undefined when allowed. */
  readonly checkSchema: (schema: string) => AccessDenied | undefined
  readonly onEnd: (reason: EndReason) => void
  readonly lostMessage: string
}

interface Statement extends StatementInfo {
  readonly sql: string
}

/**
 * Relays one established session. Client packets are framed and looked at one by one (audit,
 * db_names, COM_CHANGE_USER); they go on re-framed, or as the very chunk that carried them when
 * that chunk was whole packets that all go on. Server bytes go back untouched; a parser beside
 * them learns prepared statements' parameter counts and LOCAL INFILE requests.
 */
class Relay {
  private readonly splitter = new PacketSplitter()
  private readonly server: ServerPacketParser
  private readonly statements = new Map<number, Statement>()
  private readonly preparing: Array<string> = []
  private awaitingPrepare = false
  private infile = false
  private serverTracked = true
  /** Our own answers (refusals) held back while the server still owes earlier responses. */
  private held: Array<Uint8Array> = []
  private readonly pauses = new Set<string>()
  private ended = false
  private quit = false
  private lastUpstreamError: string | undefined

  constructor(
    private readonly client: Duplex,
    private readonly upstream: tls.TLSSocket,
    private readonly capabilities: number,
    serverCapabilities: number,
    private readonly hooks: RelayHooks
  ) {
    this.server = new ServerPacketParser({ capabilities, established: { serverCapabilities } })
  }

  start(): void {
    const { client, upstream } = this
    client.on("data", this.onClientData)
    client.once("end", this.onClientEnd)
    client.once("close", this.onClientEnd)
    upstream.on("data", this.onUpstreamData)
    upstream.on("error", this.onUpstreamError)
    upstream.once("end", this.onUpstreamEnd)
    upstream.once("close", this.onUpstreamEnd)
    upstream.resume()
    client.resume()
  }

  pauseClient(why: string): void {
    this.pauses.add(why)
    this.client.pause()
  }

  resumeClient(why: string): void {
    if (!this.pauses.delete(why) || this.pauses.size > 0 || this.ended) return
    this.client.resume()
  }

  /** Ends the session with `err` to the client (at a packet boundary when the server is mid-response). */
  terminate(err: Uint8Array, reason: EndReason): void {
    if (this.ended) return
    this.pauseClient("stopped")
    this.client.end(err)
    this.upstream.end()
    this.finish(reason)
  }

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

  /** Sends our own answer to a command now, or after the server's outstanding responses. */
  private answer(bytes: Uint8Array): void {
    if (!this.serverTracked || this.server.outstanding === 0) this.client.write(bytes)
    else this.held.push(bytes)
  }

  private readonly onClientData = (chunk: unknown): void => {
    if (this.ended || this.pauses.has("stopped")) return
    const bytes = typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Uint8Array)
    const wholeBefore = this.splitter.pendingBytes === 0
    const out: Array<Uint8Array> = []
    let allForwarded = true
    for (const r of this.splitter.push(bytes)) {
      if (!("payload" in r)) {
        this.terminate(serializeServer(protocolErrPacket(r), { sequenceId: ((r.sequenceId ?? 0) + 1) & 0xff }), { kind: "refused", message: r.detail })
        return
      }
      const forward = this.onClientPacket(r.sequenceId, r.payload)
      if (this.ended) return
      if (forward) out.push(framePacket(r.payload, r.sequenceId))
      else allForwarded = false
    }
    const toServer = allForwarded && wholeBefore && this.splitter.pendingBytes === 0 ? [bytes] : out
    for (const b of toServer) {
      if (b.length === 0) continue
      if (!this.upstream.write(b)) {
        this.pauseClient("upstream")
        this.upstream.once("drain", () => this.resumeClient("upstream"))
      }
    }
  }

  /** True when the packet goes on to the server. */
  private onClientPacket(sequenceId: number, payload: Uint8Array): boolean {
    if (this.infile) {
      if (payload.length === 0) this.infile = false
      return true
    }
    const m = decodeCommand(payload, { capabilities: this.capabilities, statement: (id) => this.statements.get(id) })
    if (m.kind === "error") {
      this.terminate(serializeServer(protocolErrPacket(m), { sequenceId: (sequenceId + 1) & 0xff }), { kind: "refused", message: m.detail })
      return false
    }
    const refuse = (denied: AccessDenied) => this.answer(errBytes(denied, sequenceId + 1))
    const expect = () => {
      this.awaitingPrepare = m.kind === "stmtPrepare"
      if (this.serverTracked) this.server.expect(m)
    }
    const { audit } = this.hooks
    switch (m.kind) {
      case "query": {
        for (const schema of useTargets(m.text)) {
          const denied = this.hooks.checkSchema(schema)
          if (denied !== undefined) {
            audit("db.session.query", "TDB02I", { db_query: m.text, success: false, error: deniedMessage(denied) })
            refuse(denied)
            return false
          }
        }
        audit("db.session.query", "TDB02I", { db_query: m.text, success: true })
        expect()
        return true
      }
      case "stmtPrepare":
        audit("db.session.mysql.statements.prepare", "TMY00I", { db_query: m.text })
        this.preparing.push(m.text)
        expect()
        return true
      case "stmtExecute": {
        const s = this.statements.get(m.statementId)
        if (s !== undefined && m.newParamsBound) {
          const types = m.params.map((p): ParamType => (p.name === undefined ? { type: p.type, unsigned: p.unsigned } : { type: p.type, unsigned: p.unsigned, name: p.name }))
          this.statements.set(m.statementId, { ...s, types })
        }
        audit("db.session.query", "TDB02I", {
          db_query: s?.sql ?? "",
          db_query_parameters: m.params.filter((p) => p.name === undefined || p.name === "").map(formatParameter),
          statement_id: m.statementId,
          success: true
        })
        expect()
        return true
      }
      case "stmtExecuteUndecoded": {
        const s = this.statements.get(m.statementId)
        audit("db.session.query", "TDB02I", { db_query: s?.sql ?? "", statement_id: m.statementId, success: true })
        expect()
        return true
      }
      case "stmtSendLongData":
        audit("db.session.mysql.statements.send_long_data", "TMY02I", { statement_id: m.statementId, parameter_id: m.paramId, data_size: m.data.length })
        return true
      case "stmtClose":
        audit("db.session.mysql.statements.close", "TMY03I", { statement_id: m.statementId })
        this.statements.delete(m.statementId)
        return true
      case "stmtReset":
        audit("db.session.mysql.statements.reset", "TMY04I", { statement_id: m.statementId })
        expect()
        return true
      case "stmtFetch":
        audit("db.session.mysql.statements.fetch", "TMY05I", { statement_id: m.statementId, rows_count: m.rows })
        expect()
        return true
      case "initDb": {
        const denied = this.hooks.checkSchema(m.schema)
        audit("db.session.mysql.init_db", "TMY07I", { schema_name: m.schema, ...(denied === undefined ? { success: true } : { success: false, error: deniedMessage(denied) }) })
        if (denied !== undefined) {
          refuse(denied)
          return false
        }
        expect()
        return true
      }
      case "changeUser":
        // A session is one database user, the one the certificate names; switching would sidestep db_users.
        this.terminate(
          errBytes(new EngineError({ reason: "RouteMismatch", message: `COM_CHANGE_USER to ${m.username} is not allowed through Remoteler: reconnect with a certificate for that db user (tsh db login --db-user)` }), sequenceId + 1),
          { kind: "refused", message: "COM_CHANGE_USER" }
        )
        return false
      case "quit":
        this.quit = true
        return true
      case "resetConnection":
        this.statements.clear()
        expect()
        return true
      case "ping":
        expect()
        return true
      case "unknownCommand": {
        const body = m.body
        switch (m.command) {
          case Command.CREATE_DB:
            audit("db.session.mysql.create_db", "TMY08I", { schema_name: decodeText(body) })
            break
          case Command.DROP_DB:
            audit("db.session.mysql.drop_db", "TMY09I", { schema_name: decodeText(body) })
            break
          case Command.SHUTDOWN:
            audit("db.session.mysql.shut_down", "TMY10I", {})
            break
          case Command.PROCESS_KILL:
            audit("db.session.mysql.process_kill", "TMY11I", body.length >= 4 ? { process_id: Buffer.from(body).readUInt32LE(0) } : {})
            break
          case Command.DEBUG:
            audit("db.session.mysql.debug", "TMY12I", {})
            break
          case Command.REFRESH:
            audit("db.session.mysql.refresh", "TMY13I", { subcommand: String(body[0] ?? 0) })
            break
          default:
            break
        }
        expect()
        return true
      }
    }
  }

  private readonly onClientEnd = (): void => {
    if (this.ended) return
    this.upstream.end()
    this.finish(this.quit ? { kind: "client-quit" } : { kind: "client-closed" })
  }

  private readonly onUpstreamData = (chunk: unknown): void => {
    if (this.ended) return
    const bytes = chunk as Uint8Array
    if (!this.client.write(bytes)) {
      this.upstream.pause()
      this.client.once("drain", () => {
        if (!this.ended) this.upstream.resume()
      })
    }
    if (!this.serverTracked) return
    for (const r of this.server.push(bytes)) {
      if (r.kind === "error") {
        // We only lose the side knowledge (parameter types); the bytes still flow as they came.
        this.serverTracked = false
        break
      }
      const m = r.message
      if (m.kind === "stmtPrepareOk") {
        this.statements.set(m.statementId, { sql: this.preparing.shift() ?? "", paramCount: m.paramCount })
        this.awaitingPrepare = false
      } else if (m.kind === "err" && this.awaitingPrepare) {
        this.preparing.shift()
        this.awaitingPrepare = false
      } else if (m.kind === "localInfileRequest") {
        this.infile = true
      }
    }
    if (this.held.length > 0 && (!this.serverTracked || this.server.outstanding === 0)) {
      for (const b of this.held) this.client.write(b)
      this.held = []
    }
  }

  private readonly onUpstreamError = (e: Error): void => {
    this.lastUpstreamError = e.message
  }

  private readonly onUpstreamEnd = (): void => {
    if (this.ended) return
    if (this.quit) {
      this.client.end()
      this.finish({ kind: "client-quit" })
      return
    }
    const message = this.hooks.lostMessage + (this.lastUpstreamError === undefined ? "" : `: ${this.lastUpstreamError}`)
    // Mid-response an ERR would be read as part of it; the client only sees the close then.
    const atBoundary = this.server.pendingBytes === 0 && (!this.serverTracked || this.server.outstanding > 0)
    if (atBoundary && this.serverTracked) this.client.end(serializeServer(errPacket(2013, "HY000", message), { sequenceId: 1 }))
    else this.client.end()
    this.finish({ kind: "upstream-closed", message })
  }
}

// ---------------------------------------------------------------------------------------------
// The session

interface Hello {
  readonly advertised: number
  readonly sequenceId: number
  readonly response: HandshakeResponse41
}

/** The proxy's header, then the client's HandshakeResponse41. */
const readHello = (client: Duplex): Effect.Effect<Hello, EngineError | ClientProtocolError> =>
  Effect.gen(function* () {
    const header = yield* Effect.mapError(readPacket(client, MAX_HANDSHAKE_PACKET), readFailure("client"))
    const advertised = decodeSessionHeader(header)
    if (advertised === undefined) return yield* new EngineError({ reason: "ClientProtocol", message: "the stream does not start with a MySQL session header from the proxy" })
    const p = yield* Effect.mapError(readPacket(client, MAX_HANDSHAKE_PACKET), readFailure("client"))
    const m = decodeHandshakeResponse(p.payload)
    if (m.kind === "error") return yield* Effect.fail(new ClientProtocolError({ ...m, sequenceId: p.sequenceId }))
    if (m.kind === "sslRequest") return yield* new EngineError({ reason: "ClientProtocol", message: "SSLRequest after TLS" })
    return { advertised, sequenceId: p.sequenceId, response: m }
  })

const handleSession = (ctx: SessionContext): Effect.Effect<void, never, Scope.Scope> => {
  const { client, identity, database } = ctx
  const route = identity.routeToDatabase
  return Effect.gen(function* () {
    client.on("error", () => undefined)
    yield* Effect.addFinalizer(() => Effect.sync(() => client.destroy()))

    const helloE = yield* readHello(client).pipe(
      Effect.timeoutFail({ duration: HELLO_TIMEOUT_MS, onTimeout: () => new EngineError({ reason: "Timeout", message: "timeout waiting for the handshake response" }) }),
      Effect.either
    )
    if (Either.isLeft(helloE)) {
      const e = helloE.left
      if (!(e instanceof EngineError && e.reason === "ClientClosed")) yield* endStream(client, errBytes(e, 2))
      return
    }
    const hello = helloE.right
    const negotiated = (hello.response.capabilities & hello.advertised) >>> 0
    const dbUser = route.username
    const requested = hello.response.database
    const schema = requested !== undefined && requested !== "" ? requested : route.database !== undefined && route.database !== "" ? route.database : undefined

    let ei = 0
    let currentSchema = schema
    const fields = () => ({
      user: identity.username,
      sid: ctx.sessionId,
      cluster_name: ctx.clusterName,
      server_id: ctx.hostId,
      db_service: database.name,
      db_protocol: "mysql",
      db_uri: database.uri,
      db_user: dbUser,
      ...(currentSchema === undefined ? {} : { db_name: currentSchema })
    })
    const record = (type: string, code: string, extra: Record<string, unknown>): AuditRecord => ({ type, code, fields: { ...fields(), ei: ei++, ...extra } })
    const checkSchema = (name: string): AccessDenied | undefined => {
      const d = checkDatabaseAccess(ctx.roles, identity.traits, { name: database.name, labels: database.labels }, dbUser, name)
      return Either.isLeft(d) ? d.left : undefined
    }

    const established = yield* Effect.gen(function* () {
      if (hello.response.username !== "" && hello.response.username !== dbUser) {
        return yield* new EngineError({
          reason: "RouteMismatch",
          message: `the certificate is for db user ${dbUser}, but the client asked for db user ${hello.response.username}`
        })
      }
      if (route.serviceName !== database.name) {
        return yield* new EngineError({ reason: "RouteMismatch", message: `the certificate routes to db ${route.serviceName}, not to db ${database.name}` })
      }
      const nowMs = ctx.now !== undefined ? ctx.now().getTime() : yield* Clock.currentTimeMillis
      if (identity.expires.getTime() <= nowMs) {
        return yield* new EngineError({ reason: "CertificateExpired", message: `certificate expired at ${identity.expires.toISOString()}` })
      }
      const decision = checkDatabaseAccess(ctx.roles, identity.traits, { name: database.name, labels: database.labels }, dbUser, schema)
      if (Either.isLeft(decision)) return yield* decision.left
      const creds = yield* ctx.issueClientCert(dbUser)
      return yield* connectUpstream(database.uri, database.name, database.tls, creds, hello.response, negotiated, dbUser, schema)
    }).pipe(
      Effect.timeoutFail({ duration: UPSTREAM_TIMEOUT_MS, onTimeout: () => new EngineError({ reason: "Timeout", message: `timeout connecting to database ${database.name}` }) }),
      Effect.tapError((e) =>
        Effect.zipRight(ctx.audit(record("db.session.start", "TDB00W", { success: false, error: messageOf(e) })), endStream(client, errBytes(e, hello.sequenceId + 1)))
      ),
      Effect.either
    )
    if (Either.isLeft(established)) return
    const upstream = established.right
    yield* ctx.audit(record("db.session.start", "TDB00I", { success: true }))

    // Each record is written to the agent's buffer the moment its command is seen, before the
    // command goes on: the buffer's write is synchronous (the fsync follows in the background), so
    // a statement that reached the database is on disk even if the agent dies an instant later.
    // Reads from the client pause while too many records wait for their fsync.
    const runtime = yield* Effect.runtime<never>()
    let inFlight = 0
    let drained: Array<() => void> = []
    const done = yield* Deferred.make<EndReason>()
    const relay: Relay = new Relay(client, upstream.socket, upstream.capabilities, upstream.greeting.capabilities, {
      audit: (type, code, extra) => {
        const r = record(type, code, typeof extra["db_query"] === "string" ? { ...extra, db_query: cut(extra["db_query"], QUERY_AUDIT_LIMIT) } : extra)
        // The statement that switches databases runs in the old one; what follows runs in the new one.
        if (type === "db.session.mysql.init_db" && extra["success"] === true) currentSchema = String(extra["schema_name"])
        if (type === "db.session.query" && extra["success"] === true && typeof extra["db_query"] === "string" && extra["statement_id"] === undefined) {
          const targets = useTargets(extra["db_query"])
          if (targets.length > 0) currentSchema = targets[targets.length - 1]
        }
        if (ctx.appendAudit !== undefined) {
          try {
            return ctx.appendAudit(r)
          } catch (e) {
            // Unaudited statements must not run: the session ends here, before the command goes on.
            const message = `the agent cannot write its audit log (${(e as Error).message}); session ended`
            return relay.terminate(serializeServer(errPacket(1105, "HY000", message), { sequenceId: 1 }), { kind: "refused", message })
          }
        }
        inFlight++
        if (inFlight >= AUDIT_HIGH_WATER) relay.pauseClient("audit")
        // Runs synchronously up to the sink's first asynchronous step (the agent's buffer writes first).
        Runtime.runFork(runtime)(ctx.audit(r)).addObserver(() => {
          inFlight--
          if (inFlight <= AUDIT_LOW_WATER) relay.resumeClient("audit")
          if (inFlight === 0) {
            const waiting = drained
            drained = []
            for (const w of waiting) w()
          }
        })
      },
      checkSchema,
      onEnd: (reason) => Deferred.unsafeDone(done, Exit.succeed(reason)),
      lostMessage: `connection to database ${database.name} lost`
    })
    // The client authenticated with the proxy's greeting: it gets the server's OK, in its own sequence.
    client.write(framePacket(upstream.ok, (hello.sequenceId + 1) & 0xff))
    relay.start()
    yield* Effect.addFinalizer(() => Effect.sync(() => relay.stop()))

    if (disconnectExpiredCert(ctx.roles)) {
      const nowMs = ctx.now !== undefined ? ctx.now().getTime() : yield* Clock.currentTimeMillis
      yield* Effect.forkScoped(
        Effect.sleep(Math.max(0, identity.expires.getTime() - nowMs)).pipe(
          Effect.andThen(
            Effect.sync(() =>
              relay.terminate(serializeServer(errPacket(ErrorCode.AccessDenied, "28000", `certificate expired at ${identity.expires.toISOString()}; session ended`), { sequenceId: 0 }), {
                kind: "expired"
              })
            )
          )
        )
      )
    }

    const endSession = (reason: EndReason | undefined) =>
      Effect.gen(function* () {
        yield* Effect.async<void>((resume) => {
          if (inFlight === 0) return resume(Effect.void)
          drained.push(() => resume(Effect.void))
        })
        const error =
          reason === undefined
            ? "session interrupted"
            : reason.kind === "upstream-closed" || reason.kind === "refused"
              ? reason.message
              : reason.kind === "expired"
                ? "certificate expired"
                : undefined
        yield* ctx.audit(record("db.session.end", "TDB01I", error === undefined ? {} : { reason: error }))
      })

    const reason = yield* Deferred.await(done).pipe(Effect.onInterrupt(() => endSession(undefined)))
    yield* endStream(client)
    yield* endSession(reason)
  }).pipe(Effect.catchAllDefect((defect) => Effect.zipRight(Effect.logError("mysql session failed", defect), endStream(client, errBytes(defect, 1)))))
}

/** Writes `err` as an ERR packet (sequence id 1: the answer to a command) without closing. */
const sendError = (client: Duplex, err: unknown): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (client.destroyed || client.writableEnded) return resume(Effect.void)
    client.write(errBytes(err, 1), () => resume(Effect.void))
  })

/** The MySQL engine (MariaDB speaks the same protocol). */
export const MysqlEngine: Engine = {
  protocol: "mysql",
  handleSession,
  sendError
}
