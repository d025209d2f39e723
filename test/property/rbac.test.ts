import { describe, expect, it } from "@effect/vitest"
import { Either, FastCheck as fc, Option, Schema } from "effect"
import { expandSelector, matchLabels } from "../../src/domain/Labels.ts"
import * as Presets from "../../src/domain/Presets.ts"
import {
  checkDatabaseAccess,
  checkNodeAccess,
  checkRule,
  clientIdleTimeout,
  DEFAULT_MAX_SESSION_TTL_MS,
  disconnectExpiredCert,
  maxSessionTtl,
  parseDuration,
  parseDurationOption
} from "../../src/domain/Rbac.ts"
import type { Decision } from "../../src/domain/Rbac.ts"
import { Role } from "../../src/domain/Role.ts"
import type { Traits } from "../../src/domain/Role.ts"
import { expandValue, expandValues, parseTemplate } from "../../src/domain/Template.ts"

// ---------------------------------------------------------------------------------------------
// Generators over a small vocabulary, so generated roles often hit generated resources.

const labelKey = fc.constantFrom("env", "team", "*")
const labelValue = fc.constantFrom("prod", "dev", "eu", "*", "^pr.*$", "^(bad$", "{{external.env}}", "{{external.none}}")
const selector = fc.option(
  fc.dictionary(labelKey, fc.oneof(labelValue, fc.array(labelValue, { maxLength: 3 })), { maxKeys: 3 }),
  { nil: undefined }
)
const resourceLabels = fc.dictionary(fc.constantFrom("env", "team", "region"), fc.constantFrom("prod", "dev", "eu", "pr1"), {
  maxKeys: 3
})

const dbUserPool = ["postgres", "alice", "reader"] as const
const dbNamePool = ["main", "app"] as const
const loginPool = ["root", "alice", "ubuntu"] as const

const list = <T>(values: ReadonlyArray<T>) => fc.option(fc.subarray([...values]), { nil: undefined })
const dbUsers = list([...dbUserPool, "*", "{{internal.db_users}}", "{{external.dbu}}", "pre-{{internal.db_users}}"])
const dbNames = list([...dbNamePool, "*", "{{internal.db_names}}"])
const logins = list([...loginPool, "{{internal.logins}}", "{{external.unix}}", "*"])
const rules = fc.option(
  fc.array(
    fc.record({
      resources: fc.subarray(["role", "user", "event", "session", "*"], { minLength: 1 }),
      verbs: fc.subarray(["list", "read", "create", "update", "delete", "*"] as const, { minLength: 1 })
    }),
    { maxLength: 2 }
  ),
  { nil: undefined }
)

const strip = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined))

const conditions = fc
  .record({ logins, node_labels: selector, db_labels: selector, db_users: dbUsers, db_names: dbNames, rules })
  .map(strip)

const decodeRole = Schema.decodeUnknownSync(Role)
const makeRole = (name: string, allow: unknown, deny: unknown): Role =>
  decodeRole({ kind: "role", version: "v7", metadata: { name }, spec: strip({ allow, deny }) })

const roleArb = (name: string) =>
  fc.record({ allow: fc.option(conditions, { nil: undefined }), deny: fc.option(conditions, { nil: undefined }) }).map(({ allow, deny }) =>
    makeRole(name, allow, deny)
  )
const rolesArb = fc.array(fc.nat(), { maxLength: 4 }).chain((ids) => fc.tuple(...ids.map((_, i) => roleArb(`r${i}`))))

const traitsArb: fc.Arbitrary<Traits> = fc.record({
  logins: fc.subarray([...loginPool]),
  db_users: fc.subarray([...dbUserPool]),
  db_names: fc.subarray([...dbNamePool]),
  dbu: fc.subarray([...dbUserPool]),
  unix: fc.subarray([...loginPool]),
  env: fc.subarray(["prod", "dev"])
})

const dbArb = fc.record({ name: fc.constantFrom("pg-prod", "pg-dev"), labels: resourceLabels })
const nodeArb = fc.record({ name: fc.constantFrom("web1", "db1"), labels: resourceLabels })

