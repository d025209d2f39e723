/**
 * The proxy's public HTTPS API under `/v1/webapi`, as `tsh` and the web pages use it. Shapes
 * follow Teleport's web API where it has one (`/webapi/find`, `/webapi/ssh/certs`), with our names
 * where it does not.
 */
import { Schema } from "effect"

/** `GET /v1/webapi/find`: what a client needs to know before it logs in. */
export const FindResponse = Schema.Struct({
  cluster_name: Schema.String,
  server_version: Schema.String,
  auth: Schema.Struct({
    type: Schema.Literal("local"),
    second_factor: Schema.Literal("otp", "off")
  }),
  proxy: Schema.Struct({
    web_public_addr: Schema.String,
    ssh_public_addr: Schema.optional(Schema.String),
    mysql_public_addr: Schema.optional(Schema.String)
  })
})
export type FindResponse = typeof FindResponse.Type

/**
 * `POST /v1/webapi/ssh/certs`: password (+ one-time code) login. The client sends its own public
 * keys; private keys never leave the client.
 */
export const LoginRequest = Schema.Struct({
  user: Schema.String,
  password: Schema.String,
  otp_token: Schema.optional(Schema.String),
  /** OpenSSH public key line (`ssh-ed25519 AAAA...`). */
  pub_key: Schema.String,
  /** PEM SubjectPublicKeyInfo of an ECDSA P-256 key. */
  tls_pub_key: Schema.String,
  /** Requested certificate lifetime in seconds; capped by the roles' max_session_ttl. */
  ttl_seconds: Schema.optional(Schema.Int.pipe(Schema.positive()))
})
export type LoginRequest = typeof LoginRequest.Type

export const LoginResponse = Schema.Struct({
  username: Schema.String,
  cluster_name: Schema.String,
  /** OpenSSH user certificate line. */
  cert: Schema.String,
  /** PEM X.509 user certificate. */
  tls_cert: Schema.String,
  /** PEM certificates of the CAs a client should trust for the cluster's servers (host CA). */
  tls_ca_certs: Schema.Array(Schema.String),
  /** `@cert-authority` known_hosts lines for the host CA. */
  host_signers: Schema.Array(Schema.String),
  /** RFC 3339 expiry of both certificates. */
  expires: Schema.String,
  roles: Schema.Array(Schema.String),
  logins: Schema.Array(Schema.String)
})
export type LoginResponse = typeof LoginResponse.Type

/** `GET /v1/webapi/invite/<token>`: what the invite page shows before the user sets a password. */
export const InviteInfo = Schema.Struct({
  user: Schema.String,
  expires: Schema.String,
  second_factor: Schema.Literal("otp", "off"),
  /** Base32 TOTP secret to register, when second_factor is otp. */
  totp_secret: Schema.optional(Schema.String),
  /** `otpauth://totp/...` URI (the QR code's content). */
  totp_uri: Schema.optional(Schema.String)
})

/** `POST /v1/webapi/invite/<token>`: set the password (and confirm the TOTP device with a code). */
export const InviteCompleteRequest = Schema.Struct({
  password: Schema.String,
  otp_token: Schema.optional(Schema.String)
})

/** Every error answer: `{ "error": { "message": "..." } }` with an HTTP status. */
export const ErrorBody = Schema.Struct({ error: Schema.Struct({ message: Schema.String }) })

// ---------------------------------------------------------------------------------------------
// Database access. Both calls authenticate the user by the client certificate from `tsh login`
// (mTLS to the proxy's web port).

/** One database as `tsh db ls` shows it. */
export const DatabaseInfo = Schema.Struct({
  name: Schema.String,
  description: Schema.String,
  protocol: Schema.String,
  labels: Schema.Record({ key: Schema.String, value: Schema.String }),
  /** Database users the caller's roles allow here (after template expansion); `*` means any. */
  allowed_users: Schema.Array(Schema.String),
  /** The host id of the agent that serves it. */
  host_id: Schema.String
})
export type DatabaseInfo = typeof DatabaseInfo.Type

/** `GET /v1/webapi/databases`: the databases the caller's roles let them see (db_labels). */
export const DatabasesResponse = Schema.Struct({ databases: Schema.Array(DatabaseInfo) })

/** `GET /v1/webapi/nodes`: the SSH nodes the caller's roles let them see (node_labels, deny wins). */
export const NodeInfo = Schema.Struct({
  name: Schema.String,
  host_id: Schema.String,
  /** The node's host name as it reported it (its name, when it did not). */
  hostname: Schema.String,
  labels: Schema.Record({ key: Schema.String, value: Schema.String }),
  /** The node's SSH host key, one OpenSSH public key line; tsh pins it in known_hosts. */
  host_key: Schema.optional(Schema.String),
  /** `host:port` for nodes reached directly rather than through a tunnel (agentless nodes). */
  addr: Schema.optional(Schema.String),
  /** True for a stock sshd registered with `tctl create` rather than a node agent. */
  agentless: Schema.optional(Schema.Boolean),
  /** The logins the caller's roles allow on this node. */
  logins: Schema.Array(Schema.String)
})
export type NodeInfo = typeof NodeInfo.Type
export const NodesResponse = Schema.Struct({ nodes: Schema.Array(NodeInfo) })

/**
 * `POST /v1/webapi/db/certs`: a client certificate whose subject carries the database route
 * (1.3.9999.2.x), for `tsh db login`. The route is checked when the session starts, not here.
 */
export const DbCertRequest = Schema.Struct({
  service_name: Schema.String,
  db_user: Schema.String,
  db_name: Schema.optional(Schema.String),
  /** PEM SubjectPublicKeyInfo of the client's ECDSA P-256 key. */
  tls_pub_key: Schema.String,
  ttl_seconds: Schema.optional(Schema.Int.pipe(Schema.positive()))
})
export const DbCertResponse = Schema.Struct({
  tls_cert: Schema.String,
  /** The host CA, which signs the proxy's certificate (sslrootcert for psql). */
  tls_ca_certs: Schema.Array(Schema.String),
  expires: Schema.String,
  protocol: Schema.String
})
