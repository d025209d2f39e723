/**
 * Roles in Teleport's v7 shape (`kind: role`, `version: v7`, `metadata`, `spec.allow|deny|options`).
 * Pure data; the access decision lives in `Rbac.ts`, YAML parsing in `RoleYaml.ts`.
 */
import { Schema } from "effect"

/** A label selector value: one value or a list; `*` matches anything, `^...$` is a regular expression. */
export const LabelValues = Schema.Union(Schema.String, Schema.Array(Schema.String))
export type LabelValues = typeof LabelValues.Type

export const Labels = Schema.Record({ key: Schema.String, value: LabelValues })
export type Labels = typeof Labels.Type

export const Verb = Schema.Literal("list", "read", "create", "update", "delete", "*")

/** An admin-API rule: which verbs on which resources (`role`, `user`, `event`, `session`, `*`, ...). */
export class Rule extends Schema.Class<Rule>("Rule")({
  resources: Schema.Array(Schema.String),
  verbs: Schema.Array(Verb)
}) {}

const StringList = Schema.optional(Schema.Array(Schema.String))

/** One side (allow or deny) of a role. Strings may hold trait templates such as `{{internal.logins}}`. */
export class RoleConditions extends Schema.Class<RoleConditions>("RoleConditions")({
  logins: StringList,
  node_labels: Schema.optional(Labels),
  db_labels: Schema.optional(Labels),
  db_users: StringList,
  db_names: StringList,
  rules: Schema.optional(Schema.Array(Rule))
}) {}

/** A Go-style duration as Teleport writes it: `8h`, `30m`, `1h30m`, `45s`. */
export const Duration = Schema.String.pipe(
  Schema.pattern(/^(\d+h)?(\d+m)?(\d+s)?$/, { message: () => "expected a duration such as 8h, 30m or 1h30m" }),
  Schema.filter((s) => s.length > 0, { message: () => "expected a duration such as 8h, 30m or 1h30m" })
)

export class RoleOptions extends Schema.Class<RoleOptions>("RoleOptions")({
  max_session_ttl: Schema.optional(Duration),
  client_idle_timeout: Schema.optional(Duration),
  disconnect_expired_cert: Schema.optional(Schema.Boolean)
}) {}

export const RoleName = Schema.String.pipe(
  Schema.pattern(/^[a-zA-Z0-9][a-zA-Z0-9._@-]{0,127}$/, {
    message: () => "a role name is 1-128 letters, digits or . _ @ - and starts with a letter or digit"
  }),
  Schema.brand("RoleName")
)
export type RoleName = typeof RoleName.Type

export class RoleMetadata extends Schema.Class<RoleMetadata>("RoleMetadata")({
  name: RoleName,
  description: Schema.optional(Schema.String),
  labels: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.String }))
}) {}

export class RoleSpec extends Schema.Class<RoleSpec>("RoleSpec")({
  allow: Schema.optional(RoleConditions),
  deny: Schema.optional(RoleConditions),
  options: Schema.optional(RoleOptions)
}) {}

export class Role extends Schema.Class<Role>("Role")({
  kind: Schema.Literal("role"),
  version: Schema.Literal("v7"),
  metadata: RoleMetadata,
  spec: RoleSpec
}) {}

/** Traits a user carries; `logins`, `db_users`, `db_names` are the internal ones templates name. */
export const Traits = Schema.Record({ key: Schema.String, value: Schema.Array(Schema.String) })
export type Traits = typeof Traits.Type