interface Case {
  readonly roles: ReadonlyArray<Role>
  readonly traits: Traits
  readonly db: { name: string; labels: Record<string, string> }
  readonly node: { name: string; labels: Record<string, string> }
  readonly dbUser: string
  readonly dbName: string | undefined
  readonly login: string
  readonly resource: string
  readonly verb: string
}

const caseArb: fc.Arbitrary<Case> = fc.record({
  roles: rolesArb,
  traits: traitsArb,
  db: dbArb,
  node: nodeArb,
  dbUser: fc.constantFrom(...dbUserPool, "pre-alice"),
  dbName: fc.option(fc.constantFrom(...dbNamePool), { nil: undefined }),
  login: fc.constantFrom(...loginPool),
  resource: fc.constantFrom("role", "user", "event", "session"),
  verb: fc.constantFrom("list", "read", "create", "update", "delete")
})

/** The three decisions for one case. */
const decide = (c: Case, roles: ReadonlyArray<Role>): ReadonlyArray<Decision> => [
  checkDatabaseAccess(roles, c.traits, c.db, c.dbUser, c.dbName),
  checkNodeAccess(roles, c.traits, c.node, c.login),
  checkRule(roles, c.resource, c.verb)
]

/** `role` with its allow side replaced by one that allows everything: what would its deny side do alone? */
const withAllowAll = (role: Role, login: string): Role =>
  makeRole(
    role.metadata.name,
    {
      node_labels: { "*": "*" },
      logins: [login],
      db_labels: { "*": "*" },
      db_users: ["*"],
      db_names: ["*"],
      rules: [{ resources: ["*"], verbs: ["*"] }]
    },
    role.spec.deny
  )

const withoutDeny = (role: Role): Role => makeRole(role.metadata.name, role.spec.allow, undefined)

const insertAt = <T>(xs: ReadonlyArray<T>, i: number, x: T): Array<T> => [...xs.slice(0, i % (xs.length + 1)), x, ...xs.slice(i % (xs.length + 1))]

const isDeniedByDeny = (d: Decision) => Either.isLeft(d) && d.left.side === "deny"

// ---------------------------------------------------------------------------------------------

describe("Rbac properties", () => {
  it.prop("deny wins: a role whose deny side refuses alone refuses among any roles", [caseArb, roleArb("denier"), fc.nat()], ([c, denier, at]) => {
    const alone = decide(c, [withAllowAll(denier, c.login)])
    const together = decide(c, insertAt(c.roles, at, denier))
    alone.forEach((d, i) => {
      if (isDeniedByDeny(d)) {
        const t = together[i]!
        expect(Either.isLeft(t)).toBe(true)
        expect(Either.isLeft(t) && t.left.side).toBe("deny")
      }
    })
  })

  it.prop(
    "deny wins: a deny built to match the resource refuses whatever is allowed",
    [caseArb, fc.nat(), fc.boolean()],
    ([c, at, wildcard]) => {
      const exact = Object.fromEntries(Object.entries(c.db.labels).map(([k, v]) => [k, wildcard ? "*" : v]))
      const dbLabels = Object.keys(exact).length === 0 || wildcard ? { "*": "*" } : exact
      const denier = makeRole("denier", { db_labels: { "*": "*" }, db_users: ["*"], db_names: ["*"] }, {
        db_labels: dbLabels,
        db_users: [wildcard ? "*" : c.dbUser],
        node_labels: { "*": "*" },
        logins: [wildcard ? "*" : c.login],
        rules: [{ resources: [wildcard ? "*" : c.resource], verbs: [wildcard ? "*" : c.verb] }]
      })
      const roles = insertAt([...c.roles, Presets.access, Presets.editor], at, denier)
      for (const d of decide(c, roles)) {
        expect(isDeniedByDeny(d)).toBe(true)
      }
    }
  )

  it.prop("adding a role without deny never removes access", [caseArb, roleArb("extra"), fc.nat()], ([c, extra, at]) => {
    const before = decide(c, c.roles)
    const after = decide(c, insertAt(c.roles, at, withoutDeny(extra)))
    before.forEach((d, i) => {
      if (Either.isRight(d)) expect(Either.isRight(after[i]!)).toBe(true)
    })
  }, { fastCheck: { numRuns: 1000 } })

  it.prop("removing deny sides never removes access", [caseArb], ([c]) => {
    const before = decide(c, c.roles)
    const after = decide(c, c.roles.map(withoutDeny))
    before.forEach((d, i) => {
      if (Either.isRight(d)) expect(Either.isRight(after[i]!)).toBe(true)
    })
  }, { fastCheck: { numRuns: 1000 } })

  it.prop("no roles, no access", [caseArb], ([c]) => {
    for (const d of decide(c, [])) expect(Either.isLeft(d) && d.left.side).toBe("none")
  })

  it.prop("a decision never throws and is deterministic", [caseArb], ([c]) => {
    expect(decide(c, c.roles)).toEqual(decide(c, c.roles))
  })
})

