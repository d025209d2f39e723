/**
 * The `tsh` profile store: `~/.tsh`, or `$TSH_HOME`, laid out as Teleport's tsh lays it out.
 *
 *     <root>/                                    0700
 *       current-profile                          the proxy host name of the active profile
 *       <proxy>.yaml                             the profile (web_proxy_addr, ssh_proxy_addr, user, cluster, ...)
 *       known_hosts                              `@cert-authority` lines for the clusters' host CAs
 *       keys/<proxy>/                            0700
 *         certs.pem                              trusted TLS CA certificates (the host CA) for the proxy
 *         known_hosts                            the nodes' pinned host keys, from the inventory (KnownHosts.ts)
 *         <user>.key                             ECDSA P-256 private key, PKCS#8 PEM (the TLS key)
 *         <user>.crt                             X.509 user certificate, PEM, for <user>.key
 *         <user>.ssh                             Ed25519 private key, OpenSSH format (the SSH key)
 *         <user>.ssh.pub                         its OpenSSH public key line
 *         <user>-ssh/<cluster>-cert.pub          OpenSSH user certificate for <user>.ssh
 *         <user>-db/<cluster>/<db>.crt           database certificate (`tsh db login`), its route in the subject
 *         <user>-db/<cluster>/<db>.key           its ECDSA P-256 key, PKCS#8 PEM (libpq wants 0600)
 *         <user>-db/<cluster>/<db>-ca.pem        the host CA, which signs the proxy's certificate (sslrootcert)
 *         <user>-db/<cluster>/<db>.json          the db user and db name asked for, for `tsh db connect|env|config`
 *
 * `<proxy>` is the proxy's host name without its port. Every file is written atomically (a temp
 * file in the same directory, then rename) with mode 0600; directories are 0700. Two key types,
 * as DESIGN.md fixes them: ECDSA P-256 for X.509, Ed25519 for SSH.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { randomBytes } from "node:crypto"
import { Data, Effect, Either, Option } from "effect"
import * as YAML from "yaml"
import * as MyCnf from "./MyCnf.ts"
import * as PgService from "./PgServiceFile.ts"
import { parseCertIdentity } from "./x509.ts"

export class TshProfileError extends Data.TaggedError("TshProfileError")<{
  readonly reason: "NotLoggedIn" | "Io" | "BadProfile"
  readonly message: string
  readonly cause?: unknown
}> {}

/** `$TSH_HOME`, else `~/.tsh`. */
export const tshHome = (env: NodeJS.ProcessEnv = process.env): string =>
  env["TSH_HOME"] !== undefined && env["TSH_HOME"] !== "" ? env["TSH_HOME"] : path.join(os.homedir(), ".tsh")

/** The default web proxy port. */
export const DEFAULT_PROXY_PORT = 3080

