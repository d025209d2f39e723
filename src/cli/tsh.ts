/**
 * `tsh`: the user's command. Logs in to a proxy (password and one-time code), keeps the
 * certificates in `~/.tsh` (or `$TSH_HOME`) as Teleport's tsh does, and shows who you are.
 * Database commands (`tsh db`, `tsh proxy db`) live in ./tshDb.ts.
 */
import "reflect-metadata"
import { generateKeyPairSync } from "node:crypto"
import * as os from "node:os"
import * as readline from "node:readline"
import { Command, Options } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Console, Data, Effect, Either, Option } from "effect"
import { VERSION } from "../actors/AuthServer.ts"
import { readIdentityFile } from "../adapters/IdentityFile.ts"
import * as PgService from "../adapters/PgServiceFile.ts"
import * as Profiles from "../adapters/TshProfile.ts"
import * as WebApi from "../adapters/WebApiClient.ts"
import { generateEcdsaKeyPair, parseCertIdentity } from "../adapters/x509.ts"
import { certIdentityExtensions, decodeCertificate, IDENTITY_EXTENSIONS, privateKeyToOpenSsh, publicKeyBlob, publicKeyLine } from "../protocols/ssh/cert.ts"
import { runCli } from "./run.ts"
import { dbCommand, proxyCommand } from "./tshDb.ts"
import { configCommand, lsCommand, runRaw as runSsh } from "./tshSsh.ts"
import { playCommand, recordingsCommand } from "./tshPlay.ts"

class TshError extends Data.TaggedError("TshError")<{ readonly message: string }> {}

// ---------------------------------------------------------------------------------------------
// Reading secrets

/** Lines of a non-terminal stdin, handed out one per prompt (password first, then the code). */
let stdinLines: { readonly next: () => Promise<string | undefined>; readonly close: () => void } | undefined
const pipedLines = () => {
  if (stdinLines !== undefined) return stdinLines
  const queue: Array<string> = []
  const waiting: Array<(l: string | undefined) => void> = []
  let closed = false
  const rl = readline.createInterface({ input: process.stdin, terminal: false })
  rl.on("line", (l) => {
    const w = waiting.shift()
    if (w !== undefined) w(l)
    else queue.push(l)
  })
  rl.on("close", () => {
    closed = true
    for (const w of waiting.splice(0)) w(undefined)
  })
  stdinLines = {
    next: () => {
      const l = queue.shift()
      if (l !== undefined || closed) return Promise.resolve(l)
      return new Promise((resolve) => waiting.push(resolve))
    },
    close: () => rl.close()
  }
  return stdinLines
}

/** Reads one line from the terminal in raw mode, echoing it or not. */
const ttyLine = (question: string, echo: boolean) =>
  new Promise<string>((resolve, reject) => {
    const stdin = process.stdin
    let value = ""
    const done = (f: () => void) => {
      stdin.setRawMode(false)
      stdin.pause()
      stdin.off("data", onData)
      process.stderr.write("\n")
      f()
    }
    const onData = (chunk: Buffer) => {
      for (const ch of chunk.toString("utf8")) {
        if (ch === "\r" || ch === "\n") return done(() => resolve(value))
        if (ch === "\u0003" || ch === "\u0004") return done(() => reject(new TshError({ message: "cancelled" })))
        if (ch === "\u007f" || ch === "\b") {
          if (value.length > 0) {
            value = value.slice(0, -1)
            if (echo) process.stderr.write("\b \b")
          }
        } else if (ch >= " ") {
          value += ch
          if (echo) process.stderr.write(ch)
        }
      }
    }
    // raw mode (no terminal echo) before the prompt shows, so nothing typed after it is echoed
    stdin.setRawMode(true)
    process.stderr.write(question)
    stdin.resume()
    stdin.on("data", onData)
  })

/** Prompts on stderr; reads the terminal (echo off for secrets) or, when stdin is not a terminal, its next line. */
const prompt = (question: string, secret: boolean, what: string) =>
  Effect.gen(function* () {
    if (process.stdin.isTTY) {
      return yield* Effect.tryPromise({ try: () => ttyLine(question, !secret), catch: (e) => (e instanceof TshError ? e : new TshError({ message: String(e) })) })
    }
    yield* Effect.sync(() => process.stderr.write(question))
    const line = yield* Effect.promise(() => pipedLines().next())
    yield* Effect.sync(() => process.stderr.write("\n"))
    if (line === undefined) return yield* new TshError({ message: `no ${what} on stdin (give it on ${what === "password" ? "the first" : "the second"} line)` })
    return line.replace(/\r$/, "")
  })

