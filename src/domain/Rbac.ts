/**
 * The access decision: pure functions of the user's roles (already resolved from the RBAC view)
 * and traits, in Teleport's order: every role's deny side first (any match denies, and deny wins
 * over any allow), then the allow sides (one fully matching role allows); nothing matching denies.
 *
 * Trait templates in logins, db_users, db_names and label values are expanded first, on both
 * sides. As in Teleport, a deny side only applies to resources its labels select: a deny with
 * `db_users: [postgres]` but no `db_labels` denies nothing; write `db_labels: {'*': '*'}`.
 */
import { Either, Option, Schema } from "effect"
import { expandSelector, matchLabels, type ResourceLabels } from "./Labels.ts"
import type { Role, RoleConditions, Traits } from "./Role.ts"
import { expandValues } from "./Template.ts"

/** Access granted, naming the role and fields that granted it. */
export class Allowed extends Schema.TaggedClass<Allowed>()("Allowed", {
  roleName: Schema.String,
  by: Schema.String
}) {}

/**
 * Access refused. `side` is "deny" when a deny rule matched (then `roleName` and `field` name it),
 * "none" when no role allowed (then `field` names the check that failed in the nearest role).
 * "allow" is reserved for refusals an allow side itself imposes.
 */
export class AccessDenied extends Schema.TaggedError<AccessDenied>()("AccessDenied", {
  message: Schema.String,
  roleName: Schema.optional(Schema.String),
  side: Schema.Literal("allow", "deny", "none"),
  field: Schema.String
}) {}

export type Decision = Either.Either<Allowed, AccessDenied>

export const WILDCARD = "*"

/** A database as the decision sees it. */
export interface DatabaseTarget {
  readonly name: string
  readonly labels: ResourceLabels
}

/** An SSH node as the decision sees it. */
export interface NodeTarget {
  readonly name: string
  readonly labels: ResourceLabels
}

const roleName = (role: Role): string => role.metadata.name

const has = (list: ReadonlyArray<string>, value: string): boolean => list.includes(value)
const hasOrWildcard = (list: ReadonlyArray<string>, value: string): boolean => list.includes(WILDCARD) || list.includes(value)

// ---------------------------------------------------------------------------------------------
// Databases

/**
 * May a user with these roles and traits connect to `db` as `dbUser`, to database `dbName`?
 * Pass `dbName` undefined for protocols without database names (MySQL, Redis): then `db_names`
 * is not consulted, as Teleport does.
 */
export const checkDatabaseAccess = (
  roles: ReadonlyArray<Role>,
  traits: Traits,
  db: DatabaseTarget,
  dbUser: string,
  dbName: string | undefined
): Decision => {
  const what = `access to db ${db.name} as db user ${dbUser}`
  const whatName = dbName === undefined ? what : `access to database ${dbName} on db ${db.name} as db user ${dbUser}`

  for (const role of roles) {
    const deny = role.spec.deny
    if (deny === undefined || !matchLabels(expandSelector(deny.db_labels, traits), db.labels)) continue
    // Deny: the labels select the database and any one matcher hits.
    if (hasOrWildcard(expandValues(deny.db_users, traits), dbUser)) {
      return denied(what, role, "deny", "db_users")
    }
    if (dbName !== undefined && hasOrWildcard(expandValues(deny.db_names, traits), dbName)) {
      return denied(whatName, role, "deny", "db_names")
    }
  }

  // Allow: the labels select the database and every matcher hits. Track how far the nearest role
  // got, so the refusal can say which field to look at.
  let nearest: "db_labels" | "db_users" | "db_names" = "db_labels"
  for (const role of roles) {
    const allow = role.spec.allow
    if (allow === undefined || !matchLabels(expandSelector(allow.db_labels, traits), db.labels)) continue
    if (!hasOrWildcard(expandValues(allow.db_users, traits), dbUser)) {
      if (nearest === "db_labels") nearest = "db_users"
      continue
    }
    if (dbName !== undefined && !hasOrWildcard(expandValues(allow.db_names, traits), dbName)) {
      nearest = "db_names"
      continue
    }
    const fields = dbName === undefined ? "allow.db_labels, allow.db_users" : "allow.db_labels, allow.db_users, allow.db_names"
    return Either.right(new Allowed({ roleName: roleName(role), by: `role ${roleName(role)} (${fields})` }))
  }
  return notAllowed(nearest === "db_names" ? whatName : what, nearest)
}

// ---------------------------------------------------------------------------------------------
// SSH nodes

/**
 * May a user log in to `node` as `login`? Deny logins accept `*` (deny every login); allow
 * logins are exact, as in Teleport, which refuses a wildcard login on the allow side.
 */