/** Splits `HOST[:PORT]` (or `[v6]:PORT`); the port defaults to 3080. */
export const parseProxyAddr = (addr: string): { readonly host: string; readonly port: number } | undefined => {
  const s = addr.trim().replace(/^https:\/\//, "").replace(/\/+$/, "")
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(s) ?? /^([^:[\]/\s]+)(?::(\d+))?$/.exec(s)
  if (m === null) return undefined
  const port = m[2] === undefined ? DEFAULT_PROXY_PORT : Number(m[2])
  if (!Number.isInteger(port) || port < 1 || port > 65535) return undefined
  return { host: m[1]!, port }
}

const hostPort = (host: string, port: number) => (host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`)

/** The profile name of a proxy address: its host, without the port. */
export const profileName = (proxyAddr: string): string => parseProxyAddr(proxyAddr)?.host ?? proxyAddr

/** Every path of one login. */
export const profilePaths = (root: string, proxy: string, user: string, cluster: string) => {
  const keyDir = path.join(root, "keys", proxy)
  return {
    root,
    current: path.join(root, "current-profile"),
    profile: path.join(root, `${proxy}.yaml`),
    knownHosts: path.join(root, "known_hosts"),
    keyDir,
    caCerts: path.join(keyDir, "certs.pem"),
    tlsKey: path.join(keyDir, `${user}.key`),
    tlsCert: path.join(keyDir, `${user}.crt`),
    sshKey: path.join(keyDir, `${user}.ssh`),
    sshPub: path.join(keyDir, `${user}.ssh.pub`),
    sshCertDir: path.join(keyDir, `${user}-ssh`),
    sshCert: path.join(keyDir, `${user}-ssh`, `${cluster}-cert.pub`),
    dbDir: path.join(keyDir, `${user}-db`)
  }
}
export type ProfilePaths = ReturnType<typeof profilePaths>

/** What `<proxy>.yaml` holds: Teleport's profile keys that matter here. */
export interface ProfileFile {
  readonly web_proxy_addr: string
  readonly ssh_proxy_addr?: string
  readonly mysql_proxy_addr?: string
  readonly user: string
  readonly cluster: string
  /** The proxy routes every protocol on its one TLS port by ALPN (always true for Remoteler). */
  readonly tls_routing_enabled?: boolean
}

/** Everything a successful login leaves on disk. */
export interface LoginMaterial {
  /** `HOST[:PORT]` of the web proxy. */
  readonly proxy: string
  readonly user: string
  readonly cluster: string
  readonly sshProxyAddr?: string
  readonly mysqlProxyAddr?: string
  /** ECDSA P-256 PKCS#8 PEM. */
  readonly tlsPrivateKeyPem: string
  /** X.509 user certificate, PEM. */
  readonly tlsCert: string
  /** Ed25519 private key in OpenSSH format. */
  readonly sshPrivateKey: string
  /** `ssh-ed25519 AAAA...` */
  readonly sshPublicKey: string
  /** `ssh-ed25519-cert-v01@openssh.com AAAA...` */
  readonly sshCert: string
  /** PEM CA certificates to trust for the cluster (host CA). */
  readonly caCerts: ReadonlyArray<string>
  /** `@cert-authority` lines. */
  readonly knownHosts: ReadonlyArray<string>
}

/** A profile as read back from disk, with its keys and certificates. */
export interface LoadedProfile {
  /** The profile name (proxy host). */
  readonly name: string
  readonly file: ProfileFile
  readonly paths: ProfilePaths
  readonly current: boolean
  readonly tlsPrivateKeyPem: string
  readonly tlsCert: string
  readonly sshPrivateKey: string
  readonly sshPublicKey: string
  readonly sshCert: string
  /** The contents of certs.pem ("" when absent). */
  readonly caCerts: string
}

// ---------------------------------------------------------------------------------------------
// Files

const io = <A>(message: string, f: () => A): Effect.Effect<A, TshProfileError> =>
  Effect.try({
    try: f,
    catch: (cause) =>
      cause instanceof TshProfileError
        ? cause
        : new TshProfileError({ reason: "Io", message: `${message}: ${(cause as Error).message}`, cause })
  })

const mkdirPrivate = (dir: string) => {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  fs.chmodSync(dir, 0o700)
}

/** Writes through a temp file in the same directory and renames it over `file`: readers never see half a file. */
export const writeFileAtomic = (file: string, data: string, mode = 0o600): void => {
  // creates missing parents 0700, never changes the mode of a directory that exists
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 })
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`)
  try {
    const fd = fs.openSync(tmp, "wx", mode)
    try {
      fs.writeFileSync(fd, data)
      fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
    fs.chmodSync(tmp, mode)
    fs.renameSync(tmp, file)
  } catch (e) {
    fs.rmSync(tmp, { force: true })
    throw e
  }
}

const readIfExists = (file: string): string | undefined => {
  try {
    return fs.readFileSync(file, "utf8")
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined
    throw e
  }
}

const withNewline = (s: string) => (s.endsWith("\n") ? s : `${s}\n`)

const readProfileFile = (file: string): ProfileFile | undefined => {
  const text = readIfExists(file)
  if (text === undefined) return undefined
  const v: unknown = YAML.parse(text)
  const o = (typeof v === "object" && v !== null ? v : {}) as Record<string, unknown>
  if (typeof o["web_proxy_addr"] !== "string" || typeof o["user"] !== "string" || typeof o["cluster"] !== "string") {
    throw new TshProfileError({ reason: "BadProfile", message: `${file}: needs web_proxy_addr, user and cluster` })
  }
  return {
    web_proxy_addr: o["web_proxy_addr"],
    user: o["user"],
    cluster: o["cluster"],
    ...(typeof o["ssh_proxy_addr"] === "string" ? { ssh_proxy_addr: o["ssh_proxy_addr"] } : {}),
    ...(typeof o["mysql_proxy_addr"] === "string" ? { mysql_proxy_addr: o["mysql_proxy_addr"] } : {}),
    ...(typeof o["tls_routing_enabled"] === "boolean" ? { tls_routing_enabled: o["tls_routing_enabled"] } : {})
  }
}

const currentName = (root: string): string | undefined => {
  const s = readIfExists(path.join(root, "current-profile"))?.trim()
  return s === undefined || s === "" ? undefined : s
}

/** `@cert-authority` lines: a line's host patterns, without `*.`, brackets and ports. */
const knownHostNames = (line: string): ReadonlyArray<string> => {
  const fields = line.trim().split(/\s+/)
  const patterns = fields[0] === "@cert-authority" || fields[0] === "@revoked" ? fields[1] : fields[0]
  return (patterns ?? "")
    .split(",")
    .map((p) => p.replace(/^\*\./, "").replace(/^\[([^\]]+)\](?::\d+)?$/, "$1"))
    .filter((p) => p !== "")
}

