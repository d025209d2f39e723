/**
 * Our RFC 8785 canonical JSON against the `canonicalize` package (the implementation the chain
 * was first written with, kept here as the oracle: stored bodies must not change), and against
 * the RFC's own examples.
 */
import { describe, expect, it } from "@effect/vitest"
import canonicalizePackage from "canonicalize"
import { FastCheck as fc } from "effect"
import { canonicalize, seal, sealCanonical, sha256Hex } from "../../src/domain/Chain.ts"

/** What the package makes of a value: its output, or that it refused. */
const oracle = (value: unknown): string | "throws" => {
  try {
    return canonicalizePackage(value) ?? "throws"
  } catch {
    return "throws"
  }
}

const ours = (value: unknown): string | "throws" => {
  try {
    return canonicalize(value)
  } catch {
    return "throws"
  }
}

/** Any UTF-16 code unit, so strings and keys include lone surrogates as well as pairs. */
const codeUnit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c))
const anyUtf16 = fc.string({ unit: codeUnit, maxLength: 8 })
/** Full Unicode (well-formed) plus the characters JSON escapes, so escaping and sorting both get exercised. */
const text = fc.oneof(
  fc.string({ unit: "binary", maxLength: 8 }),
  fc.string({ unit: fc.constantFrom("\u0000", "\u001f", "\b", "\t", "\n", "\f", "\r", '"', "\\", "/", "\u007f", "\u2028", "\u20ac", "\ud83d\ude00", "\ufb33"), maxLength: 8 })
)

const doubles = fc.oneof(
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.integer(),
  fc.constantFrom(-0, 5e-324, Number.MAX_VALUE, Number.MAX_SAFE_INTEGER, 1e21, 1e-7, 0.1)
)

/** JSON values whose strings and keys are drawn from `str`. */
const jsonOf = (str: fc.Arbitrary<string>) =>
  fc.letrec((tie) => ({
    value: fc.oneof(
      { maxDepth: 4 },
      fc.constant(null),
      fc.boolean(),
      doubles,
      str,
      fc.array(tie("value"), { maxLength: 5 }),
      fc.dictionary(str, tie("value"), { maxKeys: 6 })
    )
  })).value

const fromHex = (hex: string) => Buffer.from(hex, "hex").readDoubleBE(0)

