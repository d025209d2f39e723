/**
 * `subjectMatches` and `isValidSubject` against independent reference models: a regex translation
 * of the pattern, and a regex of the subject grammar.
 */
import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { isValidSubject, subjectMatches } from "../../src/adapters/Bus.ts"

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

/** `*` is one token, `>` (last) is one or more tokens, anything else is itself. */
const referenceMatches = (pattern: string, subject: string): boolean => {
  const body = pattern
    .split(".")
    .map((t) => (t === "*" ? "[^.]+" : t === ">" ? "[^.]+(?:\\.[^.]+)*" : escape(t)))
    .join("\\.")
  return new RegExp(`^${body}$`).test(subject)
}

// A small alphabet so that patterns and subjects often share tokens.
const token = fc.constantFrom("a", "b", "c", "ab", "x-1", "_INBOX", "$JS")
const subject = fc.array(token, { minLength: 1, maxLength: 6 }).map((ts) => ts.join("."))
const pattern = fc
  .tuple(fc.array(fc.oneof(token, fc.constant("*")), { minLength: 0, maxLength: 5 }), fc.boolean())
  .filter(([ts, full]) => ts.length > 0 || full)
  .map(([ts, full]) => [...ts, ...(full ? [">"] : [])].join("."))

describe("subjectMatches", () => {
  it.prop("agrees with a regex translation of the pattern", [pattern, subject], ([p, s]) => {
    expect(subjectMatches(p, s)).toBe(referenceMatches(p, s))
  }, { fastCheck: { numRuns: 5_000 } })

  it.prop("a pattern matches the subject obtained by filling in its wildcards", [pattern, fc.array(token, { minLength: 6, maxLength: 6 })], ([p, fill]) => {
    let i = 0
    const s = p
      .split(".")
      .map((t) => (t === "*" ? fill[i++ % fill.length]! : t === ">" ? `${fill[0]}.${fill[1]}` : t))
      .join(".")
    expect(subjectMatches(p, s)).toBe(true)
  })

  it.prop("`>` matches one or more trailing tokens, never zero", [subject, fc.array(token, { minLength: 0, maxLength: 3 })], ([prefix, rest]) => {
    expect(subjectMatches(`${prefix}.>`, prefix)).toBe(false)
    expect(subjectMatches(`${prefix}.>`, [prefix, ...rest].join("."))).toBe(rest.length > 0)
  })

  it.prop("a literal pattern matches only itself", [subject, subject], ([a, b]) => {
    expect(subjectMatches(a, b)).toBe(a === b)
  })

  it("examples", () => {
    expect(subjectMatches("remoteler.*.events.>", "remoteler.main.events.db.session.query")).toBe(true)
    expect(subjectMatches("remoteler.*.events.>", "remoteler.main.events")).toBe(false)
    expect(subjectMatches("remoteler.main.events.>", "remoteler.other.events.x")).toBe(false)
    expect(subjectMatches(">", "a")).toBe(true)
    expect(subjectMatches("*", "a.b")).toBe(false)
  })
})

/** Tokens of printable non-space chars without `.`; wildcards as whole tokens, `>` last. */
const referenceValid = (s: string, wildcards: boolean): boolean => {
  const literal = "[^.\\s*>]+"
  const tok = wildcards ? `(?:${literal}|\\*)` : literal
  const last = wildcards ? `(?:${literal}|\\*|>)` : literal
  return new RegExp(`^(?:${tok}\\.)*${last}$`, "u").test(s)
}

const messy = fc
  .array(fc.constantFrom("a", "b", ".", "*", ">", " ", "\t", "x*", ">y", ""), { minLength: 0, maxLength: 8 })
  .map((parts) => parts.join(""))

describe("isValidSubject", () => {
  it.prop("agrees with a regex of the grammar", [messy, fc.boolean()], ([s, w]) => {
    expect(isValidSubject(s, w)).toBe(referenceValid(s, w))
  }, { fastCheck: { numRuns: 5_000 } })

  it.prop("generated subjects are valid; generated patterns are valid only with wildcards", [subject, pattern], ([s, p]) => {
    expect(isValidSubject(s, false)).toBe(true)
    expect(isValidSubject(p, true)).toBe(true)
    expect(isValidSubject(p, false)).toBe(!p.split(".").some((t) => t === "*" || t === ">"))
  })
})
