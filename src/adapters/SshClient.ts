/**
 * tsh's SSH client: a TLS connection to the proxy's web port with ALPN `remoteler-ssh` (the user's
 * X.509 certificate says who they are, a routing line says which node), and inside it an ssh2
 * client session with the node, authenticated by the user's OpenSSH certificate and pinned to the
 * node's host key from the cluster's inventory.
 *
 * Why ssh2 with a patch rather than running the system's OpenSSH `ssh`: tsh must work where no
 * OpenSSH client is installed, must return the remote exit code, forward ports and copy files with
 * one process and one connection (a `ssh` child with `tsh proxy ssh` as ProxyCommand would start a
 * second Node process per session, which doubles session set-up time), and must check host keys
 * against the inventory rather than a file the user can edit. ssh2 gets two things wrong for that,
 * and both are handled here, in one place:
 *
 *  - it cannot present a certificate. Its key objects only need a `type`, `getPublicSSH()` and
 *    `sign()`, so the user's Ed25519 key is wrapped as a `ssh-ed25519-cert-v01@openssh.com` key
 *    whose public blob is the certificate. But ssh2's `Protocol.authPK` labels the signature with
 *    the request's algorithm name, and sshd requires the signature's own format name
 *    (`ssh-ed25519`: OpenSSH's ssh_ed25519_verify rejects anything else). So on this client's
 *    protocol object `authPK` is replaced, for the certificate key only, by one that writes the
 *    request as OpenSSH does: algorithm `ssh-ed25519-cert-v01@openssh.com`, the certificate blob,
 *    and a signature blob named `ssh-ed25519`. It signs at once, without the "would you accept
 *    this key" query first (the key is ours and unencrypted, as OpenSSH also does), which saves a
 *    round trip per session.
 *  - it cannot check host certificates. Nodes advertise a plain host key (`host_key` in the
 *    inventory), so `hostVerifier` compares the key the node presents with that one, byte for
 *    byte, and a mismatch fails the connection with both fingerprints.
 *
 * The patch relies on ssh2 1.x internals (`_protocol`, `_packetRW`, `_kex.sessionID`,
 * `_authsQueue`, `lib/protocol/utils.js` `sendPacket`); ssh2 is pinned in package.json, and the
 * e2e tests against OpenSSH's sshd and the node agent fail if a new version moves them.
 */
import { createRequire } from "node:module"
import { sign } from "node:crypto"
import type { Duplex } from "node:stream"
import * as tls from "node:tls"
import { Data, Effect, Either } from "effect"
import type { Scope } from "effect"
import ssh2 from "ssh2"
import type { Client, ClientChannel, SFTPWrapper } from "ssh2"
import { fingerprintSha256, parseOpenSshPrivateKey } from "../protocols/ssh/cert.ts"
import * as Route from "../protocols/ssh/route.ts"
import { SshWriter } from "../protocols/ssh/wire.ts"

const require = createRequire(import.meta.url)
const { sendPacket } = require("ssh2/lib/protocol/utils.js") as { sendPacket: (proto: unknown, packet: Buffer) => void }

export class SshClientError extends Data.TaggedError("SshClientError")<{
  /**
   * Connect: no TLS to the proxy; Refused: the proxy would not route (message from the proxy);
   * HostKey: the node's key is not the pinned one; Auth: the node refused the certificate;
   * Session: the SSH session failed after it was set up.
   */
  readonly reason: "Connect" | "Refused" | "HostKey" | "Auth" | "Session" | "BadKey"
  readonly message: string
  readonly cause?: unknown
}> {}

export interface ProxyDial {
  /** `host:port` of the proxy's web listener. */
  readonly proxy: string
  /** The user's X.509 certificate and key (PEM). */
  readonly tlsCert: string
  readonly tlsKey: string
  /** PEM CAs the proxy's certificate must chain to (certs.pem), besides the system ones. */
  readonly caCerts: string
  readonly insecure?: boolean
  /** The node as the user named it, and the port (0: the node's SSH server). */
  readonly target: Route.Target
}

