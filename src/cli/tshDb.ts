/**
 * `tsh db ...` and `tsh proxy db --tunnel`: database access from the user's side, for PostgreSQL.
 *
 * `tsh db login` asks the proxy (mTLS with the `tsh login` certificate) for a certificate whose
 * subject carries the database route, keeps it beside the user's keys and writes a
 * `[<cluster>-<db>]` section to the PostgreSQL service file, so that `psql "service=<cluster>-<db>"`
 * reaches the database through the proxy's web port: the proxy answers psql's SSLRequest with `S`
 * and routes the TLS connection by the certificate's route.
 */
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import { constants } from "node:os"
import * as tls from "node:tls"
import { Args, Command, Options } from "@effect/cli"
import { Console, Data, Effect, Option } from "effect"
import * as MyCnf from "../adapters/MyCnf.ts"
import * as PgService from "../adapters/PgServiceFile.ts"
import * as Profiles from "../adapters/TshProfile.ts"
import * as WebApi from "../adapters/WebApiClient.ts"
import { generateEcdsaKeyPair } from "../adapters/x509.ts"
import type { DatabaseInfo } from "../domain/WebApi.ts"
import { redisCliCommand, runRedisCli } from "./tshDbRedis.ts"

export class TshDbError extends Data.TaggedError("TshDbError")<{ readonly message: string }> {}

const fail = (message: string) => new TshDbError({ message })
const withMessage = (e: { readonly message: string }) => fail(e.message)

// ---------------------------------------------------------------------------------------------
// The logged-in profile and its database logins

/** Where things are: the tsh home and the service file, read from the environment once. */
const places = Effect.sync(() => ({ home: Profiles.tshHome(), pgServiceFile: PgService.defaultPath() }))

const currentProfile = Effect.flatMap(places, ({ home }) => Effect.mapError(Profiles.loadProfile(home), withMessage))

/** The user's certificate, for mTLS to the proxy, which is verified with the profile's certs.pem. */
const clientCert = (p: Profiles.LoadedProfile): WebApi.ClientCertOptions => ({
  tlsCert: p.tlsCert,
  key: p.tlsPrivateKeyPem,
  ...(p.caCerts.includes("-----BEGIN CERTIFICATE-----") ? { caCerts: p.caCerts } : {})
})

/** MySQL clients reach the proxy's MySQL listener (`mysql_proxy_addr`), not the web port. */
const mysqlProxyOf = (p: Profiles.LoadedProfile) => {
  const a = p.file.mysql_proxy_addr === undefined ? undefined : Profiles.parseProxyAddr(p.file.mysql_proxy_addr)
  return a === undefined ? Effect.fail(fail(`the proxy announced no MySQL listener (mysql_public_addr); log in again with tsh login, or ask an admin to set proxy_service.mysql_listen_addr`)) : Effect.succeed(a)
}

/** Where a login's client connects: the MySQL listener for MySQL, the web port otherwise. */
const addrOf = (p: Profiles.LoadedProfile, l: { readonly info: { readonly protocol: string } }) => (l.info.protocol === "mysql" ? mysqlProxyOf(p) : proxyOf(p))

const proxyOf = (p: Profiles.LoadedProfile) => {
  const a = Profiles.parseProxyAddr(p.file.web_proxy_addr)
  return a === undefined ? Effect.fail(fail(`bad web_proxy_addr "${p.file.web_proxy_addr}" in profile ${p.name}`)) : Effect.succeed(a)
}

/** The libpq service name of a database login. */
export const serviceName = (cluster: string, db: string) => `${cluster}-${db}`

const PROTOCOL_NAMES: Readonly<Record<string, string>> = { postgres: "PostgreSQL", mysql: "MySQL", mongodb: "MongoDB", redis: "Redis", sqlserver: "SQL Server" }

interface Connection {
  readonly host: string
  readonly port: number
  readonly user: string
  readonly database: string | undefined
  readonly ca: string
  readonly cert: string
  readonly key: string
}

const connectionOf = (addr: { readonly host: string; readonly port: number }, l: Profiles.DbLogin): Connection => ({
  host: addr.host,
  port: addr.port,
  user: l.info.db_user,
  database: l.info.db_name,
  ca: l.paths.ca,
  cert: l.paths.cert,
  key: l.paths.key
})

