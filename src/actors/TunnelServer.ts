/**
 * The proxy's end of the reverse tunnel. Agents (db, node) behind NAT dial the proxy with TLS and
 * ALPN `remoteler-tunnel`; the proxy's listener terminates TLS, checks the client certificate
 * against the host CA and hands the socket here. From then on the proxy is the HTTP/2 *client* on
 * that socket and the agent the HTTP/2 server, so every user connection the proxy routes to the
 * agent is one HTTP/2 stream (`POST /dial`). See `protocols/tunnel/wire.ts` for why HTTP/2 rather
 * than ssh2 channels, and for the requests.
 *
 * One fiber per connected agent, in a `FiberMap` keyed by host id: a second connection from the
 * same host replaces the first (an agent that reconnects before the proxy noticed the old socket
 * die). The fiber fetches the agent's resources, keeps a long poll open for changes, pings the
 * agent and drops it when neither PING acks nor any other bytes arrived for `deadAfterMs`, and
 * removes the agent from the registry when its socket closes.
 */
import * as http2 from "node:http2"
import * as tls from "node:tls"
import {
  Clock,
  Context,
  Data,
  Deferred,
  Effect,
  Either,
  Exit,
  FiberMap,
  HashMap,
  Layer,
  Option,
  PubSub,
  Ref,
  Runtime,
  Stream
} from "effect"
import type { Queue, Scope } from "effect"
import type { SystemRole } from "../domain/Identity.ts"
import { parseCertIdentity, parseCertificate, verifyChain } from "../adapters/x509.ts"
import {
  ALPN,
  DEFAULT_CONNECTION_WINDOW,
  DEFAULT_STREAM_WINDOW,
  MAX_FRAME_SIZE,
  DialTarget,
  Header,
  Path,
  dialHeaders,
  decodeResourcesReply
} from "../protocols/tunnel/wire.ts"
import { awaitSilence } from "../protocols/tunnel/liveness.ts"
import type { Resources, TargetKind } from "../protocols/tunnel/wire.ts"

// ---------------------------------------------------------------------------------------------
// Data

/** Who is on the other end of a tunnel, from its verified host certificate. */
export interface AgentIdentity {
  readonly hostId: string
  readonly nodeName: string
  readonly systemRole: SystemRole
}

/** A connected agent as the registry lists it. */
export interface AgentInfo extends AgentIdentity {
  readonly connectedAt: Date
  readonly lastHeartbeat: Date
  readonly resources: Resources
  /** The agent's resource version; grows with every change it announces. */
  readonly resourcesVersion: number
  readonly remoteAddress: string | undefined
}

/** Why a tunnel went away. */
export type DisconnectReason =
  /** The socket closed or errored (the agent shut down, the network dropped it). */
  | "Closed"
  /** The agent sent GOAWAY: it is shutting down. */
  | "GoAway"
  /** No PING ack for `deadAfterMs`. */
  | "HeartbeatTimeout"
  /** The same host connected again; this connection was dropped for the new one. */
  | "Replaced"
  /** The tunnel server's scope closed. */
  | "Shutdown"
  /** The agent did not answer its first `GET /resources` well or in time. */
  | "HandshakeFailed"

export type TunnelEvent = Data.TaggedEnum<{
  AgentConnected: { readonly agent: AgentInfo }
  AgentResourcesChanged: { readonly agent: AgentInfo }
  AgentDisconnected: { readonly agent: AgentInfo; readonly reason: DisconnectReason; readonly message: string }
}>
export const TunnelEvent = Data.taggedEnum<TunnelEvent>()

/** What `dial` asks an agent to connect to. */
export interface DialTargetInput {
  readonly kind: TargetKind
  readonly name: string
  /** Carried to the agent's handler, e.g. the user's identity as JSON. */
  readonly meta: Readonly<Record<string, string>>
}

// ---------------------------------------------------------------------------------------------
// Errors

export class AgentNotConnected extends Data.TaggedError("AgentNotConnected")<{
  readonly hostId: string
  readonly message: string
}> {}

export class DialFailed extends Data.TaggedError("DialFailed")<{
  readonly hostId: string
  /** Refused: the agent answered with an error status; UnknownTarget: it does not serve that name. */
  readonly reason: "Refused" | "UnknownTarget" | "Timeout" | "Stream" | "Closed"
  readonly message: string
  readonly cause?: unknown
}> {}

