/**
 * The node's SSH server: ssh2's `Server` fed by sockets we hand it (tunnel streams from the proxy,
 * or TCP connections on `ssh_service.listen_addr`), with authentication by user certificate only
 * (see serverAuth.ts) and sessions run as the login (see launcher.ts).
 *
 * Per connection: at most MAX_AUTH_ATTEMPTS publickey attempts and LOGIN_GRACE_MS to
 * authenticate; a connection that never authenticates (garbage instead of a banner, a refused
 * certificate, a timeout) is audited once (`auth`, T3007W) with the reason. Per session channel: a
 * UUID session id, `session.start`, `exec` for commands, `scp` for files opened over SFTP (which
 * OpenSSH 9's `scp` uses too), `session.end`; PTY sessions are recorded (recording.ts). A
 * window-change storm closes the connection it came on, with a `client.disconnect` event.
 * Nothing a client sends can take the process down: every socket, channel and child has an error
 * handler, and failures end only their own connection.
 */
import { randomUUID } from "node:crypto"
import * as net from "node:net"
import type { Duplex } from "node:stream"
import ssh2 from "ssh2"
import type { Connection, ServerChannel, Session } from "ssh2"
import { disconnectExpiredCert } from "../../domain/Rbac.ts"
import type { LocalUser } from "./launcher.ts"
import { launch, lookupUser as defaultLookup } from "./launcher.ts"
import type { Recorder } from "./recording.ts"
import { startRecording } from "./recording.ts"
import type { AuthDeps, NodeIdentity, SshIdentity } from "./serverAuth.ts"
import { checkAttempt } from "./serverAuth.ts"
import { sftpAuditor } from "./sftpAudit.ts"

export const SFTP_SERVER = "/usr/lib/openssh/sftp-server"
/** As sshd's MaxAuthTries. */
const MAX_AUTH_ATTEMPTS = 6
/** As sshd's LoginGraceTime, shorter: the node has no reason to wait two minutes. */
const LOGIN_GRACE_MS = 30_000
/** Window changes: a burst of this many, then this many per second. A person dragging a window stays far below. */
const RESIZE_BURST = 200
const RESIZE_PER_SECOND = 50
const MAX_ENV = 64
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/
/** Set by the node from the login; a client may not override them. */
const PROTECTED_ENV = new Set(["HOME", "USER", "LOGNAME", "SHELL", "PATH", "MAIL", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "SSH_ORIGINAL_COMMAND"])

export interface AuditRecord {
  readonly type: string
  readonly code: string
  readonly payload: Readonly<Record<string, unknown>>
}

export interface NodeServerOptions extends Omit<AuthDeps, "lookupUser"> {
  readonly node: NodeIdentity & { readonly hostname: string }
  /** The host key, an OpenSSH private key (PEM). */
  readonly hostKey: string
  readonly dataDir: string
  /** Appends an audit event durably; the session waits for it. */
  readonly audit: (e: AuditRecord) => Promise<void>
  /** A recording is complete: a hint to upload now. */
  readonly onRecordingDone?: () => void
  readonly lookupUser?: AuthDeps["lookupUser"]
  readonly log?: (level: "debug" | "info" | "warn", message: string) => void
}

export interface NodeServer {
  /** Serves one connection. `remoteAddress` is the client's address (for a tunnel stream, as the proxy saw it). */
  readonly accept: (socket: Duplex, remoteAddress: string | undefined) => Promise<void>
  /** Listens on TCP for direct connections; resolves with the bound port. */
  readonly listen: (host: string, port: number) => Promise<number>
  readonly close: () => Promise<void>
  /** Connections open now. */
  readonly connections: () => number
}

const defaultPath = (uid: number) =>
  uid === 0 ? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" : "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"

