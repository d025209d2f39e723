/**
 * The proxy's HTTPS listener (`proxy_service.web_listen_addr`, default 0.0.0.0:3080): the web API
 * under `/v1/webapi` and the invite page. It holds no secrets of its own beyond its TLS key: every
 * decision is auth's, reached over the bus.
 *
 * Client certificates are requested but not required by TLS, and checked here per endpoint against
 * the user CAs auth currently trusts (which change during a rotation), so an expired certificate or
 * one from another CA gets a clear 401 and an audit event instead of a bare handshake failure.
 */
import * as fs from "node:fs"
import type * as http from "node:http"
import type { TLSSocket } from "node:tls"
import { randomBytes, randomUUID } from "node:crypto"
import { Duration, Effect, Either, Layer, Option, Runtime, Schedule, Schema, Stream } from "effect"
import * as AuthApiBus from "../adapters/AuthApiBus.ts"
import * as Presence from "../adapters/Presence.ts"
import * as ProxyListener from "../adapters/ProxyListener.ts"
import { Role } from "../domain/Role.ts"
import { CANCEL_TARGET } from "../protocols/tunnel/wire.ts"
import type { ProxyContext, RouteFailure } from "./proxy/context.ts"
import * as MysqlFront from "./proxy/mysql.ts"
import * as PostgresFront from "./proxy/postgres.ts"
import * as RedisFront from "./proxy/redis.ts"
import * as SshFront from "./proxy/ssh.ts"
import * as TunnelServer from "./TunnelServer.ts"
import { renewAt } from "./TunnelPool.ts"

const encodeRole = Schema.encodeSync(Role)
import { Bus } from "../adapters/Bus.ts"
import { readBody } from "../adapters/internal/httpBody.ts"
import { invitePageCsp, renderInvitePage, renderMessagePage } from "../adapters/web/invitePage.ts"
import * as X509 from "../adapters/x509.ts"
import type { AuthMethod, RequestOf, ResponseOf } from "../domain/AuthApi.ts"
import type { ApiError } from "../domain/Errors.ts"
import { httpStatusOf } from "../domain/Errors.ts"

export interface ProxyWebSettings {
  readonly clusterName: string
  readonly listenAddr: string
  /** Names and addresses the proxy's certificate is valid for. */
  readonly publicHosts: ReadonlyArray<string>
  /** `https_keypairs` from the config: used instead of a host-CA certificate. */
  readonly keyPairs?: ReadonlyArray<{ readonly key_file: string; readonly cert_file: string }>
  readonly publicAddr: string
  /** `proxy_service.ssh_listen_addr`: the SSH listener for OpenSSH clients (see proxy/ssh.ts). */
  readonly sshListenAddr?: string
  /** Where that listener keeps its host key. */
  readonly sshHostKeyFile?: string
  /** `proxy_service.mysql_listen_addr`: the MySQL listener (see proxy/mysql.ts). */
  readonly mysqlListenAddr?: string
  /** False for the default address: then an address in use is a warning, not a failure to start. */
  readonly mysqlListenRequired?: boolean
}

const MAX_BODY = 64 * 1024
/** How often the proxy repeats its agents' presence; auth expires an agent after 15 s of silence. */
const HEARTBEAT_INTERVAL = "5 seconds"
/** A peer proxy silent for this long is left out of the list agents get. */
const PEER_TTL_MS = 15_000

/**
 * An agent's audit upload: a batch of events, each as long as the query it records. The agent
 * sends at most about 1 MiB at a time; this leaves room for one very long query.
 */
const MAX_AGENT_EVENTS_BODY = 16 * 1024 * 1024


const sendJson = (res: http.ServerResponse, status: number, body: unknown) => {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    "cache-control": "no-store",
    "strict-transport-security": "max-age=31536000"
  })
  res.end(text)
}

const sendHtml = (res: http.ServerResponse, status: number, html: string, nonce: string) => {
  res.writeHead(status, {
    "content-type": "text/html; charset=utf-8",
    "content-security-policy": invitePageCsp(nonce),
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer"
  })
  res.end(html)
}

