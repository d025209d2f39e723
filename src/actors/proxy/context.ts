/**
 * What a protocol front on the proxy (PostgreSQL on the web port, MySQL on 3036, Redis by
 * certificate, SSH by ALPN or on 3023) needs from the proxy: the caller's verified identity, and a
 * stream to the agent that serves the caller's target, opened through the reverse tunnel with the
 * identity and the caller's roles in its meta. Fronts speak their protocol's handshake and errors;
 * the routing, the CA checks and their audit live here once.
 */
import type { Duplex } from "node:stream"
import type { TLSSocket } from "node:tls"
import type { Effect, Either } from "effect"
import type { AuthMethod, RequestOf, ResponseOf } from "../../domain/AuthApi.ts"
import type { ApiError } from "../../domain/Errors.ts"
import type { Identity } from "../../domain/Identity.ts"
import type * as TunnelServer from "../TunnelServer.ts"

/** Why a session could not be routed; `message` is written for the user. */
export interface RouteFailure {
  readonly reason: "NoRoute" | "NotAvailable" | "Unreachable"
  readonly message: string
}

export interface ProxyContext {
  readonly clusterName: string
  /** The proxy's TLS key pair (fronts that upgrade to TLS themselves, like MySQL, use it). */
  readonly credentials: { readonly key: string; readonly cert: string }
  /**
   * The identity in a user's client certificate, checked against the user CAs auth trusts now and
   * against this cluster; a refusal is audited (T3007W) and comes back as a message for the user.
   * Fails only when auth cannot be reached to learn the trusted CAs.
   */
  readonly socketIdentity: (socket: TLSSocket) => Effect.Effect<Either.Either<Identity, string>, ApiError>
  /** A call to auth over the bus. */
  readonly auth: <M extends AuthMethod>(method: M, request: RequestOf<M>) => Effect.Effect<ResponseOf<M>, ApiError>
  readonly tunnels: TunnelServer.TunnelServerApi
  /** Runs an effect on the proxy's runtime (its logger and scope), for socket callbacks. */
  readonly run: <A>(effect: Effect.Effect<A>) => Promise<A>
  /**
   * Opens a database session on the agent serving the identity's database route. `extraMeta` goes
   * to the engine alongside identity, roles, session id and remote address.
   */
  readonly openDbSession: (
    identity: Identity,
    remoteAddr: string | undefined,
    extraMeta?: Readonly<Record<string, string>>
  ) => Effect.Effect<Duplex, RouteFailure>
}

/** Relays bytes both ways until either side closes, then closes both. */
export const splice = (a: Duplex, b: Duplex): void => {
  a.pipe(b)
  b.pipe(a)
  const close = () => {
    a.destroy()
    b.destroy()
  }
  a.on("close", close)
  b.on("close", close)
  a.on("error", close)
  b.on("error", close)
}
