/**
 * Events: one envelope, and a tagged union of what happened, discriminated by `type`.
 *
 * Every state change is appended as one of these. `code` is Teleport's code where one exists, so a
 * SIEM rule written for Teleport keeps matching. Payloads never hold secrets: password hashes, TOTP
 * seeds and CA private keys live in the secrets table and are referenced by key id at most.
 */
import { Schema } from "effect"
import { Role, Traits } from "./Role.ts"
import { AgentlessNodeFields } from "./AgentlessNode.ts"

/** RFC 3339 with milliseconds, always UTC: `2026-11-21T23:40:51.123Z`. */
export const Rfc3339Millis = Schema.String.pipe(Schema.pattern(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/))

export const formatTime = (ms: number): string => new Date(ms).toISOString()

export const UserName = Schema.String.pipe(
  Schema.pattern(/^[a-zA-Z0-9][a-zA-Z0-9._@+-]{0,127}$/, {
    message: () => "a user name is 1-128 letters, digits or . _ @ + - and starts with a letter or digit"
  }),
  Schema.brand("UserName")
)
export type UserName = typeof UserName.Type

// ---------------------------------------------------------------------------------------------
// Payloads. Field names follow Teleport's audit JSON where the event is an audit event.

export const UserCreated = Schema.Struct({
  name: Schema.String,
  roles: Schema.Array(Schema.String),
  traits: Traits,
  created_by: Schema.String
})
export const UserUpdated = Schema.Struct({
  name: Schema.String,
  roles: Schema.Array(Schema.String),
  traits: Traits
})
export const UserDeleted = Schema.Struct({ name: Schema.String })
export const RoleCreated = Schema.Struct({ name: Schema.String, role: Role })
export const RoleDeleted = Schema.Struct({ name: Schema.String })

export const CaType = Schema.Literal("user", "host", "db")
export type CaType = typeof CaType.Type

/** Teleport's rotation phases: standby → init → update_clients → update_servers → standby, or rollback. */
export const RotationPhase = Schema.Literal("standby", "init", "update_clients", "update_servers", "rollback")
export type RotationPhase = typeof RotationPhase.Type

/** The public half of one CA key set; the private keys are in the secrets table under `key_id`. */
export const CaKeySet = Schema.Struct({
  key_id: Schema.String,
  tls_cert: Schema.String,
  ssh_public_key: Schema.String
})
export type CaKeySet = typeof CaKeySet.Type

export const CaCreated = Schema.Struct({ type: CaType, cluster_name: Schema.String, active: CaKeySet })
export const CaRotated = Schema.Struct({
  type: CaType,
  cluster_name: Schema.String,
  phase: RotationPhase,
  /** The new key set, on `init`. */
  next: Schema.optional(CaKeySet)
})

export const UserLogin = Schema.Struct({
  user: Schema.String,
  method: Schema.Literal("local"),
  success: Schema.Boolean,
  error: Schema.optional(Schema.String),
  "addr.remote": Schema.optional(Schema.String)
})

export const CertIdentity = Schema.Struct({
  user: Schema.String,
  roles: Schema.Array(Schema.String),
  logins: Schema.Array(Schema.String),
  expires: Schema.String,
  route_to_cluster: Schema.String,
  host_id: Schema.optional(Schema.String),
  system_role: Schema.optional(Schema.String),
  db_service: Schema.optional(Schema.String),
  db_user: Schema.optional(Schema.String),
  db_name: Schema.optional(Schema.String)
})
export const CertCreated = Schema.Struct({
  cert_type: Schema.Literal("user", "host", "db"),
  identity: CertIdentity,
  /** Who asked: the user themself at login, or an administrator through `tctl auth sign`. */
  user: Schema.String
})
export const PasswordChanged = Schema.Struct({ user: Schema.String, name: Schema.String })
export const InviteCreated = Schema.Struct({ name: Schema.String, user: Schema.String, expires: Schema.String })
export const LockCreated = Schema.Struct({ name: Schema.String, expires: Schema.String, reason: Schema.String })
export const LockDeleted = Schema.Struct({ name: Schema.String, user: Schema.String })
/** A credential refused before any session started (a bad certificate at the proxy, ...). */
export const AuthFailure = Schema.Struct({
  user: Schema.String,
  success: Schema.Literal(false),
  error: Schema.String,
  "addr.remote": Schema.optional(Schema.String)
})

