/**
 * tsh's SSH commands: `tsh ls`, `tsh ssh`, `tsh scp`, `tsh config` and `tsh proxy ssh`.
 *
 * `ls` and `config` are ordinary @effect/cli commands. `ssh`, `scp` and `proxy ssh` take OpenSSH's
 * argument shape, where everything after the host is the remote command with its own flags
 * (`tsh ssh node ls -la`): @effect/cli would read those as tsh's options, so these three are
 * parsed here by hand, before @effect/cli sees the argument list (`runRaw`).
 *
 * Exit codes as OpenSSH's: the remote command's status, or 255 when tsh itself failed (no route,
 * refused certificate, host key mismatch).
 */
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { Args, Command, Options } from "@effect/cli"
import { NodeRuntime } from "@effect/platform-node"
import { Cause, Console, Data, Effect, Either, Exit, Option } from "effect"
import type { Scope } from "effect"
import type { Client, ClientChannel } from "ssh2"
import * as KnownHosts from "../adapters/KnownHosts.ts"
import * as SshClient from "../adapters/SshClient.ts"
import * as Profiles from "../adapters/TshProfile.ts"
import * as WebApi from "../adapters/WebApiClient.ts"
import type { NodeInfo } from "../domain/WebApi.ts"
import * as Route from "../protocols/ssh/route.ts"

export class TshSshError extends Data.TaggedError("TshSshError")<{ readonly message: string }> {}

const fail = (message: string) => new TshSshError({ message })
const withMessage = (e: { readonly message: string }) => fail(e.message)

// ---------------------------------------------------------------------------------------------
// Profile and inventory

const currentProfile = Effect.mapError(Profiles.loadProfile(Profiles.tshHome()), withMessage)

const clientCert = (p: Profiles.LoadedProfile): WebApi.ClientCertOptions => ({
  tlsCert: p.tlsCert,
  key: p.tlsPrivateKeyPem,
  ...(p.caCerts.includes("-----BEGIN CERTIFICATE-----") ? { caCerts: p.caCerts } : {})
})

const knownHostsFile = (p: Profiles.LoadedProfile) => KnownHosts.knownHostsPath(p.paths.keyDir)

/** The nodes the user may reach, from the proxy; the known_hosts file is brought up to date with them. */
const inventory = (p: Profiles.LoadedProfile): Effect.Effect<ReadonlyArray<NodeInfo>, TshSshError> =>
  Effect.gen(function* () {
    const res = yield* Effect.mapError(WebApi.nodes(p.file.web_proxy_addr, clientCert(p)), withMessage)
    yield* Effect.try({ try: () => KnownHosts.write(knownHostsFile(p), res.nodes, p.file.cluster), catch: (e) => fail(`cannot write ${knownHostsFile(p)}: ${(e as Error).message}`) })
    return res.nodes
  })

/** A node as users name it: its name, `<name>.<cluster>`, its host name or host id. */
const findNode = (nodes: ReadonlyArray<NodeInfo>, host: string, cluster: string): NodeInfo | undefined => {
  const h = host.toLowerCase()
  return nodes.find((n) => {
    const name = n.name.toLowerCase()
    return h === name || h === `${name}.${cluster.toLowerCase()}` || h === n.host_id.toLowerCase() || h === n.hostname.toLowerCase()
  })
}

