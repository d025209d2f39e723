/**
 * The MySQL client's option file (`~/.my.cnf`), where `tsh db login` keeps one
 * `[client_<cluster>-<db>]` group per MySQL database, so that
 * `mysql --defaults-group-suffix=_<cluster>-<db>` (MySQL's and MariaDB's client alike) connects
 * through the proxy with the database certificate. Also the other ways of handing the same
 * settings to a client: command line, environment, `mysql`/`mariadb` itself.
 *
 * The file format is the one libpq's service file shares (`[group]`, `key=value`, `#`/`;`
 * comments), so the section editing is PgServiceFile's; only our own group is rewritten and every
 * other line stays byte for byte.
 */
import { spawn } from "node:child_process"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as tls from "node:tls"
import { constants } from "node:os"
import { readIfExists, updateFile } from "./internal/optionFile.ts"
import { removeWhere, upsert } from "./PgServiceFile.ts"
import type { Entries } from "./PgServiceFile.ts"

/** `$HOME/.my.cnf`: the per-user option file both clients read. */
export const defaultPath = (env: NodeJS.ProcessEnv = process.env): string => {
  const home = env["HOME"] !== undefined && env["HOME"] !== "" ? env["HOME"] : os.homedir()
  return path.join(home, ".my.cnf")
}

/** The group suffix of a database login: `_<cluster>-<db>`. */
export const groupSuffix = (cluster: string, db: string) => `_${cluster}-${db}`

/** The option group `tsh db login` writes: `client_<cluster>-<db>`. */
export const groupName = (cluster: string, db: string) => `client${groupSuffix(cluster, db)}`

/** Where and as whom a MySQL client connects. */
export interface MysqlConnection {
  readonly host: string
  readonly port: number
  readonly user: string
  readonly database: string | undefined
  readonly ca: string
  readonly cert: string
  readonly key: string
}

/**
 * The group's options. `protocol=TCP` because both clients take `localhost` to mean the Unix
 * socket; `ssl-verify-server-cert` checks the proxy's certificate against the host (MariaDB's
 * client, which Debian installs as `mysql`, reads it; a `loose-ssl-mode` for MySQL 8's client
 * would make MariaDB's print a warning on every run).
 */
export const entries = (c: MysqlConnection): Entries => [
  ["host", c.host],
  ["port", String(c.port)],
  ["protocol", "TCP"],
  ["user", c.user],
  ...(c.database !== undefined ? ([["database", c.database]] as const) : []),
  ["ssl-ca", c.ca],
  ["ssl-cert", c.cert],
  ["ssl-key", c.key],
  ["ssl-verify-server-cert", "1"]
]

/** Writes (or rewrites) the group of a database login. Throws on I/O errors. */
export const writeGroup = (file: string, cluster: string, db: string, c: MysqlConnection): void => {
  updateFile(file, (text) => upsert(text, groupName(cluster, db), entries(c)))
}

/** Removes the groups `drop` selects (`tsh logout`: those whose ssl-cert is in the profile's key directory). */
export const removeGroups = (file: string, drop: (group: { readonly name: string; readonly entries: Readonly<Record<string, string>> }) => boolean): boolean =>
  readIfExists(file) === undefined ? false : updateFile(file, (text) => removeWhere(text, drop))

/** Removes the group of a database login; true when the file changed. Throws on I/O errors. */
export const removeGroup = (file: string, cluster: string, db: string): boolean =>
  readIfExists(file) === undefined ? false : updateFile(file, (text) => removeWhere(text, (s) => s.name === groupName(cluster, db)))

