/**
 * Who a certificate speaks for. A user identity (from `tsh login`) or a host identity (an agent or
 * proxy, with `hostId`, `nodeName`, `systemRole`). Pure data: the X.509 subject encoding lives in
 * `adapters/x509.ts`, the SSH one in `protocols/ssh/cert.ts`.
 */
import { Schema } from "effect"
import { Traits } from "./Role.ts"

/** The route a database certificate carries (Teleport's `RouteToDatabase`). */
export class RouteToDatabase extends Schema.Class<RouteToDatabase>("RouteToDatabase")({
  serviceName: Schema.String,
  protocol: Schema.String,
  username: Schema.String,
  database: Schema.String
}) {}

/** The role a host certificate grants inside the cluster. */
export const SystemRole = Schema.Literal("Node", "Db", "Proxy", "Auth")
export type SystemRole = typeof SystemRole.Type

export class Identity extends Schema.Class<Identity>("Identity")({
  /** The user name; for a host identity, its host id. */
  username: Schema.String,
  /** Role names; for a host identity, `[systemRole]`. */
  roles: Schema.Array(Schema.String),
  /** Allowed OS logins (SSH principals); for a host identity, its principals (host id, node name, DNS names). */
  logins: Schema.Array(Schema.String),
  /** The cluster the certificate routes to. */
  routeToCluster: Schema.String,
  traits: Traits,
  routeToDatabase: Schema.optional(RouteToDatabase),
  /** When the certificate carrying this identity expires (ISO string on the wire). */
  expires: Schema.Date,
  hostId: Schema.optional(Schema.String),
  nodeName: Schema.optional(Schema.String),
  systemRole: Schema.optional(SystemRole)
}) {
  /** True for agent and proxy identities. */
  get isHost(): boolean {
    return this.systemRole !== undefined
  }
}

/** A host identity shaped as Teleport shapes one: user name = host id, roles = [system role]. */
export const makeHostIdentity = (params: {
  readonly hostId: string
  readonly nodeName: string
  readonly systemRole: SystemRole
  readonly clusterName: string
  readonly expires: Date
  readonly principals?: ReadonlyArray<string>
}): Identity =>
  new Identity({
    username: params.hostId,
    roles: [params.systemRole],
    logins: params.principals === undefined ? [params.hostId, params.nodeName] : [...params.principals],
    routeToCluster: params.clusterName,
    traits: {},
    expires: params.expires,
    hostId: params.hostId,
    nodeName: params.nodeName,
    systemRole: params.systemRole
  })