const splitHostPort = (addr: string): { host: string; port: number } => {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(addr)
  return m === null ? { host: addr, port: 3080 } : { host: m[1] ?? m[2] ?? "localhost", port: Number(m[3]) }
}

/**
 * Opens TLS to the proxy with ALPN `remoteler-ssh`, sends the routing line and waits for `OK`.
 * The socket then carries the node's SSH stream; the caller owns it.
 */
export const dialProxy = (d: ProxyDial): Effect.Effect<tls.TLSSocket, SshClientError> =>
  Effect.async<tls.TLSSocket, SshClientError>((resume) => {
    const { host, port } = splitHostPort(d.proxy)
    const isIp = /^[\d.]+$/.test(host) || host.includes(":")
    const socket = tls.connect({
      host,
      port,
      ...(isIp ? {} : { servername: host }),
      ALPNProtocols: ["remoteler-ssh"],
      cert: d.tlsCert,
      key: d.tlsKey,
      rejectUnauthorized: d.insecure !== true,
      ...(d.insecure === true || d.caCerts === "" ? {} : { ca: [...tls.rootCertificates, d.caCerts] })
    })
    socket.setNoDelay(true)
    // The routing line goes out with the ClientHello's flight; no need to wait for the handshake.
    socket.write(Route.encodeTarget(d.target))
    let buf = Buffer.alloc(0)
    let settled = false
    const finish = (r: Either.Either<tls.TLSSocket, SshClientError>) => {
      if (settled) return
      settled = true
      socket.off("data", onData)
      socket.off("error", onError)
      socket.off("close", onClose)
      if (Either.isLeft(r)) {
        socket.destroy()
        return resume(Effect.fail(r.left))
      }
      socket.pause()
      resume(Effect.succeed(r.right))
    }
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk])
      const reply = Route.parseReply(buf)
      if (reply._tag === "Pending") return
      if (reply._tag === "Invalid") return finish(Either.left(new SshClientError({ reason: "Refused", message: reply.message })))
      if (reply.value !== undefined) return finish(Either.left(new SshClientError({ reason: "Refused", message: reply.value })))
      if (reply.rest.length > 0) socket.unshift(reply.rest)
      finish(Either.right(socket))
    }
    const onError = (e: NodeJS.ErrnoException) =>
      finish(
        Either.left(
          new SshClientError({
            reason: "Connect",
            message:
              e.code !== undefined && /CERT|SELF_SIGNED|UNABLE_TO/.test(e.code)
                ? `cannot verify the TLS certificate of proxy ${d.proxy} (${e.message}); log in again with tsh login`
                : `cannot reach proxy ${d.proxy}: ${e.message}`,
            cause: e
          })
        )
      )
    const onClose = () => finish(Either.left(new SshClientError({ reason: "Connect", message: `proxy ${d.proxy} closed the connection before routing it` })))
    socket.on("data", onData)
    socket.on("error", onError)
    socket.on("close", onClose)
    return Effect.sync(() => socket.destroy())
  })

export interface Credentials {
  /** The user's Ed25519 private key, OpenSSH format. */
  readonly privateKey: string
  /** Its OpenSSH certificate line, `ssh-ed25519-cert-v01@openssh.com AAAA...`. */
  readonly certificate: string
}

export interface SessionOptions {
  /** The login on the node. */
  readonly login: string
  readonly credentials: Credentials
  /** The node's host key blob from the inventory, and its name for messages. */
  readonly hostKey: Uint8Array
  readonly hostName: string
}

interface PatchableProtocol {
  authPK: (username: string, pubKey: unknown, keyAlgo?: unknown, cbSign?: unknown) => void
  _kex: { sessionID: Buffer }
  _authsQueue: Array<string>
  _packetRW: { write: { allocStart: number; alloc: (n: number) => Buffer; finalize: (b: Buffer) => Buffer } }
}

