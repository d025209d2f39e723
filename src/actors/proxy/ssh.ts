/**
 * SSH through the proxy, two ways in, one way to the node: a stream through the node's reverse
 * tunnel (`kind: "ssh"`), spliced to the user's SSH bytes. The proxy never holds the key of the
 * user's session with the node: it relays ciphertext, and the node checks the user certificate
 * (Teleport's "relay" mode, `proxy_mode: relay` in the dial meta).
 *
 * 1. ALPN `remoteler-ssh` on the web port (tsh, and OpenSSH through `tsh proxy ssh` as its
 *    ProxyCommand): the TLS client certificate says who the user is; a routing line names the node
 *    (see protocols/ssh/route.ts); the rest of the connection is the SSH stream.
 * 2. `proxy_service.ssh_listen_addr` (3023) for OpenSSH's ProxyJump (`ssh -J`) and `-W`: an SSH
 *    server (ssh2) that accepts only user certificates from the user CA and answers `direct-tcpip`
 *    to `<node>:<port>` by piping that channel into the node's tunnel stream. The outer (jump)
 *    session ends here; the inner session inside the channel is the user's with the node.
 *
 * Both ask auth which nodes the user may see (`web.nodes`: node_labels, deny wins), so a node the
 * user may not reach looks the same as one that does not exist. Refusals of the certificate itself
 * are audited (T3007W) through `web.cert_refused`.
 */
import { randomUUID } from "node:crypto"
import * as fs from "node:fs"
import type * as net from "node:net"
import * as path from "node:path"
import type { Duplex } from "node:stream"
import type { TLSSocket } from "node:tls"
import { generateKeyPairSync } from "node:crypto"
import { Effect, Either } from "effect"
import type { Scope } from "effect"
import ssh2 from "ssh2"
import type { AuthContext, Connection, ServerChannel, TcpipRequestInfo } from "ssh2"
import type { NodeInfo } from "../../domain/WebApi.ts"
import {
  certIdentityExtensions,
  decodeCertificate,
  parsePublicKeyLine,
  privateKeyToOpenSsh,
  verifyCertificate,
  verifySignature
} from "../../protocols/ssh/cert.ts"
import * as Route from "../../protocols/ssh/route.ts"
import { SshReader, SshWriter } from "../../protocols/ssh/wire.ts"
import type { ProxyContext, RouteFailure } from "./context.ts"
import { splice } from "./context.ts"
import * as RecordingProxy from "./sshRecording.ts"

/** Time a client has to send its routing line (ALPN) or finish SSH authentication (3023). */
const HANDSHAKE_TIMEOUT_MS = 15_000

export interface SshFrontSettings {
  /** `proxy_service.ssh_listen_addr`; no SSH listener when undefined. */
  readonly listenAddr?: string
  /** Where the 3023 listener keeps its Ed25519 host key, so clients see the same key after a restart. */
  readonly hostKeyFile?: string
}

const splitHostPort = (addr: string): { host: string; port: number } => {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(addr)
  if (m === null) throw new Error(`bad address ${addr}`)
  return { host: m[1] ?? m[2] ?? "0.0.0.0", port: Number(m[3]) }
}

/** The node a user names: its name, `<name>.<cluster>`, its host name or its host id. */
const matches = (n: NodeInfo, host: string, cluster: string): boolean => {
  const h = host.toLowerCase()
  const name = n.name.toLowerCase()
  return h === name || h === `${name}.${cluster.toLowerCase()}` || h === n.host_id.toLowerCase() || h === n.hostname.toLowerCase()
}

/** Reads an Ed25519 host key in OpenSSH format, creating it (0600) on first use. */
const loadHostKey = (file: string | undefined): string => {
  if (file !== undefined && fs.existsSync(file)) return fs.readFileSync(file, "utf8")
  const key = privateKeyToOpenSsh(generateKeyPairSync("ed25519").privateKey, "remoteler-proxy")
  if (file !== undefined) {
    fs.mkdirSync(path.dirname(file), { recursive: true })
    fs.writeFileSync(file, key, { mode: 0o600 })
  }
  return key
}

/**
 * ssh2 hands a signature over as the whole SSH signature blob when its format name differs from
 * the key algorithm, as it does for certificates (`ssh-ed25519` inside a
 * `ssh-ed25519-cert-v01@openssh.com` request); bare signatures are re-wrapped so one verifier
 * reads both.
 */
