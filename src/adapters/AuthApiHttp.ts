/**
 * The auth API over HTTP/1.1 with JSON bodies: `POST /v1/rpc/<method>`. Served on the admin socket
 * (`<data_dir>/auth.sock`, mode 0600, so only the auth host's administrator reaches it), which is
 * how `tctl` on the auth host talks to a running auth service, never to the store file.
 */
import * as fs from "node:fs"
import * as http from "node:http"
import { Effect, Either, Fiber, ParseResult, Runtime, Schema, Stream } from "effect"
import type { Scope } from "effect"
import type { AuthMethod, RequestOf, ResponseOf } from "../domain/AuthApi.ts"
import { AuthMethods } from "../domain/AuthApi.ts"
import type { ApiError } from "../domain/Errors.ts"
import { ApiError as ApiErrorSchema, BadParameter, httpStatusOf } from "../domain/Errors.ts"
import { readBody } from "./internal/httpBody.ts"

export type Handlers = {
  readonly [M in AuthMethod]: (req: RequestOf<M>) => Effect.Effect<ResponseOf<M>, ApiError>
}

const MAX_BODY = 4 * 1024 * 1024

/** Decodes, runs and encodes one call. Shared by every transport that carries the auth API. */
export const dispatch = (handlers: Handlers, method: string, body: unknown): Effect.Effect<unknown, ApiError> => {
  if (!Object.hasOwn(AuthMethods, method)) {
    return Effect.fail(new BadParameter({ message: `unknown method ${JSON.stringify(method)}` }))
  }
  const m = method as AuthMethod
  const def = AuthMethods[m]
  return Schema.decodeUnknown(def.request as Schema.Schema<RequestOf<typeof m>, unknown>, {
    onExcessProperty: "error"
  })(body).pipe(
    Effect.mapError(
      (e) => new BadParameter({ message: `bad ${m} request: ${ParseResult.TreeFormatter.formatErrorSync(e)}` })
    ),
    Effect.flatMap((req) => (handlers[m] as (r: typeof req) => Effect.Effect<unknown, ApiError>)(req)),
    Effect.flatMap((res) => Schema.encode(def.response as Schema.Schema<unknown, unknown>)(res).pipe(Effect.orDie))
  )
}

const send = (res: http.ServerResponse, status: number, body: unknown) => {
  const text = JSON.stringify(body)
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) })
  res.end(text)
}

/** Long-lived answers: newline-delimited JSON for as long as the client stays. */
export interface Streams {
  /** Audit events from `fromSeq` (or from the next one to commit), optionally of some types only. */
  readonly audit: (fromSeq: number | undefined, types: ReadonlyArray<string>) => Stream.Stream<unknown, unknown>
}

