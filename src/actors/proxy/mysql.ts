/**
 * MySQL clients on the proxy. A MySQL server speaks first, so the proxy greets the client itself:
 *
 *   - on `proxy_service.mysql_listen_addr` (3036): HandshakeV10 advertising TLS, the client's
 *     SSLRequest, TLS with the proxy's key pair and the client's database certificate;
 *   - on the web port with ALPN `remoteler-mysql` (a local tunnel such as `tsh proxy db`): TLS is
 *     already done, and the greeting goes inside it.
 *
 * Either way the greeting carries the version and capabilities of the real server (the agent
 * learns them), the client's HandshakeResponse41 is read, the certificate picks the agent, and
 * the response travels to the engine behind a small header (see mysql/engine.ts); from then on the
 * proxy only splices bytes. Refusals reach the client as ERR packets it prints.
 */
import { randomBytes } from "node:crypto"
import * as net from "node:net"
import * as tls from "node:tls"
import { Effect, Either } from "effect"
import type { Scope } from "effect"
import type { Identity } from "../../domain/Identity.ts"
import { DEFAULT_CAPABILITIES, DEFAULT_SERVER_VERSION, RELAYABLE_CAPABILITIES, sessionHeader } from "../../protocols/mysql/engine.ts"
import { readPacket } from "../../protocols/mysql/io.ts"
import type { WirePacket } from "../../protocols/mysql/io.ts"
import { Capability, ServerStatus } from "../../protocols/mysql/messages.ts"
import { framePacket } from "../../protocols/mysql/packet.ts"
import { decodeHandshakeResponse } from "../../protocols/mysql/parser.ts"
import { ErrorCode, errPacketBytes, protocolErrPacket, serializeServer } from "../../protocols/mysql/serializer.ts"
import type { ProxyContext } from "./context.ts"
import { splice } from "./context.ts"

/** How long a client may take with each handshake step. */
const STEP_TIMEOUT_MS = 30_000
const MAX_HANDSHAKE_PACKET = 64 * 1024
/** utf8mb4_general_ci, when nothing is known of the server. */
const DEFAULT_CHARSET = 45

const TLS_REQUIRED =
  "this proxy accepts only TLS connections: connect with the certificate from 'tsh db login' " +
  "(mysql --defaults-group-suffix=_<cluster>-<db>, or --ssl-cert/--ssl-key/--ssl-ca as 'tsh db config' prints)"

interface ServerInfo {
  readonly serverVersion: string
  readonly capabilities: number
  readonly charset: number
}

/** 20 bytes of scramble, printable and without NUL as servers send it. */
const scramble = (): Uint8Array => new Uint8Array(randomBytes(20).map((b) => 33 + (b % 94)))

const greeting = (info: ServerInfo, connectionId: number, advertised: number): Uint8Array => {
  const nonce = scramble()
  const part2 = new Uint8Array(13)
  part2.set(nonce.subarray(8))
  return serializeServer(
    {
      kind: "handshakeV10",
      protocolVersion: 10,
      serverVersion: info.serverVersion,
      connectionId,
      authPluginDataPart1: nonce.subarray(0, 8),
      capabilities: advertised,
      charset: info.charset,
      statusFlags: ServerStatus.AUTOCOMMIT,
      authPluginDataLength: 21,
      mariadbCapabilities: 0,
      authPluginDataPart2: part2,
      authPluginName: "mysql_native_password"
    },
    { sequenceId: 0 }
  )
}

/** The capabilities the proxy advertises for a server: what the relay can carry, plus what the proxy itself does. */
const advertisedFor = (info: ServerInfo, withTls: boolean): number =>
  ((info.capabilities & RELAYABLE_CAPABILITIES & ~Capability.SSL) |
    Capability.PROTOCOL_41 |
    Capability.SECURE_CONNECTION |
    Capability.PLUGIN_AUTH |
    (withTls ? Capability.SSL : 0)) >>>
  0