const serviceEntries = (c: Connection): PgService.Entries => [
  ["host", c.host],
  ["port", String(c.port)],
  ["sslmode", "verify-full"],
  ["sslrootcert", c.ca],
  ["sslcert", c.cert],
  ["sslkey", c.key],
  ["user", c.user],
  ...(c.database !== undefined ? ([["dbname", c.database]] as const) : [])
]

const dbLogins = (p: Profiles.LoadedProfile) => Effect.mapError(Profiles.listDbLogins(p), withMessage)

/** The database login NAME names, or the only one there is. */
const activeLogin = (p: Profiles.LoadedProfile, name: Option.Option<string>) =>
  Effect.gen(function* () {
    const logins = yield* dbLogins(p)
    if (Option.isSome(name)) {
      const l = logins.find((x) => x.info.service_name === name.value)
      if (l === undefined) return yield* fail(`Not logged in to database "${name.value}". Run "tsh db login ${name.value}" first.`)
      return l
    }
    if (logins.length === 0) return yield* fail(`Not logged in to any database. Run "tsh db login NAME" first.`)
    if (logins.length > 1) {
      return yield* fail(`Logged in to several databases (${logins.map((l) => l.info.service_name).join(", ")}); name one.`)
    }
    return logins[0]!
  })

/** Asks the proxy for a database certificate and stores it, with its service file section. */
const loginToDb = (p: Profiles.LoadedProfile, name: string, dbUser: Option.Option<string>, dbName: Option.Option<string>) =>
  Effect.gen(function* () {
    const { pgServiceFile } = yield* places
    if (!Profiles.isSafeName(name)) return yield* fail(`bad database name "${name}"`)
    const listed = yield* Effect.mapError(WebApi.databases(p.file.web_proxy_addr, clientCert(p)), withMessage)
    const db = listed.databases.find((d) => d.name === name)
    if (db === undefined) return yield* fail(`database "${name}" not found, use "tsh db ls" to see the databases you can reach`)
    if (db.protocol !== "postgres" && db.protocol !== "redis" && db.protocol !== "mysql") {
      return yield* fail(`database "${name}" speaks ${PROTOCOL_NAMES[db.protocol] ?? db.protocol}; tsh db supports PostgreSQL, MySQL and Redis for now`)
    }
    // Before anything is asked or saved: a MySQL login is useless without the proxy's MySQL listener.
    const mysqlAddr = db.protocol === "mysql" ? yield* mysqlProxyOf(p) : undefined
    const named = db.allowed_users.filter((u) => u !== "*")
    const user = Option.isSome(dbUser)
      ? dbUser.value
      : named.length === 1 && !db.allowed_users.includes("*")
        ? named[0]!
        : yield* fail(
            `please give the database user with --db-user (allowed here: ${db.allowed_users.length === 0 ? "none" : db.allowed_users.join(", ")})`
          )
    const keys = yield* Effect.mapError(generateEcdsaKeyPair(), withMessage)
    const res = yield* Effect.mapError(
      WebApi.dbCerts(
        p.file.web_proxy_addr,
        { service_name: name, db_user: user, ...(Option.isSome(dbName) ? { db_name: dbName.value } : {}), tls_pub_key: keys.publicKeyPem },
        clientCert(p)
      ),
      withMessage
    )
    const info: Profiles.DbLoginInfo = {
      service_name: name,
      protocol: res.protocol,
      db_user: user,
      ...(Option.isSome(dbName) ? { db_name: dbName.value } : {}),
      expires: res.expires
    }
    const paths = yield* Effect.mapError(
      Profiles.saveDbLogin(p, { cluster: p.file.cluster, info, privateKeyPem: keys.privateKeyPem, cert: res.tls_cert, caCerts: res.tls_ca_certs }),
      withMessage
    )
    const login: Profiles.DbLogin = { cluster: p.file.cluster, info, paths }
    const addr = yield* proxyOf(p)
    if (db.protocol === "redis") return login
    if (db.protocol === "mysql") {
      const file = MyCnf.defaultPath()
      const c = connectionOf(mysqlAddr ?? (yield* mysqlProxyOf(p)), login)
      yield* Effect.try({ try: () => MyCnf.writeGroup(file, p.file.cluster, name, c), catch: (e) => fail(`cannot write ${file}: ${(e as Error).message}`) })
      return login
    }
    yield* Effect.try({
      try: () => PgService.writeSection(pgServiceFile, serviceName(p.file.cluster, name), serviceEntries(connectionOf(addr, login))),
      catch: (e) => fail(`cannot write ${pgServiceFile}: ${(e as Error).message}`)
    })
    return login
  })

