/**
 * The auth service's request handlers. Writes are events appended with the stream's expected
 * version (so two admins racing on one user cannot both win); reads come from the RBAC view, after
 * waiting for it to apply the caller's own write.
 */
import { Context, Effect, HashMap, Layer, Option, Schema } from "effect"
import { EventStore } from "../adapters/EventStore.ts"
import type { EventDraft, StoreError, VersionConflict } from "../adapters/EventStore.ts"
import type { Handlers } from "../adapters/AuthApiHttp.ts"
import type { User } from "../domain/AuthApi.ts"
import { toAuditJson } from "../domain/AuditEvent.ts"
import { checkLink, GENESIS_HASH } from "../domain/Chain.ts"
import type { ApiError } from "../domain/Errors.ts"
import { AlreadyExists, BadParameter, CompareFailed, NotFound, Unavailable } from "../domain/Errors.ts"
import * as Event from "../domain/Event.ts"
import { UserName } from "../domain/Event.ts"
import { Role } from "../domain/Role.ts"
import { presets } from "../domain/Presets.ts"
import * as RbacView from "../domain/RbacView.ts"
import type { ProjectorShape } from "./Projector.ts"
import * as Projector from "./Projector.ts"
import { CertAuthority } from "./CertAuthority.ts"
import * as DbAccess from "./DbAccess.ts"
import * as LocalAuth from "./LocalAuth.ts"
import type { LocalAuthSettings } from "./LocalAuth.ts"
import { Outbox } from "./Outbox.ts"
import { RecordingStore } from "../adapters/RecordingStore.ts"
import * as SessionRecordings from "./SessionRecordings.ts"
import * as AgentlessNodes from "./AgentlessNodes.ts"

export const VERSION = "0.1.0"

export class RbacProjector extends Context.Tag("remoteler/RbacProjector")<
  RbacProjector,
  ProjectorShape<RbacView.RbacView>
>() {}

export const projectorLayer = Projector.layer(RbacProjector, { empty: RbacView.empty, apply: RbacView.apply })

export interface AuthSettings extends LocalAuthSettings {
  readonly storage: string
  readonly bus: string
}

export class AuthServer extends Context.Tag("remoteler/AuthServer")<AuthServer, Handlers>() {}

const storeFailure = (e: StoreError | VersionConflict): ApiError =>
  e._tag === "VersionConflict"
    ? new CompareFailed({ message: `${e.message}; someone changed it at the same time, try again` })
    : new Unavailable({ message: `event store: ${e.message}` })

