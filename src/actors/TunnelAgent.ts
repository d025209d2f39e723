/**
 * The agent's end of the reverse tunnel (db and node roles). The agent sits behind NAT, so it
 * dials the proxy: TLS with ALPN `remoteler-tunnel`, its host certificate as the client
 * certificate, the proxy's certificate checked against the host CA (and, by default, required to
 * be a Proxy host certificate). It then serves HTTP/2 on the socket it dialed, so the proxy can
 * open a stream per user connection (`POST /dial`) and read its resources (`GET /resources`). See
 * `protocols/tunnel/wire.ts` for the requests and for why HTTP/2 rather than ssh2 channels.
 *
 * One supervised loop per agent: connect, serve until the socket closes or nothing (PING or data)
 * came from the proxy for `deadAfterMs`, wait an exponential, jittered backoff (100 ms doubling to 5 s by default, reset
 * by every successful connect), and connect again, forever, until the scope closes.
 */
import * as http2 from "node:http2"
import * as tls from "node:tls"
import { Clock, Data, Deferred, Effect, Either, Exit, FiberSet, Option, Random, Ref, Stream, SubscriptionRef } from "effect"
import type { Scope } from "effect"
import { parseCertIdentity, parseCertificate } from "../adapters/x509.ts"
import { awaitSilence } from "../protocols/tunnel/liveness.ts"
import { causeMessage } from "./supervise.ts"
import {
  ALPN,
  DEFAULT_CONNECTION_WINDOW,
  DEFAULT_STREAM_WINDOW,
  MAX_FRAME_SIZE,
  Header,
  Path,
  ResourcesReply,
  encodeResourcesReply,
  parseDialHeaders
} from "../protocols/tunnel/wire.ts"
import type { DialTarget, Resources } from "../protocols/tunnel/wire.ts"

/** A stream the proxy opened to one of this agent's targets. */
export interface DialRequest {
  readonly target: DialTarget
  /**
   * The connection's bytes, both ways. The handler owns it while its effect runs; when the effect
   * ends the stream is ended (success) or reset (failure or interruption), which fails only this
   * stream on the proxy's side.
   */
  readonly stream: http2.ServerHttp2Stream
}

export interface TunnelAgentOptions<R = never> {
  /** The proxy's tunnel address. */
  readonly host: string
  readonly port: number
  /** SNI and the name checked in the proxy's certificate, when `host` is not that name. */
  readonly servername?: string
  /**
   * This agent's host certificate and key (PEM), signed by the host CA; a function is read at each
   * connect, so a renewed certificate is used from the next reconnect on.
   */
  readonly cert: string | (() => string)
  readonly key: string | (() => string)
  /** The host CA certificates the proxy's certificate must chain to. */
  readonly ca: ReadonlyArray<string>
  /** Require the proxy's certificate to carry a Proxy host identity. Default true. */
  readonly requireProxyIdentity?: boolean
  /** What this agent advertises at first; change it with `setResources`. */
  readonly resources: Resources
  /**
   * Serves one dialed stream. The stream was already accepted (the proxy's `dial` has returned):
   * errors from here on belong in the target protocol's own error format, as Teleport does it.
   */
  readonly onDial: (request: DialRequest) => Effect.Effect<void, unknown, R>
  /** First reconnect delay and its cap, in ms. Default 100 and 5000. */
  readonly backoff?: { readonly initialMs?: number; readonly maxMs?: number }
  /** Reconnect when no PING came from the proxy for this long. Default 30 s. */
  readonly deadAfterMs?: number
  /** Time for TCP and TLS to come up. Default 10 s. */
  readonly connectTimeoutMs?: number
  /** How long a `GET /resources` long poll waits for a change before answering anyway. Default 25 s. */
  readonly longPollMs?: number
  /** HTTP/2 initial stream window. Default `DEFAULT_STREAM_WINDOW` (8 MiB). */
  readonly streamWindow?: number
  /** HTTP/2 connection window. Default `DEFAULT_CONNECTION_WINDOW` (8 MiB). */
  readonly connectionWindow?: number
}

export interface AgentStatus {
  readonly state: "connecting" | "connected" | "disconnected"
  /** Failed attempts since the last successful connect. */
  readonly attempts: number
  /** Successful connects since the agent started. */
  readonly connects: number
  /** Why the last connection ended or the last attempt failed. */
  readonly lastError: string | undefined
  /** When `state` last changed. */
  readonly since: Date
}