export const checkNodeAccess = (
  roles: ReadonlyArray<Role>,
  traits: Traits,
  node: NodeTarget,
  login: string
): Decision => {
  const what = `access to node ${node.name} as login ${login}`
  for (const role of roles) {
    const deny = role.spec.deny
    if (deny === undefined || !matchLabels(expandSelector(deny.node_labels, traits), node.labels)) continue
    if (hasOrWildcard(expandValues(deny.logins, traits), login)) return denied(what, role, "deny", "logins")
  }
  let nearest: "node_labels" | "logins" = "node_labels"
  for (const role of roles) {
    const allow = role.spec.allow
    if (allow === undefined || !matchLabels(expandSelector(allow.node_labels, traits), node.labels)) continue
    if (login === WILDCARD || !has(expandValues(allow.logins, traits), login)) {
      nearest = "logins"
      continue
    }
    return Either.right(new Allowed({ roleName: roleName(role), by: `role ${roleName(role)} (allow.node_labels, allow.logins)` }))
  }
  return notAllowed(what, nearest)
}

/** The logins a certificate carries: the expanded allow logins of all roles (deny sides are checked per node). */
export const allowedLogins = (roles: ReadonlyArray<Role>, traits: Traits): Array<string> => {
  const out = new Set<string>()
  for (const role of roles) for (const l of expandValues(role.spec.allow?.logins, traits)) if (l !== WILDCARD) out.add(l)
  return [...out].sort()
}

// ---------------------------------------------------------------------------------------------
// Admin API rules

const ruleMatches = (conditions: RoleConditions | undefined, resource: string, verb: string): boolean =>
  (conditions?.rules ?? []).some((r) => hasOrWildcard(r.resources, resource) && (r.verbs as ReadonlyArray<string>).some((v) => v === WILDCARD || v === verb))

/** May these roles perform `verb` (list, read, create, update, delete) on `resource` (role, user, ...)? */
export const checkRule = (roles: ReadonlyArray<Role>, resource: string, verb: string): Decision => {
  const what = `action ${verb} on ${resource}`
  for (const role of roles) if (ruleMatches(role.spec.deny, resource, verb)) return denied(what, role, "deny", "rules")
  for (const role of roles) {
    if (ruleMatches(role.spec.allow, resource, verb)) {
      return Either.right(new Allowed({ roleName: roleName(role), by: `role ${roleName(role)} (allow.rules)` }))
    }
  }
  return notAllowed(what, "rules")
}

// ---------------------------------------------------------------------------------------------
// Options

const MS = { h: 3_600_000, m: 60_000, s: 1_000, ms: 1, us: 0.001, "µs": 0.001, ns: 0.000_001 } as const

const GO_DURATION = /^(?:(?:\d+(?:\.\d*)?|\.\d+)(?:h|m|s|ms|us|µs|ns))+$/

/**
 * Parses a Go duration (`8h`, `1h30m`, `45s`, `1.5h`, `500ms`; `0` is zero) to milliseconds;
 * `None` for anything else.
 */
export const parseDurationOption = (text: string): Option.Option<number> => {
  const s = text.trim()
  if (s === "0") return Option.some(0)
  if (!GO_DURATION.test(s)) return Option.none()
  let total = 0
  for (const m of s.matchAll(/(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)/g)) total += Number(m[1]) * MS[m[2] as keyof typeof MS]
  return Option.some(Math.round(total))
}

/**
 * Parses a Go duration to milliseconds, for text already validated (role options, a decoded
 * config). Throws a RangeError on anything else; use `parseDurationOption` for untrusted text.
 */
export const parseDuration = (text: string): number =>
  Option.getOrThrowWith(parseDurationOption(text), () => new RangeError(`${JSON.stringify(text)} is not a duration such as 8h, 30m or 1h30m`))

/** The session TTL when no role sets `max_session_ttl`. */
export const DEFAULT_MAX_SESSION_TTL_MS = 12 * 3_600_000

const durations = (values: ReadonlyArray<string | undefined>): Array<number> =>
  values.flatMap((v) => (v === undefined ? [] : Option.toArray(parseDurationOption(v))))

/** The longest certificate a user may get: the smallest `max_session_ttl` of their roles (12h if none set one). */
export const maxSessionTtl = (roles: ReadonlyArray<Role>): number => {
  const ttls = durations(roles.map((r) => r.spec.options?.max_session_ttl)).filter((ms) => ms > 0)
  return ttls.length === 0 ? DEFAULT_MAX_SESSION_TTL_MS : Math.min(...ttls)
}

/** Whether sessions end when the certificate expires: true if any role asks for it (the stricter wins). */
export const disconnectExpiredCert = (roles: ReadonlyArray<Role>): boolean =>
  roles.some((r) => r.spec.options?.disconnect_expired_cert === true)

/** Idle timeout in ms: the smallest non-zero `client_idle_timeout` of the roles, or undefined for none. */
export const clientIdleTimeout = (roles: ReadonlyArray<Role>): number | undefined => {
  const ts = durations(roles.map((r) => r.spec.options?.client_idle_timeout)).filter((ms) => ms > 0)
  return ts.length === 0 ? undefined : Math.min(...ts)
}

// ---------------------------------------------------------------------------------------------

const denied = (what: string, role: Role, side: "deny", field: string): Decision =>
  Either.left(
    new AccessDenied({
      message: `${what} denied by role ${roleName(role)} (${side}.${field})`,
      roleName: roleName(role),
      side,
      field
    })
  )

const notAllowed = (what: string, field: string): Decision =>
  Either.left(new AccessDenied({ message: `${what} not allowed by any role`, side: "none", field }))
