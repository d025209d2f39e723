/**
 * redis-cli (or any Redis client with TLS) on the web port: the proxy terminates TLS with the
 * client's database certificate, and the certificate's database route picks the agent. A client
 * that names ALPN `remoteler-redis` comes here directly; one that sends no ALPN (redis-cli has no
 * option for it) is recognised by its certificate: a route with protocol `redis`.
 *
 * Redis speaks only when asked, so each refusal is the RESP error reply to the client's first
 * command, which redis-cli prints as `(error) ...`.
 */
import type { TLSSocket } from "node:tls"
import { Effect, Either } from "effect"
import * as X509 from "../../adapters/x509.ts"
import { refuseAfterFirstCommand } from "../../protocols/redis/engine.ts"
import { errorReply } from "../../protocols/redis/serializer.ts"
import type { ProxyContext } from "./context.ts"
import { splice } from "./context.ts"

/**
 * True when the peer's certificate carries a database route for Redis. Only a first look, for
 * routing: the certificate is verified against the user CAs afterwards (`socketIdentity`).
 */
export const hasRedisRoute = (socket: TLSSocket): boolean => {
  const peer = socket.getPeerCertificate(false)
  if (peer === null || peer.raw === undefined) return false
  const identity = X509.parseCertIdentity(X509.toPem(peer.raw, "CERTIFICATE"))
  return Either.isRight(identity) && identity.right.routeToDatabase?.protocol === "redis"
}

export const make = (ctx: ProxyContext) => {
  const refuse = (socket: TLSSocket, message: string, code = "ERR") => refuseAfterFirstCommand(socket, errorReply(message, code))
  const handle = (socket: TLSSocket) =>
    Effect.gen(function* () {
      socket.pause()
      // Replies are small and answer requests one by one: Nagle would hold each behind an ACK.
      socket.setNoDelay(true)
      const id = yield* ctx.socketIdentity(socket)
      if (Either.isLeft(id)) return yield* refuse(socket, id.left, "NOPERM")
      const route = id.right.routeToDatabase
      if (route !== undefined && route.protocol !== "redis") {
        return yield* refuse(socket, `the certificate is for ${route.protocol} database ${route.serviceName}, not for a Redis database`)
      }
      const stream = yield* Effect.either(ctx.openDbSession(id.right, socket.remoteAddress))
      if (Either.isLeft(stream)) return yield* refuse(socket, stream.left.message, stream.left.reason === "NoRoute" ? "NOPERM" : "ERR")
      splice(socket, stream.right)
      socket.resume()
    }).pipe(
      Effect.catchAll((e) => refuse(socket, `the cluster cannot check certificates now: ${e.message}`)),
      Effect.catchAllDefect((d) => Effect.logError("redis routing failed", d).pipe(Effect.zipRight(Effect.sync(() => socket.destroy()))))
    )
  /** The ALPN `remoteler-redis` handler. */
  const onSocket = (socket: TLSSocket): void => void ctx.run(handle(socket))
  /** The listener's `byCertificate` hook: takes the socket when its certificate routes to Redis. */
  const byCertificate = (socket: TLSSocket): boolean => {
    if (!hasRedisRoute(socket)) return false
    onSocket(socket)
    return true
  }
  return { onSocket, byCertificate }
}
