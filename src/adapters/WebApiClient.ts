/**
 * HTTPS client of the proxy's web API (`/v1/webapi`, see domain/WebApi.ts), on node:https.
 *
 * Trust: with `insecure` the proxy's certificate is not verified at all (tsh warns). Otherwise it
 * must chain to the system CAs or to `caCerts` (the `certs.pem` a previous login stored); there is
 * no silent trust on first use, an unverifiable proxy fails with a message that says what to do.
 */
import * as fs from "node:fs"
import * as https from "node:https"
import * as tls from "node:tls"
import { Data, Effect, Schema } from "effect"
import { DatabasesResponse, DbCertRequest, DbCertResponse, ErrorBody, FindResponse, LoginRequest, LoginResponse, NodesResponse } from "../domain/WebApi.ts"
import { DEFAULT_PROXY_PORT, parseProxyAddr } from "./TshProfile.ts"

export class WebApiError extends Data.TaggedError("WebApiError")<{
  /**
   * Http: the proxy answered with an error status; Connect: no connection; Untrusted: its TLS
   * certificate does not verify; BadResponse: an answer that is not the contract's shape.
   */
  readonly reason: "Http" | "Connect" | "Untrusted" | "BadResponse" | "BadAddress"
  readonly message: string
  readonly status?: number
  readonly cause?: unknown
}> {}

export interface TlsOptions {
  /** Skip verification of the proxy's certificate. */
  readonly insecure?: boolean
  /** PEM CA certificates trusted besides the system ones. */
  readonly caCerts?: ReadonlyArray<string> | string
  /** Milliseconds before a request is abandoned (default 30 s). */
  readonly timeoutMs?: number
}

export interface ClientCertOptions extends TlsOptions {
  /** PEM X.509 client certificate (mTLS). */
  readonly tlsCert: string
  /** PEM private key of the client certificate. */
  readonly key: string
}

/** `HOST[:PORT]` → host and port (3080 by default). */
export const proxyAddress = (proxy: string): Effect.Effect<{ readonly host: string; readonly port: number }, WebApiError> => {
  const a = parseProxyAddr(proxy)
  return a === undefined
    ? Effect.fail(new WebApiError({ reason: "BadAddress", message: `bad proxy address "${proxy}": expected HOST[:PORT] (port ${DEFAULT_PROXY_PORT} by default)` }))
    : Effect.succeed(a)
}

const VERIFY_CODES = new Set([
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "CERT_UNTRUSTED",
  "CERT_SIGNATURE_FAILURE",
  "ERR_TLS_CERT_ALTNAME_INVALID"
])

/** The certificates of NODE_EXTRA_CA_CERTS, which node adds to its default store but not to `tls.rootCertificates`. */
const envExtraCas = (): Array<string> => {
  const file = process.env["NODE_EXTRA_CA_CERTS"]
  if (file === undefined || file === "") return []
  try {
    return [fs.readFileSync(file, "utf8")]
  } catch {
    return []
  }
}

const isIpLiteral = (host: string) => /^[\d.]+$/.test(host) || host.includes(":")

const request = (
  proxy: string,
  method: "GET" | "POST",
  urlPath: string,
  body: unknown,
  opts: TlsOptions & { readonly tlsCert?: string; readonly key?: string }
): Effect.Effect<unknown, WebApiError> =>
  Effect.flatMap(proxyAddress(proxy), ({ host, port }) => {
    const where = `${host.includes(":") ? `[${host}]` : host}:${port}`
    return Effect.async<unknown, WebApiError>((resume, signal) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
      const extra = opts.caCerts === undefined ? [] : typeof opts.caCerts === "string" ? [opts.caCerts] : [...opts.caCerts]
      const req = https.request(
        {
          host,
          port,
          method,
          path: urlPath,
          signal,
          agent: false,
          timeout: opts.timeoutMs ?? 30_000,
          ...(isIpLiteral(host) ? {} : { servername: host }),
          rejectUnauthorized: opts.insecure !== true,
          // `ca` replaces node's default store, so the defaults go back in by hand
          ...(opts.insecure === true || extra.length === 0 ? {} : { ca: [...tls.rootCertificates, ...envExtraCas(), ...extra] }),
          ...(opts.tlsCert !== undefined ? { cert: opts.tlsCert } : {}),
          ...(opts.key !== undefined ? { key: opts.key } : {}),
          headers: {
            accept: "application/json",
            ...(payload === undefined ? {} : { "content-type": "application/json", "content-length": String(payload.length) })
          }
        },
        (res) => {
          const chunks: Array<Buffer> = []
          res.on("data", (c: Buffer) => chunks.push(c))
          res.on("error", (cause) =>
            resume(Effect.fail(new WebApiError({ reason: "Connect", message: `connection to proxy ${where} broke: ${cause.message}`, cause })))
          )
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8")
            const status = res.statusCode ?? 0
            let json: unknown
            try {
              json = text === "" ? undefined : JSON.parse(text)
            } catch {
              json = undefined
            }
            if (status >= 200 && status < 300) {
              if (json === undefined) {
                return resume(Effect.fail(new WebApiError({ reason: "BadResponse", status, message: `proxy ${where} answered ${method} ${urlPath} with no JSON` })))
              }
              return resume(Effect.succeed(json))
            }
            const e = Schema.decodeUnknownOption(ErrorBody)(json)
            const message =
              e._tag === "Some" ? e.value.error.message : `proxy ${where} answered ${method} ${urlPath} with HTTP ${status}${text === "" ? "" : `: ${text.slice(0, 200)}`}`
            resume(Effect.fail(new WebApiError({ reason: "Http", status, message })))
          })
        }
      )
      req.on("timeout", () => req.destroy(new Error(`no answer within ${(opts.timeoutMs ?? 30_000) / 1000}s`)))
      req.on("error", (cause: NodeJS.ErrnoException) => {
        if (signal.aborted) return
        if (cause.code !== undefined && VERIFY_CODES.has(cause.code)) {
          return resume(
            Effect.fail(
              new WebApiError({
                reason: "Untrusted",
                message:
                  `cannot verify the TLS certificate of proxy ${where} (${cause.message}). ` +
                  `Use --insecure to skip verification (for testing only), or make the proxy's certificate trusted ` +
                  `(a certificate from a public CA, or its CA in NODE_EXTRA_CA_CERTS)`,
                cause
              })
            )
          )
        }
        resume(Effect.fail(new WebApiError({ reason: "Connect", message: `cannot reach proxy ${where}: ${cause.message}`, cause })))
      })
      req.end(payload)
    })
  })

