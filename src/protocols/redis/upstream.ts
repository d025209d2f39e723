/**
 * The agent's connection to Redis: TLS with a client certificate from the db CA, then
 * `AUTH <db user> <placeholder>`.
 *
 * Why both. Redis 7 checks a TLS client certificate (`tls-auth-clients yes`) only to let the
 * connection in: it does not map the certificate to an ACL user (that arrived in Redis 8.2 as
 * `tls-auth-clients-user`). So, as Teleport does for self-hosted Redis, the certificate is the
 * credential (only the holder of a db-CA certificate, the agent, can open a connection at all),
 * and the ACL user is chosen with AUTH. The ACL users Remoteler serves are `nopass` users
 * (`user alice on nopass ~* &* +@all`): a password would be a second secret for the agent to keep,
 * and would add nothing a client could not already do with the certificate. A user that has a
 * password instead gets WRONGPASS here, and the session is refused with that reason.
 */
import * as net from "node:net"
import * as tls from "node:tls"
import { Effect } from "effect"
import { EngineError } from "../engine.ts"
import type { DatabaseClientCredentials, DatabaseTls } from "../engine.ts"
import { decodeText } from "../internal/text.ts"
import { RespParser } from "./parser.ts"
import { serializeCommand } from "./serializer.ts"

/** Sent as the password of `nopass` users: Redis ignores it. */
const PLACEHOLDER_PASSWORD = "remoteler-certificate"

/** `host:port`, `[v6]:port`, `rediss://host:port`; the port defaults to 6379. */
export const parseRedisUri = (uri: string): { host: string; port: number } => {
  const s = uri.replace(/^rediss?:\/\//, "").replace(/\/.*$/, "")
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(s) ?? /^([^:]+)(?::(\d+))?$/.exec(s)
  if (m === null) return { host: s, port: 6379 }
  return { host: m[1]!, port: m[2] === undefined ? 6379 : Number(m[2]) }
}

/** TLS to Redis with the db-CA client certificate, the server checked per the database's tls mode. */
export const connectTls = (
  uri: string,
  dbName: string,
  tlsInfo: DatabaseTls,
  creds: DatabaseClientCredentials
): Effect.Effect<tls.TLSSocket, EngineError> =>
  Effect.async<tls.TLSSocket, EngineError>((resume) => {
    const { host, port } = parseRedisUri(uri)
    const serverName = tlsInfo.serverName ?? host
    let finished = false
    const options: tls.ConnectionOptions = {
      host,
      port,
      cert: creds.certPem,
      key: creds.keyPem,
      ca: tlsInfo.caCertPem !== undefined ? [tlsInfo.caCertPem] : [...creds.caPems],
      rejectUnauthorized: tlsInfo.mode !== "insecure",
      checkServerIdentity: tlsInfo.mode === "verify-full" ? (_h, cert) => tls.checkServerIdentity(serverName, cert) : () => undefined
    }
    if (net.isIP(serverName) === 0) options.servername = serverName
    const socket = tls.connect(options)
    const fail = (e: Error) => {
      if (finished) return
      finished = true
      socket.destroy()
      const refused = /ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ETIMEDOUT/.test(e.message)
      resume(
        Effect.fail(
          new EngineError({
            reason: refused ? "UpstreamConnect" : "UpstreamTls",
            message: refused ? `cannot connect to database ${dbName} at ${uri}: ${e.message}` : `TLS with database ${dbName} at ${uri} failed: ${e.message}`,
            cause: e
          })
        )
      )
    }
    socket.on("error", fail)
    socket.once("close", () => fail(new Error("the connection closed during the TLS handshake")))
    socket.once("secureConnect", () => {
      if (finished) return
      finished = true
      socket.removeAllListeners("error")
      socket.removeAllListeners("close")
      socket.on("error", () => undefined)
      socket.setNoDelay(true)
      resume(Effect.succeed(socket))
    })
    return Effect.sync(() => {
      finished = true
      socket.destroy()
    })
  })

/** `AUTH <dbUser> <placeholder>` and its answer; anything but +OK refuses the session. */
export const authenticate = (socket: tls.TLSSocket, dbName: string, dbUser: string): Effect.Effect<void, EngineError> =>
  Effect.async<void, EngineError>((resume) => {
    const parser = new RespParser({ mode: "reply" })
    let finished = false
    const finish = (e: Effect.Effect<void, EngineError>) => {
      if (finished) return
      finished = true
      socket.off("data", onData)
      socket.off("close", onClose)
      socket.pause()
      resume(e)
    }
    const onData = (chunk: Buffer) => {
      const [r] = parser.push(chunk)
      if (r === undefined) return
      if (r.kind === "simple" && r.value === "OK") {
        // Nothing may follow: we sent one command and Redis does not speak unasked.
        return finish(Effect.void)
      }
      const text =
        r.kind === "error" ? ("reason" in r ? `unreadable reply: ${r.detail}` : r.value) : r.kind === "bulkError" ? decodeText(r.value) : `unexpected reply ${r.kind}`
      const hint = /WRONGPASS/.test(text)
        ? ` (the agent authenticates with the db CA certificate and AUTH ${dbUser}: the Redis ACL needs 'user ${dbUser} on nopass ...')`
        : ""
      finish(Effect.fail(new EngineError({ reason: "UpstreamAuth", message: `database ${dbName} refused db user ${dbUser}: ${text}${hint}` })))
    }
    const onClose = () =>
      finish(Effect.fail(new EngineError({ reason: "UpstreamClosed", message: `database ${dbName} closed the connection during authentication` })))
    socket.on("data", onData)
    socket.once("close", onClose)
    socket.write(serializeCommand("AUTH", [dbUser, PLACEHOLDER_PASSWORD]))
    return Effect.sync(() => {
      finished = true
      socket.off("data", onData)
      socket.off("close", onClose)
    })
  })