/**
 * The user's certificate as an ssh2 key object (see the header for why), and the patch of the
 * client's `authPK` that sends it the way sshd wants it.
 */
const certificateAuth = (creds: Credentials): Either.Either<{ key: object; install: (client: Client) => void }, SshClientError> => {
  const [certType = "", certB64 = ""] = creds.certificate.trim().split(/\s+/)
  const certBlob = Buffer.from(certB64, "base64")
  if (certType !== "ssh-ed25519-cert-v01@openssh.com" || certBlob.length === 0) {
    return Either.left(new SshClientError({ reason: "BadKey", message: "the SSH certificate is not an Ed25519 certificate: log in again with tsh login" }))
  }
  const priv = parseOpenSshPrivateKey(creds.privateKey)
  if (Either.isLeft(priv)) return Either.left(new SshClientError({ reason: "BadKey", message: `cannot read the SSH key: ${priv.left.message}` }))
  const base = ssh2.utils.parseKey(creds.privateKey)
  if (base instanceof Error || Array.isArray(base)) {
    return Either.left(new SshClientError({ reason: "BadKey", message: `cannot read the SSH key: ${base instanceof Error ? base.message : "several keys"}` }))
  }
  // Inherits ssh2's private marker (a symbol), so ssh2 takes it as an already parsed key.
  const key = Object.create(base, {
    type: { value: certType },
    getPublicSSH: { value: () => certBlob }
  }) as object
  const install = (client: Client) => {
    const proto = (client as unknown as { _protocol: PatchableProtocol })._protocol
    const original = proto.authPK.bind(proto)
    proto.authPK = (username, pubKey, keyAlgo, cbSign) => {
      if (pubKey !== key) return original(username, pubKey, keyAlgo, cbSign)
      //   byte SSH_MSG_USERAUTH_REQUEST(50) string user string "ssh-connection" string "publickey"
      //   bool TRUE string algorithm string certificate string signature
      // signed over: string session_id || the request up to and including the certificate
      const request = new SshWriter()
        .raw(Uint8Array.of(50))
        .string(username)
        .string("ssh-connection")
        .string("publickey")
        .raw(Uint8Array.of(1))
        .string(certType)
        .string(certBlob)
        .finish()
      const signed = new SshWriter().string(proto._kex.sessionID).raw(request).finish()
      const signature = new SshWriter().string("ssh-ed25519").string(sign(null, signed, priv.right.privateKey)).finish()
      const payload = Buffer.from(new SshWriter().raw(request).string(signature).finish())
      const packet = proto._packetRW.write.alloc(payload.length)
      payload.copy(packet, proto._packetRW.write.allocStart)
      proto._authsQueue.push("publickey")
      sendPacket(proto, proto._packetRW.write.finalize(packet))
    }
  }
  return Either.right({ key, install })
}

/**
 * An authenticated SSH session with the node over `sock` (from `dialProxy`, or any stream to an
 * SSH server), closed with the
 * scope. Fails with HostKey when the node's key is not the pinned one, Auth when the node refuses
 * the certificate for this login.
 */