export const JoinRole = Schema.Literal("db", "node", "proxy")
export type JoinRole = typeof JoinRole.Type
/** A join token by its name (a prefix of its hash); the token itself is a secret and never in an event. */
export const JoinTokenCreated = Schema.Struct({
  name: Schema.String,
  roles: Schema.Array(JoinRole),
  expires: Schema.String,
  user: Schema.String
})
export const JoinTokenDeleted = Schema.Struct({ name: Schema.String, user: Schema.String })
export const InstanceJoin = Schema.Struct({
  host_id: Schema.String,
  node_name: Schema.String,
  role: JoinRole,
  token_name: Schema.optional(Schema.String),
  success: Schema.Boolean,
  error: Schema.optional(Schema.String),
  "addr.remote": Schema.optional(Schema.String)
})

/** A database or node that an agent advertises, as the inventory first saw it, or last saw it. */
export const ResourcePresence = Schema.Struct({
  kind: Schema.Literal("db", "node"),
  name: Schema.String,
  host_id: Schema.String,
  protocol: Schema.optional(Schema.String),
  labels: Schema.Record({ key: Schema.String, value: Schema.String })
})

/**
 * A database session event as agents report them, with Teleport's field names. Agents are
 * trusted for what happened in a session, not for who they are: the proxy stamps `server_id`
 * from the agent's verified certificate.
 */
const DbSessionFields = {
  user: Schema.String,
  sid: Schema.String,
  server_id: Schema.String,
  db_service: Schema.String,
  db_protocol: Schema.String,
  db_uri: Schema.optional(Schema.String),
  db_user: Schema.String,
  db_name: Schema.optional(Schema.String),
  success: Schema.optional(Schema.Boolean),
  error: Schema.optional(Schema.String),
  "addr.remote": Schema.optional(Schema.String),
  /** Event index within the session. */
  ei: Schema.optional(Schema.Number),
  /** Why a session ended, when it did not end normally. */
  reason: Schema.optional(Schema.String)
}
export const DbSessionStart = Schema.Struct(DbSessionFields)
export const DbSessionQuery = Schema.Struct({
  ...DbSessionFields,
  db_query: Schema.String,
  db_query_parameters: Schema.optional(Schema.Array(Schema.NullOr(Schema.String)))
})
export const DbSessionEnd = Schema.Struct(DbSessionFields)
/**
 * One Redis command. Teleport records these as db.session.query (TDB02I) with the command as
 * text; we keep that text in `db_query` and add the name and arguments (each cut at 1 KiB, with
 * its length noted; passwords masked). TRD00I is our code: Teleport has none.
 */
export const DbRedisCommand = Schema.Struct({
  ...DbSessionFields,
  command: Schema.String,
  args: Schema.Array(Schema.String),
  db_query: Schema.String
})

/**
 * A MySQL command other than a query, with Teleport's event names and TMY codes (prepared
 * statements, COM_INIT_DB, the old administrative commands). Executions of prepared statements
 * are db.session.query events with their parameters, as the issue asks, not TMY01I.
 */
export const DbMysqlStatement = Schema.Struct({
  ...DbSessionFields,
  db_query: Schema.optional(Schema.String),
  statement_id: Schema.optional(Schema.Number),
  parameter_id: Schema.optional(Schema.Number),
  data_size: Schema.optional(Schema.Number),
  rows_count: Schema.optional(Schema.Number),
  schema_name: Schema.optional(Schema.String),
  process_id: Schema.optional(Schema.Number),
  subcommand: Schema.optional(Schema.String)
})

/**
 * SSH session events as node agents report them, with Teleport's field names. As with database
 * events, auth stamps `server_id` from the agent's verified certificate.
 */
