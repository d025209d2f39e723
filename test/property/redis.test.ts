/**
 * Property tests for the RESP codec (STYLE item 11): decode(encode(v)) = v for
 * RESP2/RESP3 values, ioredis's own command encoder and redis-parser as
 * independent oracles, split-anywhere equivalence, limits as typed errors,
 * random input never throwing or hanging.
 */
import { createRequire } from "node:module"
import * as fc from "fast-check"
import { describe, expect, it } from "vitest"
import { RespParser, commandOf, serialize } from "../../src/protocols/redis/index.ts"
import type { ParseResult, ParserOptions, ProtocolError, RespValue } from "../../src/protocols/redis/index.ts"
import { AUDIT_ARG_LIMIT, MASK, auditArgs, authDecision } from "../../src/protocols/redis/commands.ts"
import { encodeCommands } from "../../src/protocols/redis/relay.ts"

const require = createRequire(import.meta.url)
const { Command } = require("ioredis") as {
  Command: new (name: string, args: ReadonlyArray<string | Buffer>) => { toWritable(socket?: unknown): string | Buffer }
}
const RedisParser = require("redis-parser") as new (o: {
  returnReply: (r: unknown) => void
  returnError: (e: Error) => void
  returnBuffers?: boolean
}) => { execute(b: Buffer): void }

const RUNS = { numRuns: 150 }
const u8 = (b: Uint8Array): Uint8Array => new Uint8Array(b)
const concat = (parts: ReadonlyArray<Uint8Array>): Uint8Array => new Uint8Array(Buffer.concat(parts))
const utf8 = new TextEncoder()
const fromUtf8 = new TextDecoder()

// ---------------------------------------------------------------------------
// Arbitraries
// ---------------------------------------------------------------------------

/** A line for simple strings/errors: no CR/LF, survives UTF-8. */
const lineText = fc
  .string({ unit: "binary", maxLength: 24 })
  .map((s) => s.replace(/[\r\n]/g, ""))
  .filter((s) => fromUtf8.decode(utf8.encode(s)) === s)
const bytes = (maxLength = 32) => fc.uint8Array({ maxLength }).map(u8)
const int64 = fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n })

const respValue: fc.Arbitrary<RespValue> = fc.letrec<{ value: RespValue }>((tie) => {
  const items = fc.array(tie("value"), { maxLength: 4 })
  const pairs = fc.array(fc.tuple(tie("value"), tie("value")), { maxLength: 3 })
  return {
    value: fc.oneof(
      { depthSize: "small", withCrossShrink: true },
      fc.record({ kind: fc.constant("simple" as const), value: lineText }),
      fc.record({ kind: fc.constant("error" as const), value: lineText }),
      fc.record({ kind: fc.constant("integer" as const), value: int64 }),
      fc.record({ kind: fc.constant("bulk" as const), value: fc.option(bytes(), { nil: null }) }),
      fc.constant({ kind: "null" as const }),
      fc.record({ kind: fc.constant("boolean" as const), value: fc.boolean() }),
      fc.record({ kind: fc.constant("double" as const), value: fc.double() }),
      fc.record({ kind: fc.constant("bigNumber" as const), value: fc.bigInt({ min: -(2n ** 200n), max: 2n ** 200n }) }),
      fc.record({ kind: fc.constant("bulkError" as const), value: bytes() }),
      fc.record({
        kind: fc.constant("verbatim" as const),
        format: fc.constantFrom("txt", "mkd", "bin"),
        value: bytes()
      }),
      fc.record({ kind: fc.constant("array" as const), value: fc.option(items, { nil: null }) }),
      fc.record({ kind: fc.constant("map" as const), value: pairs }),
      fc.record({ kind: fc.constant("set" as const), value: items }),
      fc.record({ kind: fc.constant("push" as const), value: items }),
      fc.record({ kind: fc.constant("attribute" as const), attributes: pairs, value: tie("value") })
    )
  }
}).value

const argBytes = fc.oneof(bytes(40), fc.string({ maxLength: 20 }).map((s) => utf8.encode(s)))
const commandName = fc.oneof(
  fc.constantFrom("get", "SET", "hSet", "ping", "lpush", "auth", "hello", "subscribe", "xadd", "eval"),
  fc.stringMatching(/^[a-zA-Z][a-zA-Z_|-]{0,12}$/)
)
const requestCommand = fc.record({ name: commandName, args: fc.array(argBytes, { maxLength: 6 }) })

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/** Canonical text of parse results: bytes as hex, bigints and awkward doubles tagged. */
const canon = (v: unknown): string =>
  JSON.stringify(v, (_k, x: unknown) => {
    if (x instanceof Uint8Array) return `hex:${Buffer.from(x).toString("hex")}`
    if (typeof x === "bigint") return `big:${x}`
    if (typeof x === "number" && (!Number.isFinite(x) || Object.is(x, -0))) return `num:${Object.is(x, -0) ? "-0" : String(x)}`
    return x
  })