const formatLabels = (labels: Readonly<Record<string, string>>) =>
  Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]}`)
    .join(",")

const table = (headers: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: ReadonlyArray<string>) => cells.map((c, i) => c.padEnd(widths[i]!)).join(" ").trimEnd()
  return [line(headers), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n")
}

/** `env=dev` selectors (several per argument, comma-separated); every one must match. */
const parseSelectors = (args: ReadonlyArray<string>): Either.Either<ReadonlyArray<readonly [string, string]>, TshSshError> => {
  const out: Array<readonly [string, string]> = []
  for (const part of args.flatMap((a) => a.split(",")).filter((s) => s !== "")) {
    const i = part.indexOf("=")
    if (i <= 0) return Either.left(fail(`bad label selector ${JSON.stringify(part)}: expected KEY=VALUE`))
    out.push([part.slice(0, i), part.slice(i + 1)] as const)
  }
  return Either.right(out)
}

// ---------------------------------------------------------------------------------------------
// tsh ls, tsh config

export const lsCommand = Command.make(
  "ls",
  {
    format: Options.choice("format", ["text", "json"]).pipe(Options.withDescription("output format: text, json"), Options.withDefault("text" as const)),
    labels: Args.text({ name: "labels" }).pipe(Args.withDescription("label selectors, KEY=VALUE (all must match)"), Args.repeated)
  },
  (o) =>
    Effect.gen(function* () {
      const selectors = yield* parseSelectors(o.labels)
      const p = yield* currentProfile
      const nodes = (yield* inventory(p))
        .filter((n) => selectors.every(([k, v]) => n.labels[k] === v))
        .slice()
        .sort((a, b) => a.name.localeCompare(b.name))
      if (o.format === "json") return yield* Console.log(JSON.stringify(nodes, null, 2))
      yield* Console.log(table(["Node Name", "Address", "Labels"], nodes.map((n) => [n.name, n.addr ?? "⟵ Tunnel", formatLabels(n.labels)])))
    })
).pipe(Command.withDescription("List the SSH nodes you may reach (optionally only those whose labels match KEY=VALUE)."))

const quote = (s: string) => `"${s.replace(/(["\\])/g, "\\$1")}"`

/** How OpenSSH should start this tsh: this Node and this script, with TSH_HOME when it is set. */
const tshInvocation = (): string => {
  const home = process.env["TSH_HOME"]
  const script = process.argv[1] ?? "tsh"
  const prefix = home !== undefined && home !== "" ? `env TSH_HOME=${quote(home)} ` : ""
  return `${prefix}${quote(process.execPath)} ${quote(path.resolve(script))}`
}

export const configCommand = Command.make("config", {}, () =>
  Effect.gen(function* () {
    const p = yield* currentProfile
    // Best effort: the block is still right without a reachable proxy, only the pins may be older.
    yield* Effect.ignore(inventory(p))
    const cluster = p.file.cluster
    const files = [
      `    UserKnownHostsFile ${quote(knownHostsFile(p))}`,
      `    IdentityFile ${quote(p.paths.sshKey)}`,
      `    CertificateFile ${quote(p.paths.sshCert)}`,
      "    IdentitiesOnly yes"
    ]
    const sshProxy = Profiles.parseProxyAddr(p.file.ssh_proxy_addr ?? "")
    yield* Console.log(
      [
        `# Begin generated Remoteler configuration for ${p.name} by tsh`,
        "",
        `# Nodes of cluster ${cluster}: through the proxy's web port, by tsh proxy ssh`,
        `Host *.${cluster}`,
        ...files,
        "    Port 3022",
        `    ProxyCommand ${tshInvocation()} proxy ssh %r@%h:%p`,
        ...(sshProxy !== undefined && p.file.ssh_proxy_addr !== p.file.web_proxy_addr
          ? ["", `# The proxy's SSH port, for ssh -J ${p.name}`, `Host ${p.name}`, `    Port ${sshProxy.port}`, `    IdentityFile ${quote(p.paths.sshKey)}`, `    CertificateFile ${quote(p.paths.sshCert)}`, "    IdentitiesOnly yes"]
          : []),
        "",
        "# End generated Remoteler configuration"
      ].join("\n")
    )
  })
).pipe(Command.withDescription("Print an OpenSSH client configuration block that reaches the cluster's nodes through the proxy (tsh config >> ~/.ssh/config)."))

// ---------------------------------------------------------------------------------------------
// Sessions

