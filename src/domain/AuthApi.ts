/**
 * The auth service's API: each method is a request and a response Schema. The same definitions
 * serve every transport (HTTP on the admin socket for `tctl`, the bus for proxies), so a method is
 * declared once and its bytes are checked on both sides.
 */
import { Schema } from "effect"
import { Role, Traits } from "./Role.ts"

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

const Empty = Schema.Struct({})
const ByName = Schema.Struct({ name: Schema.String })

export const AuthMethods = {
  status: { request: Empty, response: Status },
  "users.create": {
    request: Schema.Struct({ name: Schema.String, roles: Schema.Array(Schema.String), traits: Traits }),
    response: User
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
  }
} as const

export type AuthMethod = keyof typeof AuthMethods
export type RequestOf<M extends AuthMethod> = Schema.Schema.Type<(typeof AuthMethods)[M]["request"]>
export type ResponseOf<M extends AuthMethod> = Schema.Schema.Type<(typeof AuthMethods)[M]["response"]>