const reply = (): RespParser => new RespParser({ mode: "reply" })
const request = (): RespParser => new RespParser({ mode: "request" })

const pushSplits = (make: () => RespParser, data: Uint8Array, cuts: ReadonlyArray<number>): Array<ParseResult> => {
  const p = make()
  const out: Array<ParseResult> = []
  let prev = 0
  for (const c of [...cuts, data.length]) {
    out.push(...p.push(data.subarray(prev, c)))
    prev = c
  }
  return out
}

const everyOffset = (make: () => RespParser, data: Uint8Array): void => {
  const whole = canon(make().push(data))
  for (let i = 0; i <= data.length; i++) {
    const split = canon(pushSplits(make, data, [i]))
    if (split !== whole) expect(split).toBe(whole)
  }
}

const randomCuts = (len: number) =>
  fc.uniqueArray(fc.integer({ min: 0, max: len }), { maxLength: 24 }).map((xs) => xs.sort((a, b) => a - b))

const ioredisBytes = (name: string, args: ReadonlyArray<Uint8Array>): Uint8Array => {
  const w = new Command(name, args.map((a) => Buffer.from(a))).toWritable()
  return typeof w === "string" ? utf8.encode(w) : u8(w)
}

const errorOf = (rs: ReadonlyArray<ParseResult>): ProtocolError | undefined => {
  const last = rs[rs.length - 1]
  return last?.kind === "error" && "reason" in last ? last : undefined
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

describe("RESP round trip", () => {
  it("decode(encode(v)) = v for RESP2/RESP3 values", () => {
    fc.assert(
      fc.property(respValue, (v) => {
        expect(canon(reply().push(serialize(v)))).toBe(canon([v]))
      }),
      RUNS
    )
  })

  it("a stream of values split at random points parses as whole", () => {
    fc.assert(
      fc.property(
        fc.array(respValue, { minLength: 1, maxLength: 6 }).chain((vs) => {
          const data = concat(vs.map(serialize))
          return fc.tuple(fc.constant(vs), fc.constant(data), randomCuts(data.length))
        }),
        ([vs, data, cuts]) => {
          expect(canon(pushSplits(reply, data, cuts))).toBe(canon(vs))
        }
      ),
      RUNS
    )
  })

  it("a small stream split at every offset parses as whole", () => {
    fc.assert(
      fc.property(fc.array(respValue, { minLength: 1, maxLength: 3 }), (vs) => {
        const data = concat(vs.map(serialize))
        fc.pre(data.length <= 400)
        everyOffset(reply, data)
      }),
      { numRuns: 60 }
    )
  })

  it("RESP2 replies we serialize read the same in redis-parser (ioredis's reply parser)", () => {
    const resp2: fc.Arbitrary<RespValue> = fc.letrec<{ v: RespValue }>((tie) => ({
      v: fc.oneof(
        { depthSize: "small" },
        fc.record({ kind: fc.constant("simple" as const), value: lineText }),
        fc.record({ kind: fc.constant("integer" as const), value: fc.bigInt({ min: -(2n ** 53n) + 1n, max: 2n ** 53n - 1n }) }),
        fc.record({ kind: fc.constant("bulk" as const), value: fc.option(bytes(), { nil: null }) }),
        fc.record({ kind: fc.constant("array" as const), value: fc.option(fc.array(tie("v"), { maxLength: 4 }), { nil: null }) })
      )
    })).v
    const asPlain = (v: RespValue): unknown => {
      switch (v.kind) {
        case "simple":
          return Buffer.from(v.value)
        case "integer":
          return Number(v.value)
        case "bulk":
          return v.value === null ? null : Buffer.from(v.value)
        case "array":
          return v.value === null ? null : v.value.map(asPlain)
        default:
          throw new Error("not RESP2")
      }
    }
    fc.assert(
      fc.property(resp2, (v) => {
        const got: Array<unknown> = []
        new RedisParser({ returnReply: (r) => got.push(r), returnError: (e) => got.push(e), returnBuffers: true }).execute(Buffer.from(serialize(v)))
        expect(canon(got)).toBe(canon([asPlain(v)]))
      }),
      RUNS
    )
  })
})

describe("RESP requests against ioredis's command encoder", () => {
  it("each command ioredis writes decodes to the same name and arguments", () => {
    fc.assert(
      fc.property(requestCommand, ({ name, args }) => {
        const rs = request().push(ioredisBytes(name, args))
        expect(rs).toHaveLength(1)
        const cmd = commandOf(rs[0] as RespValue)
        expect(cmd?.name).toBe(name.toUpperCase())
        expect(canon(cmd?.args)).toBe(canon(args))
      }),
      RUNS
    )
  })

  it("a pipeline of ioredis commands, split at random points, yields the commands in order", () => {
    fc.assert(
      fc.property(
        fc.array(requestCommand, { minLength: 1, maxLength: 12 }).chain((cmds) => {
          const data = concat(cmds.map((c) => ioredisBytes(c.name, c.args)))
          return fc.tuple(fc.constant(cmds), fc.constant(data), randomCuts(data.length))
        }),
        ([cmds, data, cuts]) => {
          const got = pushSplits(request, data, cuts).map((r) => commandOf(r as RespValue))
          expect(canon(got)).toBe(canon(cmds.map((c) => ({ name: c.name.toUpperCase(), args: c.args }))))
        }
      ),
      RUNS
    )
  })

  it("a small pipeline split at every offset parses as whole", () => {
    fc.assert(
      fc.property(fc.array(requestCommand, { minLength: 1, maxLength: 3 }), (cmds) => {
        const data = concat(cmds.map((c) => ioredisBytes(c.name, c.args)))
        fc.pre(data.length <= 300)
        everyOffset(request, data)
      }),
      { numRuns: 50 }
    )
  })

  it("inline commands of plain words split on spaces, pipelined with multibulk ones", () => {
    const word = fc.stringMatching(/^[A-Za-z0-9:_.-]{1,10}$/)
    fc.assert(
      fc.property(fc.array(fc.array(word, { minLength: 1, maxLength: 5 }), { minLength: 1, maxLength: 5 }), fc.boolean(), (lines, crlf) => {
        const data = utf8.encode(lines.map((l) => `${l.join("  ")}${crlf ? "\r\n" : "\n"}`).join("") + "*1\r\n$4\r\nPING\r\n")
        const got = request().push(data).map((r) => commandOf(r as RespValue))
        const want = [...lines, ["PING"]].map(([n, ...a]) => ({ name: n!.toUpperCase(), args: a.map((s) => utf8.encode(s)) }))
        expect(canon(got)).toBe(canon(want))
      }),
      RUNS
    )
  })
})

describe("RESP robustness", () => {
  const modes: ReadonlyArray<ParserOptions> = [{ mode: "request" }, { mode: "reply" }]

  it("random bytes never throw and never hang", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.constantFrom(...modes), randomCuts(300), (data, opts, cuts) => {
        const t0 = performance.now()
        const p = new RespParser(opts)
        let prev = 0
        for (const c of [...cuts.filter((c) => c <= data.length), data.length]) {
          p.push(data.subarray(prev, c))
          prev = c
        }
        expect(performance.now() - t0).toBeLessThan(500)
      }),
      { numRuns: 400 }
    )
  })

  it("random RESP-ish bytes (valid prefixes with garbage) never throw", () => {
    fc.assert(
      fc.property(respValue, fc.integer({ min: 0, max: 1000 }), fc.uint8Array({ maxLength: 16 }), (v, at, junk) => {
        const data = serialize(v)
        const i = at % (data.length + 1)
        const mutated = concat([data.subarray(0, i), junk, data.subarray(i)])
        reply().push(mutated)
        request().push(mutated)
      }),
      RUNS
    )
  })

  it("lying bulk lengths are typed errors, not hangs or misreads", () => {
    fc.assert(
      fc.property(bytes(20), fc.integer({ min: 0, max: 19 }), (body, lie) => {
        fc.pre(lie < body.length)
        const data = concat([utf8.encode(`$${lie}\r\n`), body, utf8.encode("\r\n"), serialize({ kind: "simple", value: "OK" })])
        const rs = reply().push(data)
        expect(errorOf(rs)?.reason).toBe("missing-crlf")
      }),
      RUNS
    )
  })

  it("declared lengths beyond the limits fail on the header", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1024 }), fc.constantFrom(...modes), (limit, opts) => {
        const big = limit + 1
        const bulk = new RespParser({ ...opts, maxBulkLength: limit }).push(utf8.encode(`*1\r\n$${big}\r\n`))
        expect(errorOf(bulk)?.reason).toBe("bulk-too-large")
        const multi = new RespParser({ ...opts, maxMultibulkLength: limit }).push(utf8.encode(`*${big}\r\n`))
        expect(errorOf(multi)?.reason).toBe("multibulk-too-large")
      }),
      RUNS
    )
  })

  it("after an error the parser refuses everything, returning the same error", () => {
    const p = request()
    const e = p.push(utf8.encode("*1\r\n+OK\r\n"))
    expect(errorOf(e)?.reason).toBe("invalid-type")
    expect(p.push(utf8.encode("*1\r\n$4\r\nPING\r\n"))).toEqual([e[e.length - 1]])
  })
})