export const make = (ctx: ProxyContext) => {
  let connections = 0
  const nextConnectionId = () => (connections = (connections + 1) % 0x7fffffff)

  /**
   * The server to impersonate: the routed database's, when known (ALPN path); on 3036 the client's
   * database is known only after TLS, so the one MySQL server the agents report (the first by name
   * when there are several), with the capabilities every one of them grants.
   */
  const serverInfo = (dbName: string | undefined) =>
    Effect.map(ctx.tunnels.agents, (agents): ServerInfo => {
      const dbs = agents
        .flatMap((a) => a.resources.databases)
        .filter((d) => d.protocol === "mysql" && d.mysql !== undefined && (dbName === undefined || d.name === dbName))
        .sort((a, b) => a.name.localeCompare(b.name))
      const first = dbs[0]?.mysql
      if (first === undefined) return { serverVersion: DEFAULT_SERVER_VERSION, capabilities: DEFAULT_CAPABILITIES, charset: DEFAULT_CHARSET }
      const capabilities = dbs.reduce((caps, d) => caps & (d.mysql?.capabilities ?? DEFAULT_CAPABILITIES), 0xffffffff) >>> 0
      return { serverVersion: first.server_version, capabilities, charset: first.charset }
    })

  const fail = (socket: net.Socket, code: number, sqlState: string, message: string, sequenceId: number) =>
    Effect.sync(() => {
      socket.end(errPacketBytes(code, sqlState, message, sequenceId & 0xff))
    })

  /** Reads one handshake packet; a lie about its length or a stall ends the connection with an ERR. */
  const read = (socket: net.Socket) =>
    readPacket(socket, MAX_HANDSHAKE_PACKET).pipe(
      Effect.timeoutFail({ duration: STEP_TIMEOUT_MS, onTimeout: () => ({ reason: "timeout" as const, sequenceId: 0 }) }),
      Effect.tapError((f) =>
        f.reason === "too-large"
          ? fail(socket, ErrorCode.NetPacketTooLarge, "08S01", "Got a packet bigger than 'max_allowed_packet' bytes", (f.sequenceId ?? 0) + 1)
          : f.reason === "timeout"
            ? fail(socket, 1159, "08S01", "Got timeout reading communication packets", 2)
            : Effect.sync(() => socket.destroy())
      ),
      Effect.option
    )

  /** After TLS: the client's HandshakeResponse41 and its certificate's route decide the agent. */
  const route = (socket: tls.TLSSocket, advertised: number, knownIdentity: Identity | undefined) =>
    Effect.gen(function* () {
      const p = yield* read(socket)
      if (p._tag === "None") return
      const packet: WirePacket = p.value
      const m = decodeHandshakeResponse(packet.payload)
      if (m.kind === "error") {
        return yield* Effect.sync(() => socket.end(serializeServer(protocolErrPacket(m), { sequenceId: (packet.sequenceId + 1) & 0xff })))
      }
      if (m.kind === "sslRequest") return yield* fail(socket, ErrorCode.MalformedPacket, "08S01", "SSLRequest inside TLS", packet.sequenceId + 1)
      let identity = knownIdentity
      if (identity === undefined) {
        const id = yield* ctx.socketIdentity(socket)
        if (Either.isLeft(id)) return yield* fail(socket, ErrorCode.AccessDenied, "28000", id.left, packet.sequenceId + 1)
        identity = id.right
      }
      const stream = yield* Effect.either(ctx.openDbSession(identity, socket.remoteAddress))
      if (Either.isLeft(stream)) {
        const f = stream.left
        return yield* fail(socket, f.reason === "NoRoute" ? ErrorCode.AccessDenied : 2003, f.reason === "NoRoute" ? "28000" : "HY000", f.message, packet.sequenceId + 1)
      }
      stream.right.write(sessionHeader(advertised))
      stream.right.write(framePacket(packet.payload, packet.sequenceId))
      splice(socket, stream.right)
    })

  const guard = (socket: net.Socket) => <A, E>(effect: Effect.Effect<A, E>) =>
    effect.pipe(
      Effect.catchAll((e) =>
        fail(socket, 1105, "HY000", `the cluster cannot check certificates now: ${(e as { message?: string }).message ?? String(e)}`, 2)
      ),
      Effect.catchAllDefect((d) => Effect.logError("mysql routing failed", d).pipe(Effect.zipRight(Effect.sync(() => socket.destroy()))))
    )

  /** A plain TCP client on the MySQL listener: greeting, SSLRequest, TLS, then `route`. */
  const handlePlain = (socket: net.Socket) =>
    guard(socket)(
      Effect.gen(function* () {
        socket.setNoDelay(true)
        socket.on("error", () => socket.destroy())
        const info = yield* serverInfo(undefined)
        const advertised = advertisedFor(info, true)
        socket.write(greeting(info, nextConnectionId(), advertised))
        const p = yield* read(socket)
        if (p._tag === "None") return
        const m = decodeHandshakeResponse(p.value.payload)
        if (m.kind === "error") {
          return yield* Effect.sync(() => socket.end(serializeServer(protocolErrPacket(m), { sequenceId: (p.value.sequenceId + 1) & 0xff })))
        }
        if (m.kind !== "sslRequest") return yield* fail(socket, ErrorCode.AccessDenied, "28000", TLS_REQUIRED, p.value.sequenceId + 1)
        const secure = yield* Effect.async<tls.TLSSocket | undefined>((resume) => {
          const s = new tls.TLSSocket(socket, {
            isServer: true,
            key: ctx.credentials.key,
            cert: ctx.credentials.cert,
            requestCert: true,
            rejectUnauthorized: false,
            minVersion: "TLSv1.2"
          })
          const timer = setTimeout(() => {
            s.destroy()
            resume(Effect.succeed(undefined))
          }, STEP_TIMEOUT_MS)
          s.once("secure", () => {
            clearTimeout(timer)
            resume(Effect.succeed(s))
          })
          s.once("error", () => {
            clearTimeout(timer)
            s.destroy()
            socket.destroy()
            resume(Effect.succeed(undefined))
          })
        })
        if (secure === undefined) return
        secure.on("error", () => secure.destroy())
        yield* route(secure, advertised, undefined)
      })
    )

  /** ALPN `remoteler-mysql` on the web port: TLS is done, so the certificate picks the server to impersonate. */
  const handleTls = (socket: tls.TLSSocket) =>
    guard(socket)(
      Effect.gen(function* () {
        socket.setNoDelay(true)
        const id = yield* ctx.socketIdentity(socket)
        // A server may answer a connection with ERR instead of its greeting ("Host is blocked"): clients print it.
        if (Either.isLeft(id)) return yield* fail(socket, ErrorCode.AccessDenied, "28000", id.left, 0)
        const info = yield* serverInfo(id.right.routeToDatabase?.serviceName)
        const advertised = advertisedFor(info, false)
        socket.write(greeting(info, nextConnectionId(), advertised))
        yield* route(socket, advertised, id.right)
      })
    )

  /**
   * Listens on `addr` for the life of the scope. When `required` is false (the default address,
   * not configured), an address in use only logs a warning: the web port's ALPN path still works.
   */
  const listen = (addr: string, required: boolean): Effect.Effect<number | undefined, Error, Scope.Scope> =>
    Effect.gen(function* () {
      const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(addr)
      if (m === null) return yield* Effect.fail(new Error(`bad mysql_listen_addr ${addr}`))
      const host = m[1] ?? m[2] ?? "0.0.0.0"
      const server = net.createServer((s) => void ctx.run(handlePlain(s)))
      const bound = yield* Effect.async<boolean, Error>((resume) => {
        server.once("error", (e) => (required ? resume(Effect.fail(new Error(`cannot listen on ${addr} for MySQL: ${e.message}`))) : resume(Effect.succeed(false))))
        server.listen(Number(m[3]), host === "" ? "0.0.0.0" : host, () => resume(Effect.succeed(true)))
      })
      if (!bound) {
        yield* Effect.logWarning(`MySQL listener not started: ${addr} is in use (set proxy_service.mysql_listen_addr)`)
        return undefined
      }
      yield* Effect.addFinalizer(() => Effect.sync(() => server.close()))
      const port = (server.address() as net.AddressInfo).port
      yield* Effect.logInfo(`proxy MySQL listener on ${host}:${port}`)
      return port
    })

  return {
    onTls: (socket: tls.TLSSocket): void => void ctx.run(handleTls(socket)),
    listen
  }
}