/** A login to NAME that is good for at least another minute and matches the asked user and name; else a new one. */
const ensureLogin = (p: Profiles.LoadedProfile, name: string, dbUser: Option.Option<string>, dbName: Option.Option<string>) =>
  Effect.gen(function* () {
    const have = (yield* dbLogins(p)).find((l) => l.info.service_name === name)
    if (
      have !== undefined &&
      new Date(have.info.expires).getTime() > Date.now() + 60_000 &&
      (Option.isNone(dbUser) || dbUser.value === have.info.db_user) &&
      (Option.isNone(dbName) || dbName.value === have.info.db_name)
    ) {
      return have
    }
    return yield* loginToDb(
      p,
      name,
      Option.orElse(dbUser, () => Option.fromNullable(have?.info.db_user)),
      Option.orElse(dbName, () => Option.fromNullable(have?.info.db_name))
    )
  })

// ---------------------------------------------------------------------------------------------
// Formatting

/** Teleport's asciitable: columns padded to their widest cell, a dash rule under the headers. */
const table = (headers: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: ReadonlyArray<string>) => cells.map((c, i) => c.padEnd(widths[i]!)).join(" ").trimEnd()
  return [line(headers), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n")
}

/** Go's `%v` of a string slice, wildcard first, as Teleport's formatUsersForDB prints it. */
const formatUsers = (users: ReadonlyArray<string>) =>
  users.length === 0 ? "(none)" : `[${[...users.filter((u) => u === "*"), ...users.filter((u) => u !== "*")].join(" ")}]`

const formatLabels = (labels: Readonly<Record<string, string>>) =>
  Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]}`)
    .join(",")

/** Teleport's formatActiveDB: `> pg (user: alice, db: app)`. */
const formatActive = (l: Profiles.DbLogin) =>
  l.info.db_name !== undefined
    ? `> ${l.info.service_name} (user: ${l.info.db_user}, db: ${l.info.db_name})`
    : `> ${l.info.service_name} (user: ${l.info.db_user})`

const dbRows = (dbs: ReadonlyArray<DatabaseInfo>, active: ReadonlyArray<Profiles.DbLogin>) =>
  [...dbs]
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((d) => {
      const l = active.find((a) => a.info.service_name === d.name)
      return [
        l === undefined ? d.name : formatActive(l),
        d.description,
        formatUsers(d.allowed_users),
        formatLabels(d.labels),
        l === undefined ? "" : `tsh db connect ${d.name}`
      ]
    })

/** Quotes for a POSIX shell only when needed. */
const shellQuote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`)