describe("RESP examples", () => {
  it("a bulk length of 2^40 is bulk-too-large (Redis: invalid bulk length)", () => {
    for (const mode of ["request", "reply"] as const) {
      const rs = new RespParser({ mode }).push(utf8.encode("*1\r\n$1099511627776\r\n"))
      expect(errorOf(rs)?.reason).toBe("bulk-too-large")
    }
  })

  it("multibulk length above 2^31-1 and absurd numbers are refused", () => {
    expect(errorOf(request().push(utf8.encode("*2147483648\r\n")))?.reason).toBe("multibulk-too-large")
    expect(errorOf(request().push(utf8.encode("*99999999999999999999999\r\n")))?.reason).toBe("invalid-length")
    expect(errorOf(request().push(utf8.encode("*-2\r\n")))?.reason).toBe("invalid-length")
    expect(errorOf(request().push(utf8.encode("*1\r\n$-1\r\n")))?.reason).toBe("invalid-length")
  })

  it("nesting beyond the depth limit is a typed error", () => {
    const deep = utf8.encode("*1\r\n".repeat(65) + ":1\r\n")
    expect(errorOf(reply().push(deep))?.reason).toBe("nesting-too-deep")
    expect(canon(new RespParser({ mode: "reply", maxDepth: 65 }).push(deep))).not.toContain("nesting")
    expect(errorOf(request().push(utf8.encode("*1\r\n*1\r\n$1\r\na\r\n")))?.reason).toBe("invalid-type")
  })

  it("an endless line is line-too-long, not an endless buffer", () => {
    const p = request()
    let rs: Array<ParseResult> = []
    for (let i = 0; i < 80 && rs.length === 0; i++) rs = p.push(new Uint8Array(1024).fill(0x61))
    expect(errorOf(rs)?.reason).toBe("line-too-long")
  })

  it("inline commands follow redis-cli quoting", () => {
    const rs = request().push(utf8.encode(`PING\r\nset "a b\\x41\\n" 'it\\'s' plain\n\r\n  \nget "x"y\r\n`))
    const cmds = rs.slice(0, 2).map((r) => commandOf(r as RespValue))
    expect(cmds[0]).toEqual({ name: "PING", args: [] })
    expect(cmds[1]?.name).toBe("SET")
    expect(cmds[1]?.args.map((a) => fromUtf8.decode(a))).toEqual(["a bA\n", "it's", "plain"])
    expect(errorOf(rs)?.reason).toBe("unbalanced-quotes")
    expect(errorOf(request().push(utf8.encode(`get "abc\r\n`)))?.reason).toBe("unbalanced-quotes")
  })

  it("RESP3 scalars read as documented", () => {
    const rs = reply().push(utf8.encode("_\r\n#t\r\n,inf\r\n,-1.5e3\r\n(12345678901234567890123\r\n!5\r\nERR x\r\n=7\r\ntxt:abc\r\n"))
    expect(canon(rs)).toBe(
      canon([
        { kind: "null" },
        { kind: "boolean", value: true },
        { kind: "double", value: Infinity },
        { kind: "double", value: -1500 },
        { kind: "bigNumber", value: 12345678901234567890123n },
        { kind: "bulkError", value: utf8.encode("ERR x") },
        { kind: "verbatim", format: "txt", value: utf8.encode("abc") }
      ])
    )
  })

  it("a 32 MiB bulk string arriving in 64 KiB pieces parses in linear time, zero-copy at the end", () => {
    const size = 32 * 1024 * 1024
    const payload = new Uint8Array(size).fill(0x78)
    const data = concat([utf8.encode(`*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$${size}\r\n`), payload, utf8.encode("\r\n*1\r\n$4\r\nPING\r\n")])
    const p = request()
    const out: Array<ParseResult> = []
    const t0 = performance.now()
    for (let i = 0; i < data.length; i += 64 * 1024) out.push(...p.push(data.subarray(i, i + 64 * 1024)))
    expect(performance.now() - t0).toBeLessThan(3000)
    const cmds = out.map((r) => commandOf(r as RespValue))
    expect(cmds.map((c) => c?.name)).toEqual(["SET", "PING"])
    expect(cmds[0]?.args[1]?.length).toBe(size)
    expect(p.idle).toBe(true)
  })
})