describe("Rbac examples", () => {
  const dev = makeRole(
    "dev",
    { db_labels: { env: ["dev", "prod"] }, db_users: ["{{internal.db_users}}", "reader"], db_names: ["*"], node_labels: { env: "^d.*$" }, logins: ["{{internal.logins}}"] },
    { db_labels: { "*": "*" }, db_users: ["postgres"], db_names: ["secrets"], logins: ["root"], node_labels: { "*": "*" } }
  )
  const traits: Traits = { db_users: ["alice", "postgres"], logins: ["alice", "root"], db_names: [] }
  const prod = { name: "pg-prod", labels: { env: "prod" } }

  it("denies with the rule that denied", () => {
    const d = checkDatabaseAccess([Presets.access, dev], traits, prod, "postgres", "main")
    expect(Either.isLeft(d)).toBe(true)
    if (Either.isLeft(d)) {
      expect(d.left.message).toBe("access to db pg-prod as db user postgres denied by role dev (deny.db_users)")
      expect(d.left).toMatchObject({ _tag: "AccessDenied", roleName: "dev", side: "deny", field: "db_users" })
    }
    const n = checkDatabaseAccess([dev], traits, prod, "alice", "secrets")
    expect(Either.isLeft(n) && n.left.message).toBe(
      "access to database secrets on db pg-prod as db user alice denied by role dev (deny.db_names)"
    )
  })

  it("allows through expanded traits and says which role", () => {
    const d = checkDatabaseAccess([dev], traits, prod, "alice", "main")
    expect(Either.isRight(d) && d.right.roleName).toBe("dev")
    expect(Either.isRight(d) && d.right.by).toBe("role dev (allow.db_labels, allow.db_users, allow.db_names)")
    expect(Either.isRight(checkDatabaseAccess([dev], traits, prod, "reader", undefined))).toBe(true)
  })

  it("says when no role allows, and which field fell short", () => {
    const u = checkDatabaseAccess([dev], traits, prod, "bob", "main")
    expect(Either.isLeft(u) && u.left).toMatchObject({ side: "none", field: "db_users" })
    expect(Either.isLeft(u) && u.left.message).toBe("access to db pg-prod as db user bob not allowed by any role")
    const l = checkDatabaseAccess([dev], traits, { name: "pg-stage", labels: { env: "stage" } }, "alice", "main")
    expect(Either.isLeft(l) && l.left.field).toBe("db_labels")
  })

  it("a deny without labels applies to nothing, as in Teleport", () => {
    const r = makeRole("r", { db_labels: { "*": "*" }, db_users: ["*"], db_names: ["*"] }, { db_users: ["postgres"] })
    expect(Either.isRight(checkDatabaseAccess([r], {}, prod, "postgres", "main"))).toBe(true)
  })

  it("checks nodes: regex labels, template logins, deny logins", () => {
    const web = { name: "web1", labels: { env: "dev" } }
    expect(Either.isRight(checkNodeAccess([dev], traits, web, "alice"))).toBe(true)
    const root = checkNodeAccess([dev], traits, web, "root")
    expect(Either.isLeft(root) && root.left.message).toBe("access to node web1 as login root denied by role dev (deny.logins)")
    const other = checkNodeAccess([dev], traits, { name: "x", labels: { env: "prod" } }, "alice")
    expect(Either.isLeft(other) && other.left.field).toBe("node_labels")
    const star = makeRole("star", { node_labels: { "*": "*" }, logins: ["alice"] }, { node_labels: { "*": "*" }, logins: ["*"] })
    expect(isDeniedByDeny(checkNodeAccess([star], {}, web, "alice"))).toBe(true)
  })

  it("checks admin rules with wildcards", () => {
    expect(Either.isRight(checkRule([Presets.editor], "role", "create"))).toBe(true)
    expect(Either.isLeft(checkRule([Presets.editor], "event", "delete"))).toBe(true)
    expect(Either.isRight(checkRule([Presets.auditor], "event", "list"))).toBe(true)
    expect(Either.isLeft(checkRule([Presets.auditor], "role", "read"))).toBe(true)
    expect(Either.isLeft(checkRule([Presets.access], "role", "read"))).toBe(true)
    const admin = makeRole("admin", { rules: [{ resources: ["*"], verbs: ["*"] }] }, { rules: [{ resources: ["user"], verbs: ["delete"] }] })
    expect(Either.isRight(checkRule([admin], "anything", "update"))).toBe(true)
    const d = checkRule([admin], "user", "delete")
    expect(Either.isLeft(d) && d.left.message).toBe("action delete on user denied by role admin (deny.rules)")
    const n = checkRule([], "user", "list")
    expect(Either.isLeft(n) && n.left.message).toBe("action list on user not allowed by any role")
  })

  it("the access preset follows the user's traits", () => {
    const t: Traits = { logins: ["alice"], db_users: ["alice"], db_names: ["main"] }
    const db = { name: "pg", labels: {} }
    expect(Either.isRight(checkDatabaseAccess([Presets.access], t, db, "alice", "main"))).toBe(true)
    expect(Either.isLeft(checkDatabaseAccess([Presets.access], t, db, "postgres", "main"))).toBe(true)
    expect(Either.isLeft(checkDatabaseAccess([Presets.access], t, db, "alice", "other"))).toBe(true)
    expect(Either.isRight(checkNodeAccess([Presets.access], t, { name: "n", labels: {} }, "alice"))).toBe(true)
    expect(Either.isLeft(checkNodeAccess([Presets.access], t, { name: "n", labels: {} }, "root"))).toBe(true)
  })
})

