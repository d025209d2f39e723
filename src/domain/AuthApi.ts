/**
 * The auth service's API: each method is a request and a response Schema. The same definitions
 * serve every transport (HTTP on the admin socket for `tctl`, the bus for proxies), so a method is
 * declared once and its bytes are checked on both sides.
 */
import { Schema } from "effect"
import { AgentlessNodeFields, NodeResource } from "./AgentlessNode.ts"
import { CaKeySet, CaType, JoinRole, RotationPhase } from "./Event.ts"
import { Role, Traits } from "./Role.ts"
import { DatabasesResponse, NodesResponse, DbCertRequest, DbCertResponse, FindResponse, InviteInfo, LoginRequest, LoginResponse } from "./WebApi.ts"

export const User = Schema.Struct({
  name: Schema.String,
  roles: Schema.Array(Schema.String),
  traits: Traits,
  created_by: Schema.optional(Schema.String),
  created_at: Schema.optional(Schema.String)
})
export type User = typeof User.Type

export const Status = Schema.Struct({
  cluster_name: Schema.String,
  version: Schema.String,
  storage: Schema.String,
  bus: Schema.String,
  head_seq: Schema.Number,
  projector: Schema.Struct({
    position: Schema.Number,
    audit_checkpoint: Schema.Number,
    error: Schema.optional(Schema.String)
  }),
  outbox: Schema.Struct({ position: Schema.Number, error: Schema.optional(Schema.String) }),
  users: Schema.Number,
  roles: Schema.Number
})
export type Status = typeof Status.Type

export const AuditSearch = Schema.Struct({
  from: Schema.optional(Schema.String),
  to: Schema.optional(Schema.String),
  types: Schema.optional(Schema.Array(Schema.String)),
  user: Schema.optional(Schema.String),
  sid: Schema.optional(Schema.String),
  limit: Schema.Int.pipe(Schema.between(1, 100_000)),
  order: Schema.optional(Schema.Literal("asc", "desc"))
})

export const VerifyResult = Schema.Struct({
  ok: Schema.Boolean,
  count: Schema.Number,
  broken_at: Schema.optional(Schema.Number),
  reason: Schema.optional(Schema.String)
})

export const Invite = Schema.Struct({ url: Schema.String, expires: Schema.String })

export const CaInfo = Schema.Struct({
  type: CaType,
  cluster_name: Schema.String,
  phase: Schema.String,
  active: CaKeySet,
  next: Schema.optional(CaKeySet),
  signing_key_id: Schema.String,
  trusted_key_ids: Schema.Array(Schema.String)
})
export type CaInfo = typeof CaInfo.Type

export const SignRequest = Schema.Struct({
  kind: Schema.Literal("user", "host", "db"),
  /** user: the user name */
  user: Schema.optional(Schema.String),
  /** host/db: DNS names and IP addresses (IPs become IP SANs) */
  hosts: Schema.optional(Schema.Array(Schema.String)),
  ttl_seconds: Schema.Int.pipe(Schema.positive()),
  ssh_pub_key: Schema.optional(Schema.String),
  tls_pub_key: Schema.optional(Schema.String)
})

export const SignResponse = Schema.Struct({
  ssh_cert: Schema.optional(Schema.String),
  tls_cert: Schema.optional(Schema.String),
  expires: Schema.String,
  /** PEM certificates of the CA the peer should trust (host CA for users, user CA for hosts, db CA for db). */
  tls_ca_certs: Schema.Array(Schema.String),
  /** OpenSSH public keys of the user CA and of the host CA. */
  user_ca_ssh_keys: Schema.Array(Schema.String),
  host_ca_ssh_keys: Schema.Array(Schema.String)
})

/** How a proxy reports the client's address with a login. */
export const WebLogin = Schema.extend(LoginRequest, Schema.Struct({ remote_addr: Schema.optional(Schema.String) }))

/** A session recording as `tsh recordings ls` lists it; who and where come from the audit log. */
export const RecordingSummary = Schema.Struct({
  session_id: Schema.String,
  user: Schema.optional(Schema.String),
  login: Schema.optional(Schema.String),
  server: Schema.optional(Schema.String),
  start: Schema.optional(Schema.String),
  end: Schema.optional(Schema.String),
  host_id: Schema.String,
  size: Schema.Number,
  done: Schema.Boolean,
  /** SHA-256 of the bytes auth holds, once complete. */
  sha256: Schema.optional(Schema.String),
  /** `session_recording_sha256` of the session's `session.end` event: what the chain vouches for. */
  session_end_sha256: Schema.optional(Schema.String),
  created: Schema.String,
  updated: Schema.String
})
export const RecordingsResponse = Schema.Struct({ recordings: Schema.Array(RecordingSummary) })
/** Part of a recording: base64 `data` from `offset`; the whole file is `size` bytes. */
export const RecordingChunk = Schema.extend(RecordingSummary, Schema.Struct({ offset: Schema.Number, data: Schema.String }))

export const Empty = Schema.Struct({})
const ByName = Schema.Struct({ name: Schema.String })