describe("the engine's command handling", () => {
  const parseCommands = (data: Uint8Array) => request().push(data).map((r) => commandOf(r as RespValue))

  it("commands re-encoded for Redis parse back to what ioredis sent (the audit sees what Redis runs)", () => {
    fc.assert(
      fc.property(fc.array(requestCommand, { minLength: 1, maxLength: 8 }), (cmds) => {
        const parsed = parseCommands(concat(cmds.map((c) => ioredisBytes(c.name, c.args))))
        const again = parseCommands(new Uint8Array(encodeCommands(parsed.map((c) => c!))))
        expect(canon(again)).toBe(canon(parsed))
      }),
      RUNS
    )
  })

  it("inline commands are re-encoded as multibulk with the same arguments", () => {
    const [cmd] = parseCommands(utf8.encode(`set "a b" 'c d' e\r\n`))
    expect(fromUtf8.decode(encodeCommands([cmd!]))).toBe("*4\r\n$3\r\nSET\r\n$3\r\na b\r\n$3\r\nc d\r\n$1\r\ne\r\n")
  })

  it("audited arguments are cut at 1 KiB with their length, and AUTH/HELLO passwords never appear", () => {
    const secret = fc.stringMatching(/^[a-z0-9]{12,20}$/).map((s) => `pw-${s}`)
    fc.assert(
      fc.property(fc.array(argBytes, { maxLength: 4 }), fc.integer({ min: 0, max: 3000 }), secret, fc.string({ maxLength: 8 }), (args, n, pw, user) => {
        const long = new Uint8Array(n).fill(0x61)
        const plain = auditArgs({ name: "SET", args: [...args, long] })
        const last = plain[plain.length - 1]!
        if (n <= AUDIT_ARG_LIMIT) expect(last).toBe("a".repeat(n))
        else expect(last).toBe(`${"a".repeat(AUDIT_ARG_LIMIT)}...(${n} bytes)`)
        const auths = [
          { name: "AUTH", args: [utf8.encode(pw)] },
          { name: "AUTH", args: [utf8.encode(user), utf8.encode(pw)] },
          { name: "HELLO", args: [utf8.encode("3"), utf8.encode("AUTH"), utf8.encode(user), utf8.encode(pw)] },
          { name: "HELLO", args: [utf8.encode("3"), utf8.encode("SETNAME"), utf8.encode("x"), utf8.encode("auth"), utf8.encode(user), utf8.encode(pw)] }
        ]
        for (const a of auths) {
          const audited = auditArgs(a)
          expect(audited.join(" ")).not.toContain(pw)
          expect(audited[audited.length - 1]).toBe(MASK)
        }
      }),
      RUNS
    )
  })

  it("AUTH and HELLO ... AUTH never reach Redis naming a user other than the session's", () => {
    const name = fc.constantFrom("alice", "bob", "default", "")
    fc.assert(
      fc.property(name, name, fc.constantFrom("AUTH", "HELLO"), fc.boolean(), (session, asked, kind, setname) => {
        const pw = utf8.encode("pw")
        const cmd =
          kind === "AUTH"
            ? { name: "AUTH", args: [utf8.encode(asked), pw] }
            : { name: "HELLO", args: [utf8.encode("3"), ...(setname ? [utf8.encode("SETNAME"), utf8.encode("c")] : []), utf8.encode("AUTH"), utf8.encode(asked), pw] }
        const d = authDecision(cmd, session)
        if (asked === session) {
          expect(d.kind).toBe("forward")
          if (d.kind === "forward") expect(d.command.args.map((a) => fromUtf8.decode(a))).toContain(session)
        } else expect(d).toEqual({ kind: "other-user", user: asked })
      }),
      RUNS
    )
    // AUTH with a password only means Redis's default user: it runs as the session's user instead.
    const d = authDecision({ name: "AUTH", args: [utf8.encode("pw")] }, "alice")
    expect(d.kind === "forward" && d.command.args.map((a) => fromUtf8.decode(a))).toEqual(["alice", "pw"])
  })
})