describe("options", () => {
  const withOptions = (name: string, options: Record<string, unknown>) =>
    decodeRole({ kind: "role", version: "v7", metadata: { name }, spec: { options } })

  it("parses durations", () => {
    expect(parseDuration("1h30m")).toBe(90 * 60_000)
    expect(parseDuration("8h")).toBe(8 * 3_600_000)
    expect(parseDuration("45s")).toBe(45_000)
    expect(parseDuration("8h0m0s")).toBe(8 * 3_600_000)
    expect(parseDuration("1.5h")).toBe(90 * 60_000)
    expect(parseDuration("500ms")).toBe(500)
    expect(parseDuration("0")).toBe(0)
    expect(Option.isNone(parseDurationOption("1d"))).toBe(true)
    expect(Option.isNone(parseDurationOption(""))).toBe(true)
    expect(Option.isNone(parseDurationOption("h"))).toBe(true)
    expect(() => parseDuration("soon")).toThrow(RangeError)
  })

  it("takes the strictest of the roles' options", () => {
    const a = withOptions("a", { max_session_ttl: "8h", client_idle_timeout: "30m" })
    const b = withOptions("b", { max_session_ttl: "1h30m", disconnect_expired_cert: true })
    const c = withOptions("c", {})
    expect(maxSessionTtl([a, b, c])).toBe(90 * 60_000)
    expect(maxSessionTtl([c])).toBe(DEFAULT_MAX_SESSION_TTL_MS)
    expect(maxSessionTtl([])).toBe(12 * 3_600_000)
    expect(maxSessionTtl([Presets.access])).toBe(30 * 3_600_000)
    expect(disconnectExpiredCert([a, c])).toBe(false)
    expect(disconnectExpiredCert([a, b])).toBe(true)
    expect(clientIdleTimeout([a, b])).toBe(30 * 60_000)
    expect(clientIdleTimeout([b, c])).toBeUndefined()
  })
})