const decode =
  <A, I>(schema: Schema.Schema<A, I>, what: string) =>
  (u: unknown): Effect.Effect<A, WebApiError> =>
    Effect.mapError(
      Schema.decodeUnknown(schema)(u),
      (e) => new WebApiError({ reason: "BadResponse", message: `unexpected ${what} answer from the proxy: ${e.message}` })
    )

/** `GET /v1/webapi/find`: the cluster's name, version and login settings. */
export const find = (proxy: string, opts: TlsOptions = {}): Effect.Effect<FindResponse, WebApiError> =>
  Effect.flatMap(request(proxy, "GET", "/v1/webapi/find", undefined, opts), decode(FindResponse, "find"))

/** `POST /v1/webapi/ssh/certs`: password (+ OTP) login; signs the client's public keys. */
export const login = (proxy: string, req: LoginRequest, opts: TlsOptions = {}): Effect.Effect<LoginResponse, WebApiError> =>
  Effect.flatMap(request(proxy, "POST", "/v1/webapi/ssh/certs", Schema.encodeSync(LoginRequest)(req), opts), decode(LoginResponse, "login"))

/** `GET /v1/webapi/whoami` with the user's certificate (mTLS); returns the proxy's JSON answer. */
export const whoami = (proxy: string, opts: ClientCertOptions): Effect.Effect<unknown, WebApiError> =>
  request(proxy, "GET", "/v1/webapi/whoami", undefined, opts)

/** `GET` of a web API path with the user's certificate (mTLS), its answer decoded with `schema`. */
export const getJson = <A, I>(proxy: string, urlPath: string, schema: Schema.Schema<A, I>, what: string, opts: ClientCertOptions): Effect.Effect<A, WebApiError> =>
  Effect.flatMap(request(proxy, "GET", urlPath, undefined, opts), decode(schema, what))

/** `GET /v1/webapi/databases` with the user's certificate (mTLS): the databases the user may see. */
export const databases = (proxy: string, opts: ClientCertOptions): Effect.Effect<typeof DatabasesResponse.Type, WebApiError> =>
  Effect.flatMap(request(proxy, "GET", "/v1/webapi/databases", undefined, opts), decode(DatabasesResponse, "databases"))

/** `POST /v1/webapi/db/certs` with the user's certificate (mTLS): a certificate routed to one database. */
export const dbCerts = (proxy: string, req: typeof DbCertRequest.Type, opts: ClientCertOptions): Effect.Effect<typeof DbCertResponse.Type, WebApiError> =>
  Effect.flatMap(request(proxy, "POST", "/v1/webapi/db/certs", Schema.encodeSync(DbCertRequest)(req), opts), decode(DbCertResponse, "database certificate"))

/** `GET /v1/webapi/nodes` with the user's certificate (mTLS): the SSH nodes the user may reach, with their host keys. */
export const nodes = (proxy: string, opts: ClientCertOptions): Effect.Effect<typeof NodesResponse.Type, WebApiError> =>
  Effect.flatMap(request(proxy, "GET", "/v1/webapi/nodes", undefined, opts), decode(NodesResponse, "nodes"))