export interface TunnelAgentApi {
  readonly status: Effect.Effect<AgentStatus>
  /** The current status, then every change. */
  readonly statusChanges: Stream.Stream<AgentStatus>
  readonly resources: Effect.Effect<Resources>
  /** Advertises a new resource list; a connected proxy learns it within one round trip. */
  readonly setResources: (resources: Resources) => Effect.Effect<void>
  /** Drops the current connection (if any) so the agent reconnects. */
  readonly reconnect: Effect.Effect<void>
}

export class TunnelConnectError extends Data.TaggedError("TunnelConnectError")<{
  readonly reason: "Connect" | "Tls" | "Alpn" | "ProxyIdentity" | "Timeout"
  readonly message: string
  readonly cause?: unknown
}> {}

class ConnectionLost extends Data.TaggedError("ConnectionLost")<{ readonly message: string }> {}

const noop = () => {}

const respondError = (stream: http2.ServerHttp2Stream, status: number, message: string) => {
  if (stream.destroyed || stream.closed) return
  if (!stream.headersSent) stream.respond({ ":status": status, [Header.error]: message.replace(/[^\x20-\x7e]/g, "?") })
  stream.end()
}

/** TLS to the proxy, with the checks a tunnel needs beyond the chain. Scoped: the socket is destroyed on release. */
const dialProxy = (options: TunnelAgentOptions<never>): Effect.Effect<tls.TLSSocket, TunnelConnectError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<tls.TLSSocket, TunnelConnectError>((resume) => {
      let socket: tls.TLSSocket
      try {
        socket = tls.connect({
          host: options.host,
          port: options.port,
          ...(options.servername !== undefined ? { servername: options.servername } : {}),
          ALPNProtocols: [ALPN],
          cert: typeof options.cert === "function" ? options.cert() : options.cert,
          key: typeof options.key === "function" ? options.key() : options.key,
          ca: [...options.ca],
          rejectUnauthorized: true
        })
      } catch (cause) {
        resume(Effect.fail(new TunnelConnectError({ reason: "Connect", message: `cannot dial ${options.host}:${options.port}`, cause })))
        return
      }
      const onError = (cause: Error & { code?: string }) => {
        const tlsError = cause.code !== undefined && /CERT|SSL|TLS|ALPN|SIGNATURE|VERIFY|HOSTNAME|IP/.test(cause.code)
        resume(
          Effect.fail(
            new TunnelConnectError({
              reason: tlsError ? "Tls" : "Connect",
              message: `${options.host}:${options.port}: ${cause.message}`,
              cause
            })
          )
        )
      }
      socket.once("error", onError)
      socket.once("secureConnect", () => {
        socket.off("error", onError)
        socket.on("error", noop)
        resume(Effect.succeed(socket))
      })
      return Effect.sync(() => socket.destroy())
    }).pipe(
      Effect.timeoutFail({
        duration: options.connectTimeoutMs ?? 10_000,
        onTimeout: () => new TunnelConnectError({ reason: "Timeout", message: `${options.host}:${options.port}: no TLS handshake in time` })
      }),
      Effect.tap((socket) =>
        Effect.gen(function* () {
          if (socket.alpnProtocol !== ALPN) {
            return yield* new TunnelConnectError({ reason: "Alpn", message: `the proxy did not agree to ${ALPN} (got ${String(socket.alpnProtocol)})` })
          }
          if (options.requireProxyIdentity === false) return
          const peer = socket.getPeerCertificate(false) as Partial<tls.PeerCertificate> | null
          const identity =
            peer?.raw === undefined
              ? Option.none()
              : Either.getRight(Either.flatMap(parseCertificate(new Uint8Array(peer.raw)), (cert) => parseCertIdentity(cert)))
          if (Option.isNone(identity) || identity.value.systemRole !== "Proxy") {
            return yield* new TunnelConnectError({
              reason: "ProxyIdentity",
              message: `the certificate of ${options.host}:${options.port} is not a Proxy host certificate`
            })
          }
        }).pipe(Effect.tapError(() => Effect.sync(() => socket.destroy())))
      )
    ),
    (socket) => Effect.sync(() => socket.destroy())
  )