export class AgentRejected extends Data.TaggedError("AgentRejected")<{
  readonly reason: "NoCertificate" | "BadCertificate" | "NotAnAgent" | "WrongProtocol"
  readonly message: string
  readonly cause?: unknown
}> {}

export class TunnelListenError extends Data.TaggedError("TunnelListenError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

// ---------------------------------------------------------------------------------------------
// Service

export interface TunnelServerOptions {
  /** How often the proxy PINGs each agent. Default 5 s. */
  readonly heartbeatIntervalMs?: number
  /** An agent whose last PING ack is older than this is dropped. Default 3 × the interval. */
  readonly deadAfterMs?: number
  /** Time for an agent to answer a `POST /dial` with its headers. Default 10 s. */
  readonly dialTimeoutMs?: number
  /** Time for a new agent to answer its first `GET /resources`. Default 10 s. */
  readonly handshakeTimeoutMs?: number
  /** HTTP/2 initial stream window (SETTINGS_INITIAL_WINDOW_SIZE). Default `DEFAULT_STREAM_WINDOW` (8 MiB). */
  readonly streamWindow?: number
  /** HTTP/2 connection window. Default `DEFAULT_CONNECTION_WINDOW` (8 MiB). */
  readonly connectionWindow?: number
}

export interface TunnelServerApi {
  /**
   * Takes over a TLS socket accepted with ALPN `remoteler-tunnel` whose client certificate the
   * caller has verified. Returns once the tunnel's fiber runs; the agent is listed after it answers
   * its first `GET /resources`.
   */
  readonly accept: (socket: tls.TLSSocket, agent: AgentIdentity) => Effect.Effect<void>
  /**
   * Verifies the socket's client certificate against `hostCaPems` (signature, validity, a Db or
   * Node host identity) and then `accept`s it. A refused socket is destroyed.
   */
  readonly acceptVerified: (
    socket: tls.TLSSocket,
    hostCaPems: ReadonlyArray<string>
  ) => Effect.Effect<AgentIdentity, AgentRejected>
  /**
   * Opens a stream to `target` through the agent's tunnel. The stream is a duplex whose bytes are
   * the connection; the caller owns it (end or destroy it when done). Fails if the agent is not
   * connected, refuses, or does not answer within `dialTimeoutMs`.
   */
  readonly dial: (
    hostId: string,
    target: DialTargetInput
  ) => Effect.Effect<http2.ClientHttp2Stream, AgentNotConnected | DialFailed>
  /** The connected agents, by host id. */
  readonly agents: Effect.Effect<ReadonlyArray<AgentInfo>>
  readonly agent: (hostId: string) => Effect.Effect<Option.Option<AgentInfo>>
  /** Connect, resource-change and disconnect events from the moment the stream starts. */
  readonly events: Stream.Stream<TunnelEvent>
  /** A subscription to the events, for callers that must not miss one between subscribing and reading. */
  readonly subscribe: Effect.Effect<Queue.Dequeue<TunnelEvent>, never, Scope.Scope>
}

export class TunnelServer extends Context.Tag("remoteler/TunnelServer")<TunnelServer, TunnelServerApi>() {}

interface Connection {
  readonly id: number
  readonly identity: AgentIdentity
  readonly socket: tls.TLSSocket
  readonly session: http2.ClientHttp2Session
  readonly connectedAt: Date
}

interface Entry {
  readonly connection: Connection
  readonly info: AgentInfo
}

interface Reply {
  readonly status: number
  readonly headers: http2.IncomingHttpHeaders
  readonly body: Buffer
}

class RequestFailed extends Data.TaggedError("RequestFailed")<{ readonly message: string; readonly cause?: unknown }> {}

const noop = () => {}

/** One HTTP/2 request with a body read to the end. Interrupting it cancels the stream. */
const request = (session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders): Effect.Effect<Reply, RequestFailed> =>
  Effect.async<Reply, RequestFailed>((resume) => {
    let done = false
    const finish = (e: Effect.Effect<Reply, RequestFailed>) => {
      if (!done) {
        done = true
        resume(e)
      }
    }
    let stream: http2.ClientHttp2Stream
    try {
      stream = session.request(headers, { endStream: true })
    } catch (cause) {
      finish(Effect.fail(new RequestFailed({ message: "tunnel session is closed", cause })))
      return
    }
    const chunks: Array<Buffer> = []
    let responseHeaders: http2.IncomingHttpHeaders = {}
    stream.on("response", (h) => {
      responseHeaders = h
    })
    stream.on("data", (chunk: Buffer) => chunks.push(chunk))
    stream.on("end", () =>
      finish(Effect.succeed({ status: Number(responseHeaders[":status"] ?? 0), headers: responseHeaders, body: Buffer.concat(chunks) }))
    )
    stream.on("error", (cause) => finish(Effect.fail(new RequestFailed({ message: `stream error: ${cause.message}`, cause }))))
    stream.on("close", () => finish(Effect.fail(new RequestFailed({ message: `stream closed (code ${stream.rstCode})` }))))
    return Effect.sync(() => {
      done = true
      if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL)
    })
  })