// ---------------------------------------------------------------------------------------------
// Operations

/** Writes a login's keys, certificates and profile, and makes it the current profile. */
export const saveLogin = (root: string, m: LoginMaterial): Effect.Effect<ProfilePaths, TshProfileError> =>
  io("cannot save the login", () => {
    const addr = parseProxyAddr(m.proxy)
    if (addr === undefined) throw new TshProfileError({ reason: "BadProfile", message: `bad proxy address ${m.proxy}` })
    const name = addr.host
    const p = profilePaths(root, name, m.user, m.cluster)
    mkdirPrivate(root)
    mkdirPrivate(p.keyDir)
    mkdirPrivate(p.sshCertDir)
    // Keys before certificates, certificates before the profile: a crash in between leaves a
    // profile that is not there yet, never a profile that points at missing keys.
    writeFileAtomic(p.tlsKey, withNewline(m.tlsPrivateKeyPem))
    writeFileAtomic(p.sshKey, withNewline(m.sshPrivateKey))
    writeFileAtomic(p.sshPub, withNewline(m.sshPublicKey))
    writeFileAtomic(p.tlsCert, withNewline(m.tlsCert))
    writeFileAtomic(p.sshCert, withNewline(m.sshCert))
    writeFileAtomic(p.caCerts, m.caCerts.map(withNewline).join(""))
    const known = (readIfExists(p.knownHosts) ?? "").split("\n").filter((l) => l.trim() !== "")
    const add = m.knownHosts.map((l) => l.trim()).filter((l) => l !== "" && !known.includes(l))
    writeFileAtomic(p.knownHosts, [...known, ...add].map(withNewline).join(""))
    const file: ProfileFile = {
      web_proxy_addr: hostPort(addr.host, addr.port),
      ...(m.sshProxyAddr !== undefined ? { ssh_proxy_addr: m.sshProxyAddr } : {}),
      ...(m.mysqlProxyAddr !== undefined ? { mysql_proxy_addr: m.mysqlProxyAddr } : {}),
      user: m.user,
      cluster: m.cluster,
      tls_routing_enabled: true
    }
    writeFileAtomic(p.profile, YAML.stringify(file))
    writeFileAtomic(p.current, `${name}\n`)
    return p
  })

/** The name of the current profile, if any. */
export const currentProfile = (root: string): Effect.Effect<Option.Option<string>, TshProfileError> =>
  io("cannot read current-profile", () => Option.fromNullable(currentName(root)))

/** Makes `proxy` (a host name or address) the current profile. */
export const setCurrentProfile = (root: string, proxy: string): Effect.Effect<void, TshProfileError> =>
  io("cannot write current-profile", () => writeFileAtomic(path.join(root, "current-profile"), `${profileName(proxy)}\n`))