export const connect = (sock: Duplex, o: SessionOptions): Effect.Effect<Client, SshClientError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.flatMap(certificateAuth(o.credentials), ({ key, install }) =>
      Effect.async<Client, SshClientError>((resume) => {
        const client = new ssh2.Client()
        let hostKeyProblem: string | undefined
        let done = false
        const settle = (e: Effect.Effect<Client, SshClientError>) => {
          if (done) return
          done = true
          resume(e)
        }
        client.on("ready", () => settle(Effect.succeed(client)))
        client.on("error", (err: Error & { level?: string }) => {
          if (hostKeyProblem !== undefined) return settle(Effect.fail(new SshClientError({ reason: "HostKey", message: hostKeyProblem })))
          if (err.level === "client-authentication") {
            return settle(Effect.fail(new SshClientError({ reason: "Auth", message: `access denied to ${o.login} on node ${o.hostName}` })))
          }
          settle(Effect.fail(new SshClientError({ reason: "Session", message: `ssh to ${o.hostName} failed: ${err.message}`, cause: err })))
        })
        client.on("close", () => settle(Effect.fail(new SshClientError({ reason: "Session", message: `node ${o.hostName} closed the connection` }))))
        let tried = false
        client.connect({
          sock,
          username: o.login,
          readyTimeout: 20_000,
          keepaliveInterval: 0,
          hostVerifier: (presented: Buffer) => {
            if (Buffer.compare(presented, Buffer.from(o.hostKey)) === 0) return true
            hostKeyProblem =
              `the host key of node ${o.hostName} (${fingerprintSha256(presented)}) is not the one the cluster's inventory pins ` +
              `(${fingerprintSha256(o.hostKey)}): refusing to connect (a man in the middle, or the node's key changed)`
            return false
          },
          authHandler: (_methods, _partial, next) => {
            if (tried) return next(false as unknown as ssh2.AuthenticationType)
            tried = true
            return next({ type: "publickey", username: o.login, key } as unknown as ssh2.AuthenticationType)
          }
        })
        install(client)
        return Effect.sync(() => client.end())
      })
    ),
    (client) => Effect.sync(() => client.end())
  )

/** Runs `fn` on a new channel and waits for ssh2's callback. */
const channelOf = <A>(what: string, open: (cb: (err: Error | undefined, ch: A) => void) => void): Effect.Effect<A, SshClientError> =>
  Effect.async<A, SshClientError>((resume) => {
    open((err, ch) =>
      resume(err !== undefined && err !== null ? Effect.fail(new SshClientError({ reason: "Session", message: `${what}: ${err.message}`, cause: err })) : Effect.succeed(ch))
    )
  })

export interface PtyOptions {
  readonly term: string
  readonly rows: number
  readonly cols: number
}

/** `exec` (command) or `shell` (no command), with a PTY when asked. */
export const openSession = (client: Client, command: string | undefined, pty: PtyOptions | undefined): Effect.Effect<ClientChannel, SshClientError> =>
  command === undefined
    ? channelOf<ClientChannel>("cannot open a shell", (cb) =>
        pty === undefined ? client.shell(false, cb) : client.shell({ term: pty.term, rows: pty.rows, cols: pty.cols }, cb)
      )
    : channelOf<ClientChannel>(`cannot run ${JSON.stringify(command)}`, (cb) =>
        client.exec(command, pty === undefined ? {} : { pty: { term: pty.term, rows: pty.rows, cols: pty.cols } }, cb)
      )

/** The remote command's exit status: its code, or 128 + signal number as a shell reports it. */
export const exitStatus = (channel: ClientChannel): Promise<number> =>
  new Promise((resolve) => {
    let status: number | undefined
    channel.on("exit", (code: number | null, signal?: string) => {
      if (typeof code === "number") status = code
      else if (typeof signal === "string") status = 128 + (SIGNALS[signal] ?? 0)
    })
    channel.on("close", () => resolve(status ?? 255))
  })

const SIGNALS: Record<string, number> = { HUP: 1, INT: 2, QUIT: 3, ILL: 4, ABRT: 6, FPE: 8, KILL: 9, SEGV: 11, PIPE: 13, ALRM: 14, TERM: 15 }

/** A `direct-tcpip` channel to `host:port` as the node sees it (`tsh ssh -L`). */
export const forwardOut = (client: Client, srcAddr: string, srcPort: number, host: string, port: number): Effect.Effect<ClientChannel, SshClientError> =>
  channelOf<ClientChannel>(`cannot forward to ${host}:${port}`, (cb) => client.forwardOut(srcAddr, srcPort, host, port, cb))

/** The node's SFTP subsystem (`tsh scp`). */
export const sftp = (client: Client): Effect.Effect<SFTPWrapper, SshClientError> =>
  channelOf<SFTPWrapper>("cannot start SFTP on the node", (cb) => client.sftp(cb))