/** One PING round trip. */
const ping = (session: http2.ClientHttp2Session): Effect.Effect<void, RequestFailed> =>
  Effect.async<void, RequestFailed>((resume) => {
    try {
      const sent = session.ping((err) =>
        resume(err === null ? Effect.void : Effect.fail(new RequestFailed({ message: "ping failed", cause: err })))
      )
      if (!sent) resume(Effect.fail(new RequestFailed({ message: "too many outstanding pings" })))
    } catch (cause) {
      resume(Effect.fail(new RequestFailed({ message: "ping failed", cause })))
    }
  })

const errorHeader = (headers: http2.IncomingHttpHeaders): string => {
  const v = headers[Header.error]
  return typeof v === "string" ? v : Array.isArray(v) ? v.join(", ") : ""
}

/** The proxy's tunnel server, live for the enclosing scope; closing it drops every tunnel. */
export const make = (options: TunnelServerOptions = {}): Effect.Effect<TunnelServerApi, never, Scope.Scope> =>
  Effect.gen(function* () {
    const interval = options.heartbeatIntervalMs ?? 5_000
    const deadAfter = options.deadAfterMs ?? 3 * interval
    const dialTimeout = options.dialTimeoutMs ?? 10_000
    const handshakeTimeout = options.handshakeTimeoutMs ?? 10_000
    const streamWindow = options.streamWindow ?? DEFAULT_STREAM_WINDOW
    const connectionWindow = options.connectionWindow ?? DEFAULT_CONNECTION_WINDOW

    const registry = yield* Ref.make(HashMap.empty<string, Entry>())
    const pubsub = yield* Effect.acquireRelease(PubSub.unbounded<TunnelEvent>(), PubSub.shutdown)
    // Declared after the pubsub so it closes first: the disconnect events still get published.
    const connections = yield* FiberMap.make<string, void>()
    let nextId = 0
    let shuttingDown = false
    // Added after the FiberMap, so it runs before the tunnels are interrupted.
    yield* Effect.addFinalizer(() => Effect.sync(() => (shuttingDown = true)))

    const updateEntry = (connection: Connection, f: (info: AgentInfo) => AgentInfo) =>
      Ref.modify(registry, (map) => {
        const entry = HashMap.get(map, connection.identity.hostId)
        if (Option.isNone(entry) || entry.value.connection.id !== connection.id) return [Option.none<AgentInfo>(), map] as const
        const info = f(entry.value.info)
        return [Option.some(info), HashMap.set(map, connection.identity.hostId, { connection, info })] as const
      })

    const fetchResources = (session: http2.ClientHttp2Session, since: number) =>
      Effect.flatMap(request(session, { ":method": "GET", ":path": `${Path.resources}?since=${since}` }), (reply) =>
        reply.status !== 200
          ? Effect.fail(new RequestFailed({ message: `GET /resources answered ${reply.status} ${errorHeader(reply.headers)}` }))
          : Either.match(decodeResourcesReply(reply.body.toString("utf8")), {
              onLeft: (cause) => Effect.fail(new RequestFailed({ message: "GET /resources answered a body that is not a ResourcesReply", cause })),
              onRight: Effect.succeed
            })
      )

    type Ending = { readonly reason: DisconnectReason; readonly message: string }

    /** The life of one tunnel, from the first resources to its socket closing. */
    const runConnection = (connection: Connection): Effect.Effect<void> => {
      const { session, identity } = connection
      let registered: AgentInfo | undefined
      let ending: Ending | undefined
      return Effect.gen(function* () {
        const closed = yield* Deferred.make<Ending>()
        session.on("close", () => Deferred.unsafeDone(closed, Exit.succeed({ reason: "Closed", message: "the tunnel's socket closed" })))
        session.on("error", (err) =>
          Deferred.unsafeDone(closed, Exit.succeed({ reason: "Closed", message: `the tunnel's socket failed: ${err.message}` }))
        )
        session.on("goaway", () => Deferred.unsafeDone(closed, Exit.succeed({ reason: "GoAway", message: "the agent is going away" })))
        if (session.destroyed || session.closed) {
          Deferred.unsafeDone(closed, Exit.succeed({ reason: "Closed", message: "the tunnel's socket closed before it started" }))
        }

        const first = yield* fetchResources(session, 0).pipe(
          Effect.timeoutFail({
            duration: handshakeTimeout,
            onTimeout: () => new RequestFailed({ message: `no answer to GET /resources within ${handshakeTimeout} ms` })
          }),
          Effect.either,
          Effect.raceFirst(Effect.map(Deferred.await(closed), (e) => Either.left(new RequestFailed({ message: e.message }))))
        )
        if (Either.isLeft(first)) {
          ending = { reason: "HandshakeFailed", message: first.left.message }
          return
        }
        const now = new Date(yield* Clock.currentTimeMillis)
        const info: AgentInfo = {
          ...identity,
          connectedAt: connection.connectedAt,
          lastHeartbeat: now,
          resources: first.right.resources,
          resourcesVersion: first.right.version,
          remoteAddress: connection.socket.remoteAddress
        }
        yield* Ref.update(registry, HashMap.set(identity.hostId, { connection, info }))
        registered = info
        yield* PubSub.publish(pubsub, TunnelEvent.AgentConnected({ agent: info }))

        // PING every interval; the watchdog below decides when silence means death.
        let lastAck = now.getTime()
        const pinger = Effect.forever(
          Effect.sleep(interval).pipe(
            Effect.zipRight(ping(session).pipe(Effect.timeout(deadAfter), Effect.option)),
            Effect.flatMap((acked) =>
              Option.isNone(acked)
                ? Effect.void
                : Effect.flatMap(Clock.currentTimeMillis, (t) => {
                    lastAck = t
                    return updateEntry(connection, (i) => ({ ...i, lastHeartbeat: new Date(t) }))
                  })
            )
          )
        )
        const watchdog = Effect.map(
          awaitSilence({ deadAfterMs: deadAfter, bytesRead: () => connection.socket.bytesRead, lastHeartbeat: () => lastAck }),
          (silent): Ending => ({ reason: "HeartbeatTimeout", message: `no heartbeat or data for ${silent} ms` })
        )
        const heartbeat = Effect.zipRight(Effect.fork(pinger), watchdog)

        // Long poll for resource changes. A failed poll while the session lives is retried after a
        // pause; when the session is gone `closed` wins the race anyway.
        const watchResources = Effect.gen(function* () {
          let version = first.right.version
          for (;;) {
            const reply = yield* Effect.either(fetchResources(session, version))
            if (Either.isLeft(reply)) {
              if (!session.destroyed && !session.closed) {
                yield* Effect.logWarning(`tunnel ${identity.hostId}: ${reply.left.message}`)
              }
              yield* Effect.sleep(1_000)
              continue
            }
            if (reply.right.version === version) continue
            version = reply.right.version
            const updated = yield* updateEntry(connection, (i) => ({
              ...i,
              resources: reply.right.resources,
              resourcesVersion: reply.right.version
            }))
            if (Option.isSome(updated)) {
              registered = updated.value
              yield* PubSub.publish(pubsub, TunnelEvent.AgentResourcesChanged({ agent: updated.value }))
            }
          }
        })

        ending = yield* Effect.raceAll<Effect.Effect<Ending>>([Deferred.await(closed), heartbeat, watchResources])
      }).pipe(
        Effect.onExit((exit) =>
          Effect.gen(function* () {
            const end: Ending =
              ending ??
              (shuttingDown
                ? { reason: "Shutdown", message: "the tunnel server is shutting down" }
                : Exit.isInterrupted(exit)
                ? { reason: "Replaced", message: "another connection from the same host replaced this one" }
                : { reason: "Closed", message: "the tunnel ended" })
            session.destroy()
            connection.socket.destroy()
            const removed = yield* Ref.modify(registry, (map) => {
              const entry = HashMap.get(map, identity.hostId)
              return Option.isSome(entry) && entry.value.connection.id === connection.id
                ? ([Option.some(entry.value.info), HashMap.remove(map, identity.hostId)] as const)
                : ([Option.none<AgentInfo>(), map] as const)
            })
            const agent = Option.getOrElse(removed, () => registered)
            if (agent !== undefined) {
              yield* Effect.logInfo(`tunnel ${identity.hostId} (${identity.nodeName}) disconnected: ${end.message}`)
              yield* PubSub.publish(pubsub, TunnelEvent.AgentDisconnected({ agent, reason: end.reason, message: end.message }))
            }
          })
        ),
        Effect.annotateLogs({ actor: "TunnelServer", hostId: identity.hostId })
      )
    }

    const accept = (socket: tls.TLSSocket, agent: AgentIdentity): Effect.Effect<void> =>
      Effect.gen(function* () {
        if (shuttingDown) {
          socket.destroy()
          return
        }
        socket.setNoDelay(true)
        socket.setKeepAlive(true, interval)
        const session = http2.connect("http://remoteler-agent", {
          createConnection: () => socket,
          settings: { initialWindowSize: streamWindow, enablePush: false, maxFrameSize: MAX_FRAME_SIZE }
        })
        session.on("error", noop)
        try {
          session.setLocalWindowSize(connectionWindow)
        } catch {
          session.once("connect", () => session.setLocalWindowSize(connectionWindow))
        }
        const connection: Connection = {
          id: ++nextId,
          identity: agent,
          socket,
          session,
          connectedAt: new Date(yield* Clock.currentTimeMillis)
        }
        yield* FiberMap.run(connections, agent.hostId, runConnection(connection))
      })

    const acceptVerified = (socket: tls.TLSSocket, hostCaPems: ReadonlyArray<string>) =>
      Effect.gen(function* () {
        if (socket.alpnProtocol !== ALPN) {
          return yield* new AgentRejected({ reason: "WrongProtocol", message: `ALPN is ${String(socket.alpnProtocol)}, not ${ALPN}` })
        }
        const peer = socket.getPeerCertificate(false) as Partial<tls.PeerCertificate> | null
        if (peer === null || peer.raw === undefined) {
          return yield* new AgentRejected({ reason: "NoCertificate", message: "the agent presented no certificate" })
        }
        const cert = yield* Effect.mapError(
          parseCertificate(new Uint8Array(peer.raw)),
          (cause) => new AgentRejected({ reason: "BadCertificate", message: cause.message, cause })
        )
        yield* Effect.mapError(
          verifyChain(cert, hostCaPems),
          (cause) => new AgentRejected({ reason: "BadCertificate", message: cause.message, cause })
        )
        const identity = yield* Effect.mapError(
          parseCertIdentity(cert),
          (cause) => new AgentRejected({ reason: "BadCertificate", message: cause.message, cause })
        )
        const { hostId, nodeName, systemRole } = identity
        if (hostId === undefined || nodeName === undefined || (systemRole !== "Db" && systemRole !== "Node")) {
          return yield* new AgentRejected({
            reason: "NotAnAgent",
            message: `certificate of ${identity.username} (${identity.roles.join(",")}) is not a db or node host certificate`
          })
        }
        const agent: AgentIdentity = { hostId, nodeName, systemRole }
        yield* accept(socket, agent)
        return agent
      }).pipe(
        Effect.tapError((e) =>
          Effect.sync(() => socket.destroy()).pipe(Effect.zipRight(Effect.logWarning(`tunnel refused: ${e.message}`)))
        )
      )

    const dial = (hostId: string, input: DialTargetInput) =>
      Effect.gen(function* () {
        const entry = HashMap.get(yield* Ref.get(registry), hostId)
        const notConnected = new AgentNotConnected({ hostId, message: `no agent with host id ${hostId} is connected` })
        if (Option.isNone(entry)) return yield* notConnected
        const session = entry.value.connection.session
        if (session.closed || session.destroyed) return yield* notConnected
        const target = new DialTarget({ kind: input.kind, name: input.name, meta: { ...input.meta } })
        const what = `${target.kind} ${target.name} on ${hostId}`
        return yield* Effect.async<http2.ClientHttp2Stream, DialFailed>((resume) => {
          let done = false
          const finish = (e: Effect.Effect<http2.ClientHttp2Stream, DialFailed>) => {
            if (!done) {
              done = true
              resume(e)
            }
          }
          let stream: http2.ClientHttp2Stream
          try {
            stream = session.request(dialHeaders(target), { endStream: false })
          } catch (cause) {
            finish(Effect.fail(new DialFailed({ hostId, reason: "Closed", message: `tunnel to ${hostId} is closing`, cause })))
            return
          }
          // An unhandled 'error' on a stream would take the whole process down; errors still reach
          // every listener the caller adds, and `pipeline`/`finished` see them.
          stream.on("error", noop)
          stream.once("response", (headers) => {
            const status = Number(headers[":status"] ?? 0)
            if (status === 200) {
              finish(Effect.succeed(stream))
              return
            }
            stream.close(http2.constants.NGHTTP2_CANCEL)
            const why = errorHeader(headers) || `status ${status}`
            finish(
              Effect.fail(
                new DialFailed({
                  hostId,
                  reason: status === 404 ? "UnknownTarget" : "Refused",
                  message: `agent refused dial to ${what}: ${why}`
                })
              )
            )
          })
          stream.once("error", (cause) =>
            finish(Effect.fail(new DialFailed({ hostId, reason: "Stream", message: `dial to ${what} failed: ${cause.message}`, cause })))
          )
          stream.once("close", () =>
            finish(Effect.fail(new DialFailed({ hostId, reason: "Closed", message: `dial to ${what}: stream closed (code ${stream.rstCode})` })))
          )
          return Effect.sync(() => {
            if (!done) {
              done = true
              stream.close(http2.constants.NGHTTP2_CANCEL)
            }
          })
        }).pipe(
          Effect.timeoutFail({
            duration: dialTimeout,
            onTimeout: () => new DialFailed({ hostId, reason: "Timeout", message: `agent did not answer dial to ${what} within ${dialTimeout} ms` })
          })
        )
      })

    const agents = Effect.map(Ref.get(registry), (map) =>
      Array.from(HashMap.values(map), (e) => e.info).sort((a, b) => a.hostId.localeCompare(b.hostId))
    )

    return {
      accept,
      acceptVerified,
      dial,
      agents,
      agent: (hostId: string) => Effect.map(Ref.get(registry), (map) => Option.map(HashMap.get(map, hostId), (e) => e.info)),
      events: Stream.fromPubSub(pubsub),
      subscribe: PubSub.subscribe(pubsub)
    } satisfies TunnelServerApi
  })