/** Dials the node through the proxy and authenticates, pinning its host key from the inventory. */
const session = (p: Profiles.LoadedProfile, host: string, login: string, port = 0): Effect.Effect<Client, TshSshError, Scope.Scope> =>
  Effect.gen(function* () {
    // The inventory (for the pin) and the proxy's routing run side by side: one round trip, not two.
    const [nodes, sock] = yield* Effect.all(
      [
        inventory(p),
        Effect.acquireRelease(
          Effect.mapError(
            SshClient.dialProxy({
              proxy: p.file.web_proxy_addr,
              tlsCert: p.tlsCert,
              tlsKey: p.tlsPrivateKeyPem,
              caCerts: p.caCerts,
              // the port matters only for agentless nodes; a node agent serves SSH on its tunnel
              target: { host, port }
            }),
            withMessage
          ),
          (s) => Effect.sync(() => s.destroy())
        )
      ],
      { concurrency: 2 }
    )
    const node = findNode(nodes, host, p.file.cluster)
    if (node === undefined) return yield* fail(`no node named ${host} that you may reach (tsh ls lists them)`)
    const hostKey = KnownHosts.hostKeyBlob(node.host_key)
    if (hostKey === undefined) return yield* fail(`the cluster has no host key for node ${node.name}: refusing to connect without one to check`)
    return yield* SshClient.connect(sock, {
      login,
      credentials: { privateKey: p.sshPrivateKey, certificate: p.sshCert },
      hostKey,
      hostName: node.name
    }).pipe(
      Effect.mapError((e) =>
        e.reason === "Auth"
          ? fail(`${e.message}${node.logins.length > 0 ? ` (your roles allow these logins there: ${node.logins.join(", ")})` : " (your roles allow no login there)"}`)
          : withMessage(e)
      )
    )
  })

const defaultLogin = () => {
  try {
    return os.userInfo().username
  } catch {
    return process.env["USER"] ?? "root"
  }
}

/** `[bind_address:]port:host:hostport` */
const parseForward = (spec: string): { bindHost: string; bindPort: number; host: string; port: number } | undefined => {
  const parts = spec.split(":")
  const [bindHost, bindPort, host, port] = parts.length === 4 ? parts : parts.length === 3 ? ["127.0.0.1", ...parts] : []
  if (bindHost === undefined || bindPort === undefined || host === undefined || port === undefined) return undefined
  const bp = Number(bindPort)
  const hp = Number(port)
  if (!Number.isInteger(bp) || bp < 0 || bp > 65535 || !Number.isInteger(hp) || hp < 1 || hp > 65535 || host === "") return undefined
  return { bindHost, bindPort: bp, host, port: hp }
}

/** A local listener whose connections become `direct-tcpip` channels to `host:port` on the node's side. */
const localForward = (client: Client, spec: string) =>
  Effect.gen(function* () {
    const f = parseForward(spec)
    if (f === undefined) return yield* fail(`bad -L ${JSON.stringify(spec)}: expected [bind_address:]port:host:hostport`)
    const sockets = new Set<net.Socket>()
    yield* Effect.acquireRelease(
      Effect.async<net.Server, TshSshError>((resume) => {
        const server = net.createServer((c) => {
          sockets.add(c)
          c.on("close", () => sockets.delete(c))
          c.on("error", () => c.destroy())
          client.forwardOut(c.remoteAddress ?? "127.0.0.1", c.remotePort ?? 0, f.host, f.port, (err, ch) => {
            if (err !== undefined && err !== null) {
              process.stderr.write(`channel to ${f.host}:${f.port} refused: ${err.message}\n`)
              return c.destroy()
            }
            c.pipe(ch).pipe(c)
            ch.on("close", () => c.destroy())
            c.on("close", () => ch.close())
          })
        })
        server.once("error", (e) => resume(Effect.fail(fail(`cannot listen on ${f.bindHost}:${f.bindPort}: ${e.message}`))))
        server.listen(f.bindPort, f.bindHost, () => resume(Effect.succeed(server)))
      }),
      (s) =>
        Effect.sync(() => {
          s.close()
          for (const c of sockets) c.destroy()
        })
    )
  })

interface SshArgs {
  readonly login: string | undefined
  readonly host: string
  readonly port: number | undefined
  readonly forwards: ReadonlyArray<string>
  readonly tty: boolean
  readonly noCommand: boolean
  readonly command: string | undefined
}