/** `scp [-flags] -t|-f [--] PATH`, as the scp client asks the server to run it. */
export const legacyScp = (command: string): { readonly action: "upload" | "download"; readonly path: string } | undefined => {
  const words = command.trim().split(/\s+/)
  if (words[0] !== "scp" || words.length < 3) return undefined
  const flags = words.slice(1, -1).filter((w) => w.startsWith("-"))
  const to = flags.some((f) => /^-[a-zA-Z]*t/.test(f))
  const from = flags.some((f) => /^-[a-zA-Z]*f/.test(f))
  if (to === from) return undefined
  return { action: to ? "upload" : "download", path: words[words.length - 1]! }
}

export const makeNodeServer = (options: NodeServerOptions): NodeServer => {
  const log = options.log ?? (() => {})
  const lookup = options.lookupUser ?? defaultLookup
  const authDeps: AuthDeps = { ...options, lookupUser: lookup }
  const server = new ssh2.Server({ hostKeys: [options.hostKey], ident: "Remoteler" })
  server.on("error", (e: Error) => log("debug", `ssh server: ${e.message}`))
  const open = new Set<Duplex>()
  const listeners: Array<net.Server> = []

  const audit = (type: string, code: string, payload: Record<string, unknown>) =>
    options.audit({ type, code, payload: { server_id: options.node.hostId, server_hostname: options.node.hostname, ...payload } }).catch((e: Error) =>
      log("warn", `audit ${type} not stored: ${e.message}`)
    )

  /** Per raw socket: what happened before and during authentication. */
  interface ConnState {
    readonly remote: string | undefined
    banner: boolean
    identity: SshIdentity | undefined
    sshUser: string | undefined
    failure: { user: string; reason: string } | undefined
  }
  const states = new WeakMap<object, ConnState>()

  server.on("connection", (client: Connection, info: { ip?: string }) => {
    const socket = (client as unknown as { _sock: Duplex })._sock
    const state = states.get(socket)
    if (state === undefined) {
      client.end()
      return
    }
    state.banner = true
    void info
    onClient(client, state)
  })

  const onClient = (client: Connection, state: ConnState) => {
    let attempts = 0
    const grace = setTimeout(() => {
      if (state.identity === undefined) {
        state.failure ??= { user: state.sshUser ?? "", reason: "no successful authentication within the login grace time" }
        client.end()
      }
    }, LOGIN_GRACE_MS)
    client.on("error", (e: Error) => log("debug", `ssh connection from ${state.remote}: ${e.message}`))
    client.on("close", () => clearTimeout(grace))

    client.on("authentication", (ctx) => {
      state.sshUser = ctx.username
      if (ctx.method !== "publickey") {
        if (ctx.method !== "none") state.failure ??= { user: ctx.username, reason: `${ctx.method} authentication is not accepted; use a certificate from 'tsh login'` }
        return ctx.reject(["publickey"])
      }
      const signed = ctx.signature !== undefined
      if (signed && ++attempts > MAX_AUTH_ATTEMPTS) {
        state.failure = { user: state.failure?.user ?? ctx.username, reason: `too many authentication attempts (${MAX_AUTH_ATTEMPTS})` }
        ctx.reject()
        client.end()
        return
      }
      checkAttempt(authDeps, {
        login: ctx.username,
        keyAlgo: ctx.key.algo,
        keyData: ctx.key.data,
        signature: ctx.signature,
        signedData: ctx.blob,
        remoteAddress: state.remote
      }).then(
        (outcome) => {
          if (outcome._tag === "Refused") {
            // A plain key offered after a certificate says less about why the login failed.
            if (state.failure === undefined || !outcome.reason.startsWith("a Remoteler user certificate is required")) {
              state.failure = { user: outcome.user, reason: outcome.reason }
            }
            return ctx.reject(["publickey"])
          }
          if (outcome._tag === "Query") return ctx.accept()
          state.identity = outcome.identity
          state.failure = undefined
          ctx.accept()
        },
        (e: Error) => {
          state.failure = { user: ctx.username, reason: `internal error: ${e.message}` }
          ctx.reject(["publickey"])
        }
      )
    })

    client.on("ready", () => {
      clearTimeout(grace)
      const identity = state.identity!
      log("info", `${identity.user} logged in as ${identity.login} from ${state.remote ?? "?"}`)
      let resizeTokens = RESIZE_BURST
      let resizeAt = Date.now()
      /** Token bucket over every window change of the connection: false when the client floods. */
      const allowResize = () => {
        const now = Date.now()
        resizeTokens = Math.min(RESIZE_BURST, resizeTokens + ((now - resizeAt) / 1000) * RESIZE_PER_SECOND)
        resizeAt = now
        if (resizeTokens < 1) return false
        resizeTokens -= 1
        return true
      }
      let dropped = false
      const drop = (reason: string, sid?: string) => {
        if (dropped) return
        dropped = true
        void audit("client.disconnect", "T3006I", {
          user: identity.user,
          login: identity.login,
          reason,
          ...(sid === undefined ? {} : { sid }),
          ...(state.remote === undefined ? {} : { "addr.remote": state.remote })
        })
        client.end()
      }
      // disconnect_expired_cert: the connection ends when the certificate does.
      if (disconnectExpiredCert(identity.roles)) {
        const ms = Number(identity.certificate.validBefore) * 1000 - Date.now()
        if (ms < 2 ** 31) {
          const t = setTimeout(() => drop("the certificate expired (disconnect_expired_cert)"), Math.max(0, ms))
          client.on("close", () => clearTimeout(t))
        }
      }
      client.on("session", (accept) => {
        const session = accept()
        handleSession(session, identity, state, allowResize, drop)
      })
      client.on("tcpip", (accept, reject, info) => {
        const addr = `${info.destIP}:${info.destPort}`
        const base = { user: identity.user, login: identity.login, addr, ...(state.remote === undefined ? {} : { "addr.remote": state.remote }) }
        if (!identity.permit.portForwarding) {
          void audit("port", "T3003E", { ...base, success: false, error: "the certificate does not permit port forwarding" })
          return reject()
        }
        const upstream = net.connect({ host: info.destIP, port: info.destPort })
        upstream.once("error", (e) => {
          void audit("port", "T3003E", { ...base, success: false, error: e.message })
          reject()
        })
        upstream.once("connect", () => {
          upstream.removeAllListeners("error")
          const channel = accept()
          if (channel === undefined) return upstream.destroy()
          void audit("port", "T3003I", { ...base, success: true })
          upstream.on("error", () => channel.destroy())
          channel.on("error", () => upstream.destroy())
          channel.pipe(upstream).pipe(channel)
          channel.on("close", () => upstream.destroy())
        })
      })
      // Remote forwarding (-R), agent and X11 forwarding are not offered.
      client.on("request", (_accept, reject) => reject?.())
    })
  }

  const handleSession = (
    session: Session,
    identity: SshIdentity,
    state: ConnState,
    allowResize: () => boolean,
    drop: (reason: string, sid?: string) => void
  ) => {
    const sid = randomUUID()
    const env: Record<string, string> = {}
    let pty: { cols: number; rows: number; term: string } | undefined
    let running: { resize: (c: number, r: number) => void; signal: (name: string) => void; recorder: Recorder | undefined } | undefined
    const base = {
      user: identity.user,
      login: identity.login,
      sid,
      ...(state.remote === undefined ? {} : { "addr.remote": state.remote })
    }

    session.on("pty", (accept, reject, info) => {
      if (!identity.permit.pty) return reject?.()
      pty = { cols: info.cols || 80, rows: info.rows || 24, term: /^[A-Za-z0-9._+-]{1,64}$/.test(info.term) ? info.term : "xterm" }
      accept?.()
    })
    session.on("window-change", (accept, reject, info) => {
      if (!allowResize()) {
        reject?.()
        return drop(`window-change storm: more than ${RESIZE_BURST} window changes at over ${RESIZE_PER_SECOND} per second`, sid)
      }
      if (pty !== undefined) {
        pty = { ...pty, cols: info.cols, rows: info.rows }
        running?.resize(info.cols, info.rows)
        running?.recorder?.resize(info.cols, info.rows)
      }
      accept?.()
    })
    session.on("env", (accept, reject, info) => {
      const ok =
        ENV_NAME.test(info.key) &&
        !PROTECTED_ENV.has(info.key) &&
        typeof info.val === "string" &&
        info.val.length <= 4096 &&
        !info.val.includes("\0") &&
        (Object.keys(env).length < MAX_ENV || Object.hasOwn(env, info.key))
      if (!ok) return reject?.()
      env[info.key] = info.val
      accept?.()
    })
    session.on("signal", (accept, _reject, info) => {
      running?.signal(info.name)
      accept?.()
    })

    const start = (kind: "shell" | "exec" | "sftp", channel: ServerChannel | undefined, requested: string | undefined) => {
      if (channel === undefined) return
      channel.on("error", (e: Error) => log("debug", `session ${sid}: ${e.message}`))
      const local: LocalUser = identity.localUser
      const forced = identity.forceCommand
      const command = forced ?? (kind === "exec" ? requested : undefined)
      const interactive = pty !== undefined
      const remote = state.remote ?? ""
      const fullEnv: Record<string, string> = {
        ...env,
        HOME: local.home,
        USER: local.name,
        LOGNAME: local.name,
        SHELL: local.shell,
        PATH: defaultPath(local.uid),
        MAIL: `/var/mail/${local.name}`,
        SSH_CONNECTION: `${remote} 0 ${options.node.name} 22`,
        SSH_CLIENT: `${remote} 0 22`,
        REMOTELER_SESSION_ID: sid,
        ...(pty === undefined ? {} : { TERM: pty.term }),
        ...(forced !== undefined && requested !== undefined ? { SSH_ORIGINAL_COMMAND: requested } : {})
      }
      const startedAt = new Date()
      void (async () => {
        await audit("session.start", "T2000I", {
          ...base,
          server_labels: { ...options.node.labels },
          proto: "ssh",
          interactive,
          ...(pty === undefined ? {} : { size: `${pty.cols}:${pty.rows}` }),
          ...(command === undefined ? {} : { initial_command: [command] }),
          session_recording: interactive ? "node" : "off"
        })
        const recorder = interactive
          ? startRecording({ dataDir: options.dataDir, sessionId: sid, cols: pty!.cols, rows: pty!.rows, env: { TERM: pty!.term, SHELL: local.shell } })
          : undefined
        const sftp = kind === "sftp" && forced === undefined
        const launched = launch({
          user: local,
          env: fullEnv,
          ...(sftp ? { argv: [SFTP_SERVER] } : { command }),
          pty: pty === undefined ? undefined : { cols: pty.cols, rows: pty.rows }
        })
        running = { resize: launched.resize, signal: launched.signal, recorder }
        const child = launched.child
        child.stdin?.on("error", () => {})
        child.stdout?.on("error", () => {})
        child.stderr?.on("error", () => {})
        if (sftp) {
          const tap = sftpAuditor((open) =>
            void audit("scp", open.action === "download" ? "T3004I" : "T3005I", { ...base, path: open.path, action: open.action, command: "sftp" })
          )
          channel.on("data", (d: Buffer) => tap(d))
        }
        // Legacy scp (`scp -O`) runs `scp -t PATH` (upload) or `scp -f PATH` (download) as a command.
        const legacy = kind === "exec" && command !== undefined ? legacyScp(command) : undefined
        if (legacy !== undefined) {
          void audit("scp", legacy.action === "download" ? "T3004I" : "T3005I", { ...base, path: legacy.path, action: legacy.action, command })
        }
        if (recorder !== undefined) {
          channel.on("data", (d: Buffer) => recorder.input(d))
          child.stdout?.on("data", (d: Buffer) => recorder.output(d))
        }
        if (child.stdin !== null) channel.pipe(child.stdin)
        child.stdout?.pipe(channel, { end: false })
        if (recorder === undefined) child.stderr?.pipe(channel.stderr, { end: false })
        else child.stderr?.on("data", (d: Buffer) => log("debug", `session ${sid} helper: ${d.toString().trim()}`))
        // The client closed the channel under a running process: hang it up, as closing a terminal does.
        channel.on("close", () => {
          if (child.exitCode === null && child.signalCode === null) launched.signal("HUP")
        })
        const exit = await launched.exited
        if (exit.signal !== null) channel.exit(exit.signal, exit.core, "")
        else channel.exit(exit.code ?? 255)
        channel.end()
        if (kind === "exec" || forced !== undefined) {
          const ok = exit.signal === null && exit.code === 0
          await audit("exec", ok ? "T3002I" : "T3002E", {
            ...base,
            command: command ?? "",
            exitCode: exit.signal === null ? String(exit.code ?? 255) : "",
            ...(ok ? {} : { exitError: exit.signal !== null ? `signal: ${exit.signal}` : `exit status ${exit.code}` })
          })
        }
        const recording = recorder === undefined ? undefined : await recorder.finish()
        await audit("session.end", "T2004I", {
          ...base,
          interactive,
          participants: [identity.user],
          session_start: startedAt.toISOString(),
          session_stop: new Date().toISOString(),
          ...(recording === undefined ? {} : { session_recording_sha256: recording.sha256, session_recording_bytes: recording.bytes })
        })
        if (recording !== undefined) options.onRecordingDone?.()
      })().catch((e: Error) => {
        log("warn", `session ${sid} failed: ${e.message}`)
        try {
          channel.stderr.write(`remoteler: ${e.message}\r\n`)
          channel.exit(255)
          channel.end()
        } catch {
          // the channel is already gone
        }
      })
    }

    let started = false
    const once = <A extends Array<unknown>>(f: (...a: A) => void) => (...a: A) => {
      if (started) return
      started = true
      f(...a)
    }
    session.on("shell", once((accept) => start("shell", accept(), undefined)))
    session.on("exec", once((accept, _reject, info) => start("exec", accept(), info.command)))
    session.on("subsystem", (accept, reject, info) => {
      if (started || info.name !== "sftp") return reject?.()
      started = true
      start("sftp", accept(), undefined)
    })
  }

  const accept = (socket: Duplex, remoteAddress: string | undefined): Promise<void> =>
    new Promise((resolve) => {
      const state: ConnState = { remote: remoteAddress, banner: false, identity: undefined, sshUser: undefined, failure: undefined }
      states.set(socket, state)
      open.add(socket)
      socket.on("error", (e: Error) => log("debug", `connection from ${remoteAddress}: ${e.message}`))
      socket.once("close", () => {
        open.delete(socket)
        if (state.identity === undefined) {
          const reason = state.banner
            ? (state.failure?.reason ?? "the client disconnected before authenticating")
            : "not an SSH client: no valid SSH identification string"
          void audit("auth", "T3007W", {
            user: state.failure?.user ?? state.sshUser ?? "",
            success: false,
            error: reason,
            ...(remoteAddress === undefined ? {} : { "addr.remote": remoteAddress })
          })
        }
        resolve()
      })
      // Garbage that never ends a line would keep the socket: the grace time covers the banner too.
      const t = setTimeout(() => {
        if (!state.banner) socket.destroy()
      }, LOGIN_GRACE_MS)
      socket.once("close", () => clearTimeout(t))
      server.injectSocket(socket as unknown as net.Socket)
    })

  return {
    accept,
    listen: (host, port) =>
      new Promise((resolve, reject) => {
        const l = net.createServer((socket) => void accept(socket, socket.remoteAddress?.replace(/^::ffff:/, "")))
        l.once("error", reject)
        l.listen(port, host, () => {
          l.off("error", reject)
          l.on("error", (e) => log("warn", `ssh listener: ${e.message}`))
          listeners.push(l)
          resolve((l.address() as net.AddressInfo).port)
        })
      }),
    close: async () => {
      await Promise.all(listeners.map((l) => new Promise((r) => l.close(r))))
      for (const s of open) s.destroy()
    },
    connections: () => open.size
  }
}
