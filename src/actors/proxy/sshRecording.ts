/**
 * The recording proxy for agentless OpenSSH nodes (Teleport's "recording proxy" mode). A stock
 * sshd has no node agent to audit and record sessions, so for such a node the proxy does not relay
 * ciphertext: it terminates the user's SSH session itself and opens its own to the sshd.
 *
 *     user's client ──SSH (user certificate)──▶ proxy ──SSH (a 2-minute certificate for the login)──▶ sshd
 *                      host key: the node's          host key: pinned from `tctl create node.yaml`
 *                      proxy_host_key
 *
 * 1. The user's stream arrives through the ALPN `remoteler-ssh` front or a 3023 `direct-tcpip`
 *    channel (proxy/ssh.ts), after the proxy has checked who the user is and that the node is one
 *    they may see. Here an ssh2 server takes it, presenting the node's own proxy host key (the one
 *    `web.nodes` lists, so `tsh` and `tsh config`'s known_hosts pin it), and accepts only a user
 *    certificate from the user CA for the same user, whose principal is the login.
 * 2. Auth decides RBAC for that login on the node's labels (deny wins; a refusal is audited) and
 *    signs a short certificate for it, with a key the proxy makes for this one connection.
 * 3. The proxy dials the sshd at `spec.addr` and logs in with that certificate. ssh2 cannot present
 *    certificates: `adapters/SshClient.ts` patches its publickey request (see there why); ssh2
 *    cannot check host certificates either, so the sshd's host key is compared with the pinned one
 *    (auth pinned it from the host certificate the host CA signed for the node).
 * 4. Each session channel (exec, shell with a PTY, subsystem such as sftp) is relayed to a channel
 *    of the upstream session, with window changes, signals and the exit status. The proxy audits
 *    `session.start`, `exec` and `session.end` as the node's events (`server_id` `openssh:<name>`),
 *    and records interactive sessions as asciicast v2, uploading them to auth as they go.
 *
 * The recording is kept in memory until auth acknowledges it (the proxy may have no disk of its
 * own); `session.end` carries its SHA-256, so the hash chain vouches for what auth stored.
 */
import { createHash, generateKeyPairSync, randomUUID } from "node:crypto"
import * as net from "node:net"
import type { Duplex } from "node:stream"
import type { TLSSocket } from "node:tls"
import { StringDecoder } from "node:string_decoder"
import { Effect, Either, Exit, Scope } from "effect"
import ssh2 from "ssh2"
import type { AuthContext, Client, ClientChannel, Connection, PseudoTtyInfo, ServerChannel, Session } from "ssh2"
import * as SshClient from "../../adapters/SshClient.ts"
import { agentlessHostId } from "../../domain/AgentlessNode.ts"
import type { ResponseOf } from "../../domain/AuthApi.ts"
import { EventTypes } from "../../domain/Event.ts"
import type { NodeInfo } from "../../domain/WebApi.ts"
import {
  certIdentityExtensions,
  decodeCertificate,
  parsePublicKeyLine,
  privateKeyToOpenSsh,
  publicKeyBlob,
  publicKeyLine,
  verifyCertificate,
  verifySignature
} from "../../protocols/ssh/cert.ts"
import { SshReader, SshWriter } from "../../protocols/ssh/wire.ts"
import type { ProxyContext } from "./context.ts"

/** A user's SSH stream for an agentless node, already routed by proxy/ssh.ts. */
export interface AgentlessConnection {
  readonly stream: Duplex
  /** Who the proxy already knows the user to be (TLS client certificate, or the jump certificate). */
  readonly user: string
  readonly node: NodeInfo
  readonly remoteAddr: string | undefined
}

/** Time the user's client has to authenticate. */
const AUTH_TIMEOUT_MS = 20_000
/** Recordings are uploaded at least this often while a session runs, and when this much is pending. */
const UPLOAD_INTERVAL_MS = 1_000
const UPLOAD_CHUNK = 256 * 1024

type AuditType = "session.start" | "session.end" | "exec"