/** OpenSSH's argument shape: flags, then `[login@]host`, then the command words. */
const parseSshArgs = (argv: ReadonlyArray<string>): Either.Either<SshArgs, TshSshError> => {
  let login: string | undefined
  let port: number | undefined
  const forwards: Array<string> = []
  let tty = false
  let noCommand = false
  let i = 0
  const value = (flag: string): string | undefined => {
    const a = argv[i]!
    if (a.length > flag.length && !a.startsWith("--")) return a.slice(flag.length)
    const eq = a.indexOf("=")
    if (a.startsWith("--") && eq > 0) return a.slice(eq + 1)
    i++
    return argv[i]
  }
  for (; i < argv.length; i++) {
    const a = argv[i]!
    if (a === "--") {
      i++
      break
    }
    if (!a.startsWith("-") || a === "-") break
    if (a.startsWith("-l") || a === "--login" || a.startsWith("--login=")) login = value(a.startsWith("--") ? "--login" : "-l")
    else if (a.startsWith("-p") || a === "--port" || a.startsWith("--port=")) {
      const v = value(a.startsWith("--") ? "--port" : "-p")
      port = Number(v)
      if (!Number.isInteger(port) || port < 1 || port > 65535) return Either.left(fail(`bad port ${JSON.stringify(v)}`))
    } else if (a.startsWith("-L") || a === "--forward" || a.startsWith("--forward=")) {
      const v = value(a.startsWith("--") ? "--forward" : "-L")
      if (v === undefined) return Either.left(fail("-L needs [bind_address:]port:host:hostport"))
      forwards.push(v)
    } else if (/^-t+$/.test(a) || a === "--tty") tty = true
    else if (a === "-N" || a === "--no-remote-exec") noCommand = true
    else return Either.left(fail(`unknown flag ${a}; usage: tsh ssh [-l LOGIN] [-p PORT] [-L spec] [-t] [-N] [LOGIN@]HOST [COMMAND...]`))
    if (login === undefined && (a === "-l" || a === "--login") && argv[i] === undefined) return Either.left(fail("-l needs a login"))
  }
  const dest = argv[i]
  if (dest === undefined) return Either.left(fail("usage: tsh ssh [-l LOGIN] [-p PORT] [-L spec] [-t] [-N] [LOGIN@]HOST [COMMAND...]"))
  const at = dest.lastIndexOf("@")
  const words = argv.slice(i + 1)
  return Either.right({
    login: at > 0 ? dest.slice(0, at) : login,
    host: at > 0 ? dest.slice(at + 1) : dest,
    port,
    forwards,
    tty,
    noCommand,
    command: words.length === 0 ? undefined : words.join(" ")
  })
}

/** Connects stdio to a session channel and resolves with the remote exit status. */
const runChannel = (channel: ClientChannel, pty: boolean) =>
  Effect.async<number>((resume) => {
    const stdin = process.stdin
    const raw = pty && stdin.isTTY === true
    if (raw) stdin.setRawMode(true)
    const onResize = () => channel.setWindow(process.stdout.rows ?? 24, process.stdout.columns ?? 80, 0, 0)
    if (pty && process.stdout.isTTY === true) process.stdout.on("resize", onResize)
    stdin.pipe(channel)
    channel.pipe(process.stdout, { end: false })
    channel.stderr.pipe(process.stderr, { end: false })
    const restore = () => {
      if (raw) stdin.setRawMode(false)
      process.stdout.off("resize", onResize)
      stdin.unpipe(channel)
      stdin.pause()
      // stdin stays open in a pipe that never ends; it must not keep tsh running.
      stdin.destroy()
    }
    void SshClient.exitStatus(channel).then((code) => {
      restore()
      resume(Effect.succeed(code))
    })
    return Effect.sync(() => {
      restore()
      channel.close()
    })
  })

