/**
 * `tsh db config|connect` for Redis: redis-cli reaches the proxy's web port over TLS with the
 * database certificate and no ALPN, and the proxy routes it by the certificate's route. The proxy
 * is verified against the host CA (`<db>-ca.pem`, the file psql uses as sslrootcert).
 */
import { spawn } from "node:child_process"
import { constants } from "node:os"
import { Effect } from "effect"

/** Where redis-cli connects and with which files. */
export interface RedisConnection {
  readonly host: string
  readonly port: number
  readonly ca: string
  readonly cert: string
  readonly key: string
}

/** redis-cli's arguments for a database login. */
export const redisCliArgs = (c: RedisConnection): Array<string> => [
  "--tls",
  "--cert",
  c.cert,
  "--key",
  c.key,
  "--cacert",
  c.ca,
  "-h",
  c.host,
  "-p",
  String(c.port)
]

const shellQuote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`)

/** The command line `tsh db config` prints. */
export const redisCliCommand = (c: RedisConnection): string => ["redis-cli", ...redisCliArgs(c)].map(shellQuote).join(" ")

/**
 * Runs redis-cli with the terminal; Ctrl-C belongs to redis-cli while it runs, so tsh's own
 * SIGINT/SIGTERM handlers step aside until it exits. Resolves to its exit code.
 */
export const runRedisCli = (c: RedisConnection, extra: ReadonlyArray<string> = []): Effect.Effect<number, Error> =>
  Effect.async<number, Error>((resume) => {
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
    const child = spawn("redis-cli", [...redisCliArgs(c), ...extra], { stdio: "inherit" })
    child.on("error", (e: NodeJS.ErrnoException) => {
      restore()
      resume(Effect.fail(new Error(e.code === "ENOENT" ? "redis-cli not found in PATH: install the Redis client (redis-tools)" : `cannot run redis-cli: ${e.message}`)))
    })
    child.on("close", (code, signal) => {
      restore()
      resume(Effect.succeed(code ?? (signal !== null ? 128 + constants.signals[signal] : 1)))
    })
  })