/** A signature as ssh2 hands it over: a whole blob for certificates, else bare (rewrapped). */
const signatureBlob = (sig: Buffer, algo: string): Uint8Array => {
  try {
    const r = new SshReader(sig)
    r.utf8String()
    r.bytesString()
    if (r.remaining === 0) return sig
  } catch {
    // bare
  }
  return new SshWriter().string(algo.replace(/-cert-v01@openssh\.com$/, "")).string(sig).finish()
}

// ---------------------------------------------------------------------------------------------
// Recording

interface Recorder {
  readonly output: (data: Buffer) => void
  readonly resize: (cols: number, rows: number) => void
  /** Uploads the rest, marks the recording done; its SHA-256 and size. */
  readonly finish: () => Promise<{ readonly sha256: string; readonly bytes: number } | undefined>
}

/**
 * An asciicast v2 writer whose bytes go to auth in order, from the offset auth acknowledges (so a
 * gap or a lost answer is resent). Only unacknowledged bytes are kept.
 */
const startRecorder = (
  header: { readonly cols: number; readonly rows: number; readonly env: Readonly<Record<string, string>> },
  upload: (offset: number, data: Buffer, done: boolean, sha256: string | undefined) => Promise<number>,
  log: (message: string) => void
): Recorder => {
  const started = process.hrtime.bigint()
  const hash = createHash("sha256")
  let pending: Array<Buffer> = []
  let pendingBytes = 0
  /** Offset of pending[0]'s first byte in the file. */
  let base = 0
  let total = 0
  let closed = false
  let uploading: Promise<void> = Promise.resolve()
  let failures = 0

  const push = (line: string) => {
    const b = Buffer.from(line + "\n", "utf8")
    hash.update(b)
    pending.push(b)
    pendingBytes += b.length
    total += b.length
    if (pendingBytes >= UPLOAD_CHUNK) void flush(false)
  }
  const elapsed = () => Math.round(Number(process.hrtime.bigint() - started) / 1_000) / 1_000_000

  /** Sends pending bytes (in chunks) after any upload in flight; `done` with the last of them. */
  const flush = (done: boolean, sha256?: string): Promise<void> => {
    uploading = uploading.then(async () => {
      let stalls = 0
      for (;;) {
        const all = Buffer.concat(pending)
        const chunk = all.subarray(0, UPLOAD_CHUNK)
        const last = done && chunk.length === all.length
        if (chunk.length === 0 && !last) return
        let stored: number
        try {
          stored = await upload(base, chunk, last, last ? sha256 : undefined)
          failures = 0
        } catch (e) {
          failures++
          log(`recording upload failed (${failures}): ${(e as Error).message}`)
          if (failures >= 5) return
          await new Promise((r) => setTimeout(r, 500 * failures))
          continue
        }
        if (stored < base) return log(`auth holds ${stored} bytes of the recording, fewer than it acknowledged (${base}); it stays incomplete`)
        // Drop what auth holds; anything past `stored` (a gap, a lost part) is sent again from there.
        const keep = Buffer.from(all.subarray(Math.min(all.length, stored - base)))
        if (stored === base && chunk.length > 0 && ++stalls > 3) return log(`auth takes no more of the recording at ${stored} bytes`)
        base = stored
        pending = keep.length === 0 ? [] : [keep]
        pendingBytes = keep.length
        if (last && stored >= total) return
      }
    })
    return uploading
  }
  const timer = setInterval(() => void flush(false), UPLOAD_INTERVAL_MS)
  timer.unref()

  push(JSON.stringify({ version: 2, width: header.cols, height: header.rows, timestamp: Math.floor(Date.now() / 1000), env: header.env }))
  const out = new StringDecoder("utf8")
  const event = (code: "o" | "r", text: string) => {
    if (!closed && text !== "") push(JSON.stringify([elapsed(), code, text]))
  }
  return {
    output: (d) => event("o", out.write(d)),
    resize: (cols, rows) => event("r", `${cols}x${rows}`),
    finish: async () => {
      if (closed) return undefined
      event("o", out.end())
      closed = true
      clearInterval(timer)
      const sha256 = hash.copy().digest("hex")
      await flush(true, sha256)
      return { sha256, bytes: total }
    }
  }
}