const readJson = (req: http.IncomingMessage, maxBytes: number): Promise<unknown> =>
  readBody(req, maxBytes).then((text) => {
    try {
      return text === "" ? {} : (JSON.parse(text) as unknown)
    } catch {
      throw new Error("request body is not JSON")
    }
  })

export const make = (settings: ProxyWebSettings) =>
  Effect.gen(function* () {
    const bus = yield* Bus
    const runtime = yield* Effect.runtime<never>()
    const run = Runtime.runPromise(runtime)
    const auth = <M extends AuthMethod>(method: M, request: RequestOf<M>): Effect.Effect<ResponseOf<M>, ApiError> =>
      AuthApiBus.call(bus, settings.clusterName, method, request)

    // The proxy's TLS identity: configured key pairs, or a host certificate from auth.
    let key = ""
    let cert = ""
    if (settings.keyPairs !== undefined && settings.keyPairs.length > 0) {
      const pair = settings.keyPairs[0]!
      key = fs.readFileSync(pair.key_file, "utf8")
      cert = fs.readFileSync(pair.cert_file, "utf8")
    }
    const webHostId = `proxy-${randomUUID()}`
    /** A certificate for the web port from auth (host CA), with the host CA in the chain. */
    const issueWebCert = Effect.gen(function* () {
      const keys = yield* X509.generateEcdsaKeyPair().pipe(Effect.orDie)
      const issued = yield* auth("web.proxy_cert", { host_id: webHostId, hosts: [...settings.publicHosts], tls_pub_key: keys.publicKeyPem })
      // The chain includes the host CA, so a joining agent can check it against its --ca-pin.
      const hostCas = yield* auth("web.trusted_host_cas", {})
      return { key: keys.privateKeyPem, cert: issued.tls_cert! + hostCas.tls_ca_certs.join("") }
    })
    if (settings.keyPairs === undefined || settings.keyPairs.length === 0) {
      const first = yield* issueWebCert.pipe(Effect.retry({ times: 20, while: (e) => e._tag === "Unavailable" }), Effect.orDie)
      key = first.key
      cert = first.cert
    }
    /** Read at each use, so a renewed certificate reaches fronts that do their own TLS (MySQL). */
    const credentials = {
      get key() {
        return key
      },
      get cert() {
        return cert
      }
    }

    let trusted: { at: number; pems: ReadonlyArray<string> } | undefined
    const trustedUserCas = Effect.gen(function* () {
      if (trusted !== undefined && Date.now() - trusted.at < 2_000) return trusted.pems
      const r = yield* auth("web.trusted_user_cas", {})
      trusted = { at: Date.now(), pems: r.tls_ca_certs }
      return r.tls_ca_certs
    })

    let trustedHost: { at: number; pems: ReadonlyArray<string> } | undefined
    const trustedHostCas = Effect.gen(function* () {
      if (trustedHost !== undefined && Date.now() - trustedHost.at < 2_000) return trustedHost.pems
      const r = yield* auth("web.trusted_host_cas", {})
      trustedHost = { at: Date.now(), pems: r.tls_ca_certs }
      return r.tls_ca_certs
    })

    /** An agent's identity from its host certificate (host CA, Db or Node role). */
    const agentIdentity = (socket: TLSSocket) =>
      Effect.gen(function* () {
        const peer = socket.getPeerCertificate(false)
        if (peer === null || peer.raw === undefined) return Either.left("a host certificate is required")
        const pem = X509.toPem(peer.raw, "CERTIFICATE")
        const verified = yield* Effect.either(X509.verifyChain(pem, yield* trustedHostCas))
        if (Either.isLeft(verified)) return Either.left(`certificate refused: ${verified.left.message}`)
        const identity = X509.parseCertIdentity(pem)
        if (Either.isLeft(identity) || identity.right.hostId === undefined) return Either.left("not a host certificate")
        return Either.right(identity.right)
      })

    /** The caller's identity from its client certificate, or a 401 that is audited. */
    const clientIdentity = (req: http.IncomingMessage) => socketIdentity(req.socket as TLSSocket)
    const socketIdentity = (socket: TLSSocket) =>
      Effect.gen(function* () {
        const peer = socket.getPeerCertificate(false)
        const remote = socket.remoteAddress
        if (peer === null || peer.raw === undefined) return Either.left("a client certificate is required")
        const pem = X509.toPem(peer.raw, "CERTIFICATE")
        const identity = X509.parseCertIdentity(pem)
        const user = Either.isRight(identity) ? identity.right.username : "unknown"
        const verified = yield* Effect.either(X509.verifyChain(pem, yield* trustedUserCas))
        if (Either.isLeft(verified)) {
          yield* auth("web.cert_refused", {
            user,
            reason: `${verified.left.reason}: ${verified.left.message}`,
            ...(remote === undefined ? {} : { remote_addr: remote })
          }).pipe(Effect.ignore)
          return Either.left(`certificate refused: ${verified.left.message}`)
        }
        if (Either.isLeft(identity)) return Either.left("the certificate carries no identity")
        if (identity.right.routeToCluster !== settings.clusterName) {
          yield* auth("web.cert_refused", { user, reason: `certificate for cluster ${identity.right.routeToCluster}` }).pipe(Effect.ignore)
          return Either.left(`certificate is for cluster ${identity.right.routeToCluster}, not ${settings.clusterName}`)
        }
        return Either.right(identity.right)
      })

    const route = (req: http.IncomingMessage, res: http.ServerResponse): Effect.Effect<void, ApiError> =>
      Effect.gen(function* () {
        const url = new URL(req.url ?? "/", "https://proxy")
        const path = url.pathname
        const method = req.method ?? "GET"
        const remote = req.socket.remoteAddress
        const limit = path === "/v1/webapi/agent/events" || path === "/v1/webapi/agent/recording" ? MAX_AGENT_EVENTS_BODY : MAX_BODY
        const body = method === "POST" ? yield* Effect.tryPromise({ try: () => readJson(req, limit), catch: (e) => e as Error }).pipe(
          Effect.catchAll((e) => Effect.succeed({ __error: e.message }))
        ) : undefined
        if (body !== undefined && typeof body === "object" && body !== null && "__error" in body) {
          return sendJson(res, 400, { error: { message: String((body as { __error: string }).__error) } })
        }

        if (method === "GET" && path === "/v1/webapi/find") return sendJson(res, 200, yield* auth("web.find", {}))
        if (method === "POST" && path === "/v1/webapi/ssh/certs") {
          const login = yield* auth("web.login", { ...(body as RequestOf<"web.login">), ...(remote === undefined ? {} : { remote_addr: remote }) })
          return sendJson(res, 200, login)
        }
        if (method === "POST" && path === "/v1/webapi/host/join") {
          const joined = yield* auth("web.join", { ...(body as RequestOf<"web.join">), ...(remote === undefined ? {} : { remote_addr: remote }) })
          return sendJson(res, 200, joined)
        }
        const invite = /^\/v1\/webapi\/invite\/([^/]+)$/.exec(path)
        if (invite !== null && method === "GET") return sendJson(res, 200, yield* auth("web.invite_info", { token: invite[1]! }))
        if (invite !== null && method === "POST") {
          return sendJson(res, 200, yield* auth("web.invite_complete", { ...(body as object), token: invite[1]! } as RequestOf<"web.invite_complete">))
        }
        const page = /^\/web\/invite\/([^/]+)$/.exec(path)
        if (page !== null && method === "GET") {
          const nonce = randomBytes(16).toString("base64")
          const info = yield* Effect.either(auth("web.invite_info", { token: page[1]! }))
          if (Either.isLeft(info)) {
            return sendHtml(res, 404, renderMessagePage("Invitation not valid", info.left.message, { nonce }), nonce)
          }
          const html = yield* Effect.promise(() =>
            renderInvitePage({
              token: page[1]!,
              user: info.right.user,
              secondFactor: info.right.second_factor,
              ...(info.right.totp_secret === undefined ? {} : { totpSecret: info.right.totp_secret }),
              ...(info.right.totp_uri === undefined ? {} : { totpUri: info.right.totp_uri }),
              proxyAddr: settings.publicAddr,
              expires: info.right.expires,
              nonce
            })
          )
          return sendHtml(res, 200, html, nonce)
        }
        if (method === "GET" && path === "/v1/webapi/databases") {
          const id = yield* clientIdentity(req)
          if (Either.isLeft(id)) return sendJson(res, 401, { error: { message: id.left } })
          return sendJson(res, 200, yield* auth("web.databases", { user: id.right.username }))
        }
        if (method === "GET" && path === "/v1/webapi/nodes") {
          const id = yield* clientIdentity(req)
          if (Either.isLeft(id)) return sendJson(res, 401, { error: { message: id.left } })
          return sendJson(res, 200, yield* auth("web.nodes", { user: id.right.username }))
        }
        if (method === "POST" && path === "/v1/webapi/db/certs") {
          const id = yield* clientIdentity(req)
          if (Either.isLeft(id)) return sendJson(res, 401, { error: { message: id.left } })
          return sendJson(res, 200, yield* auth("web.db_cert", { ...(body as RequestOf<"web.db_cert">), user: id.right.username }))
        }
        if (method === "POST" && (path === "/v1/webapi/agent/events" || path === "/v1/webapi/agent/db-client-cert")) {
          const id = yield* agentIdentity(req.socket as TLSSocket)
          if (Either.isLeft(id)) return sendJson(res, 401, { error: { message: id.left } })
          const role = id.right.systemRole
          if (role !== "Db" && !(role === "Node" && path === "/v1/webapi/agent/events")) {
            return sendJson(res, 403, { error: { message: "only database agents may do this" } })
          }
          const hostId = id.right.hostId!
          return path === "/v1/webapi/agent/events"
            ? sendJson(res, 200, yield* auth("web.agent_events", { ...(body as RequestOf<"web.agent_events">), host_id: hostId, system_role: role }))
            : sendJson(res, 200, yield* auth("web.db_client_cert", { ...(body as RequestOf<"web.db_client_cert">), host_id: hostId }))
        }
        // Any agent: renew its host certificate before expiry; learn every proxy to keep a tunnel to each.
        if ((method === "POST" && path === "/v1/webapi/agent/renew") || (method === "GET" && path === "/v1/webapi/agent/proxies")) {
          const id = yield* agentIdentity(req.socket as TLSSocket)
          if (Either.isLeft(id)) return sendJson(res, 401, { error: { message: id.left } })
          if (path === "/v1/webapi/agent/proxies") return sendJson(res, 200, { self: settings.publicAddr, proxies: livePeers() })
          const role = id.right.systemRole === "Db" ? "db" : id.right.systemRole === "Node" ? "node" : undefined
          if (role === undefined) return sendJson(res, 403, { error: { message: "only agents renew here" } })
          const b = body as { tls_pub_key?: unknown; ssh_pub_key?: unknown }
          if (typeof b.tls_pub_key !== "string") return sendJson(res, 400, { error: { message: "tls_pub_key is required" } })
          return sendJson(
            res,
            200,
            yield* auth("web.host_renew", {
              host_id: id.right.hostId!,
              node_name: id.right.nodeName ?? id.right.hostId!,
              role,
              tls_pub_key: b.tls_pub_key,
              ...(typeof b.ssh_pub_key === "string" ? { ssh_pub_key: b.ssh_pub_key } : {})
            })
          )
        }
        // SSH nodes check user certificates themselves: the user CA's SSH keys, and a user's roles at login.
        if (method === "POST" && (path === "/v1/webapi/agent/ssh-user-cas" || path === "/v1/webapi/agent/ssh-session")) {
          const id = yield* agentIdentity(req.socket as TLSSocket)
          if (Either.isLeft(id)) return sendJson(res, 401, { error: { message: id.left } })
          if (id.right.systemRole !== "Node") return sendJson(res, 403, { error: { message: "only SSH nodes may do this" } })
          if (path === "/v1/webapi/agent/ssh-user-cas") return sendJson(res, 200, { ssh_keys: (yield* auth("web.trusted_user_cas", {})).ssh_keys ?? [] })
          const user = (body as { user?: unknown }).user
          if (typeof user !== "string") return sendJson(res, 400, { error: { message: "user is required" } })
          return sendJson(res, 200, yield* auth("web.db_session", { user }))
        }
        // Session recordings: nodes upload (host certificate), users read (user certificate).
        if (method === "POST" && path === "/v1/webapi/agent/recording") {
          const id = yield* agentIdentity(req.socket as TLSSocket)
          if (Either.isLeft(id)) return sendJson(res, 401, { error: { message: id.left } })
          if (id.right.systemRole !== "Node") return sendJson(res, 403, { error: { message: "only SSH nodes may upload session recordings" } })
          return sendJson(res, 200, yield* auth("web.recording_upload", { ...(body as RequestOf<"web.recording_upload">), host_id: id.right.hostId! }))
        }
        const recording = /^\/v1\/webapi\/recordings(?:\/([^/]+))?$/.exec(path)
        if (method === "GET" && recording !== null) {
          const id = yield* clientIdentity(req)
          if (Either.isLeft(id)) return sendJson(res, 401, { error: { message: id.left } })
          if (recording[1] === undefined) return sendJson(res, 200, yield* auth("web.recordings_list", { user: id.right.username }))
          const num = (k: string) => (/^\d{1,15}$/.test(url.searchParams.get(k) ?? "") ? Number(url.searchParams.get(k)) : undefined)
          const offset = num("offset")
          const limit = num("limit")
          return sendJson(
            res,
            200,
            yield* auth("web.recording_get", {
              user: id.right.username,
              session_id: recording[1],
              ...(offset === undefined ? {} : { offset }),
              ...(limit === undefined || limit === 0 ? {} : { limit })
            })
          )
        }
        if (method === "GET" && path === "/v1/webapi/whoami") {
          const id = yield* clientIdentity(req)
          if (Either.isLeft(id)) return sendJson(res, 401, { error: { message: id.left } })
          return sendJson(res, 200, {
            user: id.right.username,
            roles: id.right.roles,
            logins: id.right.logins,
            cluster: id.right.routeToCluster,
            expires: id.right.expires.toISOString()
          })
        }
        return sendJson(res, 404, { error: { message: `no such endpoint: ${method} ${path}` } })
      })

    const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
      void run(
        route(req, res).pipe(
          Effect.catchAll((e) => Effect.sync(() => sendJson(res, httpStatusOf(e), { error: { message: e.message } }))),
          Effect.catchAllDefect((d) =>
            Effect.logError("proxy request failed", d).pipe(
              Effect.zipRight(
                Effect.sync(() => {
                  if (!res.headersSent) sendJson(res, 500, { error: { message: "internal error" } })
                })
              )
            )
          )
        )
      )
    }
    // Agents' tunnels: verified against the host CA, then their presence goes to auth.
    const tunnels = yield* TunnelServer.make({})
    // This proxy's own heartbeat (presence.proxy.<id>) and its peers', so agents can keep a tunnel
    // to every proxy (Teleport's default) and a user landing on any proxy finds their agent.
    const creds = yield* Effect.serviceOption(AuthApiBus.RpcCredentials)
    const selfId = Option.match(creds, {
      onNone: () => `proxy-${settings.publicAddr}`,
      onSome: (c) => Either.match(X509.parseCertIdentity(c.certPem), { onLeft: () => `proxy-${settings.publicAddr}`, onRight: (i) => i.hostId ?? i.username })
    })
    const peers = new Map<string, { addr: string; lastSeen: number }>()
    const livePeers = () => {
      const now = Date.now()
      const out = [{ id: selfId, addr: settings.publicAddr }]
      for (const [id, p] of peers) if (id !== selfId && now - p.lastSeen <= PEER_TTL_MS) out.push({ id, addr: p.addr })
      return out.sort((a, b) => a.id.localeCompare(b.id))
    }
    yield* Effect.forkScoped(
      Effect.forever(
        Presence.publish(bus, settings.clusterName, "proxy", selfId, { id: selfId, addr: settings.publicAddr }).pipe(
          Effect.catchAll((e) => Effect.logWarning(`could not publish this proxy's presence: ${e.message}`)),
          Effect.zipRight(Effect.sleep(HEARTBEAT_INTERVAL))
        )
      )
    )
    const peerBeats = yield* Presence.subscribe(bus, settings.clusterName, "proxy", trustedHostCas).pipe(Effect.orDie)
    yield* peerBeats.pipe(
      Stream.runForEach((hb) =>
        Effect.sync(() => {
          const b = hb.body as { id?: unknown; addr?: unknown }
          if (typeof b.id === "string" && typeof b.addr === "string" && b.id === hb.proxyHostId) peers.set(b.id, { addr: b.addr, lastSeen: Date.now() })
        })
      ),
      Effect.forkScoped
    )

    // Heartbeats go on the bus (presence.agent.<host id>), heard by every auth instance.
    const reportPresence = (agent: TunnelServer.AgentInfo, state: "connected" | "gone") =>
      Presence.publish(bus, settings.clusterName, "agent", agent.hostId, {
        host_id: agent.hostId,
        node_name: agent.nodeName,
        state,
        databases: state === "gone" ? [] : agent.resources.databases.map((d) => ({ name: d.name, protocol: d.protocol, labels: { ...d.labels } })),
        ...(state === "gone" || agent.resources.node === undefined
          ? {}
          : {
              node: {
                name: agent.resources.node.name,
                labels: { ...agent.resources.node.labels },
                ...(agent.resources.node.host_key === undefined ? {} : { host_key: agent.resources.node.host_key })
              }
            })
      }).pipe(Effect.catchAll((e) => Effect.logWarning(`could not report agent ${agent.hostId}: ${e.message}`)))
    yield* tunnels.events.pipe(
      Stream.runForEach((e) =>
        e._tag === "AgentDisconnected" ? reportPresence(e.agent, "gone") : reportPresence(e.agent, "connected")
      ),
      Effect.forkScoped
    )
    yield* Effect.forkScoped(
      Effect.forever(
        Effect.sleep(HEARTBEAT_INTERVAL).pipe(
          Effect.zipRight(tunnels.agents),
          Effect.flatMap((agents) => Effect.forEach(agents, (a) => reportPresence(a, "connected"), { discard: true }))
        )
      )
    )
    const onTunnel = (socket: TLSSocket) =>
      void run(
        trustedHostCas.pipe(
          Effect.flatMap((cas) => tunnels.acceptVerified(socket, cas)),
          Effect.catchAll((e) => Effect.logWarning(`tunnel refused: ${e.message}`).pipe(Effect.zipRight(Effect.sync(() => socket.destroy()))))
        )
      )

    /** Opens a database session on the agent serving the identity's route (see proxy/context.ts). */
    const openDbSession: ProxyContext["openDbSession"] = (identity, remoteAddr, extraMeta = {}) =>
      Effect.gen(function* () {
        const route = identity.routeToDatabase
        if (route === undefined) {
          return yield* Effect.fail<RouteFailure>({ reason: "NoRoute", message: "the certificate has no database route: run 'tsh db login DB' first" })
        }
        const agents = yield* tunnels.agents
        const agent = agents.find((a) => a.resources.databases.some((d) => d.name === route.serviceName))
        if (agent === undefined) {
          return yield* Effect.fail<RouteFailure>({ reason: "NotAvailable", message: `database ${route.serviceName} is not available (no agent serves it now)` })
        }
        const unreachable = (e: { readonly message: string }): RouteFailure => ({ reason: "Unreachable", message: `cannot reach the database: ${e.message}` })
        const session = yield* Effect.mapError(auth("web.db_session", { user: identity.username }), unreachable)
        return yield* Effect.mapError(
          tunnels.dial(agent.hostId, {
            kind: "db",
            name: route.serviceName,
            meta: {
              ...extraMeta,
              identity: JSON.stringify({
                username: identity.username,
                roles: identity.roles,
                traits: session.traits,
                expires: identity.expires.toISOString(),
                routeToDatabase: { serviceName: route.serviceName, protocol: route.protocol, username: route.username, database: route.database }
              }),
              roles: JSON.stringify(session.roles.map((r) => encodeRole(r))),
              session_id: randomUUID(),
              remote_addr: remoteAddr ?? ""
            }
          }),
          unreachable
        )
      })
    const context: ProxyContext = { clusterName: settings.clusterName, credentials, socketIdentity, auth, tunnels, run, openDbSession }
    const onPostgres = PostgresFront.make(context)
    const redisFront = RedisFront.make(context)
    const mysqlFront = MysqlFront.make(context)
    const sshFront = SshFront.make(context, {
      ...(settings.sshListenAddr === undefined ? {} : { listenAddr: settings.sshListenAddr }),
      ...(settings.sshHostKeyFile === undefined ? {} : { hostKeyFile: settings.sshHostKeyFile })
    })

    // A CancelRequest carries no certificate: every database agent gets it, and the one whose
    // session owns that key cancels the query. The dial names one of the agent's own databases
    // (an agent refuses a dial to a target it does not serve) and says `cancel` in its meta.
    const onCancel = (pid: number, secret: Uint8Array) =>
      void run(
        Effect.flatMap(tunnels.agents, (agents) =>
          Effect.forEach(
            agents.filter((a) => a.resources.databases.length > 0),
            (a) =>
              tunnels
                .dial(a.hostId, {
                  kind: "db",
                  name: a.resources.databases[0]!.name,
                  meta: { [CANCEL_TARGET]: "1", pid: String(pid), secret: Buffer.from(secret).toString("hex") }
                })
                .pipe(
                  Effect.map((stream) => stream.end()),
                  Effect.ignore
                ),
            { discard: true, concurrency: "unbounded" }
          )
        )
      )

    const { port, setCredentials } = yield* ProxyListener.listen(
      settings.listenAddr,
      { key, cert },
      { http: onRequest, alpn: { "remoteler-tunnel": onTunnel, "remoteler-postgres": onPostgres, "remoteler-ssh": sshFront.onAlpn, "remoteler-mysql": mysqlFront.onTls, "remoteler-redis": redisFront.onSocket }, postgres: onPostgres, postgresCancel: onCancel, byCertificate: redisFront.byCertificate }
    ).pipe(Effect.orDie)
    yield* Effect.logInfo(`proxy web listener on ${settings.listenAddr.replace(/:\d+$/, "")}:${port}`)
    // Renewal of auth-issued certificates at half their life (configured key pairs are the operator's).
    if (settings.keyPairs === undefined || settings.keyPairs.length === 0) {
      yield* Effect.forkScoped(
        Effect.forever(
          Effect.gen(function* () {
            yield* Effect.sleep(Duration.millis(Math.max(1_000, Math.min(renewAt(cert) - Date.now(), 24 * 3600_000))))
            if (Date.now() < renewAt(cert)) return
            const next = yield* issueWebCert.pipe(
              Effect.tapError((e) => Effect.logWarning(`web certificate renewal failed, retrying in 10 s: ${e.message}`)),
              Effect.retry(Schedule.spaced(Duration.seconds(10)))
            )
            key = next.key
            cert = next.cert
            setCredentials(next)
            yield* Effect.logInfo("proxy web certificate renewed")
          })
        )
      )
    }
    yield* sshFront.listen
    if (settings.mysqlListenAddr !== undefined) yield* Effect.orDie(mysqlFront.listen(settings.mysqlListenAddr, settings.mysqlListenRequired ?? true))
    return { port }
  })

export const layer = (settings: ProxyWebSettings) => Layer.scopedDiscard(make(settings))
