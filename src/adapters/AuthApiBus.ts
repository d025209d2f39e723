/**
 * The auth API over the bus: a request on `remoteler.<cluster>.rpc.auth.<method>` answered by the
 * queue group `auth`, so any number of auth instances can serve and each request is handled once.
 * Only the methods proxies need (`PROXY_METHODS`) are served here; administration stays on the
 * admin socket.
 *
 * Who may call: anyone who can publish on the subject may call the methods that carry their own
 * credential (a password, an invite or join token: `PUBLIC_METHODS`). Every other method needs a
 * request signed by a proxy identity the cluster issued: the proxy's host certificate (host CA,
 * system role Proxy) travels in a header, with an ECDSA signature over the subject, a timestamp, a
 * nonce and the body. Auth checks the chain, the role, the signature, the clock (±60 s) and the
 * nonce (never seen before), so a process on the bus without a cluster identity cannot forge a
 * request, and a captured one cannot be replayed.
 */
import { createHash, createPrivateKey, randomBytes, sign, verify, X509Certificate } from "node:crypto"
import { Context, Effect, Either, Option, ParseResult, Schema, Stream } from "effect"
import type { Scope } from "effect"
import * as X509 from "./x509.ts"
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

/** Methods whose request carries its own credential, callable without a proxy identity. */
export const PUBLIC_METHODS: ReadonlyArray<AuthMethod> = ["web.find", "web.login", "web.invite_info", "web.invite_complete", "web.join"]

const H_CERT = "remoteler-cert"
const H_SIG = "remoteler-signature"
const H_TS = "remoteler-ts"
const H_NONCE = "remoteler-nonce"
const MAX_SKEW_MS = 60_000

/** The identity a proxy signs its requests with. */
export class RpcCredentials extends Context.Tag("remoteler/RpcCredentials")<
  RpcCredentials,
  { readonly certPem: string; readonly keyPem: string }
>() {}

const signedBytes = (subject: string, ts: string, nonce: string, body: Uint8Array) =>
  createHash("sha256").update(`${subject}\n${ts}\n${nonce}\n`).update(body).digest()

export const signHeaders = (creds: { certPem: string; keyPem: string }, subject: string, body: Uint8Array): Record<string, string> => {
  const ts = String(Date.now())
  const nonce = randomBytes(16).toString("hex")
  const signature = sign("sha256", signedBytes(subject, ts, nonce, body), createPrivateKey(creds.keyPem))
  return { [H_CERT]: Buffer.from(creds.certPem).toString("base64"), [H_SIG]: signature.toString("base64"), [H_TS]: ts, [H_NONCE]: nonce }
}

/**
 * Checks a request's proxy signature; the caller's host id, or why not. `trustedHostCas` are the
 * host CA certificates auth trusts now.
 */
export const makeVerifier = (trustedHostCas: Effect.Effect<ReadonlyArray<string>, ApiError>) => {
  const seen = new Map<string, number>()
  return (subject: string, body: Uint8Array, headers: Readonly<Record<string, string>> | undefined) =>
    Effect.gen(function* () {
      const h = headers ?? {}
      const certB64 = h[H_CERT]
      const sigB64 = h[H_SIG]
      const ts = h[H_TS]
      const nonce = h[H_NONCE]
      if (certB64 === undefined || sigB64 === undefined || ts === undefined || nonce === undefined) {
        return Either.left("the request is not signed by a proxy identity")
      }
      if (!/^\d+$/.test(ts) || Math.abs(Date.now() - Number(ts)) > MAX_SKEW_MS) return Either.left("the request's timestamp is too far from now")
      if (!/^[0-9a-f]{32}$/.test(nonce) || seen.has(nonce)) return Either.left("the request was replayed")
      const certPem = Buffer.from(certB64, "base64").toString("utf8")
      const chain = yield* Effect.either(Effect.flatMap(trustedHostCas, (cas) => X509.verifyChain(certPem, cas)))
      if (Either.isLeft(chain)) return Either.left(`the request's certificate is not trusted: ${chain.left.message}`)
      const identity = X509.parseCertIdentity(certPem)
      if (Either.isLeft(identity) || identity.right.systemRole !== "Proxy") return Either.left("the request's certificate is not a proxy's")
      let ok = false
      try {
        ok = verify("sha256", signedBytes(subject, ts, nonce, body), new X509Certificate(certPem).publicKey, Buffer.from(sigB64, "base64"))
      } catch {
        ok = false
      }
      if (!ok) return Either.left("the request's signature does not verify")
      const now = Date.now()
      seen.set(nonce, now)
      for (const [n, at] of seen) {
        if (now - at <= 2 * MAX_SKEW_MS && seen.size <= 100_000) break
        seen.delete(n)
      }
      return Either.right(identity.right.hostId ?? identity.right.username)
    })
}

/** Serves the proxy methods for as long as the scope lives. */
export const serve = (bus: BusShape, handlers: Handlers, clusterName: string): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function* () {
    const verifyProxy = makeVerifier(
      Effect.map(handlers["web.trusted_host_cas"]({}), (r) => r.tls_ca_certs)
    )
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
            const allowed = PROXY_METHODS.includes(method as AuthMethod)
            const caller = allowed && !PUBLIC_METHODS.includes(method as AuthMethod) ? yield* verifyProxy(msg.subject, msg.data, msg.headers) : Either.right("")
            const result = !allowed
              ? Either.left(new Forbidden({ message: `method ${method} is not available over the bus` }))
              : Either.isLeft(caller)
                ? Either.left(new Forbidden({ message: `refused: ${caller.left}` }))
                : yield* Effect.either(dispatch(handlers, method, body))
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
    const subject = rpcSubject(clusterName, method)
    const data = enc.encode(JSON.stringify(body))
    const creds = yield* Effect.serviceOption(RpcCredentials)
    const headers = Option.isSome(creds) ? signHeaders(creds.value, subject, data) : undefined
    const msg = yield* bus.request(subject, data, timeoutMs, headers).pipe(
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