describe("Template", () => {
  it("expands as documented", () => {
    const traits: Traits = { logins: ["alice", "bob"], db_users: ["a"], db_names: [], groups: ["dev", ""], "full name": ["Al"] }
    expect(expandValue("{{internal.logins}}", traits)).toEqual(["alice", "bob"])
    expect(expandValue("{{ internal.logins }}", traits)).toEqual(["alice", "bob"])
    expect(expandValue("pre-{{internal.logins}}-post", traits)).toEqual(["pre-alice-post", "pre-bob-post"])
    expect(expandValue("{{external.groups}}", traits)).toEqual(["dev"])
    expect(expandValue('{{external["full name"]}}', traits)).toEqual(["Al"])
    expect(expandValue("{{internal.db_names}}", traits)).toEqual([])
    expect(expandValue("{{external.missing}}", traits)).toEqual([])
    expect(expandValue("{{internal.groups}}", traits)).toEqual([])
    expect(expandValue("{{external.toString}}", traits)).toEqual([])
    expect(expandValue("{{internal.logins}}{{internal.logins}}", traits)).toEqual([])
    expect(expandValue("{{email.local(external.email)}}", traits)).toEqual([])
    expect(expandValue("broken}}", traits)).toEqual([])
    expect(expandValues(["{{internal.logins}}", "alice", "root"], traits)).toEqual(["alice", "bob", "root"])
    expect(parseTemplate("x-{{external.a}}")).toMatchObject({ _tag: "Variable", namespace: "external", name: "a", prefix: "x-", suffix: "" })
  })

  it.prop("a literal without braces expands to itself", [fc.string().filter((s) => !s.includes("{{") && !s.includes("}}"))], ([s]) => {
    expect(expandValue(s, { logins: ["x"] })).toEqual([s])
  })

  it.prop(
    "a variable expands to prefix+value+suffix for each non-empty value, deduplicated",
    [fc.stringMatching(/^[a-z-]*$/), fc.stringMatching(/^[a-z-]*$/), fc.array(fc.string())],
    ([prefix, suffix, values]) => {
      const out = expandValues([`${prefix}{{external.t}}${suffix}`], { t: values })
      expect(out).toEqual([...new Set(values.filter((v) => v !== "").map((v) => prefix + v + suffix))])
    }
  )
})

describe("Labels", () => {
  it("matches as Teleport does", () => {
    expect(matchLabels({ "*": "*" }, {})).toBe(true)
    expect(matchLabels({ "*": ["*"] }, { a: "b" })).toBe(true)
    expect(matchLabels({}, { a: "b" })).toBe(false)
    expect(matchLabels(undefined, { a: "b" })).toBe(false)
    expect(matchLabels({ env: "*" }, { env: "x" })).toBe(true)
    expect(matchLabels({ env: "*" }, {})).toBe(false)
    expect(matchLabels({ env: ["dev", "prod"], team: "db" }, { env: "prod", team: "db" })).toBe(true)
    expect(matchLabels({ env: ["dev", "prod"], team: "db" }, { env: "prod" })).toBe(false)
    expect(matchLabels({ env: "^pr.*$" }, { env: "prod" })).toBe(true)
    expect(matchLabels({ env: "^pr$" }, { env: "prod" })).toBe(false)
    expect(matchLabels({ env: "pr.*" }, { env: "prod" })).toBe(false)
    expect(matchLabels({ env: "^(bad$" }, { env: "(bad" })).toBe(false)
    expect(matchLabels({ constructor: "*" }, {})).toBe(false)
    expect(matchLabels(expandSelector({ env: "{{external.env}}" }, { env: ["prod"] }), { env: "prod" })).toBe(true)
    expect(matchLabels(expandSelector({ env: "{{external.env}}" }, {}), { env: "prod" })).toBe(false)
  })

  it.prop("'*': '*' matches all; a selector made of a resource's own labels matches it", [resourceLabels], ([labels]) => {
    expect(matchLabels({ "*": "*" }, labels)).toBe(true)
    if (Object.keys(labels).length > 0) expect(matchLabels(labels, labels)).toBe(true)
  })

  it.prop("never throws on any selector value", [fc.string(), fc.string()], ([v, value]) => {
    expect(typeof matchLabels({ k: `^${v}$` }, { k: value })).toBe("boolean")
  })
})