export const AuthMethods = {
  status: { request: Empty, response: Status },
  "users.create": {
    request: Schema.Struct({ name: Schema.String, roles: Schema.Array(Schema.String), traits: Traits }),
    response: Schema.Struct({ user: User, invite: Invite })
  },
  "users.reset": { request: ByName, response: Invite },
  "users.set_password": { request: Schema.Struct({ name: Schema.String, password: Schema.String }), response: Empty },
  "users.unlock": { request: ByName, response: Empty },
  "ca.list": { request: Empty, response: Schema.Array(CaInfo) },
  "ca.rotate": { request: Schema.Struct({ type: CaType, phase: RotationPhase }), response: CaInfo },
  "certs.sign": { request: SignRequest, response: SignResponse },
  // Called by proxies over the bus:
  "web.find": { request: Empty, response: FindResponse },
  "web.login": { request: WebLogin, response: LoginResponse },
  "web.invite_info": { request: Schema.Struct({ token: Schema.String }), response: InviteInfo },
  "web.invite_complete": {
    request: Schema.Struct({ token: Schema.String, password: Schema.String, otp_token: Schema.optional(Schema.String) }),
    response: Schema.Struct({ user: Schema.String })
  },
  "web.proxy_cert": {
    request: Schema.Struct({ host_id: Schema.String, hosts: Schema.Array(Schema.String), tls_pub_key: Schema.String }),
    response: SignResponse
  },
  "web.trusted_user_cas": {
    request: Empty,
    /** `ssh_keys`: the user CA's SSH public keys (OpenSSH lines), for SSH servers that check user certificates. */
    response: Schema.Struct({ tls_ca_certs: Schema.Array(Schema.String), ssh_keys: Schema.optional(Schema.Array(Schema.String)) })
  },
  "tokens.create": {
    request: Schema.Struct({ roles: Schema.NonEmptyArray(JoinRole), ttl_seconds: Schema.Int.pipe(Schema.between(60, 30 * 24 * 3600)) }),
    response: Schema.Struct({ token: Schema.String, name: Schema.String, expires: Schema.String, proxy: Schema.String })
  },
  "tokens.list": {
    request: Empty,
    response: Schema.Array(Schema.Struct({ name: Schema.String, roles: Schema.Array(JoinRole), expires: Schema.String }))
  },
  "tokens.delete": { request: ByName, response: Empty },
  "web.join": {
    request: Schema.Struct({
      token: Schema.String,
      role: JoinRole,
      node_name: Schema.String,
      tls_pub_key: Schema.String,
      ssh_pub_key: Schema.optional(Schema.String),
      remote_addr: Schema.optional(Schema.String)
    }),
    response: Schema.extend(SignResponse, Schema.Struct({ host_id: Schema.String }))
  },
  /**
   * A new host certificate for an agent whose current one the proxy verified: same host id, name
   * and role, fresh key. Agents call it when half their certificate's life has passed.
   */
  "web.host_renew": {
    request: Schema.Struct({
      host_id: Schema.String,
      node_name: Schema.String,
      role: JoinRole,
      tls_pub_key: Schema.String,
      ssh_pub_key: Schema.optional(Schema.String)
    }),
    response: Schema.extend(SignResponse, Schema.Struct({ host_id: Schema.String }))
  },
  "web.trusted_host_cas": { request: Empty, response: Schema.Struct({ tls_ca_certs: Schema.Array(Schema.String) }) },
  "web.agent_presence": {
    request: Schema.Struct({
      host_id: Schema.String,
      node_name: Schema.String,
      state: Schema.Literal("connected", "gone"),
      databases: Schema.Array(
        Schema.Struct({ name: Schema.String, protocol: Schema.String, labels: Schema.Record({ key: Schema.String, value: Schema.String }) })
      ),
      /** The SSH node this agent is, if it is one. */
      node: Schema.optional(
        Schema.Struct({
          name: Schema.String,
          labels: Schema.Record({ key: Schema.String, value: Schema.String }),
          host_key: Schema.optional(Schema.String)
        })
      )
    }),
    response: Empty
  },
  "web.nodes": { request: Schema.Struct({ user: Schema.String }), response: NodesResponse },
  "web.databases": { request: Schema.Struct({ user: Schema.String }), response: DatabasesResponse },
  "web.db_cert": { request: Schema.extend(DbCertRequest, Schema.Struct({ user: Schema.String })), response: DbCertResponse },
  "web.db_session": {
    request: Schema.Struct({ user: Schema.String }),
    response: Schema.Struct({ roles: Schema.Array(Role), traits: Traits })
  },
  "web.db_client_cert": {
    request: Schema.Struct({ host_id: Schema.String, db_user: Schema.String, tls_pub_key: Schema.String }),
    response: Schema.Struct({ tls_cert: Schema.String, tls_ca_certs: Schema.Array(Schema.String), expires: Schema.String })
  },
  "web.agent_events": {
    request: Schema.Struct({
      host_id: Schema.String,
      /** The agent's role from its host certificate ("Db", "Node"): which events it may report. */
      system_role: Schema.optional(Schema.String),
      events: Schema.Array(
        Schema.Struct({ id: Schema.UUID, type: Schema.String, code: Schema.String, time: Schema.String, payload: Schema.Unknown })
      )
    }),
    response: Schema.Struct({ stored: Schema.Number })
  },
  "web.cert_refused": {
    request: Schema.Struct({ user: Schema.String, reason: Schema.String, remote_addr: Schema.optional(Schema.String) }),
    response: Empty
  },
  "users.update": {
    request: Schema.Struct({
      name: Schema.String,
      roles: Schema.optional(Schema.Array(Schema.String)),
      traits: Schema.optional(Traits)
    }),
    response: User
  },
  "users.delete": { request: ByName, response: Empty },
  "users.get": { request: ByName, response: User },
  "users.list": { request: Empty, response: Schema.Array(User) },
  "roles.upsert": {
    request: Schema.Struct({ role: Role, force: Schema.Boolean }),
    response: Schema.Struct({ name: Schema.String, created: Schema.Boolean })
  },
  "roles.delete": { request: ByName, response: Empty },
  "roles.get": { request: ByName, response: Role },
  "roles.list": { request: Empty, response: Schema.Array(Role) },
  "audit.search": {
    request: AuditSearch,
    response: Schema.Array(Schema.Record({ key: Schema.String, value: Schema.Unknown }))
  },
  "audit.verify": { request: Empty, response: VerifyResult },
  "events.replay": {
    request: Empty,
    response: Schema.Struct({ events: Schema.Number, millis: Schema.Number })
  },
  // Session recordings (src/actors/SessionRecordings.ts):
  "web.recording_upload": {
    request: Schema.Struct({
      host_id: Schema.String,
      session_id: Schema.String,
      /** Byte offset of `data` in the session's .cast file. */
      offset: Schema.Int.pipe(Schema.nonNegative()),
      /** base64 of the bytes from `offset`. */
      data: Schema.String,
      done: Schema.Boolean,
      /** With `done`: SHA-256 (hex) of the whole file, checked against what auth holds. */
      sha256: Schema.optional(Schema.String)
    }),
    /** `stored`: bytes auth holds now; the uploader continues from there (also after a gap). */
    response: Schema.Struct({ stored: Schema.Number, sha256: Schema.optional(Schema.String) })
  },
  "web.recordings_list": { request: Schema.Struct({ user: Schema.String }), response: RecordingsResponse },
  // Agentless OpenSSH nodes (src/actors/AgentlessNodes.ts):
  "nodes.upsert": {
    request: Schema.Struct({ node: NodeResource, force: Schema.Boolean }),
    response: Schema.Struct({ name: Schema.String, created: Schema.Boolean })
  },
  "nodes.delete": { request: ByName, response: Empty },
  "nodes.list": { request: Empty, response: Schema.Array(AgentlessNodeFields) },
  /** The private host key a proxy presents for an agentless node (OpenSSH format). */
  "web.agentless_host_key": { request: Schema.Struct({ node: Schema.String }), response: Schema.Struct({ private_key: Schema.String }) },
  /** The proxy opens a session on an agentless node: RBAC, then a short certificate for the login. */
  "web.agentless_session": {
    request: Schema.Struct({
      user: Schema.String,
      node: Schema.String,
      login: Schema.String,
      /** The role names the user's certificate carries. */
      cert_roles: Schema.optional(Schema.Array(Schema.String)),
      /** The proxy's own key for the upstream connection. */
      ssh_pub_key: Schema.String,
      remote_addr: Schema.optional(Schema.String)
    }),
    response: Schema.Struct({ node: AgentlessNodeFields, ssh_cert: Schema.String, expires: Schema.String })
  },
  "web.recording_get": {
    request: Schema.Struct({
      user: Schema.String,
      session_id: Schema.String,
      offset: Schema.optional(Schema.Int.pipe(Schema.nonNegative())),
      limit: Schema.optional(Schema.Int.pipe(Schema.positive()))
    }),
    response: RecordingChunk
  }
} as const

export type AuthMethod = keyof typeof AuthMethods
export type RequestOf<M extends AuthMethod> = Schema.Schema.Type<(typeof AuthMethods)[M]["request"]>
export type ResponseOf<M extends AuthMethod> = Schema.Schema.Type<(typeof AuthMethods)[M]["response"]>

/** The methods a proxy may call over the bus; everything else is for the admin socket only. */
export const PROXY_METHODS: ReadonlyArray<AuthMethod> = [
  "web.find",
  "web.login",
  "web.invite_info",
  "web.invite_complete",
  "web.proxy_cert",
  "web.trusted_user_cas",
  "web.cert_refused",
  "web.join",
  "web.host_renew",
  "web.trusted_host_cas",
  "web.databases",
  "web.nodes",
  "web.db_cert",
  "web.db_session",
  "web.db_client_cert",
  "web.agent_events",
  "web.recording_upload",
  "web.recordings_list",
  "web.recording_get",
  "web.agentless_session",
  "web.agentless_host_key"
]