// ---------------------------------------------------------------------------------------------

export const make = (ctx: ProxyContext) => {
  let caCache: { at: number; keys: ReadonlyArray<Uint8Array> } | undefined
  const userCaKeys = Effect.gen(function* () {
    if (caCache !== undefined && Date.now() - caCache.at < 2_000) return caCache.keys
    const r = yield* ctx.auth("web.trusted_user_cas", {})
    const keys = (r.ssh_keys ?? []).flatMap((line) => Either.match(parsePublicKeyLine(line), { onLeft: () => [], onRight: (k) => [k.blob] }))
    caCache = { at: Date.now(), keys }
    return keys
  })

  const hostKeys = new Map<string, string>()
  const hostKeyOf = (node: string) =>
    Effect.gen(function* () {
      const known = hostKeys.get(node)
      if (known !== undefined) return known
      const r = yield* ctx.auth("web.agentless_host_key", { node })
      hostKeys.set(node, r.private_key)
      return r.private_key
    })

  /** Checks a publickey attempt as an sshd with `TrustedUserCAKeys` would, plus: the same user the proxy routed. */
  const checkUserCert = (conn: AgentlessConnection, auth: AuthContext) =>
    Effect.gen(function* () {
      if (auth.method !== "publickey") return Either.left<string>("a Remoteler user certificate is required")
      if (!auth.key.algo.endsWith("-cert-v01@openssh.com")) return Either.left("a Remoteler user certificate is required; plain keys are not accepted")
      const cert = decodeCertificate(new Uint8Array(auth.key.data))
      if (Either.isLeft(cert)) return Either.left(`malformed certificate: ${cert.left.message}`)
      const verified = verifyCertificate(cert.right, {
        trustedCaKeys: yield* userCaKeys,
        now: new Date(),
        principal: auth.username,
        certType: "user",
        ...(conn.remoteAddr === undefined ? {} : { remoteAddress: conn.remoteAddr })
      })
      if (Either.isLeft(verified)) return Either.left(`certificate refused: ${verified.left.message}`)
      const ext = certIdentityExtensions(cert.right)
      if (ext.routeToCluster !== ctx.clusterName) return Either.left(`certificate is for cluster ${ext.routeToCluster}, not ${ctx.clusterName}`)
      if (cert.right.keyId !== conn.user) return Either.left(`the SSH certificate is ${cert.right.keyId}'s, the connection ${conn.user}'s`)
      if (auth.signature !== undefined && auth.blob !== undefined) {
        const ok = verifySignature(cert.right.publicKey, signatureBlob(auth.signature, auth.key.algo), new Uint8Array(auth.blob))
        if (Either.isLeft(ok)) return Either.left("the signature does not match the certificate's key")
      }
      return Either.right({ signed: auth.signature !== undefined, roles: ext.roles })
    })

  /** Auth's decision and certificate, then the proxy's own SSH session with the sshd. */
  const openUpstream = (conn: AgentlessConnection, login: string, certRoles: ReadonlyArray<string>, scope: Scope.Scope) =>
    Effect.gen(function* () {
      const keys = generateKeyPairSync("ed25519")
      const granted = yield* Effect.either(
        ctx.auth("web.agentless_session", {
          user: conn.user,
          node: conn.node.name,
          login,
          cert_roles: certRoles,
          ssh_pub_key: publicKeyLine(publicKeyBlob(keys.publicKey)),
          ...(conn.remoteAddr === undefined ? {} : { remote_addr: conn.remoteAddr })
        })
      )
      if (Either.isLeft(granted)) return Either.left<string>(granted.left.message)
      const node = granted.right.node
      const pinned = parsePublicKeyLine(node.host_key)
      if (Either.isLeft(pinned)) return Either.left(`node ${node.name} has no usable pinned host key`)
      const socket = yield* dial(node.addr)
      if (Either.isLeft(socket)) return Either.left(socket.left)
      const client = yield* SshClient.connect(socket.right as unknown as TLSSocket, {
        login,
        credentials: { privateKey: privateKeyToOpenSsh(keys.privateKey), certificate: granted.right.ssh_cert },
        hostKey: pinned.right.blob,
        hostName: node.name
      }).pipe(Scope.extend(scope), Effect.either)
      if (Either.isLeft(client)) {
        socket.right.destroy()
        return Either.left(client.left.message)
      }
      return Either.right({ client: client.right, node: granted.right.node })
    })

  const dial = (addr: string) =>
    Effect.async<Either.Either<net.Socket, string>>((resume) => {
      const i = addr.lastIndexOf(":")
      const socket = net.connect({ host: addr.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(addr.slice(i + 1)) })
      socket.setNoDelay(true)
      const timer = setTimeout(() => socket.destroy(new Error("timed out")), 10_000)
      socket.once("connect", () => {
        clearTimeout(timer)
        socket.removeAllListeners("error")
        socket.on("error", () => undefined)
        resume(Effect.succeed(Either.right(socket)))
      })
      socket.once("error", (e) => {
        clearTimeout(timer)
        resume(Effect.succeed(Either.left(`cannot reach ${addr}: ${e.message}`)))
      })
    })

  /** One audit event of this node, through the same path node agents use (server_id stamped by auth). */
  const audit = (conn: AgentlessConnection, type: AuditType, payload: Record<string, unknown>) =>
    ctx.run(
      ctx
        .auth("web.agent_events", {
          host_id: agentlessHostId(conn.node.name),
          system_role: "Node",
          events: [{ id: randomUUID(), type, code: EventTypes[type].code, time: new Date().toISOString(), payload }]
        })
        .pipe(
          Effect.asVoid,
          Effect.retry({ times: 3 }),
          Effect.catchAll((e) => Effect.logError(`agentless node ${conn.node.name}: could not audit ${type}: ${e.message}`))
        )
    )

  const uploadRecording = (conn: AgentlessConnection, sid: string) => (offset: number, data: Buffer, done: boolean, sha256: string | undefined) =>
    ctx
      .run(
        Effect.either(
          ctx.auth("web.recording_upload", {
            host_id: agentlessHostId(conn.node.name),
            session_id: sid,
            offset,
            data: data.toString("base64"),
            done,
            ...(sha256 === undefined ? {} : { sha256 })
          })
        )
      )
      .then((r) => {
        if (Either.isLeft(r)) throw new Error(r.left.message)
        return r.right.stored
      })

  /** One session channel: relayed to a channel of the upstream session, audited, recorded when it has a PTY. */
  const onSession = (conn: AgentlessConnection, login: string, upstream: Client, accept: () => Session) => {
    const session = accept()
    let pty: PseudoTtyInfo | undefined
    const env: Record<string, string> = {}
    let up: ClientChannel | undefined
    let opening = false
    let recorder: Recorder | undefined
    const base = {
      user: conn.user,
      login,
      server_hostname: conn.node.hostname,
      ...(conn.remoteAddr === undefined ? {} : { "addr.remote": conn.remoteAddr })
    }

    session.on("pty", (ok, _no, info) => {
      pty = info
      ok?.()
    })
    session.on("env", (ok, _no, info) => {
      env[info.key] = info.val
      ok?.()
    })
    session.on("window-change", (ok, _no, info) => {
      up?.setWindow(info.rows, info.cols, info.height, info.width)
      recorder?.resize(info.cols, info.rows)
      ok?.()
    })
    session.on("signal", (ok, _no, info) => {
      up?.signal(info.name)
      ok?.()
    })

    const start = (kind: "exec" | "shell" | "subsystem", arg: string | undefined, acceptChannel: () => ServerChannel, reject: () => void) => {
      if (up !== undefined || opening) return reject()
      opening = true
      const ptyOpts = pty === undefined ? undefined : { term: pty.term ?? "xterm", rows: pty.rows, cols: pty.cols, width: pty.width, height: pty.height, modes: pty.modes }
      // Accepted at once: ssh2 cannot accept a request once the client has sent EOF, which OpenSSH
      // does right after `exec` when its stdin is empty. What the user sends waits in the channel
      // until the upstream channel is open; if that fails, the user hears why on stderr.
      const channel = acceptChannel()
      if (channel === undefined) return
      channel.pause()
      const opened = (err: Error | undefined, ch: ClientChannel) => {
        if (err !== undefined && err !== null) {
          channel.stderr.write(`remoteler: node ${conn.node.name} refused the ${kind} request: ${err.message}\r\n`)
          channel.exit(255)
          return channel.end()
        }
        up = ch
        const sid = randomUUID()
        const interactive = pty !== undefined && kind !== "subsystem"
        const startedAt = new Date().toISOString()
        const log = (m: string) => void ctx.run(Effect.logWarning(`agentless node ${conn.node.name}, session ${sid}: ${m}`))
        if (interactive) recorder = startRecorder({ cols: pty!.cols, rows: pty!.rows, env: { TERM: pty!.term ?? "xterm" } }, uploadRecording(conn, sid), log)
        const started = audit(conn, "session.start", {
          ...base,
          sid,
          server_labels: { ...conn.node.labels },
          proto: "ssh",
          interactive,
          ...(pty === undefined ? {} : { size: `${pty.cols}:${pty.rows}` }),
          ...(kind === "exec" && arg !== undefined ? { initial_command: [arg] } : {}),
          session_recording: interactive ? "proxy" : "off"
        })

        ch.on("data", (d: Buffer) => recorder?.output(d))
        ch.stderr.on("data", (d: Buffer) => recorder?.output(d))
        // Keystrokes are not recorded (as on node agents, and in Teleport): what a user types at a
        // prompt that does not echo (a sudo password) would be in the file. The echo is output.
        ch.pipe(channel, { end: false })
        ch.stderr.pipe(channel.stderr, { end: false })
        channel.pipe(ch)
        channel.resume()
        channel.on("error", () => ch.close())
        ch.on("error", () => channel.close())
        let exit: { code?: number; signal?: string; core?: boolean; message?: string } = {}
        ch.on("exit", (code: number | null, signal?: string, core?: boolean, message?: string) => {
          exit = code !== null && code !== undefined ? { code } : { signal: signal ?? "KILL", core: core ?? false, message: message ?? "" }
        })
        ch.on("close", () => {
          if (exit.code !== undefined) channel.exit(exit.code)
          else if (exit.signal !== undefined) channel.exit(exit.signal, exit.core ?? false, exit.message ?? "")
          channel.end()
          void (async () => {
            const recording = await recorder?.finish()
            await started
            if (kind === "exec") {
              await audit(conn, "exec", {
                ...base,
                sid,
                command: arg ?? "",
                exitCode: String(exit.code ?? (exit.signal === undefined ? 255 : 128)),
                ...(exit.signal === undefined ? {} : { exitError: `signal ${exit.signal}` })
              })
            }
            await audit(conn, "session.end", {
              ...base,
              sid,
              interactive,
              participants: [conn.user],
              session_start: startedAt,
              session_stop: new Date().toISOString(),
              ...(recording === undefined ? {} : { session_recording_sha256: recording.sha256, session_recording_bytes: recording.bytes })
            })
          })()
        })
      }
      if (kind === "exec") upstream.exec(arg ?? "", ptyOpts === undefined ? { env } : { pty: ptyOpts, env }, opened)
      else if (kind === "shell") upstream.shell(ptyOpts ?? false, { env }, opened)
      else upstream.subsys(arg ?? "", opened)
    }

    session.on("exec", (ok, no, info) => start("exec", info.command, ok, no))
    session.on("shell", (ok, no) => start("shell", undefined, ok, no))
    session.on("subsystem", (ok, no, info) => start("subsystem", info.name, ok, no))
  }

  const onClient = (conn: AgentlessConnection, client: Connection) => {
    const scope = Effect.runSync(Scope.make())
    let upstream: Client | undefined
    let login: string | undefined
    const timer = setTimeout(() => {
      if (upstream === undefined) client.end()
    }, AUTH_TIMEOUT_MS)
    let userGone = false
    conn.stream.once("end", () => (userGone = true))
    client.on("end", () => (userGone = true))
    client.on("error", () => undefined)
    client.on("close", () => {
      userGone = true
      clearTimeout(timer)
      void Effect.runPromise(Scope.close(scope, Exit.void))
    })
    client.on("authentication", (auth) => {
      if (auth.method === "none") return auth.reject(["publickey"])
      void ctx.run(
        Effect.gen(function* () {
          const checked = yield* checkUserCert(conn, auth)
          const refuse = (reason: string) =>
            ctx.auth("web.cert_refused", { user: conn.user, reason: `agentless node ${conn.node.name}: ${reason}`, ...(conn.remoteAddr === undefined ? {} : { remote_addr: conn.remoteAddr }) }).pipe(
              Effect.ignore,
              Effect.zipRight(Effect.sync(() => auth.reject(["publickey"])))
            )
          if (Either.isLeft(checked)) return yield* refuse(checked.left)
          if (!checked.right.signed) return auth.accept()
          if (upstream !== undefined) return auth.reject(["publickey"])
          const opened = yield* openUpstream(conn, auth.username, checked.right.roles, scope)
          if (Either.isLeft(opened)) {
            // RBAC refusals are audited by auth itself; upstream failures (no such login on the
            // host, an sshd that does not trust the user CA, a changed host key) are audited here.
            yield* Effect.logInfo(`agentless node ${conn.node.name}: ${conn.user} as ${auth.username} refused: ${opened.left}`)
            return /denied|not allowed/.test(opened.left) ? auth.reject(["publickey"]) : yield* refuse(opened.left)
          }
          upstream = opened.right.client
          login = auth.username
          yield* Effect.logDebug(`agentless node ${conn.node.name}: ${conn.user} logged in as ${login} through ${opened.right.node.addr}`)
          // The sshd went away first (it stopped, or dropped us): end the user's connection too. When
          // the user's side is the one closing, saying goodbye to it would only print as an error.
          upstream.on("close", () => {
            if (!userGone) client.end()
          })
          auth.accept()
        }).pipe(
          Effect.catchAll((e) => Effect.logWarning(`agentless node ${conn.node.name}: cannot check a certificate now: ${e.message}`).pipe(Effect.zipRight(Effect.sync(() => auth.reject(["publickey"]))))),
          Effect.catchAllDefect((d) => Effect.logError("agentless auth failed", d).pipe(Effect.zipRight(Effect.sync(() => client.end()))))
        )
      )
    })
    client.on("ready", () => {
      clearTimeout(timer)
      client.on("session", (accept) => {
        if (upstream === undefined || login === undefined) return
        onSession(conn, login, upstream, accept)
      })
      // Port forwarding to the node's side is relayed as a direct-tcpip channel of the upstream session.
      client.on("tcpip", (accept, reject, info) => {
        if (upstream === undefined) return reject()
        upstream.forwardOut(info.srcIP, info.srcPort, info.destIP, info.destPort, (err, ch) => {
          if (err !== undefined && err !== null) return reject()
          const channel = accept()
          ch.pipe(channel)
          channel.pipe(ch)
        })
      })
    })
  }

  /**
   * Terminates the user's SSH session on `conn.stream` and relays it to the agentless node; `ready`
   * runs once the node's host key is at hand, just before (the ALPN front answers OK there). Fails
   * only when auth cannot give that key; the stream is then the caller's to close.
   */
  const serve = (conn: AgentlessConnection, ready: () => void = () => undefined): Effect.Effect<void, { readonly message: string }> =>
    Effect.gen(function* () {
      const hostKey = yield* hostKeyOf(conn.node.name)
      ready()
      const server = new ssh2.Server({ hostKeys: [hostKey], ident: "Remoteler" }, (client) => onClient(conn, client))
      // Garbage instead of a banner fails this connection only.
      server.on("error", () => conn.stream.destroy())
      server.injectSocket(conn.stream as unknown as net.Socket)
    })

  return { serve }
}

export type RecordingProxy = ReturnType<typeof make>
export type AgentlessSessionGrant = ResponseOf<"web.agentless_session">
