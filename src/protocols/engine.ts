/**
 * The protocol-engine contract (cf. Teleport's lib/srv/db/common/interfaces.go): the database
 * agent hands each user connection, already TLS-terminated and authenticated by the proxy, to the
 * engine of the database's protocol. The engine reads the client's handshake, authorizes it, dials
 * the database with a certificate from the db CA, relays bytes and audits what the user runs.
 *
 * Engines never let an error escape: every refusal reaches the client once, in the protocol's own
 * error format (`sendError`), and the session ends.
 */
import type { Duplex } from "node:stream"
import { Data } from "effect"
import type { Effect, Scope } from "effect"
import type { ResourceLabels } from "../domain/Labels.ts"
import type { Role, Traits } from "../domain/Role.ts"
import { MysqlEngine } from "./mysql/engine.ts"
import { PostgresEngine } from "./postgres/engine.ts"
import { RedisEngine } from "./redis/engine.ts"

/** Database protocols Remoteler knows; an engine registers under one of these names. */
export type DatabaseProtocol = "postgres" | "mysql" | "mongodb" | "redis" | "sqlserver"

/** The database route carried by the user's certificate (Teleport's `RouteToDatabase`). */
export interface SessionRoute {
  readonly serviceName: string
  readonly protocol: string
  /** The database user the certificate is for. */
  readonly username: string
  /** The database name, when the certificate names one (`tsh db login --db-name`). */
  readonly database?: string | undefined
}

/** Who is connecting: the fields of the user's certificate that an engine needs. */
export interface SessionIdentity {
  readonly username: string
  readonly roles: ReadonlyArray<string>
  readonly traits: Traits
  /** NotAfter of the certificate. */
  readonly expires: Date
  readonly routeToDatabase: SessionRoute
}

/**
 * How the agent verifies the database's server certificate: `verify-full` checks the chain and the
 * host name, `verify-ca` the chain only, `insecure` nothing.
 */
export interface DatabaseTls {
  readonly mode: "verify-full" | "verify-ca" | "insecure"
  /** The CA that signed the database's server certificate; defaults to the cluster's db CA. */
  readonly caCertPem?: string | undefined
  /** The name to check the server certificate against; defaults to the host of `uri`. */
  readonly serverName?: string | undefined
}

/** The database as the agent serves it. */
export interface SessionDatabase {
  readonly name: string
  readonly protocol: string
  /** `host:port` */
  readonly uri: string
  readonly labels: ResourceLabels
  readonly tls: DatabaseTls
}

/** A client certificate for the database (CN = db user), signed by the db CA. */
export interface DatabaseClientCredentials {
  readonly certPem: string
  readonly keyPem: string
  /** The db CA certificate(s). */
  readonly caPems: ReadonlyArray<string>
}

/** One audit record; `fields` use Teleport's JSON names (`user`, `sid`, `db_query`, ...). */
export interface AuditRecord {
  readonly type: string
  readonly code: string
  readonly fields: Readonly<Record<string, unknown>>
}

/** Why an engine-level step failed; what the user reads is `message`. */
export class EngineError extends Data.TaggedError("EngineError")<{
  readonly reason:
    | "ClientProtocol"
    | "ClientClosed"
    | "RouteMismatch"
    | "CertificateExpired"
    | "CertificateIssue"
    | "UpstreamConnect"
    | "UpstreamTls"
    | "UpstreamAuth"
    | "UpstreamProtocol"
    | "UpstreamClosed"
    | "Timeout"
  readonly message: string
  readonly cause?: unknown
}> {}

/** Everything one session needs; built by the db agent per connection. */
export interface SessionContext {
  /** The user's connection after TLS termination at the proxy (a tunnel stream or a socket). */
  readonly client: Duplex
  readonly identity: SessionIdentity
  /** The user's roles, resolved from the RBAC view. */
  readonly roles: ReadonlyArray<Role>
  readonly database: SessionDatabase
  /** Issues the certificate the agent presents to the database for `dbUser`. */
  readonly issueClientCert: (dbUser: string) => Effect.Effect<DatabaseClientCredentials, EngineError>
  /** Records an audit event (into a durable buffer); awaited in order by the engine. */
  readonly audit: (event: AuditRecord) => Effect.Effect<void>
  /**
   * When the sink can write synchronously (the agent's buffer: a `write(2)` that survives the
   * agent's death, fsynced in groups off the event loop): records `event` before returning, so an
   * engine can audit a query before forwarding it without a queue or an await per query. Throws
   * when the record cannot be written. Engines that do not use it call `audit`.
   */
  readonly appendAudit?: ((event: AuditRecord) => void) | undefined
  readonly sessionId: string
  readonly clusterName: string
  /** The agent's host id (`server_id` in audit events). */
  readonly hostId: string
  /** Wall clock for expiry checks; defaults to Effect's Clock. */
  readonly now?: () => Date
}

/** One database protocol. */
export interface Engine {
  readonly protocol: DatabaseProtocol
  /** Runs one session to its end; failures are reported to the client and the audit log, never raised. */
  readonly handleSession: (ctx: SessionContext) => Effect.Effect<void, never, Scope.Scope>
  /** Writes `err` to the client in the protocol's own error format. */
  readonly sendError: (client: Duplex, err: unknown) => Effect.Effect<void>
}

/** Engines by protocol name. */
export type EngineRegistry = Readonly<Partial<Record<DatabaseProtocol, Engine>>>

/** The registered engine for a protocol, if any. */
export const engineFor = (registry: EngineRegistry, protocol: string): Engine | undefined =>
  Object.hasOwn(registry, protocol) ? registry[protocol as DatabaseProtocol] : undefined

/**
 * The engines the db agent runs. Getters, because each engine module imports this contract:
 * whichever module loads first, the registry reads the engine only once both are evaluated.
 */
export const engines: EngineRegistry = {
  get postgres(): Engine {
    return PostgresEngine
  },
  get redis(): Engine {
    return RedisEngine
  },
  get mysql(): Engine {
    return MysqlEngine
  }
}