/** Serves the API on a Unix socket for as long as the scope lives. */
export const serveUnixSocket = (handlers: Handlers, socketPath: string, streams?: Streams): Effect.Effect<void, Error, Scope.Scope> =>
  Effect.gen(function* () {
    const runtime = yield* Effect.runtime<never>()
    const run = Runtime.runPromise(runtime)
    const fork = Runtime.runFork(runtime)
    const server = http.createServer((req, res) => {
      const url = new URL(req.url ?? "/", "http://auth")
      if (req.method === "GET" && url.pathname === "/v1/stream/audit" && streams !== undefined) {
        const from = url.searchParams.get("from_seq")
        const fromSeq = from === null ? undefined : Number(from)
        if (fromSeq !== undefined && (!Number.isInteger(fromSeq) || fromSeq < 1)) {
          return send(res, 400, { error: { _tag: "BadParameter", message: "from_seq must be a positive integer" } })
        }
        res.writeHead(200, { "content-type": "application/x-ndjson", "cache-control": "no-store" })
        res.flushHeaders()
        const fiber = fork(
          streams.audit(fromSeq, url.searchParams.getAll("type")).pipe(
            Stream.runForEach((e) => Effect.sync(() => res.write(`${JSON.stringify(e)}\n`))),
            Effect.catchAllCause((cause) => Effect.logWarning("audit stream ended", cause)),
            Effect.ensuring(Effect.sync(() => res.end()))
          )
        )
        res.on("close", () => fork(Fiber.interrupt(fiber)))
        return
      }
      const match = /^\/v1\/rpc\/([a-z._]+)$/.exec(req.url ?? "")
      if (req.method !== "POST" || match === null) return send(res, 404, { error: { _tag: "NotFound", message: "no such endpoint" } })
      readBody(req, MAX_BODY)
        .then((text) => {
          let body: unknown
          try {
            body = text === "" ? {} : JSON.parse(text)
          } catch {
            return send(res, 400, { error: { _tag: "BadParameter", message: "request body is not JSON" } })
          }
          return run(
            dispatch(handlers, match[1]!, body).pipe(
              Effect.either,
              Effect.map((r) =>
                Either.isRight(r)
                  ? send(res, 200, r.right)
                  : send(res, httpStatusOf(r.left), { error: { _tag: r.left._tag, message: r.left.message } })
              ),
              Effect.catchAllDefect((defect) =>
                Effect.logError("auth API call failed", defect).pipe(
                  Effect.map(() => send(res, 500, { error: { _tag: "Internal", message: "internal error; see the auth service log" } }))
                )
              )
            )
          )
        })
        .catch(() => {
          if (!res.headersSent) send(res, 400, { error: { _tag: "BadParameter", message: "could not read the request" } })
        })
    })
    yield* Effect.acquireRelease(
      Effect.async<void, Error>((resume) => {
        // A socket file left by a crashed process is stale: the data-dir lock is already ours.
        fs.rmSync(socketPath, { force: true })
        server.once("error", (e) => resume(Effect.fail(e)))
        server.listen(socketPath, () => {
          fs.chmodSync(socketPath, 0o600)
          resume(Effect.void)
        })
      }),
      () =>
        Effect.async<void>((resume) => {
          server.closeAllConnections()
          server.close(() => resume(Effect.void))
        })
    )
  })

/** The auth service could not be reached at all (not running, or the socket is not ours). */
export class AuthUnreachable extends Schema.TaggedError<AuthUnreachable>()("AuthUnreachable", {
  message: Schema.String
}) {}

/** Calls one method over the admin socket. */
export const call = <M extends AuthMethod>(
  socketPath: string,
  method: M,
  request: RequestOf<M>
): Effect.Effect<ResponseOf<M>, ApiError | AuthUnreachable> =>
  Effect.gen(function* () {
    const def = AuthMethods[method]
    const body = yield* Schema.encode(def.request as unknown as Schema.Schema<RequestOf<M>, unknown>)(request).pipe(Effect.orDie)
    const { status, text } = yield* Effect.async<{ status: number; text: string }, AuthUnreachable>((resume) => {
      const payload = JSON.stringify(body)
      const req = http.request(
        {
          socketPath,
          path: `/v1/rpc/${method}`,
          method: "POST",
          headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) }
        },
        (res) => {
          const chunks: Array<Buffer> = []
          res.on("data", (c: Buffer) => chunks.push(c))
          res.on("end", () => resume(Effect.succeed({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") })))
          res.on("error", (e) => resume(Effect.fail(new AuthUnreachable({ message: e.message }))))
        }
      )
      req.on("error", (e: NodeJS.ErrnoException) =>
        resume(
          Effect.fail(
            new AuthUnreachable({
              message:
                e.code === "ENOENT" || e.code === "ECONNREFUSED"
                  ? `no auth service is running at ${socketPath}`
                  : `cannot reach the auth service at ${socketPath}: ${e.message}`
            })
          )
        )
      )
      req.end(payload)
    })
    const json = yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: () => new AuthUnreachable({ message: `the auth service answered with something that is not JSON (HTTP ${status})` })
    })
    if (status !== 200) {
      const err = (json as { error?: unknown }).error
      const decoded = Schema.decodeUnknownEither(ApiErrorSchema)(err)
      if (Either.isRight(decoded)) return yield* Effect.fail(decoded.right)
      return yield* new AuthUnreachable({ message: `auth service error (HTTP ${status}): ${JSON.stringify(err)}` })
    }
    return yield* Schema.decodeUnknown(def.response as unknown as Schema.Schema<ResponseOf<M>, unknown>)(json).pipe(
      Effect.mapError((e) => new AuthUnreachable({ message: `unexpected response: ${ParseResult.TreeFormatter.formatErrorSync(e)}` }))
    )
  })