/** The agent's tunnel loop, running until the scope closes. */
export const make = <R = never>(options: TunnelAgentOptions<R>): Effect.Effect<TunnelAgentApi, never, Scope.Scope | R> =>
  Effect.gen(function* () {
    const initialMs = options.backoff?.initialMs ?? 100
    const maxMs = options.backoff?.maxMs ?? 5_000
    const deadAfter = options.deadAfterMs ?? 30_000
    const longPoll = options.longPollMs ?? 25_000
    const streamWindow = options.streamWindow ?? DEFAULT_STREAM_WINDOW
    const connectionWindow = options.connectionWindow ?? DEFAULT_CONNECTION_WINDOW

    const state = yield* SubscriptionRef.make(new ResourcesReply({ version: 1, resources: options.resources }))
    const status = yield* SubscriptionRef.make<AgentStatus>({
      state: "connecting",
      attempts: 0,
      connects: 0,
      lastError: undefined,
      since: new Date(yield* Clock.currentTimeMillis)
    })
    const setStatus = (f: (s: AgentStatus) => Omit<AgentStatus, "since">) =>
      Effect.flatMap(Clock.currentTimeMillis, (t) =>
        SubscriptionRef.update(status, (s) => {
          const next = f(s)
          return { ...next, since: next.state === s.state ? s.since : new Date(t) }
        })
      )
    const current = yield* Ref.make<Option.Option<Deferred.Deferred<string>>>(Option.none())

    /** Serves one `GET /resources?since=v` long poll. */
    const serveResources = (stream: http2.ServerHttp2Stream, path: string) =>
      Effect.gen(function* () {
        const since = Number(new URL(path, "http://agent").searchParams.get("since") ?? "0")
        const reply = yield* state.changes.pipe(
          Stream.filter((r: ResourcesReply) => !(r.version <= since)),
          Stream.runHead,
          Effect.timeout(longPoll),
          Effect.option,
          Effect.zipRight(SubscriptionRef.get(state))
        )
        if (stream.destroyed || stream.closed) return
        stream.respond({ ":status": 200, "content-type": "application/json" })
        stream.end(encodeResourcesReply(reply))
      })

    /** Runs `effect` for a stream until it ends or the stream closes under it. */
    const whileOpen = <E, R2>(stream: http2.ServerHttp2Stream, effect: Effect.Effect<void, E, R2>): Effect.Effect<void, E, R2> =>
      Effect.raceFirst(
        effect,
        Effect.async<void>((resume) => {
          if (stream.closed) return resume(Effect.void)
          stream.once("close", () => resume(Effect.void))
        })
      )

    /** One connection: dial, serve HTTP/2 on it, return why it ended. */
    const connectOnce = Effect.gen(function* () {
      const socket = yield* dialProxy(options as TunnelAgentOptions<never>)
      socket.setNoDelay(true)
      socket.setKeepAlive(true, Math.max(1_000, Math.floor(deadAfter / 3)))
      const ended = yield* Deferred.make<string>()
      yield* Ref.set(current, Option.some(ended))
      yield* Effect.addFinalizer(() => Ref.set(current, Option.none()))

      const run = yield* FiberSet.makeRuntime<R>()
      const server = http2.createServer({ settings: { initialWindowSize: streamWindow, enablePush: false, maxFrameSize: MAX_FRAME_SIZE } })
      let session: http2.ServerHttp2Session | undefined
      let lastPing = 0
      const settings = yield* Deferred.make<void>()
      const accepted = Deferred.await(settings)
      server.on("session", (s: http2.ServerHttp2Session) => {
        session = s
        s.on("error", (err) => Deferred.unsafeDone(ended, Exit.succeed(`the tunnel failed: ${err.message}`)))
        s.once("remoteSettings", () => Deferred.unsafeDone(settings, Exit.void))
        s.on("ping", () => {
          lastPing = Date.now()
        })
        s.on("close", () => Deferred.unsafeDone(ended, Exit.succeed("the proxy closed the tunnel")))
        try {
          s.setLocalWindowSize(connectionWindow)
        } catch {
          s.once("connect", () => s.setLocalWindowSize(connectionWindow))
        }
      })
      server.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
        // An unhandled 'error' on one stream must not take the process down.
        stream.on("error", noop)
        const path = headers[":path"] ?? ""
        const method = headers[":method"]
        if (method === "POST" && path === Path.dial) {
          const target = parseDialHeaders(headers)
          if (typeof target === "string") return respondError(stream, 400, target)
          const resources = Effect.runSync(SubscriptionRef.get(state)).resources
          if (!resources.serves(target.kind, target.name)) {
            return respondError(stream, 404, `this agent serves no ${target.kind} named ${target.name}`)
          }
          if (stream.destroyed || stream.closed) return // the proxy gave up (dial timeout) meanwhile
          stream.respond({ ":status": 200 })
          run(
            options.onDial({ target, stream }).pipe(
              Effect.onExit((exit) =>
                Effect.sync(() => {
                  if (stream.destroyed || stream.closed) return
                  if (Exit.isSuccess(exit)) stream.end()
                  else stream.close(Exit.isInterrupted(exit) ? http2.constants.NGHTTP2_CANCEL : http2.constants.NGHTTP2_INTERNAL_ERROR)
                })
              ),
              Effect.tapErrorCause((cause) => Effect.logWarning(`dial handler for ${target.kind} ${target.name} failed`, cause)),
              Effect.ignore,
              Effect.annotateLogs({ actor: "TunnelAgent", target: `${target.kind}/${target.name}` })
            )
          )
          return
        }
        if (method === "GET" && (path === Path.resources || path.startsWith(`${Path.resources}?`))) {
          run(whileOpen(stream, serveResources(stream, path)))
          return
        }
        respondError(stream, 404, `no ${String(method)} ${path}`)
      })
      server.emit("connection", socket)
      yield* Effect.addFinalizer(() =>
        Effect.async<void>((resume) => {
          const s = session
          if (s === undefined || s.destroyed) return resume(Effect.void)
          // GOAWAY tells the proxy at once; a session that does not finish closing is cut.
          const timer = setTimeout(() => {
            s.destroy()
            resume(Effect.void)
          }, 1_000)
          s.close(() => {
            clearTimeout(timer)
            resume(Effect.void)
          })
        })
      )

      // With TLS 1.3 the handshake completes on our side before the proxy has checked our
      // certificate; the proxy's HTTP/2 SETTINGS are the first sign that it accepted the tunnel.
      yield* Effect.raceFirst(
        accepted,
        Effect.flatMap(Deferred.await(ended), (message) => Effect.fail(new ConnectionLost({ message: `refused before the tunnel started: ${message}` })))
      ).pipe(
        Effect.timeoutFail({
          duration: options.connectTimeoutMs ?? 10_000,
          onTimeout: () => new ConnectionLost({ message: "the proxy did not start the tunnel in time" })
        })
      )
      yield* setStatus((s) => ({ state: "connected", attempts: 0, connects: s.connects + 1, lastError: s.lastError }))
      yield* Effect.logInfo(`tunnel to ${options.host}:${options.port} connected`)

      const silence = Effect.flatMap(
        awaitSilence({ deadAfterMs: deadAfter, bytesRead: () => socket.bytesRead, lastHeartbeat: () => lastPing }),
        (silent) => new ConnectionLost({ message: `no heartbeat or data from the proxy for ${silent} ms` })
      )
      yield* Effect.raceFirst(
        Effect.flatMap(Deferred.await(ended), (message) => Effect.fail(new ConnectionLost({ message }))),
        silence
      )
    }).pipe(Effect.scoped)

    const loop = Effect.gen(function* () {
      for (;;) {
        const exit = yield* Effect.exit(connectOnce)
        const message = Exit.isFailure(exit) ? causeMessage(exit.cause) : "connection ended"
        const { attempts } = yield* setStatus((s) => ({
          state: "disconnected",
          attempts: s.state === "connected" ? 0 : s.attempts + 1,
          connects: s.connects,
          lastError: message
        })).pipe(Effect.zipRight(SubscriptionRef.get(status)))
        yield* Effect.logInfo(`tunnel to ${options.host}:${options.port}: ${message}`)
        const base = Math.min(maxMs, initialMs * 2 ** Math.min(Math.max(attempts - 1, 0), 30))
        const jitter = yield* Random.nextRange(0.5, 1)
        yield* Effect.sleep(Math.round(base * jitter))
        yield* setStatus((s) => ({ ...s, state: "connecting" }))
      }
    }).pipe(Effect.annotateLogs({ actor: "TunnelAgent", proxy: `${options.host}:${options.port}` }))

    yield* Effect.forkScoped(loop)

    return {
      status: SubscriptionRef.get(status),
      statusChanges: status.changes,
      resources: Effect.map(SubscriptionRef.get(state), (r) => r.resources),
      setResources: (resources: Resources) =>
        SubscriptionRef.update(state, (r) => new ResourcesReply({ version: r.version + 1, resources })),
      reconnect: Effect.flatMap(Ref.get(current), Option.match({ onNone: () => Effect.void, onSome: (d) => Deferred.succeed(d, "reconnect requested") }))
    } satisfies TunnelAgentApi
  })
