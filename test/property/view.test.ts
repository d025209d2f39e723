import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc, HashMap, Option, Schema } from "effect"
import type { CommittedEvent, DomainEvent } from "../../src/domain/Event.ts"
import { EventTypes } from "../../src/domain/Event.ts"
import * as Presets from "../../src/domain/Presets.ts"
import { Role } from "../../src/domain/Role.ts"
import * as RbacView from "../../src/domain/RbacView.ts"

const decodeRole = Schema.decodeUnknownSync(Role)
const encodeRole = Schema.encodeSync(Role)

const userNames = fc.constantFrom("alice", "bob", "carol")
const roleNames = fc.constantFrom("dev", "ops", "access", "auditor")
const traits = fc.record({ logins: fc.subarray(["alice", "root"]), db_users: fc.subarray(["postgres", "reader"]) })

const roleOf = (name: string, logins: ReadonlyArray<string>) =>
  decodeRole({ kind: "role", version: "v7", metadata: { name }, spec: { allow: { logins, node_labels: { "*": "*" } } } })

const domainEvent: fc.Arbitrary<DomainEvent> = fc.oneof(
  fc
    .record({ name: userNames, roles: fc.subarray(["dev", "ops", "access", "ghost"]), traits })
    .map(({ name, roles, traits }): DomainEvent => ({ type: "user.create", payload: { name, roles, traits, created_by: "admin" } })),
  fc
    .record({ name: userNames, roles: fc.subarray(["dev", "ops", "access"]), traits })
    .map(({ name, roles, traits }): DomainEvent => ({ type: "user.update", payload: { name, roles, traits } })),
  userNames.map((name): DomainEvent => ({ type: "user.delete", payload: { name } })),
  fc
    .record({ name: roleNames, logins: fc.subarray(["root", "ubuntu"]) })
    .map(({ name, logins }): DomainEvent => ({ type: "role.created", payload: { name, role: roleOf(name, logins) } })),
  roleNames.map((name): DomainEvent => ({ type: "role.deleted", payload: { name } }))
)

const commit = (events: ReadonlyArray<DomainEvent>, firstSeq = 1): Array<CommittedEvent> =>
  events.map((e, i) => {
    const seq = firstSeq + i
    return {
      ...e,
      seq,
      id: `00000000-0000-4000-8000-${seq.toString().padStart(12, "0")}`,
      code: EventTypes[e.type].code,
      time: new Date(Date.UTC(2026, 0, 1) + seq * 1000).toISOString(),
      stream: `${e.type.startsWith("user.") ? "user" : "role"}/${(e.payload as { name: string }).name}`,
      version: 1,
      actor: "admin",
      prev_hash: "0".repeat(64),
      hash: "0".repeat(64)
    } as CommittedEvent
  })

const eventsArb = fc.array(domainEvent, { maxLength: 40 }).map((es) => commit(es))

/** A reference model: plain mutable maps, written the obvious way. */
const model = (events: ReadonlyArray<CommittedEvent>) => {
  const users = new Map<string, { roles: ReadonlyArray<string>; traits: unknown; createdAt?: string }>()
  const roles = new Map<string, Role>()
  for (const e of events) {
    switch (e.type) {
      case "user.create":
        users.set(e.payload.name, { roles: e.payload.roles, traits: e.payload.traits, createdAt: e.time })
        break
      case "user.update": {
        const before = users.get(e.payload.name)
        users.set(e.payload.name, {
          roles: e.payload.roles,
          traits: e.payload.traits,
          ...(before?.createdAt === undefined ? {} : { createdAt: before.createdAt })
        })
        break
      }
      case "user.delete":
        users.delete(e.payload.name)
        break
      case "role.created":
        roles.set(e.payload.name, e.payload.role)
        break
      case "role.deleted":
        roles.delete(e.payload.name)
        break
    }
  }
  return { users, roles }
}