/** One libpq conninfo value: quoted when empty or when it holds a space, a quote or a backslash. */
const conninfoValue = (v: string) => (v !== "" && !/[\s'\\]/.test(v) ? v : `'${v.replace(/[\\']/g, (c) => `\\${c}`)}'`)

const conninfo = (c: Connection) =>
  serviceEntries(c)
    .map(([k, v]) => `${k}=${conninfoValue(v)}`)
    .join(" ")

const psqlCommand = (c: Connection) => `psql ${shellQuote(conninfo(c))}`

const envLines = (c: Connection) =>
  [
    ["PGHOST", c.host],
    ["PGPORT", String(c.port)],
    ["PGSSLMODE", "verify-full"],
    ["PGSSLROOTCERT", c.ca],
    ["PGSSLCERT", c.cert],
    ["PGSSLKEY", c.key],
    ["PGUSER", c.user],
    ...(c.database !== undefined ? [["PGDATABASE", c.database]] : [])
  ]
    .map(([k, v]) => `export ${k}=${shellQuote(v!)}`)
    .join("\n")

// ---------------------------------------------------------------------------------------------
// Commands

const dbArg = Args.text({ name: "db" }).pipe(Args.withDescription("database name, as `tsh db ls` shows it"))
const optionalDbArg = dbArg.pipe(Args.optional)
const dbUserOpt = Options.text("db-user").pipe(Options.withDescription("database user to connect as"), Options.optional)
const dbNameOpt = Options.text("db-name").pipe(Options.withDescription("database (schema) name to connect to"), Options.optional)

const ls = Command.make(
  "ls",
  { format: Options.choice("format", ["text", "json"]).pipe(Options.withDescription("output format: text, json"), Options.withDefault("text" as const)) },
  (o) =>
    Effect.gen(function* () {
      const p = yield* currentProfile
      const res = yield* Effect.mapError(WebApi.databases(p.file.web_proxy_addr, clientCert(p)), withMessage)
      if (o.format === "json") return yield* Console.log(JSON.stringify(res.databases, null, 2))
      const active = yield* dbLogins(p)
      yield* Console.log(table(["Name", "Description", "Allowed Users", "Labels", "Connect"], dbRows(res.databases, active)))
    })
).pipe(Command.withDescription("List the databases you can see."))

const login = Command.make("login", { dbUser: dbUserOpt, dbName: dbNameOpt, db: dbArg }, (o) =>
  Effect.gen(function* () {
    const p = yield* currentProfile
    yield* loginToDb(p, o.db, o.dbUser, o.dbName)
    yield* Console.log(
      [
        `Connection information for database "${o.db}" has been saved.`,
        "",
        "You can now connect to it using the following command:",
        "",
        `  $ tsh db connect ${o.db}`,
        "",
        "Or view the connect command for the native database CLI client:",
        "",
        `  $ tsh db config --format=cmd ${o.db}`,
        ""
      ].join("\n")
    )
  })
).pipe(Command.withDescription("Get a certificate for a database and write its psql service (~/.pg_service.conf)."))

const logout = Command.make("logout", { db: optionalDbArg }, (o) =>
  Effect.gen(function* () {
    const { pgServiceFile } = yield* places
    const p = yield* currentProfile
    const logins = yield* dbLogins(p)
    const name = Option.getOrUndefined(o.db)
    const gone = name !== undefined ? logins.filter((l) => l.info.service_name === name) : logins
    if (name !== undefined && gone.length === 0) return yield* fail(`Not logged in to database "${name}".`)
    for (const l of gone) {
      yield* Effect.mapError(Profiles.removeDbLogin(p, l.cluster, l.info.service_name), withMessage)
      const section = serviceName(l.cluster, l.info.service_name)
      yield* Effect.try({
        try: () => PgService.removeSections(pgServiceFile, (s) => s.name === section),
        catch: (e) => fail(`cannot update ${pgServiceFile}: ${(e as Error).message}`)
      })
      yield* Effect.try({
        try: () => MyCnf.removeGroup(MyCnf.defaultPath(), l.cluster, l.info.service_name),
        catch: (e) => fail(`cannot update ${MyCnf.defaultPath()}: ${(e as Error).message}`)
      })
      yield* Console.log(`Logged out of database ${l.info.service_name}`)
    }
    if (gone.length === 0) yield* Console.log("Not logged in to any database.")
  })
).pipe(Command.withDescription("Delete database certificates and their psql service sections (all of them without a name)."))

const env = Command.make("env", { db: optionalDbArg }, (o) =>
  Effect.gen(function* () {
    const p = yield* currentProfile
    const l = yield* activeLogin(p, o.db)
    if (l.info.protocol === "mysql") return yield* Console.log(MyCnf.envLines(connectionOf(yield* mysqlProxyOf(p), l), l.cluster, l.info.service_name))
    yield* Console.log(envLines(connectionOf(yield* proxyOf(p), l)))
  })
).pipe(Command.withDescription("Print the PG* environment variables of a database login (eval $(tsh db env))."))

const config = Command.make(
  "config",
  {
    format: Options.choice("format", ["text", "cmd", "json"]).pipe(Options.withDescription("output format: text, cmd, json"), Options.withDefault("text" as const)),
    db: optionalDbArg
  },
  (o) =>
    Effect.gen(function* () {
      const p = yield* currentProfile
      const l = yield* activeLogin(p, o.db)
      const c = connectionOf(yield* addrOf(p, l), l)
      const redis = l.info.protocol === "redis"
      const mysql = l.info.protocol === "mysql"
      if (o.format === "cmd") return yield* Console.log(redis ? redisCliCommand(c) : mysql ? MyCnf.commandLine(c) : psqlCommand(c))
      if (o.format === "json") {
        return yield* Console.log(
          JSON.stringify(
            { name: l.info.service_name, host: c.host, port: c.port, ca: c.ca, cert: c.cert, key: c.key, user: c.user, database: c.database ?? "", service: serviceName(l.cluster, l.info.service_name) },
            null,
            2
          )
        )
      }
      const label = (s: string) => `${s}:`.padEnd(11)
      yield* Console.log(
        [
          `${label("Name")}${l.info.service_name}`,
          `${label("Host")}${c.host}`,
          `${label("Port")}${c.port}`,
          `${label("User")}${c.user}`,
          `${label("Database")}${c.database ?? ""}`,
          `${label("CA")}${c.ca}`,
          `${label("Cert")}${c.cert}`,
          `${label("Key")}${c.key}`,
          "",
          ...(redis
            ? ["Connect with redis-cli:", `  $ ${redisCliCommand(c)}`]
            : mysql
              ? ["Connect with mysql:", `  $ ${MyCnf.commandLine(c)}`, `  $ mysql --defaults-group-suffix=${MyCnf.groupSuffix(l.cluster, l.info.service_name)}`]
              : ["Connect with psql:", `  $ ${psqlCommand(c)}`, `  $ psql "service=${serviceName(l.cluster, l.info.service_name)}"`])
        ].join("\n")
      )
    })
).pipe(Command.withDescription("Print how to connect to a database: host, port, certificates and a psql command line."))

/**
 * Runs psql with the terminal. While it runs, Ctrl-C belongs to psql (it cancels the query), so
 * tsh's own SIGINT/SIGTERM handlers step aside and come back when psql exits.
 */
const runPsql = (args: ReadonlyArray<string>, pgServiceFile: string) =>
  Effect.async<number, TshDbError>((resume) => {
    const saved = (["SIGINT", "SIGTERM"] as const).map((sig) => [sig, process.listeners(sig)] as const)
    const ignore = () => {}
    for (const [sig, ls] of saved) {
      for (const l of ls) process.off(sig, l)
      process.on(sig, ignore)
    }
    const restore = () => {
      for (const [sig, ls] of saved) {
        process.off(sig, ignore)
        for (const l of ls) process.on(sig, l)
      }
    }
    const child = spawn("psql", [...args], { stdio: "inherit", env: { ...process.env, PGSERVICEFILE: pgServiceFile } })
    child.on("error", (e: NodeJS.ErrnoException) => {
      restore()
      resume(Effect.fail(fail(e.code === "ENOENT" ? "psql not found in PATH: install the PostgreSQL client" : `cannot run psql: ${e.message}`)))
    })
    child.on("exit", (code, signal) => {
      restore()
      // a shell's convention for a child killed by a signal
      resume(Effect.succeed(code ?? (signal !== null ? 128 + constants.signals[signal] : 1)))
    })
  })

const connect = Command.make("connect", { dbUser: dbUserOpt, dbName: dbNameOpt, db: dbArg }, (o) =>
  Effect.gen(function* () {
    const { pgServiceFile } = yield* places
    const p = yield* currentProfile
    const l = yield* ensureLogin(p, o.db, o.dbUser, o.dbName)
    if (l.info.protocol === "mysql") {
      const code = yield* Effect.tryPromise({ try: () => MyCnf.runClient(l.cluster, l.info.service_name), catch: (e) => fail((e as Error).message) })
      return yield* Effect.sync(() => {
        process.exitCode = code
      })
    }
    if (l.info.protocol === "redis") {
      const code = yield* Effect.mapError(runRedisCli(connectionOf(yield* proxyOf(p), l)), withMessage)
      return yield* Effect.sync(() => {
        process.exitCode = code
      })
    }
    const code = yield* runPsql([`service=${serviceName(l.cluster, l.info.service_name)}`], pgServiceFile)
    yield* Effect.sync(() => {
      process.exitCode = code
    })
  })
).pipe(Command.withDescription("Run psql against a database (logging in to it first when needed)."))

export const dbCommand = Command.make("db").pipe(
  Command.withDescription("Database access: list, log in, connect."),
  Command.withSubcommands([ls, login, logout, env, config, connect])
)

// ---------------------------------------------------------------------------------------------
// `tsh proxy db --tunnel`: a local plaintext PostgreSQL listener whose connections leave as TLS
// with the database certificate, so a client without certificates (a GUI tool) can connect.

/** SSLRequest / GSSENCRequest: Int32 length 8, Int32 code. The startup itself has version 3.0. */
const SSL_REQUEST_CODE = 80877103
const GSSENC_REQUEST_CODE = 80877104
const sslRequest = () => {
  const b = Buffer.alloc(8)
  b.writeInt32BE(8, 0)
  b.writeInt32BE(SSL_REQUEST_CODE, 4)
  return b
}

/** ErrorResponse: 'E', Int32 length, fields (S severity, V, C SQLSTATE, M message) each NUL-ended, then NUL. */
const errorResponse = (message: string) => {
  const fields = Buffer.concat(
    [["S", "FATAL"], ["V", "FATAL"], ["C", "08006"], ["M", message]].map(([t, v]) => Buffer.concat([Buffer.from(t!, "ascii"), Buffer.from(v!, "utf8"), Buffer.from([0])]))
  )
  const b = Buffer.alloc(5)
  b.write("E", 0, "ascii")
  b.writeInt32BE(4 + fields.length + 1, 1)
  return Buffer.concat([b, fields, Buffer.from([0])])
}

interface TunnelTarget {
  readonly host: string
  readonly port: number
  readonly ca: string
  readonly cert: string
  readonly key: string
}

/**
 * Opens TLS to the proxy the way psql does: SSLRequest, expect `S`, then the handshake with the
 * database certificate, the proxy verified against the host CA (name checked as psql's verify-full).
 */
const dialProxy = (t: TunnelTarget, onReady: (s: tls.TLSSocket) => void, onError: (message: string) => void) => {
  const where = `${t.host.includes(":") ? `[${t.host}]` : t.host}:${t.port}`
  const raw = net.connect({ host: t.host, port: t.port })
  let done = false
  const failOnce = (message: string) => {
    if (done) return
    done = true
    raw.destroy()
    onError(message)
  }
  raw.on("error", (e) => failOnce(`cannot reach proxy ${where}: ${e.message}`))
  raw.on("close", () => failOnce(`proxy ${where} closed the connection`))
  raw.once("connect", () => raw.write(sslRequest()))
  raw.once("data", (b: Buffer) => {
    raw.pause()
    if (b[0] !== 0x53 /* S */ || b.length > 1) return failOnce(`proxy ${where} did not accept TLS for PostgreSQL`)
    raw.removeAllListeners("close")
    raw.removeAllListeners("error")
    const s = tls.connect({ socket: raw, host: t.host, ...(net.isIP(t.host) === 0 ? { servername: t.host } : {}), ca: t.ca, cert: t.cert, key: t.key })
    s.once("secureConnect", () => {
      if (done) return
      done = true
      s.removeAllListeners("error")
      onReady(s)
    })
    s.once("error", (e) => failOnce(`TLS to proxy ${where} failed: ${e.message}`))
  })
}

/** Serves one local client: answers its SSLRequest `N`, keeps its startup, then pipes it through the proxy. */
const tunnelConnection = (client: net.Socket, target: () => TunnelTarget, log: (line: string) => void) => {
  let buf = Buffer.alloc(0)
  client.on("error", () => client.destroy())
  const onData = (chunk: Buffer) => {
    buf = Buffer.concat([buf, chunk])
    while (buf.length >= 8) {
      const len = buf.readInt32BE(0)
      const code = buf.readInt32BE(4)
      if (len === 8 && (code === SSL_REQUEST_CODE || code === GSSENC_REQUEST_CODE)) {
        // this leg is local plaintext; the leg to the proxy is the one with TLS
        client.write("N")
        buf = buf.subarray(8)
        continue
      }
      if (len < 8 || len > 10_000) {
        client.off("data", onData)
        client.end(errorResponse("tsh proxy db: not a PostgreSQL startup message"))
        return
      }
      if (buf.length < len) return
      // the startup (or a CancelRequest): from here on, bytes go to the proxy untouched
      client.off("data", onData)
      client.pause()
      const pending = buf
      dialProxy(
        target(),
        (server) => {
          // the client may have gone while the proxy was dialed
          if (client.destroyed) return void server.destroy()
          server.write(pending)
          server.on("error", () => client.destroy())
          client.on("close", () => server.destroy())
          server.on("close", () => client.destroy())
          client.pipe(server)
          server.pipe(client)
        },
        (message) => {
          log(`ERROR: ${message}`)
          client.end(errorResponse(`tsh proxy db: ${message}`))
        }
      )
      return
    }
  }
  client.on("data", onData)
}

const proxyDb = Command.make(
  "db",
  {
    tunnel: Options.boolean("tunnel").pipe(Options.withDescription("open an authenticated tunnel: local clients need no certificates")),
    port: Options.integer("port").pipe(Options.withAlias("p"), Options.withDescription("local port to listen on (0: any free port)"), Options.withDefault(0)),
    dbUser: dbUserOpt,
    dbName: dbNameOpt,
    db: dbArg
  },
  (o) =>
    Effect.gen(function* () {
      if (!o.tunnel) return yield* fail("only --tunnel is supported: tsh proxy db --tunnel [-p PORT] NAME")
      if (o.port < 0 || o.port > 65535) return yield* fail(`bad port ${o.port}`)
      const p = yield* currentProfile
      const l = yield* ensureLogin(p, o.db, o.dbUser, o.dbName)
      const addr = yield* proxyOf(p)
      const target: TunnelTarget = yield* Effect.try({
        try: () => ({
          host: addr.host,
          port: addr.port,
          ca: fs.readFileSync(l.paths.ca, "utf8"),
          cert: fs.readFileSync(l.paths.cert, "utf8"),
          key: fs.readFileSync(l.paths.key, "utf8")
        }),
        catch: (e) => fail(`cannot read the database certificate: ${(e as Error).message}`)
      })
      const sockets = new Set<net.Socket>()
      const server = yield* Effect.acquireRelease(
        Effect.async<net.Server, TshDbError>((resume) => {
          const s = net.createServer((c) => {
            sockets.add(c)
            c.on("close", () => sockets.delete(c))
            const log = (line: string) => process.stderr.write(`${line}\n`)
            if (l.info.protocol === "mysql") MyCnf.tunnelConnection(c, target, log)
            else tunnelConnection(c, () => target, log)
          })
          s.once("error", (e) => resume(Effect.fail(fail(`cannot listen on 127.0.0.1:${o.port}: ${e.message}`))))
          s.listen(o.port, "127.0.0.1", () => resume(Effect.succeed(s)))
        }),
        (s) =>
          Effect.sync(() => {
            s.close()
            for (const c of sockets) c.destroy()
          })
      )
      const port = (server.address() as net.AddressInfo).port
      if (l.info.protocol === "mysql") {
        const cmd = `mysql --protocol=TCP -h 127.0.0.1 -P ${port} -u ${l.info.db_user}${l.info.db_name !== undefined ? ` ${l.info.db_name}` : ""}`
        yield* Console.log(`Started authenticated tunnel for the MySQL database "${o.db}" in cluster "${l.cluster}" on 127.0.0.1:${port}.\n\nUse the following command to connect to the database or to the address above using other database GUI client:\n  $ ${cmd}\n`)
        return yield* Effect.never
      }
      const url = `postgres://${encodeURIComponent(l.info.db_user)}@127.0.0.1:${port}${l.info.db_name !== undefined ? `/${encodeURIComponent(l.info.db_name)}` : ""}`
      yield* Console.log(
        [
          `Started authenticated tunnel for the PostgreSQL database "${o.db}" in cluster "${l.cluster}" on 127.0.0.1:${port}.`,
          "",
          "Use the following command to connect to the database or to the address above using other database GUI client:",
          `  $ psql "${url}"`,
          ""
        ].join("\n")
      )
      return yield* Effect.never
    }).pipe(Effect.scoped)
).pipe(Command.withDescription("A local PostgreSQL listener on 127.0.0.1 that forwards through the proxy with your database certificate."))

export const proxyCommand = Command.make("proxy").pipe(
  Command.withDescription("Local proxies for clients that cannot present certificates."),
  Command.withSubcommands([proxyDb])
)