/** The tunnel server as a layer, for the proxy role. */
export const layer = (options: TunnelServerOptions = {}): Layer.Layer<TunnelServer> => Layer.scoped(TunnelServer, make(options))

// ---------------------------------------------------------------------------------------------
// A listener of its own

export interface TunnelListenOptions {
  readonly host?: string
  /** 0 picks a free port. */
  readonly port: number
  /** The proxy's certificate and key (PEM), signed by the host CA. */
  readonly cert: string
  readonly key: string
  /** The host CA certificates agents' certificates must chain to. */
  readonly hostCaPems: ReadonlyArray<string>
}

/**
 * A TLS listener that accepts only tunnels (ALPN `remoteler-tunnel`, client certificate from the
 * host CA) and hands them to `server`. The proxy's shared port routes by ALPN instead; this serves
 * a dedicated tunnel port, tests and benchmarks. Closing the scope stops listening and drops the
 * tunnels this listener accepted, as a proxy restart would.
 */
export const listen = (
  server: TunnelServerApi,
  options: TunnelListenOptions
): Effect.Effect<{ readonly port: number }, TunnelListenError, Scope.Scope> =>
  Effect.gen(function* () {
    const runtime = yield* Effect.runtime<never>()
    const listener = tls.createServer({
      cert: options.cert,
      key: options.key,
      ca: [...options.hostCaPems],
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: [ALPN]
    })
    listener.on("secureConnection", (socket: tls.TLSSocket) => {
      Runtime.runFork(runtime)(Effect.ignore(server.acceptVerified(socket, options.hostCaPems)))
    })
    // Failed handshakes (a certificate from another CA, no certificate) only concern that socket.
    listener.on("tlsClientError", noop)
    const sockets = new Set<tls.TLSSocket>()
    listener.on("secureConnection", (socket: tls.TLSSocket) => {
      sockets.add(socket)
      socket.once("close", () => sockets.delete(socket))
    })
    return yield* Effect.acquireRelease(
      Effect.async<{ readonly port: number }, TunnelListenError>((resume) => {
        listener.once("error", (cause) => resume(Effect.fail(new TunnelListenError({ message: `cannot listen: ${cause.message}`, cause }))))
        listener.listen(options.port, options.host ?? "0.0.0.0", () => {
          const address = listener.address()
          resume(Effect.succeed({ port: typeof address === "object" && address !== null ? address.port : options.port }))
        })
      }),
      () =>
        Effect.async<void>((resume) => {
          listener.close(() => resume(Effect.void))
          for (const s of sockets) s.destroy()
        })
    )
  })