describe("RbacView", () => {
  it.prop("replay from zero equals live application from any checkpoint", [eventsArb, fc.nat()], ([events, cut]) => {
    const k = cut % (events.length + 1)
    const replayed = RbacView.applyAll(RbacView.empty, events)
    let live = RbacView.applyAll(RbacView.empty, events.slice(0, k))
    for (const e of events.slice(k)) live = RbacView.apply(live, e)
    expect(RbacView.toJSON(live)).toEqual(RbacView.toJSON(replayed))
    expect(replayed.lastSeq).toBe(events.length)
  })

  it.prop("the fold is deterministic", [eventsArb], ([events]) => {
    expect(RbacView.toJSON(RbacView.applyAll(RbacView.empty, events))).toEqual(
      RbacView.toJSON(RbacView.applyAll(RbacView.empty, [...events]))
    )
  })

  it.prop("redelivered events change nothing", [eventsArb, fc.array(fc.nat())], ([events, picks]) => {
    const once = RbacView.applyAll(RbacView.empty, events)
    const again = RbacView.applyAll(once, picks.flatMap((p) => (events.length === 0 ? [] : [events[p % events.length]!])))
    expect(RbacView.toJSON(again)).toEqual(RbacView.toJSON(once))
  })

  it.prop("agrees with a plain reference model", [eventsArb], ([events]) => {
    const view = RbacView.applyAll(RbacView.empty, events)
    const m = model(events)
    expect([...HashMap.keys(view.users)].sort()).toEqual([...m.users.keys()].sort())
    expect([...HashMap.keys(view.roles)].sort()).toEqual([...m.roles.keys()].sort())
    for (const [name, u] of m.users) {
      const got = Option.getOrThrow(RbacView.userOf(view, name))
      expect(got.roles).toEqual(u.roles)
      expect(got.traits).toEqual(u.traits)
      expect(got.createdAt).toEqual(u.createdAt)
    }
    for (const name of ["dev", "ops", "access", "auditor", "editor"]) {
      const expected = m.roles.get(name) ?? Presets.presets.get(name)
      const got = Option.getOrUndefined(RbacView.roleByName(view, name))
      expect(got === undefined ? undefined : encodeRole(got)).toEqual(expected === undefined ? undefined : encodeRole(expected))
    }
    for (const name of ["alice", "bob", "carol"]) {
      const u = m.users.get(name)
      const expected = (u?.roles ?? []).flatMap((r) => {
        const role = m.roles.get(r) ?? Presets.presets.get(r)
        return role === undefined ? [] : [role.metadata.name]
      })
      expect(RbacView.rolesOf(view, name).map((r) => r.metadata.name)).toEqual(expected)
    }
  })

  it.prop("a role.deleted removes the role (a preset shows through again)", [eventsArb, roleNames], ([events, name]) => {
    const view = RbacView.applyAll(RbacView.empty, [...events, ...commit([{ type: "role.deleted", payload: { name } }], events.length + 1)])
    expect(HashMap.has(view.roles, name)).toBe(false)
    const got = RbacView.roleByName(view, name)
    if (Presets.presets.has(name)) expect(Option.getOrThrow(got)).toBe(Presets.presets.get(name))
    else expect(Option.isNone(got)).toBe(true)
  })

  it("starts with the presets and no users", () => {
    expect(RbacView.empty.lastSeq).toBe(0)
    expect(HashMap.size(RbacView.empty.users)).toBe(0)
    for (const name of ["access", "editor", "auditor"]) expect(Option.isSome(RbacView.roleByName(RbacView.empty, name))).toBe(true)
    expect(RbacView.toJSON(RbacView.empty)).toEqual({ lastSeq: 0, users: {}, roles: {} })
  })

  it("resolves a user's roles, overrides presets, ignores unknown names", () => {
    const events = commit([
      { type: "role.created", payload: { name: "dev", role: roleOf("dev", ["ubuntu"]) } },
      { type: "user.create", payload: { name: "alice", roles: ["dev", "access", "ghost"], traits: { logins: ["alice"] }, created_by: "admin" } },
      { type: "role.created", payload: { name: "access", role: roleOf("access", ["root"]) } },
      { type: "user.update", payload: { name: "alice", roles: ["access", "dev"], traits: {} } }
    ])
    const view = RbacView.applyAll(RbacView.empty, events)
    expect(RbacView.rolesOf(view, "alice").map((r) => r.spec.allow?.logins)).toEqual([["root"], ["ubuntu"]])
    expect(RbacView.rolesOf(view, "nobody")).toEqual([])
    const alice = Option.getOrThrow(RbacView.userOf(view, "alice"))
    expect(alice.createdBy).toBe("admin")
    expect(alice.createdAt).toBe(events[1]!.time)
    const json = RbacView.toJSON(view)
    expect(Object.keys(json.roles)).toEqual(["access", "dev"])
    expect(JSON.parse(JSON.stringify(json))).toEqual(json)
  })
})