/** The names of every profile (`<proxy>.yaml`), sorted. */
export const listProfiles = (root: string): Effect.Effect<ReadonlyArray<string>, TshProfileError> =>
  io("cannot list profiles", () => {
    let entries: Array<string>
    try {
      entries = fs.readdirSync(root)
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return []
      throw e
    }
    return entries.filter((e) => e.endsWith(".yaml")).map((e) => e.slice(0, -".yaml".length)).sort()
  })

const notLoggedIn = (message = "Not logged in.") => new TshProfileError({ reason: "NotLoggedIn", message })

/**
 * Reads a profile and its keys: the one named (`proxy` as a host or `HOST:PORT`), else the
 * current one. Fails with reason NotLoggedIn when there is none or its keys are gone.
 */
export const loadProfile = (root: string, proxy?: string): Effect.Effect<LoadedProfile, TshProfileError> =>
  io("cannot read the profile", () => {
    const cur = currentName(root)
    const name = proxy !== undefined ? profileName(proxy) : cur
    if (name === undefined) throw notLoggedIn()
    const file = readProfileFile(path.join(root, `${name}.yaml`))
    if (file === undefined) throw notLoggedIn(proxy === undefined ? "Not logged in." : `Not logged in to ${name}.`)
    const p = profilePaths(root, name, file.user, file.cluster)
    const tlsPrivateKeyPem = readIfExists(p.tlsKey)
    const tlsCert = readIfExists(p.tlsCert)
    const sshPrivateKey = readIfExists(p.sshKey)
    const sshCert = readIfExists(p.sshCert)
    if (tlsPrivateKeyPem === undefined || tlsCert === undefined || sshPrivateKey === undefined || sshCert === undefined) {
      throw notLoggedIn()
    }
    return {
      name,
      file,
      paths: p,
      current: name === cur,
      tlsPrivateKeyPem,
      tlsCert,
      sshPrivateKey,
      sshPublicKey: (readIfExists(p.sshPub) ?? "").trim(),
      sshCert: sshCert.trim(),
      caCerts: readIfExists(p.caCerts) ?? ""
    }
  })

/** The trusted CA certificates (certs.pem) kept for a proxy, if a login left them. */
export const trustedCaCerts = (root: string, proxy: string): Effect.Effect<Option.Option<string>, TshProfileError> =>
  io("cannot read certs.pem", () =>
    Option.fromNullable(readIfExists(path.join(root, "keys", profileName(proxy), "certs.pem"))).pipe(
      Option.filter((s) => s.includes("-----BEGIN CERTIFICATE-----"))
    )
  )

export interface RemoveOptions {
  /** The PostgreSQL service file to clean (default: `$PGSERVICEFILE`, else `~/.pg_service.conf`). */
  readonly pgServiceFile?: string
}

/**
 * Logs out of one profile (the current one when `proxy` is omitted): deletes its whole key
 * directory (keys, certificates, certs.pem, database certificates), its `<proxy>.yaml`, its
 * known_hosts lines (unless another profile names the same hosts, like `ssh-keygen -R`), and
 * current-profile when it pointed there, and the `tsh db login` sections of the PostgreSQL service
 * file and groups of ~/.my.cnf. Returns the profile removed, if there was one.
 */