export const make = (settings: AuthSettings) =>
  Effect.gen(function* () {
    const store = yield* EventStore
    const projector = yield* RbacProjector
    const outbox = yield* Outbox
    const ca = yield* CertAuthority
    const view = projector.state

    /**
     * Appends to one stream and waits until the view has applied it. Changes to a resource (user,
     * role) check the stream's version, so of two racing writers one gets CompareFailed; audit
     * records (logins, certificates) are appended whatever the version ("any").
     */
    const write = (
      stream: string,
      actor: string,
      drafts: ReadonlyArray<Omit<EventDraft, "actor">>,
      expected: "current" | "any" = "current"
    ) =>
      Effect.gen(function* () {
        const version = expected === "any" ? ("any" as const) : yield* store.streamVersion(stream)
        const stored = yield* store.append({
          stream,
          expectedVersion: version,
          events: drafts.map((d) => ({ ...d, actor }))
        })
        yield* projector.awaitSeq(stored[stored.length - 1]!.seq)
      }).pipe(Effect.catchTags({ StoreError: (e) => Effect.fail(storeFailure(e)), VersionConflict: (e) => Effect.fail(storeFailure(e)) }))

    const userOut = (u: RbacView.ViewUser): User => ({ name: u.name, roles: u.roles, traits: u.traits })
    const findRole = (v: RbacView.RbacView, name: string) => Option.getOrUndefined(RbacView.roleByName(v, name))
    const hasRole = (v: RbacView.RbacView, name: string) => findRole(v, name) !== undefined
    /** Presets, with any stored role of the same name in their place, and every stored role. */
    const allRoles = (v: RbacView.RbacView) => {
      const byName = new Map(presets)
      for (const [name, role] of v.roles) byName.set(name, role)
      return [...byName.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name))
    }

    const checkRolesExist = (roles: ReadonlyArray<string>) =>
      Effect.gen(function* () {
        const v = yield* view
        const missing = roles.filter((r) => !hasRole(v, r))
        if (missing.length > 0) {
          return yield* new BadParameter({ message: `role ${missing.map((m) => JSON.stringify(m)).join(", ")} not found; see 'tctl get roles'` })
        }
        if (roles.length === 0) return yield* new BadParameter({ message: "a user needs at least one role (--roles)" })
      })

    const validName = (name: string) =>
      Schema.decodeUnknown(UserName)(name).pipe(
        Effect.mapError(() => new BadParameter({ message: `${JSON.stringify(name)} is not a valid user name` }))
      )

    const getUser = (name: string) =>
      Effect.flatMap(view, (v) => {
        const u = Option.getOrUndefined(RbacView.userOf(v, name))
        return u === undefined ? Effect.fail(new NotFound({ message: `user ${JSON.stringify(name)} not found` })) : Effect.succeed(u)
      })

    const actor = "admin"
    const appendRecord = (stream: string, a: string, drafts: ReadonlyArray<Omit<EventDraft, "actor">>) => write(stream, a, drafts, "any")
    const local = LocalAuth.make({ store, projector, ca, settings, write: appendRecord })
    const db = yield* DbAccess.make({ store, projector, ca, clusterName: settings.clusterName, write: appendRecord })
    const recordings = SessionRecordings.make({ store, recordings: yield* RecordingStore, projector })
    const agentless = AgentlessNodes.make({ store, projector, ca, clusterName: settings.clusterName, write })

    const handlers: Handlers = {
      status: () =>
        Effect.gen(function* () {
          const head = yield* store.head.pipe(Effect.mapError(storeFailure))
          const p = yield* projector.status
          const o = yield* outbox.status
          const v = yield* view
          return {
            cluster_name: settings.clusterName,
            version: VERSION,
            storage: settings.storage,
            bus: settings.bus,
            head_seq: head,
            projector: { position: p.position, audit_checkpoint: p.auditCheckpoint, ...(p.error === undefined ? {} : { error: p.error }) },
            outbox: { position: o.position, ...(o.error === undefined ? {} : { error: o.error }) },
            users: HashMap.size(v.users),
            roles: allRoles(v).length
          }
        }),

      "users.create": (req) =>
        Effect.gen(function* () {
          yield* validName(req.name)
          if (HashMap.has((yield* view).users, req.name)) {
            return yield* new AlreadyExists({ message: `user ${JSON.stringify(req.name)} already exists` })
          }
          yield* checkRolesExist(req.roles)
          yield* write(`user/${req.name}`, actor, [
            Event.make("user.create", { name: req.name, roles: req.roles, traits: req.traits, created_by: actor })
          ])
          const invite = yield* local.createInvite(req.name, actor)
          return { user: userOut(yield* getUser(req.name)), invite }
        }),

      "users.update": (req) =>
        Effect.gen(function* () {
          const current = yield* getUser(req.name)
          const roles = req.roles ?? current.roles
          yield* checkRolesExist(roles)
          yield* write(`user/${req.name}`, actor, [
            Event.make("user.update", { name: req.name, roles, traits: req.traits ?? current.traits })
          ])
          return userOut(yield* getUser(req.name))
        }),

      "users.delete": (req) =>
        Effect.gen(function* () {
          yield* getUser(req.name)
          yield* write(`user/${req.name}`, actor, [Event.make("user.delete", { name: req.name })])
          return {}
        }),

      "users.get": (req) => Effect.map(getUser(req.name), userOut),

      "users.list": () =>
        Effect.map(view, (v) => [...HashMap.values(v.users)].sort((a, b) => a.name.localeCompare(b.name)).map(userOut)),

      "roles.upsert": (req) =>
        Effect.gen(function* () {
          const name = req.role.metadata.name
          const exists = hasRole(yield* view, name)
          if (exists && !req.force) {
            return yield* new AlreadyExists({ message: `role ${JSON.stringify(name)} already exists; use --force to overwrite it` })
          }
          yield* write(`role/${name}`, actor, [Event.make("role.created", { name, role: req.role })])
          return { name, created: !exists }
        }),

      "roles.delete": (req) =>
        Effect.gen(function* () {
          const v = yield* view
          if (!HashMap.has(v.roles, req.name)) {
            if (!presets.has(req.name)) return yield* new NotFound({ message: `role ${JSON.stringify(req.name)} not found` })
            return yield* new BadParameter({ message: `role ${JSON.stringify(req.name)} is a preset role and cannot be deleted` })
          }
          const users = [...HashMap.values(v.users)].filter((u) => u.roles.includes(req.name)).map((u) => u.name)
          if (users.length > 0) {
            return yield* new BadParameter({
              message: `role ${JSON.stringify(req.name)} is still assigned to ${users.join(", ")}; update those users first`
            })
          }
          yield* write(`role/${req.name}`, actor, [Event.make("role.deleted", { name: req.name })])
          return {}
        }),

      "roles.get": (req) =>
        Effect.flatMap(view, (v) => {
          const r = findRole(v, req.name)
          return r === undefined ? Effect.fail(new NotFound({ message: `role ${JSON.stringify(req.name)} not found` })) : Effect.succeed(r)
        }),

      "roles.list": () =>
        Effect.map(view, allRoles),

      "audit.search": (req) =>
        store
          .searchAudit({
            ...(req.from === undefined ? {} : { fromTime: req.from }),
            ...(req.to === undefined ? {} : { toTime: req.to }),
            ...(req.types === undefined ? {} : { types: req.types }),
            ...(req.user === undefined ? {} : { user: req.user }),
            ...(req.sid === undefined ? {} : { sid: req.sid }),
            limit: req.limit,
            descending: req.order === "desc"
          })
          .pipe(
            Effect.map((events) => events.map((e) => toAuditJson(e, settings.clusterName))),
            Effect.mapError(storeFailure)
          ),

      "audit.verify": () =>
        Effect.gen(function* () {
          let expectedSeq = 1
          let prev = GENESIS_HASH
          for (;;) {
            const rows = yield* store.read(expectedSeq, 5_000).pipe(Effect.mapError(storeFailure))
            if (rows.length === 0) return { ok: true, count: expectedSeq - 1 }
            for (const row of rows) {
              const broken = checkLink(row, expectedSeq, prev)
              if (broken !== undefined) {
                return { ok: false, count: expectedSeq - 1, broken_at: broken.seq, reason: broken.reason }
              }
              prev = row.hash
              expectedSeq++
            }
          }
        }),

      "events.replay": () => projector.replay,

      ...local.handlers,
      ...db,
      ...recordings,
      ...agentless
    }
    return handlers
  })

export const layer = (settings: AuthSettings) => Layer.scoped(AuthServer, make(settings))

/** Decodes a role for `roles.upsert` from plain JSON (used by tests and tooling). */
export const decodeRole = Schema.decodeUnknown(Role)