const SshSessionFields = {
  user: Schema.String,
  login: Schema.String,
  sid: Schema.String,
  server_id: Schema.String,
  server_hostname: Schema.optional(Schema.String),
  "addr.remote": Schema.optional(Schema.String)
}
export const SshSessionStart = Schema.Struct({
  ...SshSessionFields,
  server_labels: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.String })),
  proto: Schema.optional(Schema.String),
  interactive: Schema.Boolean,
  /** "COLS:ROWS" of the PTY. */
  size: Schema.optional(Schema.String),
  initial_command: Schema.optional(Schema.Array(Schema.String)),
  /** "node" when the node records the session, "off" for sessions without a PTY. */
  session_recording: Schema.optional(Schema.String)
})
export const SshSessionEnd = Schema.Struct({
  ...SshSessionFields,
  interactive: Schema.Boolean,
  participants: Schema.Array(Schema.String),
  session_start: Schema.String,
  session_stop: Schema.String,
  /** SHA-256 of the whole recording file, so the chain vouches for the recording auth stores. */
  session_recording_sha256: Schema.optional(Schema.String),
  session_recording_bytes: Schema.optional(Schema.Number)
})
/** A command run in a session; T3002E when it failed or exited non-zero. */
export const SshExec = Schema.Struct({
  ...SshSessionFields,
  command: Schema.String,
  exitCode: Schema.String,
  exitError: Schema.optional(Schema.String)
})
/** A direct-tcpip (`ssh -L`) connection; T3003E when refused or the target was unreachable. */
export const SshPortForward = Schema.Struct({
  user: Schema.String,
  login: Schema.String,
  server_id: Schema.String,
  server_hostname: Schema.optional(Schema.String),
  "addr.remote": Schema.optional(Schema.String),
  addr: Schema.String,
  success: Schema.Boolean,
  error: Schema.optional(Schema.String)
})
/** A file transferred (scp, sftp): T3004I download, T3005I upload. */
export const SshFileTransfer = Schema.Struct({
  ...SshSessionFields,
  path: Schema.String,
  action: Schema.Literal("download", "upload"),
  command: Schema.optional(Schema.String)
})
/** The node closed a client's connection for what it sent (a window-change storm, ...). */
export const ClientDisconnect = Schema.Struct({
  user: Schema.String,
  login: Schema.optional(Schema.String),
  sid: Schema.optional(Schema.String),
  server_id: Schema.String,
  server_hostname: Schema.optional(Schema.String),
  "addr.remote": Schema.optional(Schema.String),
  reason: Schema.String
})

/**
 * The registry: every event type with its code and payload schema. Adding an event type means
 * adding a row here; an event whose type or payload does not decode stops replay at its seq.
 */
export const EventTypes = {
  "user.create": { code: "T1002I", payload: UserCreated },
  "user.update": { code: "T1003I", payload: UserUpdated },
  "user.delete": { code: "T1004I", payload: UserDeleted },
  "role.created": { code: "T9000I", payload: RoleCreated },
  "role.deleted": { code: "T9001I", payload: RoleDeleted },
  "ca.create": { code: "TCA00I", payload: CaCreated },
  "ca.rotate": { code: "TCA01I", payload: CaRotated },
  // T1000W on failure
  "user.login": { code: "T1000I", payload: UserLogin },
  "cert.create": { code: "TC000I", payload: CertCreated },
  "user.password_change": { code: "T1005I", payload: PasswordChanged },
  "reset_password_token.create": { code: "T6000I", payload: InviteCreated },
  "lock.created": { code: "T9006I", payload: LockCreated },
  "lock.deleted": { code: "T9007I", payload: LockDeleted },
  auth: { code: "T3007W", payload: AuthFailure },
  "join_token.create": { code: "TJT00I", payload: JoinTokenCreated },
  "join_token.delete": { code: "TJT01I", payload: JoinTokenDeleted },
  // TJ001E on failure
  "instance.join": { code: "TJ001I", payload: InstanceJoin },
  /** An agent renewed its host certificate before expiry (same host id, same role). */
  "instance.renew": { code: "TJ002I", payload: InstanceJoin },
  "resource.appeared": { code: "TRS00I", payload: ResourcePresence },
  "resource.expired": { code: "TRS01I", payload: ResourcePresence },
  /** An agentless OpenSSH node registered (or changed) with `tctl create`; TNA codes are ours. */
  "node.created": { code: "TNA00I", payload: AgentlessNodeFields },
  "node.deleted": { code: "TNA01I", payload: Schema.Struct({ name: Schema.String }) },
  "session.start": { code: "T2000I", payload: SshSessionStart },
  "session.end": { code: "T2004I", payload: SshSessionEnd },
  // T3002E when the command failed
  exec: { code: "T3002I", payload: SshExec },
  // T3003E when refused
  port: { code: "T3003I", payload: SshPortForward },
  // T3005I for uploads
  scp: { code: "T3004I", payload: SshFileTransfer },
  "client.disconnect": { code: "T3006I", payload: ClientDisconnect },
  // TDB00W when denied
  "db.session.start": { code: "TDB00I", payload: DbSessionStart },
  "db.session.query": { code: "TDB02I", payload: DbSessionQuery },
  "db.session.end": { code: "TDB01I", payload: DbSessionEnd },
  "db.session.redis.command": { code: "TRD00I", payload: DbRedisCommand },
  "db.session.mysql.statements.prepare": { code: "TMY00I", payload: DbMysqlStatement },
  "db.session.mysql.statements.send_long_data": { code: "TMY02I", payload: DbMysqlStatement },
  "db.session.mysql.statements.close": { code: "TMY03I", payload: DbMysqlStatement },
  "db.session.mysql.statements.reset": { code: "TMY04I", payload: DbMysqlStatement },
  "db.session.mysql.statements.fetch": { code: "TMY05I", payload: DbMysqlStatement },
  "db.session.mysql.init_db": { code: "TMY07I", payload: DbMysqlStatement },
  "db.session.mysql.create_db": { code: "TMY08I", payload: DbMysqlStatement },
  "db.session.mysql.drop_db": { code: "TMY09I", payload: DbMysqlStatement },
  "db.session.mysql.shut_down": { code: "TMY10I", payload: DbMysqlStatement },
  "db.session.mysql.process_kill": { code: "TMY11I", payload: DbMysqlStatement },
  "db.session.mysql.debug": { code: "TMY12I", payload: DbMysqlStatement },
  "db.session.mysql.refresh": { code: "TMY13I", payload: DbMysqlStatement }
} as const satisfies Record<string, { readonly code: string; readonly payload: Schema.Schema.AnyNoContext }>

