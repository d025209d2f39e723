import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import { parseRole, parseRoles, renderRole, renderRoles } from "../src/domain/RoleYaml.ts"
import * as Presets from "../src/domain/Presets.ts"

const teleportExample = `kind: role
version: v7
metadata:
  name: dev
  description: Developers
  labels:
    team: eng
spec:
  allow:
    logins: ['{{internal.logins}}', ubuntu]
    node_labels:
      env: [dev, staging]
      'region': '^eu-.*$'
    db_labels:
      '*': '*'
    db_users: ['{{internal.db_users}}', reader]
    db_names: ['{{internal.db_names}}', '*']
    rules:
      - resources: [session]
        verbs: [list, read]
  deny:
    db_labels:
      env: prod
    db_users: [postgres]
  options:
    max_session_ttl: 8h0m0s
    client_idle_timeout: 30m
    disconnect_expired_cert: true
`

const errorOf = (text: string): string => {
  const r = parseRole(text)
  if (Either.isRight(r)) throw new Error("expected a parse error")
  return r.left.message
}

const header = `kind: role
version: v7
metadata:
  name: dev
`

describe("RoleYaml", () => {
  it("parses a Teleport v7 role", () => {
    const role = Either.getOrThrow(parseRole(teleportExample))
    expect(role.metadata.name).toBe("dev")
    expect(role.metadata.labels).toEqual({ team: "eng" })
    expect(role.spec.allow?.logins).toEqual(["{{internal.logins}}", "ubuntu"])
    expect(role.spec.allow?.node_labels).toEqual({ env: ["dev", "staging"], region: "^eu-.*$" })
    expect(role.spec.allow?.db_labels).toEqual({ "*": "*" })
    expect(role.spec.allow?.rules?.[0]?.verbs).toEqual(["list", "read"])
    expect(role.spec.deny?.db_users).toEqual(["postgres"])
    expect(role.spec.options?.max_session_ttl).toBe("8h0m0s")
    expect(role.spec.options?.disconnect_expired_cert).toBe(true)
  })

  it("names line and field of a wrong type", () => {
    expect(errorOf(`${header}spec:\n  allow:\n    db_users: postgres\n`)).toBe(
      "line 7: spec.allow.db_users: expected an array of strings"
    )
  })

  it("names line and index of a wrong element", () => {
    expect(errorOf(`${header}spec:\n  allow:\n    db_users:\n      - alice\n      - 7\n`)).toBe(
      "line 9: spec.allow.db_users[1]: expected a string"
    )
  })

  it("names an unknown field", () => {
    expect(errorOf(`${header}spec:\n  alow:\n    logins: [root]\n`)).toBe("line 6: spec.alow: unknown field")
  })

  it("names a bad duration", () => {
    expect(errorOf(`${header}spec:\n  options:\n    max_session_ttl: 8 hours\n`)).toBe(
      "line 7: spec.options.max_session_ttl: expected a duration such as 8h, 30m or 1h30m"
    )
  })

  it("names a bad verb", () => {
    expect(errorOf(`${header}spec:\n  allow:\n    rules:\n      - resources: [role]\n        verbs: [list, write]\n`)).toBe(
      'line 9: spec.allow.rules[0].verbs[1]: expected one of "list", "read", "create", "update", "delete", "*"'
    )
  })

  it("names a missing field at its parent", () => {
    expect(errorOf(`kind: role\nversion: v7\nmetadata:\n  description: x\nspec: {}\n`)).toBe(
      "line 3: metadata.name: missing required field"
    )
  })

  it("reports every issue, in line order", () => {
    const message = errorOf(`${header}  nme: x\nspec:\n  allow:\n    logins: root\n  options:\n    max_session_ttl: 1d\n`)
    expect(message.split("\n")).toEqual([
      "line 5: metadata.nme: unknown field",
      "line 8: spec.allow.logins: expected an array of strings",
      "line 10: spec.options.max_session_ttl: expected a duration such as 8h, 30m or 1h30m"
    ])
  })

  it("reports a YAML syntax error with its line", () => {
    const message = errorOf(`${header}spec:\n  allow:\n    logins: [root\n  deny: {}\n`)
    expect(message).toMatch(/^line \d+: YAML syntax error: /)
    const line = Number(/^line (\d+)/.exec(message)![1])
    expect(line).toBeGreaterThanOrEqual(7)
    expect(line).toBeLessThanOrEqual(8)
  })

  it("reports a duplicate key with its line", () => {
    expect(errorOf(`kind: role\nversion: v7\nmetadata:\n  name: a\n  name: b\nspec: {}\n`)).toMatch(
      /^line 5: YAML syntax error: Map keys must be unique/
    )
  })

  it("accepts only kind role, version v7", () => {
    expect(errorOf(`kind: user\nversion: v2\nmetadata: {name: x}\nspec: {}\n`)).toBe("line 1: kind: expected kind role, got user")
    expect(errorOf(`kind: role\nversion: v6\nmetadata: {name: x}\nspec: {}\n`)).toBe(
      "line 2: version: unsupported role version v6: only v7 is supported"
    )
    expect(errorOf(`kind: role\nmetadata: {name: x}\nspec: {}\n`)).toBe(
      "line 1: version: missing required field: only version v7 is supported"
    )
  })

  it("refuses a wildcard allow login", () => {
    expect(errorOf(`${header}spec:\n  allow:\n    logins:\n      - root\n      - '*'\n`)).toBe(
      "line 9: spec.allow.logins[1]: a wildcard (*) is not allowed in allow logins"
    )
  })

  it("refuses a document that is not a mapping", () => {
    expect(errorOf(`- a\n- b\n`)).toBe("line 1: expected a mapping with kind, version, metadata and spec")
  })

  it("parses several documents, with absolute lines in errors", () => {
    const two = `${teleportExample}---\n${header}spec: {}\n`
    const roles = Either.getOrThrow(parseRoles(two))
    expect(roles.map((r) => r.metadata.name)).toEqual(["dev", "dev"])
    const bad = `${teleportExample}---\n${header}spec:\n  allow: {logins: x}\n`
    const lines = teleportExample.split("\n").length // the `---` line
    const r = parseRoles(bad)
    expect(Either.isLeft(r) && r.left.message).toBe(`line ${lines + 6}: spec.allow.logins: expected an array of strings`)
    expect(Either.isLeft(parseRole(two))).toBe(true)
    expect(Either.getOrThrow(parseRoles("---\n---\n"))).toEqual([])
  })

  it("renders what it parses", () => {
    const role = Either.getOrThrow(parseRole(teleportExample))
    expect(Either.getOrThrow(parseRole(renderRole(role)))).toEqual(role)
    const presets = [Presets.access, Presets.editor, Presets.auditor]
    expect(Either.getOrThrow(parseRoles(renderRoles(presets)))).toEqual(presets)
  })
})