export const removeLogin = (
  root: string,
  proxy?: string,
  opts: RemoveOptions = {}
): Effect.Effect<Option.Option<{ readonly name: string; readonly user: string }>, TshProfileError> =>
  io("cannot remove the login", () => {
    const cur = currentName(root)
    const name = proxy !== undefined ? profileName(proxy) : cur
    if (name === undefined) return Option.none()
    const profileFile = path.join(root, `${name}.yaml`)
    let file: ProfileFile | undefined
    try {
      file = readProfileFile(profileFile)
    } catch {
      file = undefined
    }
    const keyDir = path.join(root, "keys", name)
    const existed = file !== undefined || fs.existsSync(keyDir)
    fs.rmSync(keyDir, { recursive: true, force: true })
    fs.rmSync(profileFile, { force: true })
    // The service file sections that point at this profile's database certificates go with them,
    // found by their sslcert path, so a section whose files were already gone goes too.
    const pgFile = opts.pgServiceFile ?? PgService.defaultPath()
    const ours = path.resolve(keyDir) + path.sep
    PgService.removeSections(pgFile, (sec) => path.resolve(sec.entries["sslcert"] ?? "/").startsWith(ours))
    MyCnf.removeGroups(MyCnf.defaultPath(), (g) => path.resolve(g.entries["ssl-cert"] ?? "/").startsWith(ours))

    const knownHosts = path.join(root, "known_hosts")
    const known = readIfExists(knownHosts)
    if (known !== undefined) {
      const others = new Set<string>()
      for (const e of fs.readdirSync(root)) {
        if (!e.endsWith(".yaml")) continue
        others.add(e.slice(0, -".yaml".length))
        try {
          const o = readProfileFile(path.join(root, e))
          if (o !== undefined) others.add(o.cluster)
        } catch {
          // a damaged profile keeps nothing
        }
      }
      const gone = new Set([name, ...(file === undefined ? [] : [file.cluster])].filter((h) => !others.has(h)))
      const lines = known.split("\n").filter((l) => l.trim() !== "")
      const keep = lines.filter((l) => !knownHostNames(l).some((h) => gone.has(h)))
      if (keep.length === 0) fs.rmSync(knownHosts, { force: true })
      else if (keep.length !== lines.length) writeFileAtomic(knownHosts, keep.map(withNewline).join(""))
    }
    if (cur === name) fs.rmSync(path.join(root, "current-profile"), { force: true })
    // `keys/` itself goes when it is empty, so a full logout leaves no key directory behind.
    try {
      fs.rmdirSync(path.join(root, "keys"))
    } catch {
      // not empty, or not there
    }
    return existed ? Option.some({ name, user: file?.user ?? "" }) : Option.none()
  })

/** Logs out of every profile. Returns the profiles removed. */
export const removeAllLogins = (
  root: string,
  opts: RemoveOptions = {}
): Effect.Effect<ReadonlyArray<{ readonly name: string; readonly user: string }>, TshProfileError> =>
  Effect.gen(function* () {
    const names = new Set(yield* listProfiles(root))
    const keysDir = path.join(root, "keys")
    for (const d of yield* io("cannot list keys", () => (fs.existsSync(keysDir) ? fs.readdirSync(keysDir) : []))) names.add(d)
    const removed: Array<{ name: string; user: string }> = []
    for (const n of names) {
      const r = yield* removeLogin(root, n, opts)
      if (Option.isSome(r)) removed.push(r.value)
    }
    yield* io("cannot remove current-profile", () => fs.rmSync(path.join(root, "current-profile"), { force: true }))
    return removed
  })

// ---------------------------------------------------------------------------------------------
// Database logins (`tsh db login`)

/** What `<db>.json` remembers of a database login. */
export interface DbLoginInfo {
  readonly service_name: string
  readonly protocol: string
  readonly db_user: string
  readonly db_name?: string
  /** RFC 3339 expiry of the certificate. */
  readonly expires: string
}

/** The files of one database login. */
export const dbLoginPaths = (profile: Pick<LoadedProfile, "paths">, cluster: string, db: string) => {
  const dir = path.join(profile.paths.dbDir, cluster)
  return {
    dir,
    cert: path.join(dir, `${db}.crt`),
    key: path.join(dir, `${db}.key`),
    ca: path.join(dir, `${db}-ca.pem`),
    info: path.join(dir, `${db}.json`)
  }
}
export type DbLoginPaths = ReturnType<typeof dbLoginPaths>

export interface DbLogin {
  readonly cluster: string
  readonly info: DbLoginInfo
  readonly paths: DbLoginPaths
}

export interface DbLoginMaterial {
  readonly cluster: string
  readonly info: DbLoginInfo
  /** PKCS#8 PEM of the database key. */
  readonly privateKeyPem: string
  /** PEM certificate with the database route. */
  readonly cert: string
  /** PEM CA certificates to verify the proxy with. */
  readonly caCerts: ReadonlyArray<string>
}