export type EventType = keyof typeof EventTypes
export type PayloadOf<T extends EventType> = Schema.Schema.Type<(typeof EventTypes)[T]["payload"]>

const variant = <T extends EventType>(type: T) =>
  Schema.Struct({ type: Schema.Literal(type), payload: EventTypes[type].payload as (typeof EventTypes)[T]["payload"] })

/** What happened: `{ type, payload }`, discriminated by `type`. */
export const DomainEvent = Schema.Union(
  variant("user.create"),
  variant("user.update"),
  variant("user.delete"),
  variant("role.created"),
  variant("role.deleted"),
  variant("ca.create"),
  variant("ca.rotate"),
  variant("user.login"),
  variant("cert.create"),
  variant("user.password_change"),
  variant("reset_password_token.create"),
  variant("lock.created"),
  variant("lock.deleted"),
  variant("auth"),
  variant("join_token.create"),
  variant("join_token.delete"),
  variant("instance.join"),
  variant("instance.renew"),
  variant("resource.appeared"),
  variant("resource.expired"),
  variant("node.created"),
  variant("node.deleted"),
  variant("session.start"),
  variant("session.end"),
  variant("exec"),
  variant("port"),
  variant("scp"),
  variant("client.disconnect"),
  variant("db.session.start"),
  variant("db.session.query"),
  variant("db.session.end"),
  variant("db.session.redis.command"),
  variant("db.session.mysql.statements.prepare"),
  variant("db.session.mysql.statements.send_long_data"),
  variant("db.session.mysql.statements.close"),
  variant("db.session.mysql.statements.reset"),
  variant("db.session.mysql.statements.fetch"),
  variant("db.session.mysql.init_db"),
  variant("db.session.mysql.create_db"),
  variant("db.session.mysql.drop_db"),
  variant("db.session.mysql.shut_down"),
  variant("db.session.mysql.process_kill"),
  variant("db.session.mysql.debug"),
  variant("db.session.mysql.refresh")
)
export type DomainEvent = typeof DomainEvent.Type

/** An event as the store hands it out, with its place in the log and in the chain. */
export const CommittedEvent = Schema.extend(
  Schema.Struct({
    seq: Schema.Int.pipe(Schema.positive()),
    id: Schema.UUID,
    code: Schema.String,
    time: Rfc3339Millis,
    stream: Schema.String,
    version: Schema.Int.pipe(Schema.positive()),
    actor: Schema.String,
    prev_hash: Schema.String,
    hash: Schema.String
  }),
  DomainEvent
)
export type CommittedEvent = typeof CommittedEvent.Type

/** Builds a typed event value, with the registry's code unless another applies (T1000W). */
export const make = <T extends EventType>(type: T, payload: PayloadOf<T>, code: string = EventTypes[type].code) =>
  ({ type, code, payload }) as { readonly type: T; readonly code: string; readonly payload: PayloadOf<T> }