const signatureBlob = (sig: Buffer, certAlgo: string): Uint8Array => {
  try {
    const r = new SshReader(sig)
    const name = r.utf8String()
    r.bytesString()
    if (r.remaining === 0 && /^[a-z0-9@.-]+$/.test(name)) return sig
  } catch {
    // not a blob: a bare signature
  }
  const base = certAlgo.replace(/-cert-v01@openssh\.com$/, "")
  return new SshWriter().string(base).string(sig).finish()
}

export const make = (ctx: ProxyContext, settings: SshFrontSettings = {}) => {
  const recording = RecordingProxy.make(ctx)
  /** The nodes this user may see, from auth, with the one named `host`. */
  const findNode = (user: string, host: string): Effect.Effect<NodeInfo, RouteFailure> =>
    Effect.gen(function* () {
      const visible = yield* ctx.auth("web.nodes", { user }).pipe(
        Effect.mapError((e): RouteFailure => ({ reason: "Unreachable", message: `cannot list nodes now: ${e.message}` }))
      )
      const node = visible.nodes.find((n) => matches(n, host, ctx.clusterName))
      if (node === undefined) {
        return yield* Effect.fail<RouteFailure>({ reason: "NoRoute", message: `no node named ${host} that ${user} may reach in cluster ${ctx.clusterName}` })
      }
      return node
    })

  /** A stream to the node's SSH server through its tunnel. */
  const dialNode = (node: NodeInfo, remoteAddr: string | undefined): Effect.Effect<Duplex, RouteFailure> =>
    Effect.gen(function* () {
      const agents = yield* ctx.tunnels.agents
      const agent = agents.find((a) => a.hostId === node.host_id && a.resources.node !== undefined)
      if (agent === undefined) {
        return yield* Effect.fail<RouteFailure>({ reason: "NotAvailable", message: `node ${node.name} is not connected to this proxy now` })
      }
      return yield* ctx.tunnels
        .dial(agent.hostId, {
          kind: "ssh",
          name: agent.resources.node!.name,
          meta: { remote_addr: remoteAddr ?? "", proxy_mode: "relay", session_id: randomUUID() }
        })
        .pipe(Effect.mapError((e): RouteFailure => ({ reason: "Unreachable", message: `cannot reach node ${node.name}: ${e.message}` })))
    })

  // -------------------------------------------------------------------------------------------
  // 1. ALPN remoteler-ssh

  /** Waits for the routing line; anything after it (the client's SSH banner) stays in the socket. */
  const readTarget = (socket: TLSSocket) =>
    Effect.async<Route.Target, string>((resume) => {
      let buf = Buffer.alloc(0)
      const timer = setTimeout(() => done(Either.left("no routing line in time")), HANDSHAKE_TIMEOUT_MS)
      const done = (r: Either.Either<Route.Target, string>) => {
        clearTimeout(timer)
        socket.off("data", onData)
        socket.off("close", onClose)
        socket.pause()
        resume(Either.isRight(r) ? Effect.succeed(r.right) : Effect.fail(r.left))
      }
      const onClose = () => done(Either.left("closed before routing"))
      const onData = (chunk: Buffer) => {
        buf = Buffer.concat([buf, chunk])
        const parsed = Route.parseTargetLine(buf)
        if (parsed._tag === "Pending") return
        if (parsed._tag === "Invalid") return done(Either.left(parsed.message))
        if (parsed.rest.length > 0) socket.unshift(parsed.rest)
        done(Either.right(parsed.value))
      }
      socket.on("data", onData)
      socket.on("close", onClose)
      return Effect.sync(() => clearTimeout(timer))
    })

  const handleAlpn = (socket: TLSSocket) =>
    Effect.gen(function* () {
      const refuse = (message: string) => Effect.sync(() => socket.end(Route.encodeError(message)))
      const id = yield* ctx.socketIdentity(socket)
      if (Either.isLeft(id)) return yield* refuse(id.left)
      const target = yield* Effect.either(readTarget(socket))
      if (Either.isLeft(target)) {
        yield* Effect.logDebug(`ssh routing from ${socket.remoteAddress ?? "?"} refused: ${target.left}`)
        return yield* refuse(target.left)
      }
      const node = yield* Effect.either(findNode(id.right.username, target.right.host))
      if (Either.isLeft(node)) return yield* refuse(node.left.message)
      if (node.right.agentless === true) {
        // A stock sshd: the proxy terminates, audits and records the session (proxy/sshRecording.ts).
        const conn = { stream: socket, user: id.right.username, node: node.right, remoteAddr: socket.remoteAddress }
        return yield* recording.serve(conn, () => socket.write(Route.OK)).pipe(
          Effect.zipRight(Effect.sync(() => socket.resume())),
          Effect.catchAll((e) => refuse(`cannot reach node ${node.right.name}: ${e.message}`))
        )
      }
      const stream = yield* Effect.either(dialNode(node.right, socket.remoteAddress))
      if (Either.isLeft(stream)) return yield* refuse(stream.left.message)
      socket.write(Route.OK)
      splice(socket, stream.right)
      socket.resume()
    }).pipe(
      Effect.catchAll((e) => Effect.sync(() => socket.end(Route.encodeError(`the cluster cannot check certificates now: ${e.message}`)))),
      Effect.catchAllDefect((d) => Effect.logError("ssh routing failed", d).pipe(Effect.zipRight(Effect.sync(() => socket.destroy()))))
    )

  const onAlpn = (socket: TLSSocket): void => void ctx.run(handleAlpn(socket))

  // -------------------------------------------------------------------------------------------
  // 2. The SSH listener for OpenSSH clients (3023)

  let caCache: { at: number; keys: ReadonlyArray<Uint8Array> } | undefined
  /** The user CA's SSH public keys auth trusts now (they change during a rotation). */
  const userCaKeys = Effect.gen(function* () {
    if (caCache !== undefined && Date.now() - caCache.at < 2_000) return caCache.keys
    const r = yield* ctx.auth("web.trusted_user_cas", {})
    const keys = (r.ssh_keys ?? []).flatMap((line) => {
      const k = parsePublicKeyLine(line)
      return Either.isRight(k) ? [k.right.blob] : []
    })
    caCache = { at: Date.now(), keys }
    return keys
  })

  /** Checks a publickey attempt: a user certificate from the user CA for this cluster, and its signature. */
  const checkAuth = (auth: AuthContext, remoteAddr: string | undefined) =>
    Effect.gen(function* () {
      if (auth.method !== "publickey") return Either.left<string>("only certificates from the user CA are accepted")
      if (!auth.key.algo.includes("-cert-v01@openssh.com")) return Either.left("only certificates from the user CA are accepted (got a plain key)")
      const cert = decodeCertificate(new Uint8Array(auth.key.data))
      if (Either.isLeft(cert)) return Either.left(`bad certificate: ${cert.left.message}`)
      const verified = verifyCertificate(cert.right, {
        trustedCaKeys: yield* userCaKeys,
        now: new Date(),
        certType: "user",
        ...(remoteAddr === undefined ? {} : { remoteAddress: remoteAddr })
      })
      if (Either.isLeft(verified)) return Either.left(`certificate refused: ${verified.left.message}`)
      const cluster = certIdentityExtensions(cert.right).routeToCluster
      if (cluster !== ctx.clusterName) return Either.left(`certificate is for cluster ${cluster}, not ${ctx.clusterName}`)
      if (auth.signature !== undefined && auth.blob !== undefined) {
        const ok = verifySignature(cert.right.publicKey, signatureBlob(auth.signature, auth.key.algo), new Uint8Array(auth.blob))
        if (Either.isLeft(ok)) return Either.left("the signature does not match the certificate's key")
      }
      return Either.right({ user: cert.right.keyId, signed: auth.signature !== undefined })
    })

  const clients = new Set<Connection>()
  const onClient = (client: Connection, info: { readonly ip: string }) => {
    clients.add(client)
    let user: string | undefined
    const timer = setTimeout(() => {
      if (user === undefined) client.end()
    }, HANDSHAKE_TIMEOUT_MS)
    client.on("error", () => undefined)
    client.on("close", () => {
      clearTimeout(timer)
      clients.delete(client)
    })
    client.on("authentication", (auth) => {
      if (auth.method === "none") return auth.reject(["publickey"])
      void ctx.run(
        checkAuth(auth, info.ip).pipe(
          Effect.flatMap((r) => {
            if (Either.isRight(r)) {
              if (r.right.signed) user = r.right.user
              return Effect.sync(() => auth.accept())
            }
            const name = auth.method === "publickey" ? (Either.getOrUndefined(decodeCertificate(new Uint8Array(auth.key.data)))?.keyId ?? auth.username) : auth.username
            return ctx.auth("web.cert_refused", { user: name, reason: `ssh proxy: ${r.left}`, remote_addr: info.ip }).pipe(
              Effect.ignore,
              Effect.zipRight(Effect.sync(() => auth.reject(["publickey"])))
            )
          }),
          Effect.catchAll((e) =>
            Effect.logWarning(`ssh proxy cannot check a certificate now: ${e.message}`).pipe(Effect.zipRight(Effect.sync(() => auth.reject(["publickey"]))))
          ),
          Effect.catchAllDefect((d) => Effect.logError("ssh proxy auth failed", d).pipe(Effect.zipRight(Effect.sync(() => client.end()))))
        )
      )
    })
    client.on("ready", () => {
      clearTimeout(timer)
      // A jump host only forwards: no shell, exec or subsystem here.
      client.on("session", (_accept, reject) => reject())
      client.on("tcpip", (accept, reject, req: TcpipRequestInfo) => {
        const who = user ?? "?"
        void ctx.run(
          Effect.flatMap(findNode(who, req.destIP), (node) =>
            node.agentless !== true
              ? dialNode(node, info.ip)
              : // A stock sshd: the inner session is terminated and recorded here (proxy/sshRecording.ts).
                Effect.sync(() => {
                  const channel = accept()
                  if (channel !== undefined) {
                    void ctx.run(
                      recording.serve({ stream: channel, user: who, node, remoteAddr: info.ip }).pipe(
                        Effect.catchAll((e) => Effect.logWarning(`ssh proxy: ${who} -> ${node.name}: ${e.message}`).pipe(Effect.zipRight(Effect.sync(() => channel.destroy())))),
                        Effect.catchAllDefect((d) => Effect.logError("ssh proxy: agentless session failed", d).pipe(Effect.zipRight(Effect.sync(() => channel.destroy()))))
                      )
                    )
                  }
                  return undefined
                })
          ).pipe(
            Effect.matchEffect({
              onFailure: (f) => Effect.logInfo(`ssh proxy: ${who} -> ${req.destIP}:${req.destPort} refused: ${f.message}`).pipe(Effect.zipRight(Effect.sync(() => reject()))),
              onSuccess: (stream) =>
                Effect.sync(() => {
                  if (stream === undefined) return
                  const channel: ServerChannel | undefined = accept()
                  if (channel === undefined) return stream.destroy()
                  splice(channel, stream)
                })
            }),
            Effect.catchAllDefect((d) => Effect.logError("ssh proxy forward failed", d).pipe(Effect.zipRight(Effect.sync(() => reject()))))
          )
        )
      })
    })
  }

  /** Opens the 3023 listener (when configured) for the scope's life. A port already taken is logged, not fatal. */
  const listen: Effect.Effect<{ readonly port: number } | undefined, never, Scope.Scope> = Effect.gen(function* () {
    if (settings.listenAddr === undefined) return undefined
    const { host, port } = splitHostPort(settings.listenAddr)
    const hostKey = loadHostKey(settings.hostKeyFile)
    const server = new ssh2.Server({ hostKeys: [hostKey], ident: "Remoteler" }, (client, info) => onClient(client, info))
    // A client that sends garbage instead of a banner fails only its own connection.
    server.on("error", () => undefined)
    const bound = yield* Effect.async<number | undefined>((resume) => {
      const onError = (e: Error) => resume(Effect.as(Effect.logError(`ssh proxy listener on ${settings.listenAddr} not started: ${e.message}`), undefined))
      server.once("error", onError)
      server.listen(port, host, () => {
        server.off("error", onError)
        resume(Effect.succeed((server.address() as net.AddressInfo).port))
      })
    })
    if (bound === undefined) return undefined
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        server.close()
        for (const c of clients) c.end()
      })
    )
    yield* Effect.logInfo(`proxy ssh listener on ${host}:${bound}`)
    return { port: bound }
  })

  return { onAlpn, listen }
}