describe("canonical JSON (RFC 8785)", () => {
  it.prop("equals the canonicalize package on JSON values", [fc.jsonValue({ maxDepth: 4, stringUnit: "binary" })], ([value]) => {
    expect(canonicalize(value)).toBe(oracle(value))
  })

  it.prop("equals the canonicalize package on escapes, unicode keys and edge numbers", [jsonOf(text)], ([value]) => {
    expect(canonicalize(value)).toBe(oracle(value))
  })

  it.prop("refuses exactly what the package refuses when strings may hold lone surrogates", [jsonOf(anyUtf16)], ([value]) => {
    expect(ours(value)).toBe(oracle(value))
  })

  it.prop("parses back to the value and is a fixed point", [jsonOf(text)], ([value]) => {
    const out = canonicalize(value)
    // -0 is written as 0, the one value JSON cannot carry exactly.
    expect(JSON.parse(out)).toEqual(JSON.parse(JSON.stringify(value)))
    expect(canonicalize(JSON.parse(out))).toBe(out)
  })

  it.prop("seal writes out the canonical body of the fields, whatever their text", [
    fc.record({
      seq: fc.nat(),
      id: text,
      type: text,
      code: text,
      time: text,
      stream: text,
      version: fc.nat(),
      actor: text,
      payload: jsonOf(text),
      prev_hash: fc.stringMatching(/^[0-9a-f]{64}$/)
    })
  ], ([fields]) => {
    const { body, hash } = seal(fields)
    expect(body).toBe(oracle(fields))
    expect(hash).toBe(sha256Hex(body))
    expect(sealCanonical(fields, canonicalize(fields.payload)).body).toBe(body)
  })

  it("seal refuses fields JSON cannot carry", () => {
    const fields = { seq: 1, id: "i", type: "t", code: "c", time: "2024-01-01T00:00:00.000Z", stream: "s", version: 1, actor: "a", payload: null, prev_hash: "0".repeat(64) }
    expect(() => seal({ ...fields, actor: "\ud800" })).toThrow(TypeError)
    expect(() => seal({ ...fields, seq: NaN })).toThrow(TypeError)
    expect(() => seal({ ...fields, payload: { n: Infinity } })).toThrow(TypeError)
  })

  it("serialises numbers as RFC 8785 Appendix B says", () => {
    const vectors: ReadonlyArray<readonly [string, string]> = [
      ["0000000000000000", "0"],
      ["8000000000000000", "0"],
      ["0000000000000001", "5e-324"],
      ["8000000000000001", "-5e-324"],
      ["7fefffffffffffff", "1.7976931348623157e+308"],
      ["ffefffffffffffff", "-1.7976931348623157e+308"],
      ["4340000000000000", "9007199254740992"],
      ["c340000000000000", "-9007199254740992"],
      ["4430000000000000", "295147905179352830000"],
      ["44b52d02c7e14af5", "9.999999999999997e+22"],
      ["44b52d02c7e14af6", "1e+23"],
      ["44b52d02c7e14af7", "1.0000000000000001e+23"],
      ["444b1ae4d6e2ef4e", "999999999999999700000"],
      ["444b1ae4d6e2ef4f", "999999999999999900000"],
      ["444b1ae4d6e2ef50", "1e+21"],
      ["3eb0c6f7a0b5ed8c", "9.999999999999997e-7"],
      ["3eb0c6f7a0b5ed8d", "0.000001"],
      ["41b3de4355555553", "333333333.3333332"],
      ["41b3de4355555554", "333333333.33333325"],
      ["41b3de4355555555", "333333333.3333333"],
      ["41b3de4355555556", "333333333.3333334"],
      ["41b3de4355555557", "333333333.33333343"],
      ["becbf647612f3696", "-0.0000033333333333333333"],
      ["43143ff3c1cb0959", "1424953923781206.2"]
    ]
    for (const [hex, expected] of vectors) expect(canonicalize(fromHex(hex))).toBe(expected)
    expect(canonicalize(1e-7)).toBe("1e-7")
    for (const bits of ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"]) {
      expect(() => canonicalize(fromHex(bits))).toThrow(TypeError)
    }
  })

  it("reproduces the RFC 8785 examples (3.2.2 values, 3.2.3 sorting)", () => {
    const values = JSON.parse(
      '{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],' +
        '"string":"\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/","literals":[null,true,false]}'
    ) as unknown
    expect(canonicalize(values)).toBe(
      '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],' +
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    const sorting = {
      "\u20ac": "Euro Sign",
      "\r": "Carriage Return",
      "\ufb33": "Hebrew Letter Dalet With Dagesh",
      "1": "One",
      "\ud83d\ude00": "Emoji: Grinning Face",
      "\u0080": "Control",
      "\u00f6": "Latin Small Letter O With Diaeresis"
    }
    const keys = Object.keys(JSON.parse(canonicalize(sorting)) as object)
    // Object.keys would put "1" first (an array index); the text order is what is checked.
    const order = [...canonicalize(sorting).matchAll(/"([^"]*)":"[^"]*"/g)].map((m) => m[1])
    expect(order).toEqual(["\\r", "1", "\u0080", "\u00f6", "\u20ac", "\ud83d\ude00", "\ufb33"])
    expect(new Set(keys)).toEqual(new Set(Object.keys(sorting)))
  })

  it("refuses what JSON cannot carry exactly", () => {
    for (const bad of [NaN, Infinity, -Infinity, undefined, () => 1, Symbol("s"), 1n, "\ud800", "a\udc00b", { "\ud83d": 1 }, [undefined], { n: { m: NaN } }]) {
      expect(() => canonicalize(bad)).toThrow(TypeError)
    }
    const cycle: Record<string, unknown> = {}
    cycle["self"] = { back: cycle }
    expect(() => canonicalize(cycle)).toThrow(TypeError)
    // A repeated (not cyclic) reference is fine.
    const shared = { x: 1 }
    expect(canonicalize({ a: shared, b: [shared, shared] })).toBe('{"a":{"x":1},"b":[{"x":1},{"x":1}]}')
    // As in JSON.stringify: an undefined member is absent, a Date is its ISO string.
    expect(canonicalize({ b: undefined, a: new Date(0) })).toBe('{"a":"1970-01-01T00:00:00.000Z"}')
  })
})