const sshProgram = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const a = yield* parseSshArgs(argv)
    const p = yield* currentProfile
    const client = yield* session(p, a.host, a.login ?? defaultLogin(), a.port ?? 0)
    for (const f of a.forwards) yield* localForward(client, f)
    if (a.noCommand) {
      // -N: only forward ports, until interrupted or the node goes away.
      yield* Effect.async<void>((resume) => void client.on("close", () => resume(Effect.void)))
      return 0
    }
    const pty = a.tty || (a.command === undefined && process.stdin.isTTY === true)
    const channel = yield* Effect.mapError(
      SshClient.openSession(
        client,
        a.command,
        pty ? { term: process.env["TERM"] ?? "xterm", rows: process.stdout.rows ?? 24, cols: process.stdout.columns ?? 80 } : undefined
      ),
      withMessage
    )
    return yield* runChannel(channel, pty)
  })

// ---------------------------------------------------------------------------------------------
// tsh scp

interface RemotePath {
  readonly login: string | undefined
  readonly host: string
  readonly path: string
}

/** `[login@]host:path`; a local path has no colon before its first slash. */
const parseRemote = (s: string): RemotePath | undefined => {
  const m = /^(?:([^@/:]+)@)?([^@/:]+):(.*)$/.exec(s)
  if (m === null) return undefined
  return { login: m[1], host: m[2]!, path: m[3] === "" ? "." : m[3]!.replace(/^~\/?/, "") || "." }
}

const sftpCall = <A>(what: string, f: (cb: (err: Error | null | undefined, a: A) => void) => void) =>
  Effect.async<A, TshSshError>((resume) =>
    f((err, a) => resume(err !== undefined && err !== null ? Effect.fail(fail(`${what}: ${err.message}`)) : Effect.succeed(a)))
  )

const scpProgram = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    let login: string | undefined
    const rest: Array<string> = []
    for (let i = 0; i < argv.length; i++) {
      const x = argv[i]!
      if (x === "-l" || x === "--login") login = argv[++i]
      else if (x.startsWith("--login=")) login = x.slice(8)
      else if (x === "-q" || x === "--quiet") continue
      else if (x === "-r" || x === "--recursive") return yield* fail("tsh scp copies files; -r (directories) is not supported")
      else if (x.startsWith("-") && x !== "-") return yield* fail(`unknown flag ${x}; usage: tsh scp [-l LOGIN] SOURCE... DEST`)
      else rest.push(x)
    }
    if (rest.length < 2) return yield* fail("usage: tsh scp [-l LOGIN] SOURCE... DEST (one side [login@]host:path)")
    const dest = rest[rest.length - 1]!
    const sources = rest.slice(0, -1)
    const remoteDest = parseRemote(dest)
    const remoteSources = sources.map(parseRemote)
    if (remoteDest !== undefined && remoteSources.some((r) => r !== undefined)) return yield* fail("copying between two nodes is not supported: one side must be local")
    if (remoteDest === undefined && remoteSources.some((r) => r === undefined)) return yield* fail("one side must be a node: [login@]host:path")
    const p = yield* currentProfile
    const remote = remoteDest ?? remoteSources[0]!
    if (remoteSources.some((r) => r !== undefined && r.host !== remote.host)) return yield* fail("all remote sources must be on one node")
    const client = yield* session(p, remote.host, remote.login ?? login ?? defaultLogin())
    const sftp = yield* Effect.mapError(SshClient.sftp(client), withMessage)
    if (remoteDest !== undefined) {
      const st = yield* Effect.either(sftpCall<{ isDirectory: () => boolean }>("stat", (cb) => sftp.stat(remoteDest.path, cb)))
      const intoDir = Either.isRight(st) && st.right.isDirectory()
      if (sources.length > 1 && !intoDir) return yield* fail(`${remoteDest.path} is not a directory on ${remoteDest.host}`)
      for (const src of sources) {
        if (!fs.existsSync(src) || !fs.statSync(src).isFile()) return yield* fail(`${src}: not a regular file`)
        const target = intoDir ? path.posix.join(remoteDest.path, path.basename(src)) : remoteDest.path
        yield* sftpCall<void>(`cannot copy ${src} to ${remoteDest.host}:${target}`, (cb) =>
          sftp.fastPut(src, target, { concurrency: 32, chunkSize: 64 * 1024, mode: fs.statSync(src).mode & 0o777 }, (e) => cb(e, undefined))
        )
      }
    } else {
      const intoDir = fs.existsSync(dest) && fs.statSync(dest).isDirectory()
      if (sources.length > 1 && !intoDir) return yield* fail(`${dest} is not a directory`)
      for (const r of remoteSources) {
        const target = intoDir ? path.join(dest, path.posix.basename(r!.path)) : dest
        yield* sftpCall<void>(`cannot copy ${r!.host}:${r!.path} to ${target}`, (cb) =>
          sftp.fastGet(r!.path, target, { concurrency: 32, chunkSize: 64 * 1024 }, (e) => cb(e, undefined))
        )
      }
    }
    sftp.end()
    return 0
  })