/** Names that become file names: no separators, no dot files, nothing empty. */
export const isSafeName = (name: string): boolean => name !== "" && !name.startsWith(".") && !/[/\\\0]/.test(name)

const badName = (what: string, name: string) => new TshProfileError({ reason: "BadProfile", message: `bad ${what} name "${name}"` })

/** Writes a database login: key (0600) before certificate, certificate before the info file. */
export const saveDbLogin = (profile: Pick<LoadedProfile, "paths">, m: DbLoginMaterial): Effect.Effect<DbLoginPaths, TshProfileError> =>
  io("cannot save the database login", () => {
    if (!isSafeName(m.cluster)) throw badName("cluster", m.cluster)
    if (!isSafeName(m.info.service_name)) throw badName("database", m.info.service_name)
    const p = dbLoginPaths(profile, m.cluster, m.info.service_name)
    mkdirPrivate(profile.paths.dbDir)
    mkdirPrivate(p.dir)
    writeFileAtomic(p.key, withNewline(m.privateKeyPem))
    writeFileAtomic(p.cert, withNewline(m.cert))
    writeFileAtomic(p.ca, m.caCerts.map(withNewline).join(""))
    writeFileAtomic(p.info, `${JSON.stringify(m.info, null, 2)}\n`)
    return p
  })

const readDbInfo = (p: DbLoginPaths, db: string): DbLoginInfo | undefined => {
  const text = readIfExists(p.info)
  if (text !== undefined) {
    try {
      const o = JSON.parse(text) as Record<string, unknown>
      if (typeof o["db_user"] === "string" && typeof o["protocol"] === "string" && typeof o["expires"] === "string") {
        return {
          service_name: db,
          protocol: o["protocol"],
          db_user: o["db_user"],
          ...(typeof o["db_name"] === "string" && o["db_name"] !== "" ? { db_name: o["db_name"] } : {}),
          expires: o["expires"]
        }
      }
    } catch {
      // a damaged info file: the certificate itself says the same
    }
  }
  const cert = readIfExists(p.cert)
  if (cert === undefined) return undefined
  const id = parseCertIdentity(cert)
  if (Either.isLeft(id) || id.right.routeToDatabase === undefined) return undefined
  const r = id.right.routeToDatabase
  return {
    service_name: db,
    protocol: r.protocol,
    db_user: r.username,
    ...(r.database !== "" ? { db_name: r.database } : {}),
    expires: id.right.expires.toISOString()
  }
}

/** The database logins of a profile's cluster (those with both a certificate and a key), sorted by name. */
export const listDbLogins = (profile: Pick<LoadedProfile, "paths" | "file">): Effect.Effect<ReadonlyArray<DbLogin>, TshProfileError> =>
  io("cannot list database logins", () => {
    const cluster = profile.file.cluster
    const dir = path.join(profile.paths.dbDir, cluster)
    let entries: Array<string>
    try {
      entries = fs.readdirSync(dir)
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return []
      throw e
    }
    const out: Array<DbLogin> = []
    for (const db of entries.filter((e) => e.endsWith(".crt")).map((e) => e.slice(0, -".crt".length)).sort()) {
      const p = dbLoginPaths(profile, cluster, db)
      if (!fs.existsSync(p.key)) continue
      const info = readDbInfo(p, db)
      if (info !== undefined) out.push({ cluster, info, paths: p })
    }
    return out
  })

/** Deletes one database login's files; true when there was something to delete. */
export const removeDbLogin = (profile: Pick<LoadedProfile, "paths">, cluster: string, db: string): Effect.Effect<boolean, TshProfileError> =>
  io("cannot remove the database login", () => {
    if (!isSafeName(cluster) || !isSafeName(db)) return false
    const p = dbLoginPaths(profile, cluster, db)
    let existed = false
    for (const f of [p.cert, p.key, p.ca, p.info]) {
      if (fs.existsSync(f)) existed = true
      fs.rmSync(f, { force: true })
    }
    for (const d of [p.dir, profile.paths.dbDir]) {
      try {
        fs.rmdirSync(d)
      } catch {
        // not empty, or not there
      }
    }
    return existed
  })