// ---------------------------------------------------------------------------------------------
// Status

interface StatusInfo {
  readonly profileUrl: string | undefined
  readonly identityFile: string | undefined
  readonly username: string
  readonly cluster: string
  readonly roles: ReadonlyArray<string>
  readonly logins: ReadonlyArray<string>
  readonly traits: Readonly<Record<string, ReadonlyArray<string>>>
  readonly validUntil: Date
  readonly extensions: ReadonlyArray<string>
  readonly active: boolean
}

/** Reads the identity out of the certificates themselves, not out of the profile file. */
const statusOf = (p: {
  readonly tlsCert: string
  readonly sshCert: string
  readonly cluster?: string
  readonly profileUrl?: string
  readonly identityFile?: string
  readonly active: boolean
}): Effect.Effect<StatusInfo, TshError> =>
  Effect.gen(function* () {
    const id = parseCertIdentity(p.tlsCert)
    if (Either.isLeft(id)) return yield* new TshError({ message: `cannot read the X.509 certificate: ${id.left.message}` })
    const ssh = decodeCertificate(p.sshCert.trim())
    if (Either.isLeft(ssh)) return yield* new TshError({ message: `cannot read the SSH certificate: ${ssh.left.message}` })
    const cert = ssh.right
    const ext = certIdentityExtensions(cert)
    const sshUntil = new Date(Number(cert.validBefore > 253402300799n ? 253402300799n : cert.validBefore) * 1000)
    const validUntil = sshUntil < id.right.expires ? sshUntil : id.right.expires
    const internal = new Set<string>(Object.values(IDENTITY_EXTENSIONS))
    return {
      profileUrl: p.profileUrl,
      identityFile: p.identityFile,
      username: id.right.username,
      cluster: id.right.routeToCluster !== "" ? id.right.routeToCluster : (p.cluster ?? ext.routeToCluster),
      roles: id.right.roles,
      logins: cert.validPrincipals,
      traits: id.right.traits,
      validUntil,
      extensions: Object.keys(cert.extensions).filter((e) => !internal.has(e)).sort(),
      active: p.active
    }
  })

/** Go's `time.Duration.String()` of a duration rounded to the minute: `11h59m0s`, `5m0s`, `0s`. */
const goDuration = (ms: number): string => {
  const mins = Math.round(ms / 60_000)
  if (mins <= 0) return "0s"
  const h = Math.floor(mins / 60)
  const m = mins % 60
  return h > 0 ? `${h}h${m}m0s` : `${m}m0s`
}

const pad2 = (n: number) => String(n).padStart(2, "0")
/** `2024-01-02 15:04:05 +0000 UTC`, Go's default time format in UTC. */
const goTime = (d: Date) =>
  `${d.getUTCFullYear()}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())} ${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())} +0000 UTC`

const statusBlock = (s: StatusInfo, now = new Date()): string => {
  const label = (l: string) => `${l}:`.padEnd(20)
  const first = s.profileUrl !== undefined ? `${label("Profile URL")}${s.profileUrl}` : `${label("Identity file")}${s.identityFile ?? ""}`
  const left = s.validUntil.getTime() - now.getTime()
  return [
    `${s.active ? ">" : " "} ${first}`,
    `  ${label("Logged in as")}${s.username}`,
    `  ${label("Cluster")}${s.cluster}`,
    `  ${label("Roles")}${s.roles.join(", ")}`,
    `  ${label("Logins")}${s.logins.join(", ")}`,
    `  ${label("Valid until")}${goTime(s.validUntil)} [${left <= 0 ? "EXPIRED" : `valid for ${goDuration(left)}`}]`,
    `  ${label("Extensions")}${s.extensions.join(", ")}`
  ].join("\n")
}

const statusJson = (s: StatusInfo) => ({
  ...(s.profileUrl !== undefined ? { profile_url: s.profileUrl } : {}),
  ...(s.identityFile !== undefined ? { identity_file: s.identityFile } : {}),
  username: s.username,
  cluster: s.cluster,
  roles: s.roles,
  traits: s.traits,
  logins: s.logins,
  valid_until: s.validUntil.toISOString(),
  extensions: s.extensions
})

const profileUrl = (webProxyAddr: string) => `https://${webProxyAddr}`

// ---------------------------------------------------------------------------------------------
// Commands

