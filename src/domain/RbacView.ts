/**
 * The RBAC view: users and roles, as a pure fold over committed events in seq order.
 *
 * Replaying the log from zero and applying it live give the same view, because `apply` depends
 * only on the view and the event. Maps are effect's persistent `HashMap`s, so an event costs
 * O(log n), not a copy of every user, and an old view stays valid: a projector can hand out
 * snapshots without copying.
 *
 * Presets (`access`, `editor`, `auditor`) are not stored: `roleByName` falls back to them, so they
 * are present from `empty` on. A `role.created` of a preset's name overrides it; a `role.deleted`
 * of that name removes the override and the preset shows through again: presets can be changed
 * but never removed.
 *
 * More kinds (tokens, connectors, CA public parts) are added as a field here and a case in `apply`.
 * Event types this fold does not know only advance `lastSeq`, so the view keeps working while the
 * event registry grows.
 */
import { HashMap, Option, Schema } from "effect"
import type { AgentlessNodeFields } from "./AgentlessNode.ts"
import type { CaKeySet, CaType, CommittedEvent, JoinRole, RotationPhase } from "./Event.ts"
import { presets } from "./Presets.ts"
import { Role } from "./Role.ts"
import type { Traits } from "./Role.ts"

/** A user as the view keeps them: role names (resolved at check time), traits, and provenance. */
export interface ViewUser {
  readonly name: string
  readonly roles: ReadonlyArray<string>
  readonly traits: Traits
  /** `created_by` of the user.create event. */
  readonly createdBy?: string
  /** `time` of the user.create event (RFC 3339). */
  readonly createdAt?: string
}

/** Another name for `ViewUser`. */
export type UserRecord = ViewUser

/** A certificate authority's public state: its active key set and, during a rotation, the next. */
export interface CaState {
  readonly type: CaType
  readonly clusterName: string
  readonly active: CaKeySet
  readonly next: CaKeySet | undefined
  readonly phase: Exclude<RotationPhase, "rollback">
}

/** Consecutive failed logins and the lock they led to. */
export interface LoginState {
  readonly failures: number
  readonly lockedUntil: string | undefined
}

export interface RbacView {
  /** The seq of the last event applied; 0 for the empty view. */
  readonly lastSeq: number
  readonly users: HashMap.HashMap<string, ViewUser>
  /** Roles created through events (including overrides of presets), by name; see `roleByName`. */
  readonly roles: HashMap.HashMap<string, Role>
  readonly cas: HashMap.HashMap<CaType, CaState>
  /** Only for existing users, so failed logins for made-up names cost nothing. */
  readonly logins: HashMap.HashMap<string, LoginState>
  /** Join tokens by name (not the secret), with what they allow and until when. */
  readonly tokens: HashMap.HashMap<string, JoinTokenState>
  /** Agentless OpenSSH nodes registered with `tctl create`, by name (see AgentlessNode.ts). */
  readonly agentlessNodes: HashMap.HashMap<string, AgentlessNodeFields>
}

export interface JoinTokenState {
  readonly name: string
  readonly roles: ReadonlyArray<JoinRole>
  readonly expires: string
}

export const empty: RbacView = Object.freeze({
  lastSeq: 0,
  users: HashMap.empty(),
  roles: HashMap.empty(),
  cas: HashMap.empty(),
  logins: HashMap.empty(),
  tokens: HashMap.empty(),
  agentlessNodes: HashMap.empty()
})

/** The key set that signs now: the next one from update_clients on. */
export const signingKeys = (ca: CaState): CaKeySet =>
  (ca.phase === "update_clients" || ca.phase === "update_servers") && ca.next !== undefined ? ca.next : ca.active

/**
 * The key sets whose certificates are accepted. In init and update_clients both; from
 * update_servers on only the new one, so certificates of the old CA stop working there.
 */
export const trustedKeys = (ca: CaState): ReadonlyArray<CaKeySet> => {
  if (ca.next === undefined) return [ca.active]
  return ca.phase === "update_servers" ? [ca.next] : [ca.active, ca.next]
}

const rotate = (ca: CaState, phase: RotationPhase, next: CaKeySet | undefined): CaState => {
  switch (phase) {
    case "init":
      return { ...ca, phase, next }
    case "update_clients":
    case "update_servers":
      return { ...ca, phase }
    case "standby":
      return ca.phase === "update_servers" && ca.next !== undefined
        ? { ...ca, phase, active: ca.next, next: undefined }
        : { ...ca, phase, next: undefined }
    case "rollback":
      return { ...ca, phase: "standby", next: undefined }
  }
}

/**
 * Applies one committed event. An event at or below `lastSeq` was already applied (the bus
 * delivers at least once) and leaves the view as it is.
 */
