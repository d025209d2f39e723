/**
 * The proxy's one public port. It looks at the first bytes of each connection:
 *
 *   00 00 00 08 04 d2 16 2f   PostgreSQL SSLRequest  -> answer `S`, then TLS (psql with its db cert)
 *   00 00 00 08 04 d2 16 30   GSSENCRequest          -> answer `N`, then look again
 *   00 00 00 10 04 d2 16 2e   CancelRequest (16 B)   -> handed to the cancel handler, closed
 *   16 03 ..                  TLS ClientHello        -> TLS, then routed by ALPN
 *   .. .. .. .. 00 03 00 00   plaintext StartupMessage -> ErrorResponse "TLS required", closed
 *
 * After TLS, ALPN picks the handler (`remoteler-tunnel`, `remoteler-postgres`, ...); no ALPN or
 * `http/1.1` goes to the web API. Client certificates are requested but checked by each handler,
 * against the CA that handler trusts (user CA for people, host CA for agents). Anything else on
 * the port is closed without affecting other connections.
 */
import * as http from "node:http"
import * as net from "node:net"
import * as tls from "node:tls"
import { Effect } from "effect"
import type { Scope } from "effect"
import { toErrorResponse } from "../protocols/postgres/errors.ts"

export interface ListenerHandlers {
  /** The web API (HTTP/1.1 over TLS). */
  readonly http: http.RequestListener
  /** TLS connections by ALPN protocol (`remoteler-tunnel`, `remoteler-postgres`, ...). */
  readonly alpn: Readonly<Record<string, (socket: tls.TLSSocket) => void>>
  /** psql's SSLRequest path, after TLS. */
  readonly postgres?: (socket: tls.TLSSocket) => void
  /** A PostgreSQL CancelRequest: process id and secret key as the client saw them. */
  readonly postgresCancel?: (pid: number, secret: Uint8Array) => void
  /**
   * A TLS connection with no known ALPN (or `http/1.1`): offered here first, so a client whose
   * certificate carries a database route (redis-cli, for one) is routed by that route. Returns
   * true when it took the socket; otherwise the socket goes to the web API.
   */
  readonly byCertificate?: (socket: tls.TLSSocket) => boolean
}

const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const CANCEL_REQUEST = 80877102
const PROTOCOL_3_0 = 196608
// psql with sslmode=disable (or prefer against a refusing server) speaks plaintext: tell it why.
const TLS_REQUIRED = Buffer.from(
  toErrorResponse({ severity: "FATAL", code: "28000", message: "this proxy accepts only TLS connections: use sslmode=verify-full with the certificate from 'tsh db login'" })
)
const SNIFF_TIMEOUT_MS = 10_000

const splitHostPort = (addr: string): { host: string; port: number } => {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(addr)
  if (m === null) throw new Error(`bad address ${addr}`)
  return { host: m[1] ?? m[2] ?? "0.0.0.0", port: Number(m[3]) }
}

export const listen = (
  listenAddr: string,
  credentials: { readonly key: string; readonly cert: string },
  handlers: ListenerHandlers
): Effect.Effect<
  { readonly port: number; readonly setCredentials: (next: { readonly key: string; readonly cert: string }) => void },
  Error,
  Scope.Scope
> =>
  Effect.gen(function* () {
    const httpServer = http.createServer(handlers.http)
    const options: tls.TlsOptions = {
      key: credentials.key,
      cert: credentials.cert,
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: "TLSv1.2"
    }
    const tlsServer = tls.createServer({ ...options, ALPNProtocols: [...Object.keys(handlers.alpn), "http/1.1"] })
    // psql's path has a TLS server of its own, so its connections never need telling apart later.
    const pgTlsServer = tls.createServer(options)
    pgTlsServer.on("secureConnection", (socket: tls.TLSSocket) => {
      socket.on("error", () => socket.destroy())
      if (handlers.postgres !== undefined) handlers.postgres(socket)
      else socket.destroy()
    })
    pgTlsServer.on("tlsClientError", (_err, socket) => socket.destroy())
    tlsServer.on("secureConnection", (socket: tls.TLSSocket) => {
      socket.on("error", () => socket.destroy())
      const proto = socket.alpnProtocol
      const handler = typeof proto === "string" ? handlers.alpn[proto] : undefined
      if (handler !== undefined) return handler(socket)
      if (handlers.byCertificate?.(socket) === true) return
      httpServer.emit("connection", socket)
    })
    // A failed handshake (garbage, a wrong certificate type) loses only that connection.
    tlsServer.on("tlsClientError", (_err, socket) => socket.destroy())

    const sniff = (socket: net.Socket) => {
      let buffered = Buffer.alloc(0)
      const timer = setTimeout(() => socket.destroy(), SNIFF_TIMEOUT_MS)
      const onData = (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk])
        if (buffered[0] === 0x16) return handoff(() => tlsServer.emit("connection", socket))
        if (buffered.length < 8) return
        const length = buffered.readUInt32BE(0)
        const code = buffered.readUInt32BE(4)
        if (length === 8 && code === SSL_REQUEST) {
          buffered = buffered.subarray(8)
          socket.write("S")
          return handoff(() => pgTlsServer.emit("connection", socket))
        }
        if (length === 8 && code === GSSENC_REQUEST) {
          buffered = buffered.subarray(8)
          socket.write("N")
          // Whatever came with it (an SSLRequest, say) is looked at now, not when more bytes arrive.
          if (buffered.length > 0) onData(Buffer.alloc(0))
          return
        }
        if (length === 16 && code === CANCEL_REQUEST) {
          if (buffered.length < 16) return
          cleanup()
          handlers.postgresCancel?.(buffered.readUInt32BE(8), new Uint8Array(buffered.subarray(12, 16)))
          socket.end()
          return
        }
        cleanup()
        if (code === PROTOCOL_3_0 && length >= 8 && length <= 10_240) {
          socket.end(TLS_REQUIRED)
          return
        }
        socket.destroy()
      }
      const cleanup = () => {
        clearTimeout(timer)
        socket.off("data", onData)
      }
      const handoff = (next: () => void) => {
        cleanup()
        socket.pause()
        if (buffered.length > 0) socket.unshift(buffered)
        next()
      }
      socket.on("data", onData)
      socket.on("error", () => socket.destroy())
    }

    const server = net.createServer({ pauseOnConnect: false }, sniff)
    const { host, port } = splitHostPort(listenAddr)
    yield* Effect.acquireRelease(
      Effect.async<void, Error>((resume) => {
        server.once("error", (e) => resume(Effect.fail(e)))
        server.listen(port, host, () => resume(Effect.void))
      }),
      () =>
        Effect.async<void>((resume) => {
          httpServer.closeAllConnections()
          server.close(() => resume(Effect.void))
          // Open sockets (tunnels, sessions) are closed by their owners' scopes; do not wait on them.
          setTimeout(() => resume(Effect.void), 1_000)
        })
    )
    const address = server.address()
    return {
      port: typeof address === "object" && address !== null ? address.port : port,
      // A renewed certificate: new handshakes use it, connections already up keep theirs.
      setCredentials: (next: { readonly key: string; readonly cert: string }) => {
        for (const server of [tlsServer, pgTlsServer]) server.setSecureContext({ ...options, key: next.key, cert: next.cert })
      }
    }
  })