const identityOpt = Options.file("identity").pipe(
  Options.withAlias("i"),
  Options.withDescription("identity file to use instead of the ~/.tsh profile"),
  Options.optional
)

const root = Command.make("tsh", { identity: identityOpt })

const home = Effect.sync(() => Profiles.tshHome())

const defaultUser = () => {
  const env = process.env["USER"]
  if (env !== undefined && env !== "") return env
  try {
    return os.userInfo().username
  } catch {
    return "root"
  }
}

const fromProfileError = (e: Profiles.TshProfileError) => new TshError({ message: e.message })

const login = Command.make(
  "login",
  {
    proxy: Options.text("proxy").pipe(Options.withDescription("web proxy address HOST[:PORT] (port 3080 by default)"), Options.optional),
    user: Options.text("user").pipe(Options.withDescription("user name (default: the OS user)"), Options.optional),
    ttl: Options.integer("ttl").pipe(Options.withDescription("certificate lifetime in minutes (capped by your roles)"), Options.optional),
    insecure: Options.boolean("insecure").pipe(Options.withDescription("do not verify the proxy's TLS certificate (testing only)"))
  },
  (o) =>
    Effect.gen(function* () {
      const dir = yield* home
      // Without --proxy, log in again to the current profile's proxy, as Teleport does.
      const current = yield* Profiles.loadProfile(dir).pipe(Effect.option)
      const proxy = Option.isSome(o.proxy)
        ? o.proxy.value
        : Option.isSome(current)
          ? current.value.file.web_proxy_addr
          : yield* new TshError({ message: "--proxy is required (HOST[:PORT] of the web proxy)" })
      const addr = yield* WebApi.proxyAddress(proxy)
      const name = addr.host
      const webAddr = addr.host.includes(":") ? `[${addr.host}]:${addr.port}` : `${addr.host}:${addr.port}`
      const known = yield* Profiles.loadProfile(dir, name).pipe(Effect.option)
      const caCerts = yield* Profiles.trustedCaCerts(dir, name).pipe(Effect.mapError(fromProfileError))
      if (o.insecure) {
        yield* Console.error(`WARNING: You are using an insecure connection to the Remoteler proxy https://${webAddr}`)
      }
      const tlsOpts: WebApi.TlsOptions = { insecure: o.insecure, ...(Option.isSome(caCerts) ? { caCerts: caCerts.value } : {}) }
      const found = yield* WebApi.find(webAddr, tlsOpts)
      const user = Option.isSome(o.user)
        ? o.user.value
        : Option.isSome(known)
          ? known.value.file.user
          : defaultUser()

      const password = yield* prompt(`Enter password for Remoteler user ${user}:`, true, "password")
      const otp = found.auth.second_factor === "otp" ? yield* prompt("Enter an OTP code from a device:", false, "one-time code") : undefined
      // a pipe left open must not keep tsh alive after the prompts
      stdinLines?.close()

      const tlsKeys = yield* generateEcdsaKeyPair().pipe(Effect.mapError((e) => new TshError({ message: e.message })))
      const ssh = generateKeyPairSync("ed25519")
      const sshPublicKey = publicKeyLine(publicKeyBlob(ssh.publicKey))
      const res = yield* WebApi.login(
        webAddr,
        {
          user,
          password,
          ...(otp !== undefined ? { otp_token: otp.trim() } : {}),
          pub_key: sshPublicKey,
          tls_pub_key: tlsKeys.publicKeyPem,
          ...(Option.isSome(o.ttl) ? { ttl_seconds: Math.max(1, o.ttl.value) * 60 } : {})
        },
        tlsOpts
      )
      yield* Profiles.saveLogin(dir, {
        proxy: webAddr,
        user: res.username,
        cluster: res.cluster_name,
        sshProxyAddr: found.proxy.ssh_public_addr ?? webAddr,
        ...(found.proxy.mysql_public_addr !== undefined ? { mysqlProxyAddr: found.proxy.mysql_public_addr } : {}),
        tlsPrivateKeyPem: tlsKeys.privateKeyPem,
        tlsCert: res.tls_cert,
        sshPrivateKey: privateKeyToOpenSsh(ssh.privateKey, res.username),
        sshPublicKey,
        sshCert: res.cert,
        caCerts: res.tls_ca_certs,
        knownHosts: res.host_signers
      }).pipe(Effect.mapError(fromProfileError))
      const s = yield* statusOf({ tlsCert: res.tls_cert, sshCert: res.cert, cluster: res.cluster_name, profileUrl: profileUrl(webAddr), active: true })
      yield* Console.log(statusBlock(s))
    })
).pipe(Command.withDescription("Log in to a cluster through its proxy and keep short-lived certificates in ~/.tsh."))

