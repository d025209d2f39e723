/**
 * psql on the web port: after the SSLRequest (or ALPN `remoteler-postgres`) the proxy terminates
 * TLS with the client's database certificate, whose route picks the agent. Every refusal reaches
 * psql as a FATAL ErrorResponse it prints.
 */
import type { TLSSocket } from "node:tls"
import { Effect, Either } from "effect"
import { toErrorResponse } from "../../protocols/postgres/errors.ts"
import type { ProxyContext } from "./context.ts"
import { splice } from "./context.ts"

export const make = (ctx: ProxyContext) => {
  const pgError = (socket: TLSSocket, code: string, message: string) =>
    Effect.sync(() => {
      socket.end(Buffer.from(toErrorResponse({ severity: "FATAL", code, message })))
    })
  const handle = (socket: TLSSocket) =>
    Effect.gen(function* () {
      // One query, one answer: Nagle would hold an answer's second write for the client's delayed ACK.
      socket.setNoDelay(true)
      const id = yield* ctx.socketIdentity(socket)
      if (Either.isLeft(id)) return yield* pgError(socket, "28000", id.left)
      const stream = yield* Effect.either(ctx.openDbSession(id.right, socket.remoteAddress))
      if (Either.isLeft(stream)) {
        const f = stream.left
        return yield* pgError(socket, f.reason === "NoRoute" ? "28000" : f.reason === "NotAvailable" ? "08001" : "08006", f.message)
      }
      splice(socket, stream.right)
    }).pipe(
      Effect.catchAll((e) => pgError(socket, "08006", `the cluster cannot check certificates now: ${e.message}`)),
      Effect.catchAllDefect((d) => Effect.logError("postgres routing failed", d).pipe(Effect.zipRight(Effect.sync(() => socket.destroy()))))
    )
  return (socket: TLSSocket): void => void ctx.run(handle(socket))
}
