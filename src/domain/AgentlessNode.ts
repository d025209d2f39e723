/**
 * Agentless OpenSSH nodes: a stock `sshd` that trusts the user CA (`TrustedUserCAKeys`), registered
 * by an administrator with `tctl create node.yaml` instead of running a node agent. The proxy
 * reaches it directly at `spec.addr`, terminates the user's SSH session itself and records it
 * (Teleport's recording-proxy mode, `src/actors/proxy/sshRecording.ts`).
 *
 *     kind: node
 *     version: v2
 *     sub_kind: openssh
 *     metadata:
 *       name: web-1
 *       labels: { env: prod }
 *     spec:
 *       addr: 10.0.0.5:22
 *       hostname: web-1.internal          # optional, defaults to the name
 *       host_key: ssh-ed25519-cert-v01@openssh.com AAAA...   # the sshd's host certificate (or key)
 *
 * `host_key` pins the sshd's host key. Why it is needed at all: ssh2 (the proxy's SSH client)
 * cannot negotiate host certificates, so the proxy compares the key the sshd presents with this
 * one. Given the `-cert.pub` that `tctl auth sign --host=... --format=openssh` wrote, auth checks on
 * `tctl create` that the host CA signed it for this node and pins the key inside it, which is what
 * checking the host certificate at each connection would establish; a plain public key line is
 * pinned as it is.
 */
import type { Either } from "effect"
import { Schema } from "effect"
import type { YamlDecodeError } from "./YamlDecode.ts"
import { decodeYamlDocuments } from "./YamlDecode.ts"

export const NodeName = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, {
    message: () => "a node name is 1-63 letters, digits or . _ - and starts with a letter or digit"
  })
)

export const HostPort = Schema.String.pipe(
  Schema.pattern(/^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):\d{1,5}$/, { message: () => "expected HOST:PORT, e.g. 10.0.0.5:22" }),
  Schema.filter((s) => Number(s.slice(s.lastIndexOf(":") + 1)) > 0 && Number(s.slice(s.lastIndexOf(":") + 1)) < 65536, {
    message: () => "the port must be 1-65535"
  })
)

const Labels = Schema.Record({ key: Schema.String, value: Schema.String })

/** `tctl create` / `tctl get nodes` form. */
export const NodeResource = Schema.Struct({
  kind: Schema.Literal("node"),
  version: Schema.optional(Schema.Literal("v2")),
  sub_kind: Schema.optional(Schema.Literal("openssh")),
  metadata: Schema.Struct({
    name: NodeName,
    description: Schema.optional(Schema.String),
    labels: Schema.optional(Labels)
  }),
  spec: Schema.Struct({
    addr: HostPort,
    hostname: Schema.optional(Schema.String),
    /** The sshd's host certificate or host public key, one OpenSSH line. */
    host_key: Schema.String
  })
})
export type NodeResource = typeof NodeResource.Type

/** A registered node as events and the RBAC view keep it: the pinned key is always a plain key line. */
export const AgentlessNodeFields = Schema.Struct({
  name: Schema.String,
  addr: Schema.String,
  hostname: Schema.String,
  labels: Labels,
  /** The pinned host public key, `ssh-ed25519 AAAA...`. */
  host_key: Schema.String,
  /** The host certificate it was pinned from, when one was given. */
  host_cert: Schema.optional(Schema.String),
  /**
   * The host key the proxy presents to users for this node, where it terminates their sessions
   * (its private half is in the secrets table, `agentlessHostKeyId`). Users' clients pin this one,
   * not the sshd's: they never talk to the sshd.
   */
  proxy_host_key: Schema.optional(Schema.String)
})
export type AgentlessNodeFields = typeof AgentlessNodeFields.Type

/** Parses `tctl create` input whose documents are all nodes. */
export const parseNodes = (text: string, source: string): Either.Either<ReadonlyArray<NodeResource>, YamlDecodeError> =>
  decodeYamlDocuments(NodeResource, text, source)

/** The YAML document kinds of a file, to route `tctl create` (roles and nodes are parsed apart). */
export const documentKinds = (docs: ReadonlyArray<unknown>): ReadonlyArray<string> =>
  docs.map((d) => (d !== null && typeof d === "object" && typeof (d as { kind?: unknown }).kind === "string" ? (d as { kind: string }).kind : ""))

/** The resource form of a stored node, for `tctl get nodes`. */
export const toResource = (n: AgentlessNodeFields): NodeResource => ({
  kind: "node",
  version: "v2",
  sub_kind: "openssh",
  metadata: { name: n.name, labels: { ...n.labels } },
  spec: { addr: n.addr, hostname: n.hostname, host_key: n.host_cert ?? n.host_key }
})

/** Where the private half of a node's `proxy_host_key` is kept. */
export const agentlessHostKeyId = (name: string) => `agentless/${name}/host_key`

/** The host id agentless nodes carry in listings and audit events (`server_id`). */
export const agentlessHostId = (name: string) => `openssh:${name}`