const shellQuote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`)

/** The same settings as command-line options, for `tsh db config --format=cmd`. */
export const commandArgs = (c: MysqlConnection): Array<string> => [
  `--host=${c.host}`,
  `--port=${c.port}`,
  "--protocol=TCP",
  `--user=${c.user}`,
  ...(c.database !== undefined ? [`--database=${c.database}`] : []),
  `--ssl-ca=${c.ca}`,
  `--ssl-cert=${c.cert}`,
  `--ssl-key=${c.key}`,
  "--ssl-verify-server-cert"
]

export const commandLine = (c: MysqlConnection): string => ["mysql", ...commandArgs(c)].map(shellQuote).join(" ")

/**
 * `tsh db env`: the variables both MySQL clients read. There is no password, and the certificates
 * come from the login's option group, which MYSQL_GROUP_SUFFIX selects.
 */
export const envLines = (c: MysqlConnection, cluster: string, db: string): string =>
  [
    ["MYSQL_HOST", c.host],
    ["MYSQL_TCP_PORT", String(c.port)],
    ["MYSQL_GROUP_SUFFIX", groupSuffix(cluster, db)]
  ]
    .map(([k, v]) => `export ${k}=${shellQuote(v!)}`)
    .join("\n")

/**
 * Runs `mysql` (or `mariadb` where only that is installed) with the terminal and the login's
 * option group. Ctrl-C belongs to the client while it runs (it kills the running query).
 */
export const runClient = (cluster: string, db: string, extraArgs: ReadonlyArray<string> = []): Promise<number> =>
  new Promise((resolve, reject) => {
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
    const args = [`--defaults-group-suffix=${groupSuffix(cluster, db)}`, ...extraArgs]
    const start = (bin: string, fallback: string | undefined) => {
      const child = spawn(bin, args, { stdio: "inherit" })
      child.on("error", (e: NodeJS.ErrnoException) => {
        if (e.code === "ENOENT" && fallback !== undefined) return start(fallback, undefined)
        restore()
        reject(new Error(e.code === "ENOENT" ? "neither mysql nor mariadb is in PATH: install a MySQL or MariaDB client" : `cannot run ${bin}: ${e.message}`))
      })
      child.on("exit", (code, signal) => {
        restore()
        resolve(code ?? (signal !== null ? 128 + constants.signals[signal] : 1))
      })
    }
    start("mysql", "mariadb")
  })

/** Where `tsh proxy db --tunnel` sends a MySQL connection: the proxy's web port, with the database certificate. */
export interface TunnelTarget {
  readonly host: string
  readonly port: number
  readonly ca: string
  readonly cert: string
  readonly key: string
}

/**
 * `tsh proxy db --tunnel` for MySQL: one local plaintext client, carried to the proxy's web port
 * in TLS with ALPN `remoteler-mysql` and the database certificate. The proxy speaks first inside
 * TLS (its greeting reaches the local client untouched), so bytes are only piped. A proxy that
 * cannot be reached gets the local client an ERR packet in place of a greeting.
 */
export const tunnelConnection = (client: net.Socket, target: TunnelTarget, log: (line: string) => void): void => {
  client.on("error", () => client.destroy())
  client.setNoDelay(true)
  const where = `${target.host.includes(":") ? `[${target.host}]` : target.host}:${target.port}`
  const server = tls.connect({
    host: target.host,
    port: target.port,
    ...(net.isIP(target.host) === 0 ? { servername: target.host } : {}),
    ca: target.ca,
    cert: target.cert,
    key: target.key,
    ALPNProtocols: ["remoteler-mysql"]
  })
  let ready = false
  server.once("secureConnect", () => {
    ready = true
    server.setNoDelay(true)
    if (client.destroyed) return void server.destroy()
    client.pipe(server)
    server.pipe(client)
    client.on("close", () => server.destroy())
    server.on("close", () => client.destroy())
  })
  server.on("error", (e) => {
    if (ready) return client.destroy()
    log(`ERROR: TLS to proxy ${where} failed: ${e.message}`)
    // ERR (0xff, code 2003 "can't connect", '#HY000') as the first packet, which clients print.
    const message = Buffer.from(`tsh proxy db: cannot reach proxy ${where}: ${e.message}`)
    const payload = Buffer.concat([Buffer.from([0xff, 0xd3, 0x07, 0x23]), Buffer.from("HY000"), message])
    const header = Buffer.from([payload.length & 0xff, (payload.length >> 8) & 0xff, payload.length >> 16, 0])
    client.end(Buffer.concat([header, payload]))
  })
}