export const apply = (view: RbacView, event: CommittedEvent): RbacView => {
  if (event.seq <= view.lastSeq) return view
  const next = (changes: Partial<Omit<RbacView, "lastSeq">>): RbacView =>
    Object.freeze({ ...view, ...changes, lastSeq: event.seq })
  switch (event.type) {
    case "user.create": {
      const { name, roles, traits, created_by } = event.payload
      return next({
        users: HashMap.set(view.users, name, Object.freeze({ name, roles, traits, createdBy: created_by, createdAt: event.time }))
      })
    }
    case "user.update": {
      const { name, roles, traits } = event.payload
      const before = Option.getOrUndefined(HashMap.get(view.users, name))
      const provenance = {
        ...(before?.createdBy === undefined ? {} : { createdBy: before.createdBy }),
        ...(before?.createdAt === undefined ? {} : { createdAt: before.createdAt })
      }
      return next({ users: HashMap.set(view.users, name, Object.freeze({ name, roles, traits, ...provenance })) })
    }
    case "user.delete":
      return next({ users: HashMap.remove(view.users, event.payload.name), logins: HashMap.remove(view.logins, event.payload.name) })
    case "role.created":
      return next({ roles: HashMap.set(view.roles, event.payload.name, event.payload.role) })
    case "ca.create": {
      const p = event.payload
      return next({
        cas: HashMap.set(view.cas, p.type, { type: p.type, clusterName: p.cluster_name, active: p.active, next: undefined, phase: "standby" })
      })
    }
    case "ca.rotate": {
      const ca = Option.getOrUndefined(HashMap.get(view.cas, event.payload.type))
      return ca === undefined ? next({}) : next({ cas: HashMap.set(view.cas, ca.type, rotate(ca, event.payload.phase, event.payload.next)) })
    }
    case "user.login": {
      const name = event.payload.user
      if (!HashMap.has(view.users, name)) return next({})
      const before = Option.getOrElse(HashMap.get(view.logins, name), () => ({ failures: 0, lockedUntil: undefined }))
      const after = event.payload.success ? { failures: 0, lockedUntil: before.lockedUntil } : { ...before, failures: before.failures + 1 }
      return next({ logins: HashMap.set(view.logins, name, after) })
    }
    case "lock.created":
      return next({ logins: HashMap.set(view.logins, event.payload.name, { failures: 0, lockedUntil: event.payload.expires }) })
    case "lock.deleted":
      return next({ logins: HashMap.remove(view.logins, event.payload.name) })
    case "join_token.create": {
      const { name, roles, expires } = event.payload
      return next({ tokens: HashMap.set(view.tokens, name, { name, roles, expires }) })
    }
    case "node.created":
      return next({ agentlessNodes: HashMap.set(view.agentlessNodes, event.payload.name, event.payload) })
    case "node.deleted":
      return next({ agentlessNodes: HashMap.remove(view.agentlessNodes, event.payload.name) })
    case "join_token.delete":
      return next({ tokens: HashMap.remove(view.tokens, event.payload.name) })
    case "role.deleted":
      return next({ roles: HashMap.remove(view.roles, event.payload.name) })
    default:
      return next({})
  }
}

/** Applies events in order. */
export const applyAll = (view: RbacView, events: Iterable<CommittedEvent>): RbacView => {
  let v = view
  for (const e of events) v = apply(v, e)
  return v
}

/** A user, if the view has one by that name. */
export const userOf = (view: RbacView, name: string): Option.Option<ViewUser> => HashMap.get(view.users, name)

/** A role by name: a created one, else a preset. */
export const roleByName = (view: RbacView, name: string): Option.Option<Role> =>
  Option.orElse(HashMap.get(view.roles, name), () => Option.fromNullable(presets.get(name)))

/** Resolves role names to roles, in order, skipping names that name no role. */
export const resolveRoles = (view: RbacView, names: ReadonlyArray<string>): Array<Role> =>
  names.flatMap((n) => Option.toArray(roleByName(view, n)))

/** The roles of a user (empty for an unknown user; unknown role names are ignored). */
export const rolesOf = (view: RbacView, userName: string): Array<Role> =>
  Option.match(userOf(view, userName), { onNone: () => [], onSome: (u) => resolveRoles(view, u.roles) })

/** The plain form of a view, as `toJSON` gives it. */
export interface RbacViewJson {
  readonly lastSeq: number
  readonly users: Record<string, { readonly roles: ReadonlyArray<string>; readonly traits: Traits; readonly createdBy?: string; readonly createdAt?: string }>
  readonly roles: Record<string, unknown>
}

/**
 * A plain object for the view, maps as objects with sorted keys: equal views give equal JSON.
 * `roles` holds the created roles only (presets are constants).
 */
export const toJSON = (view: RbacView): RbacViewJson => {
  const encodeRole = Schema.encodeSync(Role)
  const users: Record<string, RbacViewJson["users"][string]> = {}
  for (const [name, u] of sortedEntries(view.users)) {
    users[name] = {
      roles: [...u.roles],
      traits: sortKeys(u.traits),
      ...(u.createdBy === undefined ? {} : { createdBy: u.createdBy }),
      ...(u.createdAt === undefined ? {} : { createdAt: u.createdAt })
    }
  }
  const roles: Record<string, unknown> = {}
  for (const [name, r] of sortedEntries(view.roles)) roles[name] = encodeRole(r)
  return { lastSeq: view.lastSeq, users, roles }
}

const sortedEntries = <V>(m: HashMap.HashMap<string, V>): Array<[string, V]> =>
  [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))

const sortKeys = (traits: Traits): Traits => {
  const out: Record<string, ReadonlyArray<string>> = {}
  for (const k of Object.keys(traits).sort()) out[k] = [...traits[k]!]
  return out
}
