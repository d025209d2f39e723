/**
 * The auth API over the bus: a request on `remoteler.<cluster>.rpc.auth.<method>` answered by the
 * queue group `auth`, so any number of auth instances can serve and each request is handled once.
 * Only the methods proxies need (`PROXY_METHODS`) are served here; administration stays on the
 * admin socket.
 */
import { Effect, Either, ParseResult, Schema, Stream } from "effect"
import type { Scope } from "effect"
import type { AuthMethod, RequestOf, ResponseOf } from "../domain/AuthApi.ts"
import { AuthMethods, PROXY_METHODS } from "../domain/AuthApi.ts"
import type { ApiError } from "../domain/Errors.ts"
import { ApiError as ApiErrorSchema, BadParameter, Forbidden, Unavailable } from "../domain/Errors.ts"
import type { Handlers } from "./AuthApiHttp.ts"
import { dispatch } from "./AuthApiHttp.ts"
import type { BusShape } from "./Bus.ts"

export const rpcSubject = (clusterName: string, method: string) => `remoteler.${clusterName}.rpc.auth.${method}`

const enc = new TextEncoder()
const dec = new TextDecoder()

/** Serves the proxy methods for as long as the scope lives. */
export const serve = (bus: BusShape, handlers: Handlers, clusterName: string): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function* () {
    const prefix = rpcSubject(clusterName, "")
    const requests = yield* bus.subscribe(rpcSubject(clusterName, ">"), { queue: "auth" }).pipe(Effect.orDie)
    yield* requests.pipe(
      Stream.mapEffect(
        (msg) =>
          Effect.gen(function* () {
            const method = msg.subject.slice(prefix.length)
            let body: unknown
            try {
              body = JSON.parse(dec.decode(msg.data))
            } catch {
              body = undefined
            }
            const result = PROXY_METHODS.includes(method as AuthMethod)
              ? yield* Effect.either(dispatch(handlers, method, body))
              : Either.left(new Forbidden({ message: `method ${method} is not available over the bus` }))
            const reply = Either.isRight(result) ? { ok: result.right } : { error: { _tag: result.left._tag, message: result.left.message } }
            yield* bus.reply(msg, enc.encode(JSON.stringify(reply)))
          }).pipe(Effect.catchAllCause((cause) => Effect.logError("auth RPC failed", cause))),
        // Each request in its own fiber: a slow login never holds up the next request.
        { concurrency: "unbounded", unordered: true }
      ),
      Stream.runDrain,
      Effect.forkScoped
    )
  })

/** Calls one auth method over the bus. */
export const call = <M extends AuthMethod>(
  bus: BusShape,
  clusterName: string,
  method: M,
  request: RequestOf<M>,
  timeoutMs = 10_000
): Effect.Effect<ResponseOf<M>, ApiError> =>
  Effect.gen(function* () {
    const def = AuthMethods[method]
    // The proxy passes clients' JSON through: a body that does not fit the method is the client's error.
    const body = yield* Schema.encodeUnknown(def.request as unknown as Schema.Schema<RequestOf<M>, unknown>)(request).pipe(
      Effect.mapError((e) => new BadParameter({ message: `bad request: ${ParseResult.TreeFormatter.formatErrorSync(e)}` }))
    )
    const msg = yield* bus.request(rpcSubject(clusterName, method), enc.encode(JSON.stringify(body)), timeoutMs).pipe(
      Effect.mapError((e) =>
        new Unavailable({
          message: e.reason === "NoResponders" ? "no auth service is reachable" : `auth service unreachable: ${e.message}`
        })
      )
    )
    const reply = JSON.parse(dec.decode(msg.data)) as { ok?: unknown; error?: unknown }
    if (reply.error !== undefined) {
      const decoded = Schema.decodeUnknownEither(ApiErrorSchema)(reply.error)
      return yield* Effect.fail(Either.isRight(decoded) ? decoded.right : new Unavailable({ message: "auth service error" }))
    }
    return yield* Schema.decodeUnknown(def.response as unknown as Schema.Schema<ResponseOf<M>, unknown>)(reply.ok).pipe(
      Effect.mapError((e) => new Unavailable({ message: `unexpected auth answer: ${ParseResult.TreeFormatter.formatErrorSync(e)}` }))
    )
  })