// ---------------------------------------------------------------------------------------------
// tsh proxy ssh

/** stdin/stdout ⇄ the node's SSH stream, for OpenSSH's ProxyCommand (`%r@%h:%p`). */
const proxySshProgram = (argv: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const spec = argv.find((a) => !a.startsWith("-"))
    if (spec === undefined) return yield* fail("usage: tsh proxy ssh [LOGIN@]HOST[:PORT]")
    const hostPort = spec.slice(spec.lastIndexOf("@") + 1)
    const target = Route.parseTarget(hostPort)
    if (target === undefined) return yield* fail(`bad target ${JSON.stringify(spec)}: expected [LOGIN@]HOST[:PORT]`)
    const p = yield* currentProfile
    const [, sock] = yield* Effect.all(
      [
        // Keeps OpenSSH's known_hosts current; a failure here must not stop the session.
        Effect.ignore(inventory(p)),
        Effect.mapError(
          SshClient.dialProxy({ proxy: p.file.web_proxy_addr, tlsCert: p.tlsCert, tlsKey: p.tlsPrivateKeyPem, caCerts: p.caCerts, target }),
          withMessage
        )
      ],
      { concurrency: 2 }
    )
    yield* Effect.async<void>((resume) => {
      process.stdin.pipe(sock)
      sock.pipe(process.stdout, { end: false })
      sock.resume()
      sock.on("close", () => {
        process.stdin.unpipe(sock)
        process.stdin.destroy()
        resume(Effect.void)
      })
      return Effect.sync(() => sock.destroy())
    })
    return 0
  })

// ---------------------------------------------------------------------------------------------
// Entry

/** The program for argv (after `tsh`), when it is one of the commands parsed here. */
const programFor = (argv: ReadonlyArray<string>): Effect.Effect<number, TshSshError, Scope.Scope> | undefined => {
  if (argv[0] === "ssh") return sshProgram(argv.slice(1))
  if (argv[0] === "scp") return scpProgram(argv.slice(1))
  if (argv[0] === "proxy" && argv[1] === "ssh") return proxySshProgram(argv.slice(2))
  return undefined
}

/**
 * Runs `tsh ssh|scp|proxy ssh` when argv names one and returns true; false leaves argv to
 * @effect/cli. Ends the process with the remote status (255 for tsh's own failures, with a message).
 */
export const runRaw = (argv: ReadonlyArray<string>): boolean => {
  const program = programFor(argv)
  if (program === undefined) return false
  NodeRuntime.runMain(
    Effect.scoped(program).pipe(
      Effect.exit,
      Effect.flatMap((exit) =>
        Exit.match(exit, {
          onSuccess: (code) => Effect.succeed(code),
          onFailure: (cause) => {
            const failure = Cause.failureOption(cause)
            const message = Option.isSome(failure)
              ? failure.value.message
              : Cause.isInterruptedOnly(cause)
                ? "interrupted"
                : String(Cause.squash(cause))
            return Effect.as(Console.error(`ERROR: ${message}`), 255)
          }
        })
      ),
      Effect.flatMap((code) =>
        Effect.async<never>(() => {
          // stdout may still hold output for a pipe; exit once it has drained.
          process.stdout.write("", () => process.exit(code))
        })
      )
    )
  )
  return true
}
