/**
 * The preset roles every cluster has, after Teleport's `lib/services/presets.go`:
 *
 * - `access`: reach every node and database, as the logins, db users and db names in the user's
 *   internal traits. Teleport also lets it read sessions the user took part in, through a `where`
 *   clause (`contains(session.participants, user.metadata.name)`); our rules have no `where`, and
 *   an unconditional session rule would show everyone's sessions, so it has no rules at all.
 * - `editor`: administer the cluster's configuration (read-write on users, roles, tokens, CAs,
 *   connectors, databases, nodes, locks) and read the audit log and sessions. As in Teleport it
 *   cannot write sessions or events: the record of what happened is not editable.
 * - `auditor`: read the audit log and session recordings, nothing else.
 *
 * All three use `max_session_ttl: 30h`, Teleport's value for its presets (`MaxCertDuration`).
 */
import { Schema } from "effect"
import { Role } from "./Role.ts"

const RW = ["list", "create", "read", "update", "delete"] as const
const RO = ["list", "read"] as const

const PRESET_MAX_SESSION_TTL = "30h"

const make = (name: string, description: string, spec: unknown): Role =>
  Schema.decodeUnknownSync(Role)({ kind: "role", version: "v7", metadata: { name, description }, spec })

export const access: Role = make("access", "Access to all nodes and databases as the user's own logins", {
  allow: {
    logins: ["{{internal.logins}}"],
    node_labels: { "*": "*" },
    db_labels: { "*": "*" },
    db_users: ["{{internal.db_users}}"],
    db_names: ["{{internal.db_names}}"],
    rules: []
  },
  options: { max_session_ttl: PRESET_MAX_SESSION_TTL }
})

export const editor: Role = make("editor", "Edit cluster configuration", {
  allow: {
    rules: [
      { resources: ["user", "role", "token", "cert_authority", "auth_connector", "db", "node", "lock"], verbs: RW },
      { resources: ["event", "session"], verbs: RO }
    ]
  },
  options: { max_session_ttl: PRESET_MAX_SESSION_TTL }
})

export const auditor: Role = make("auditor", "Review the audit log and session recordings", {
  allow: {
    rules: [{ resources: ["event", "session"], verbs: RO }]
  },
  options: { max_session_ttl: PRESET_MAX_SESSION_TTL }
})

/** The presets by name. */
export const presets: ReadonlyMap<string, Role> = new Map([
  ["access", access],
  ["editor", editor],
  ["auditor", auditor]
])