const status = Command.make(
  "status",
  {
    format: Options.choice("format", ["text", "json"]).pipe(Options.withDescription("output format: text, json"), Options.withDefault("text" as const)),
    identity: identityOpt
  },
  (o) =>
    Effect.gen(function* () {
      const { identity: globalIdentity } = yield* root
      const identity = Option.orElse(o.identity, () => globalIdentity)
      const infos: Array<StatusInfo> = []
      if (Option.isSome(identity)) {
        const id = yield* readIdentityFile(identity.value)
        infos.push(yield* statusOf({ tlsCert: id.tlsCert, sshCert: id.sshCert, identityFile: identity.value, active: true }))
      } else {
        const dir = yield* home
        const active = yield* Profiles.loadProfile(dir).pipe(
          Effect.map(Option.some),
          Effect.catchIf((e) => e.reason === "NotLoggedIn", () => Effect.succeed(Option.none())),
          Effect.mapError(fromProfileError)
        )
        if (Option.isSome(active)) {
          const p = active.value
          infos.push(yield* statusOf({ tlsCert: p.tlsCert, sshCert: p.sshCert, cluster: p.file.cluster, profileUrl: profileUrl(p.file.web_proxy_addr), active: true }))
        }
        for (const n of yield* Profiles.listProfiles(dir).pipe(Effect.mapError(fromProfileError))) {
          if (Option.isSome(active) && active.value.name === n) continue
          const p = yield* Profiles.loadProfile(dir, n).pipe(Effect.option)
          if (Option.isNone(p)) continue
          infos.push(
            yield* statusOf({ tlsCert: p.value.tlsCert, sshCert: p.value.sshCert, cluster: p.value.file.cluster, profileUrl: profileUrl(p.value.file.web_proxy_addr), active: false })
          )
        }
        if (Option.isNone(active)) return yield* new TshError({ message: "Not logged in." })
      }
      const [first, ...rest] = infos
      if (o.format === "json") {
        return yield* Console.log(JSON.stringify({ active: first === undefined ? null : statusJson(first), profiles: rest.map(statusJson) }, null, 2))
      }
      yield* Console.log([first, ...rest].filter((s) => s !== undefined).map((s) => statusBlock(s)).join("\n\n"))
    })
).pipe(Command.withDescription("Show the current login: user, cluster, roles, logins and how long the certificates last."))

const logout = Command.make(
  "logout",
  {
    proxy: Options.text("proxy").pipe(Options.withDescription("log out of this proxy only (HOST[:PORT])"), Options.optional)
  },
  (o) =>
    Effect.gen(function* () {
      const dir = yield* home
      if (Option.isSome(o.proxy)) {
        const r = yield* Profiles.removeLogin(dir, o.proxy.value, { pgServiceFile: PgService.defaultPath() }).pipe(Effect.mapError(fromProfileError))
        if (Option.isNone(r)) return yield* new TshError({ message: `Not logged in to ${Profiles.profileName(o.proxy.value)}.` })
        return yield* Console.log(`Logged out ${r.value.user} from ${r.value.name}.`)
      }
      const removed = yield* Profiles.removeAllLogins(dir, { pgServiceFile: PgService.defaultPath() }).pipe(Effect.mapError(fromProfileError))
      if (removed.length === 0) return yield* Console.log("All users logged out.")
      yield* Console.log("Logged out all users from all proxies.")
    })
).pipe(Command.withDescription("Delete the keys and certificates of every profile (or of --proxy)."))

const version = Command.make("version", {}, () => Console.log(`Remoteler v${VERSION} node:${process.version}`)).pipe(
  Command.withDescription("Print the version.")
)

const tsh = root.pipe(
  Command.withDescription("Log in to a Remoteler cluster and reach its databases and servers."),
  Command.withSubcommands([login, status, logout, lsCommand, configCommand, dbCommand, proxyCommand, recordingsCommand, playCommand, version])
)

// `tsh ssh|scp|proxy ssh` take OpenSSH's argument shape and are parsed in tshSsh.ts.
if (!runSsh(process.argv.slice(2))) runCli(Command.run(tsh, { name: "tsh", version: VERSION }), NodeContext.layer, NodeRuntime.runMain)
