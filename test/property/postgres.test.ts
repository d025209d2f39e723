/**
 * Property tests for the PostgreSQL wire codec (STYLE item 11):
 * pg-protocol as an independent oracle in both directions, decode(encode(m)) = m,
 * split-anywhere equivalence, and random input never throwing or hanging.
 */
import * as fc from "fast-check"
import { serialize } from "pg-protocol"
import { Parser as PgParser } from "pg-protocol/dist/parser.js"
import type { BackendMessage as PgBackendMessage } from "pg-protocol/dist/messages.js"
import { describe, expect, it } from "vitest"
import {
  BackendCode,
  BackendParser,
  FrameSplitter,
  FrontendCode,
  FrontendParser,
  MAX_STARTUP_PACKET_SIZE,
  NOTICE_FIELD_CODES,
  PROTOCOL_3_0,
  readPasswordMessage,
  readSASLInitialResponse,
  secretKeyFromInt32,
  serializeBackend,
  serializeFrontend
} from "../../src/protocols/postgres/index.ts"
import type {
  BackendMessage,
  FrontendMessage,
  NoticeFields,
  ProtocolError
} from "../../src/protocols/postgres/index.ts"

const RUNS = { numRuns: 150 }

// ---------------------------------------------------------------------------
// Arbitraries
// ---------------------------------------------------------------------------

const utf8 = new TextEncoder()
const fromUtf8 = new TextDecoder()
const u8 = (b: Uint8Array): Uint8Array => new Uint8Array(b)
const concat = (parts: ReadonlyArray<Uint8Array>): Uint8Array => new Uint8Array(Buffer.concat(parts))

/** Strings that survive a UTF-8 round trip and fit in a cstring. */
const text = (maxLength = 16) =>
  fc
    .string({ unit: "binary", maxLength })
    .map((s) => s.replaceAll("\0", ""))
    .filter((s) => fromUtf8.decode(utf8.encode(s)) === s)
const nonEmptyText = (maxLength = 16) => text(maxLength).filter((s) => s.length > 0)
const bytes = (maxLength = 32) => fc.uint8Array({ maxLength }).map(u8)
const nullableBytes = fc.option(bytes(), { nil: null })
const int16 = fc.integer({ min: -0x8000, max: 0x7fff })
const int32 = fc.integer({ min: -0x80000000, max: 0x7fffffff })
const uint32 = fc.integer({ min: 0, max: 0xffffffff })
const format = fc.integer({ min: 0, max: 1 })
const secretKey = fc.oneof(int32.map(secretKeyFromInt32), fc.uint8Array({ minLength: 4, maxLength: 256 }).map(u8))

const knownFrontend = new Set<number>(Object.values(FrontendCode))
const knownBackend = new Set<number>(Object.values(BackendCode))
const knownNoticeLetters = new Set(NOTICE_FIELD_CODES.map(([, c]) => c))

const startupMessage = fc.record({
  kind: fc.constant("startup" as const),
  protocolVersion: fc.integer({ min: 0, max: 0xffff }).map((minor) => (3 << 16) | minor),
  parameters: fc.array(fc.tuple(nonEmptyText(), text()), { maxLength: 6 })
})

const startupFamily: fc.Arbitrary<FrontendMessage> = fc.oneof(
  startupMessage,
  fc.constant({ kind: "sslRequest" as const }),
  fc.constant({ kind: "gssEncRequest" as const }),
  fc.record({ kind: fc.constant("cancelRequest" as const), processId: int32, secretKey }),
  fc.record({
    kind: fc.constant("unknownRequest" as const),
    code: int32.filter((c) => c >>> 16 !== 3 && c !== 80877102 && c !== 80877103 && c !== 80877104),
    body: bytes(64)
  })
)

const typedFrontend: fc.Arbitrary<FrontendMessage> = fc.oneof(
  fc.record({ kind: fc.constant("query" as const), text: text(64) }),
  fc.record({
    kind: fc.constant("parse" as const),
    name: text(),
    text: text(64),
    paramTypes: fc.array(uint32, { maxLength: 5 })
  }),
  fc.record({
    kind: fc.constant("bind" as const),
    portal: text(),
    statement: text(),
    paramFormats: fc.array(int16, { maxLength: 4 }),
    values: fc.array(nullableBytes, { maxLength: 5 }),
    resultFormats: fc.array(int16, { maxLength: 4 })
  }),
  fc.record({ kind: fc.constant("describe" as const), target: fc.constantFrom("S" as const, "P" as const), name: text() }),
  fc.record({ kind: fc.constant("execute" as const), portal: text(), maxRows: uint32 }),
  fc.constant({ kind: "sync" as const }),
  fc.constant({ kind: "flush" as const }),
  fc.record({ kind: fc.constant("close" as const), target: fc.constantFrom("S" as const, "P" as const), name: text() }),
  fc.constant({ kind: "terminate" as const }),
  fc.record({ kind: fc.constant("copyData" as const), data: bytes(128) }),
  fc.constant({ kind: "copyDone" as const }),
  fc.record({ kind: fc.constant("copyFail" as const), message: text(32) }),
  fc.record({
    kind: fc.constant("functionCall" as const),
    functionOid: uint32,
    argFormats: fc.array(int16, { maxLength: 3 }),
    args: fc.array(nullableBytes, { maxLength: 3 }),
    resultFormat: int16
  }),
  fc.record({ kind: fc.constant("authResponse" as const), data: bytes() }),
  fc.record({
    kind: fc.constant("unknown" as const),
    code: fc.integer({ min: 0, max: 255 }).filter((c) => !knownFrontend.has(c)),
    body: bytes()
  })
)

const noticeFields: fc.Arbitrary<NoticeFields> = fc
  .tuple(
    fc.record(
      Object.fromEntries(NOTICE_FIELD_CODES.map(([name]) => [name, text(24)])) as Record<
        (typeof NOTICE_FIELD_CODES)[number][0],
        fc.Arbitrary<string>
      >,
      { requiredKeys: [] }
    ),
    fc.option(
      fc.array(
        fc.tuple(
          fc
            .integer({ min: 1, max: 127 })
            .map((n) => String.fromCharCode(n))
            .filter((c) => !knownNoticeLetters.has(c)),
          text()
        ),
        { minLength: 1, maxLength: 3 }
      ),
      { nil: undefined }
    )
  )
  .map(([known, other]) => (other === undefined ? known : { ...known, other }))

const field = fc.record({
  name: text(),
  tableOID: uint32,
  columnAttr: int16,
  typeOID: uint32,
  typeSize: int16,
  typeModifier: int32,
  format: int16
})

const copyKinds = ["copyInResponse", "copyOutResponse", "copyBothResponse"] as const
const knownAuth = new Set([0, 2, 3, 5, 7, 8, 9, 10, 11, 12])

const backendMessage: fc.Arbitrary<BackendMessage> = fc.oneof(
  fc.constantFrom(
    { kind: "authenticationOk" as const },
    { kind: "authenticationKerberosV5" as const },
    { kind: "authenticationCleartextPassword" as const },
    { kind: "authenticationGSS" as const },
    { kind: "authenticationSSPI" as const },
    { kind: "bindComplete" as const },
    { kind: "closeComplete" as const },
    { kind: "copyDone" as const },
    { kind: "emptyQueryResponse" as const },
    { kind: "noData" as const },
    { kind: "parseComplete" as const },
    { kind: "portalSuspended" as const }
  ),
  fc.record({ kind: fc.constant("authenticationMD5Password" as const), salt: fc.uint8Array({ minLength: 4, maxLength: 4 }).map(u8) }),
  fc.record({ kind: fc.constant("authenticationGSSContinue" as const), data: bytes() }),
  fc.record({ kind: fc.constant("authenticationSASL" as const), mechanisms: fc.array(nonEmptyText(), { maxLength: 3 }) }),
  fc.record({ kind: fc.constant("authenticationSASLContinue" as const), data: bytes() }),
  fc.record({ kind: fc.constant("authenticationSASLFinal" as const), data: bytes() }),
  fc.record({ kind: fc.constant("backendKeyData" as const), processId: int32, secretKey }),
  fc.record({ kind: fc.constant("commandComplete" as const), tag: text(24) }),
  fc.record({ kind: fc.constant("copyData" as const), data: bytes(128) }),
  fc.record({
    kind: fc.constantFrom(...copyKinds),
    format,
    columnFormats: fc.array(int16, { maxLength: 5 })
  }),
  fc.record({ kind: fc.constant("dataRow" as const), columns: fc.array(nullableBytes, { maxLength: 6 }) }),
  fc.record({ kind: fc.constant("errorResponse" as const), fields: noticeFields }),
  fc.record({ kind: fc.constant("noticeResponse" as const), fields: noticeFields }),
  fc.record({ kind: fc.constant("functionCallResponse" as const), result: nullableBytes }),
  fc.record({
    kind: fc.constant("negotiateProtocolVersion" as const),
    newestMinor: int32,
    unrecognizedOptions: fc.array(text(), { maxLength: 3 })
  }),
  fc.record({ kind: fc.constant("notificationResponse" as const), processId: int32, channel: text(), payload: text(32) }),
  fc.record({ kind: fc.constant("parameterDescription" as const), typeOids: fc.array(uint32, { maxLength: 5 }) }),
  fc.record({ kind: fc.constant("parameterStatus" as const), name: text(), value: text() }),
  fc.record({ kind: fc.constant("readyForQuery" as const), status: fc.constantFrom("I" as const, "T" as const, "E" as const) }),
  fc.record({ kind: fc.constant("rowDescription" as const), fields: fc.array(field, { maxLength: 4 }) }),
  fc.record({
    kind: fc.constant("unknown" as const),
    code: fc.integer({ min: 0, max: 255 }).filter((c) => !knownBackend.has(c)),
    body: bytes()
  }),
  // An authentication subtype we do not know travels as an unknown 'R' message.
  fc
    .tuple(int32.filter((n) => !knownAuth.has(n)), bytes())
    .map(([sub, rest]) => {
      const body = new Uint8Array(4 + rest.length)
      new DataView(body.buffer).setInt32(0, sub)
      body.set(rest, 4)
      return { kind: "unknown" as const, code: BackendCode.Authentication, body }
    })
)

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const STARTUP = serializeFrontend({ kind: "startup", protocolVersion: PROTOCOL_3_0, parameters: [["user", "u"]] })

/** A FrontendParser past the startup phase. */
const normalFrontend = (): FrontendParser => {
  const p = new FrontendParser()
  p.push(STARTUP)
  return p
}

const pgParse = (bytes: Uint8Array): Array<PgBackendMessage> => {
  const out: Array<PgBackendMessage> = []
  new PgParser().parse(Buffer.from(bytes), (m) => out.push(m))
  return out
}

type Pushable<R> = { push(chunk: Uint8Array): Array<R> }

const pushSplits = <R>(make: () => Pushable<R>, bytes: Uint8Array, cuts: ReadonlyArray<number>): Array<R> => {
  const p = make()
  const out: Array<R> = []
  let prev = 0
  for (const c of [...cuts, bytes.length]) {
    out.push(...p.push(bytes.subarray(prev, c)))
    prev = c
  }
  return out
}

/** A canonical string form (bytes as hex) so hundreds of comparisons per stream stay cheap. */
const canon = (v: unknown): string =>
  JSON.stringify(v, (_k, x: unknown) => (x instanceof Uint8Array ? `hex:${Buffer.from(x).toString("hex")}` : x))

/** Every single cut point gives the same results as pushing the stream whole. */
const everyOffset = <R>(make: () => Pushable<R>, bytes: Uint8Array): void => {
  const whole = canon(make().push(bytes))
  for (let i = 0; i <= bytes.length; i++) {
    const split = canon(pushSplits(make, bytes, [i]))
    if (split !== whole) expect(split).toBe(whole)
  }
}

const randomCuts = (len: number) =>
  fc.uniqueArray(fc.integer({ min: 0, max: len }), { maxLength: 24 }).map((xs) => xs.sort((a, b) => a - b))

// ---------------------------------------------------------------------------
// Frontend vs pg-protocol's serializer
// ---------------------------------------------------------------------------

type PgCase = { readonly pg: Buffer; readonly ours: FrontendMessage; readonly startup: boolean }

const pgFrontendCase: fc.Arbitrary<PgCase> = fc.oneof(
  fc
    .array(fc.tuple(nonEmptyText(), text()), { maxLength: 5 })
    .map((pairs) => Object.fromEntries(pairs.filter(([k]) => k !== "__proto__")))
    .map((opts) => ({
      pg: serialize.startup(opts),
      ours: {
        kind: "startup" as const,
        protocolVersion: PROTOCOL_3_0,
        parameters: [...Object.entries(opts), ["client_encoding", "UTF8"] as const]
      },
      startup: true
    })),
  fc.constant({ pg: serialize.requestSsl(), ours: { kind: "sslRequest" as const }, startup: true }),
  fc.tuple(int32, int32).map(([pid, key]) => ({
    pg: serialize.cancel(pid, key),
    ours: { kind: "cancelRequest" as const, processId: pid, secretKey: secretKeyFromInt32(key) },
    startup: true
  })),
  text(64).map((q) => ({ pg: serialize.query(q), ours: { kind: "query" as const, text: q }, startup: false })),
  fc
    .record({ name: text(63).filter((s) => utf8.encode(s).length <= 63), text: text(64), types: fc.array(fc.integer({ min: 0, max: 0x7fffffff }), { maxLength: 5 }) })
    .map((o) => ({
      pg: serialize.parse(o),
      ours: { kind: "parse" as const, name: o.name, text: o.text, paramTypes: o.types },
      startup: false
    })),
  fc
    .record({
      portal: text(),
      statement: text(),
      binary: fc.boolean(),
      values: fc.array(fc.oneof(text(), bytes().map((b) => Buffer.from(b)), fc.constant(null)), { maxLength: 5 })
    })
    .map((o) => ({
      pg: serialize.bind(o),
      ours: {
        kind: "bind" as const,
        portal: o.portal,
        statement: o.statement,
        paramFormats: o.values.map((v) => (Buffer.isBuffer(v) ? 1 : 0)),
        values: o.values.map((v) => (v === null ? null : typeof v === "string" ? utf8.encode(v) : u8(v))),
        resultFormats: [o.binary ? 1 : 0]
      },
      startup: false
    })),
  fc.record({ portal: text(), rows: uint32 }).map((o) => ({
    pg: serialize.execute(o),
    ours: { kind: "execute" as const, portal: o.portal, maxRows: o.rows },
    startup: false
  })),
  fc.record({ type: fc.constantFrom("S" as const, "P" as const), name: text() }).map((o) => ({
    pg: serialize.describe(o),
    ours: { kind: "describe" as const, target: o.type, name: o.name },
    startup: false
  })),
  fc.record({ type: fc.constantFrom("S" as const, "P" as const), name: text() }).map((o) => ({
    pg: serialize.close(o),
    ours: { kind: "close" as const, target: o.type, name: o.name },
    startup: false
  })),
  fc.constant({ pg: serialize.flush(), ours: { kind: "flush" as const }, startup: false }),
  fc.constant({ pg: serialize.sync(), ours: { kind: "sync" as const }, startup: false }),
  fc.constant({ pg: serialize.end(), ours: { kind: "terminate" as const }, startup: false }),
  fc.constant({ pg: serialize.copyDone(), ours: { kind: "copyDone" as const }, startup: false }),
  bytes(128).map((b) => ({ pg: serialize.copyData(Buffer.from(b)), ours: { kind: "copyData" as const, data: b }, startup: false })),
  text(32).map((m) => ({ pg: serialize.copyFail(m), ours: { kind: "copyFail" as const, message: m }, startup: false })),
  text().map((pw) => ({
    pg: serialize.password(pw),
    ours: { kind: "authResponse" as const, data: concat([utf8.encode(pw), new Uint8Array([0])]) },
    startup: false
  })),
  text(48).map((s) => ({
    pg: serialize.sendSCRAMClientFinalMessage(s),
    ours: { kind: "authResponse" as const, data: utf8.encode(s) },
    startup: false
  }))
)

describe("frontend codec vs pg-protocol's serializer", () => {
  it("pg-protocol bytes parse to the equivalent message, and we serialize them byte for byte", () => {
    fc.assert(
      fc.property(pgFrontendCase, ({ pg, ours, startup }) => {
        const parser = startup ? new FrontendParser() : normalFrontend()
        expect(parser.push(u8(pg))).toEqual([ours])
        expect(Buffer.from(serializeFrontend(ours)).equals(pg)).toBe(true)
      }),
      RUNS
    )
  })

  it("password and SASL initial responses read back through the AuthResponse helpers", () => {
    fc.assert(
      fc.property(text(), nonEmptyText(), text(48), (pw, mech, first) => {
        const [pwMsg] = normalFrontend().push(u8(serialize.password(pw)))
        expect(pwMsg?.kind === "authResponse" && readPasswordMessage(pwMsg)).toBe(pw)
        const [sasl] = normalFrontend().push(u8(serialize.sendSASLInitialResponseMessage(mech, first)))
        expect(sasl?.kind === "authResponse" && readSASLInitialResponse(sasl)).toEqual({
          mechanism: mech,
          response: utf8.encode(first)
        })
      }),
      RUNS
    )
  })

  it("decode(encode(m)) = m for every frontend message kind", () => {
    fc.assert(
      fc.property(startupFamily, (m) => {
        expect(new FrontendParser().push(serializeFrontend(m))).toEqual([m])
      }),
      RUNS
    )
    fc.assert(
      fc.property(typedFrontend, (m) => {
        expect(normalFrontend().push(serializeFrontend(m))).toEqual([m])
      }),
      RUNS
    )
  })
})

// ---------------------------------------------------------------------------
// Backend vs pg-protocol's Parser
// ---------------------------------------------------------------------------

const text8 = (b: Uint8Array): string => Buffer.from(b).toString("utf-8")

/** What pg-protocol's Parser exposes for a message it understands; undefined if it does not know the kind. */
const pgView = (m: BackendMessage): Record<string, unknown> | undefined => {
  switch (m.kind) {
    case "authenticationOk":
    case "authenticationCleartextPassword":
    case "bindComplete":
    case "closeComplete":
    case "copyDone":
    case "noData":
    case "parseComplete":
    case "portalSuspended":
      return { name: m.kind }
    case "emptyQueryResponse":
      return { name: "emptyQuery" }
    case "authenticationMD5Password":
      return { name: m.kind, salt: Buffer.from(m.salt) }
    case "authenticationSASL":
      return { name: m.kind, mechanisms: [...m.mechanisms] }
    case "authenticationSASLContinue":
    case "authenticationSASLFinal":
      return { name: m.kind, data: text8(m.data) }
    case "backendKeyData":
      return m.secretKey.length === 4
        ? { name: m.kind, processID: m.processId, secretKey: Buffer.from(m.secretKey).readInt32BE(0) }
        : undefined
    case "commandComplete":
      return { name: m.kind, text: m.tag }
    case "copyData":
      return { name: m.kind, chunk: Buffer.from(m.data) }
    case "copyInResponse":
    case "copyOutResponse":
      return { name: m.kind, binary: m.format !== 0, columnTypes: [...m.columnFormats] }
    case "dataRow":
      return { name: m.kind, fields: m.columns.map((c) => (c === null ? null : text8(c))) }
    case "errorResponse":
    case "noticeResponse": {
      const f = m.fields
      return {
        name: m.kind === "errorResponse" ? "error" : "notice",
        // DatabaseError extends Error, whose message defaults to "".
        message: m.kind === "errorResponse" ? (f.message ?? "") : f.message,
        severity: f.severity,
        code: f.code,
        detail: f.detail,
        hint: f.hint,
        position: f.position,
        internalPosition: f.internalPosition,
        internalQuery: f.internalQuery,
        where: f.where,
        schema: f.schema,
        table: f.table,
        column: f.column,
        dataType: f.dataType,
        constraint: f.constraint,
        file: f.file,
        line: f.line,
        routine: f.routine
      }
    }
    case "notificationResponse":
      return { name: "notification", processId: m.processId, channel: m.channel, payload: m.payload }
    case "parameterDescription":
      return { name: m.kind, dataTypeIDs: [...m.typeOids] }
    case "parameterStatus":
      return { name: m.kind, parameterName: m.name, parameterValue: m.value }
    case "readyForQuery":
      return { name: m.kind, status: m.status }
    case "rowDescription":
      return {
        name: m.kind,
        fields: m.fields.map((f) => ({
          name: f.name,
          tableID: f.tableOID,
          columnID: f.columnAttr,
          dataTypeID: f.typeOID,
          dataTypeSize: f.typeSize,
          dataTypeModifier: f.typeModifier,
          format: f.format === 0 ? "text" : "binary"
        }))
      }
    default:
      return undefined
  }
}

describe("backend codec vs pg-protocol's Parser", () => {
  it("pg-protocol parses our serialization to the equivalent message", () => {
    fc.assert(
      fc.property(backendMessage, (m) => {
        const view = pgView(m)
        fc.pre(view !== undefined)
        const bytes = serializeBackend(m)
        const parsed = pgParse(bytes)
        expect(parsed).toHaveLength(1)
        const [pg] = parsed
        // pg-protocol messages are class instances with undefined-valued keys; compare plain projections.
        const projected = Object.fromEntries(Object.keys(view).map((k) => [k, (pg as unknown as Record<string, unknown>)[k]]))
        expect(projected).toEqual(view)
        expect(pg?.length).toBe(bytes.length - 1)
      }),
      { numRuns: 300 }
    )
  })

  it("decode(encode(m)) = m for every backend message kind", () => {
    fc.assert(
      fc.property(backendMessage, (m) => {
        expect(new BackendParser().push(serializeBackend(m))).toEqual([m])
      }),
      { numRuns: 300 }
    )
  })
})

// ---------------------------------------------------------------------------
// Split anywhere
// ---------------------------------------------------------------------------

const frontendStream = fc
  .tuple(startupMessage, fc.array(typedFrontend, { minLength: 1, maxLength: 8 }))
  .map(([s, ms]) => concat([serializeFrontend(s), ...ms.map(serializeFrontend)]))
  .filter((b) => b.length <= 600)
const backendStream = fc
  .array(backendMessage, { minLength: 1, maxLength: 8 })
  .map((ms) => concat(ms.map(serializeBackend)))
  .filter((b) => b.length <= 600)

describe("a stream split anywhere parses as if pushed whole", () => {
  it("frontend: every single offset", () => {
    fc.assert(
      fc.property(frontendStream, (bytes) => everyOffset(() => new FrontendParser(), bytes)),
      { numRuns: 40 }
    )
  })

  it("backend and frame splitter: every single offset", () => {
    fc.assert(
      fc.property(backendStream, (bytes) => {
        everyOffset(() => new BackendParser(), bytes)
        everyOffset(() => new FrameSplitter(), bytes)
      }),
      { numRuns: 40 }
    )
  })

  it("random chunkings, results checked only after the last push (earlier views must stay intact)", () => {
    fc.assert(
      fc.property(
        frontendStream.chain((b) => fc.tuple(fc.constant(b), randomCuts(b.length))),
        backendStream.chain((b) => fc.tuple(fc.constant(b), randomCuts(b.length))),
        ([fb, fcuts], [bb, bcuts]) => {
          expect(pushSplits(() => new FrontendParser(), fb, fcuts)).toEqual(new FrontendParser().push(fb))
          expect(pushSplits(() => new BackendParser(), bb, bcuts)).toEqual(new BackendParser().push(bb))
          const frames = pushSplits(() => new FrameSplitter(), bb, bcuts)
          expect(concat(frames.map((f) => (f.kind === "frame" ? f.bytes : new Uint8Array(0))))).toEqual(bb)
        }
      ),
      RUNS
    )
  })
})

// ---------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------

const isError = <R extends { kind: string }>(r: R): r is R & ProtocolError => r.kind === "error"

/** Pushes chunks; never throws; once an error appears it is the only thing ever returned again. */
const pushHostile = <R extends { kind: string }>(p: Pushable<R>, chunks: ReadonlyArray<Uint8Array>): ProtocolError | undefined => {
  let failure: ProtocolError | undefined
  for (const c of chunks) {
    const out = p.push(c)
    if (failure !== undefined) expect(out).toEqual([failure])
    else {
      const errs: Array<ProtocolError> = out.filter(isError)
      expect(errs.length).toBeLessThanOrEqual(1)
      if (errs.length === 1) {
        expect(out.at(-1)).toBe(errs[0])
        failure = errs[0]
      }
    }
  }
  return failure
}

const chunks = fc.array(fc.uint8Array({ maxLength: 64 }).map(u8), { maxLength: 20 })

describe("hostile input", () => {
  it("random bytes never throw and every push returns promptly, in every parser and phase", () => {
    const started = Date.now()
    fc.assert(
      fc.property(chunks, (cs) => {
        const t0 = performance.now()
        pushHostile(new FrontendParser(), cs)
        pushHostile(normalFrontend(), cs)
        pushHostile(new BackendParser(), cs)
        pushHostile(new FrameSplitter(), cs)
        expect(performance.now() - t0).toBeLessThan(1000)
      }),
      { numRuns: 300 }
    )
    expect(Date.now() - started).toBeLessThan(30_000)
  })

  it("random bodies inside well-formed frames give a message or malformed-message, never a throw", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }), bytes(64), (code, body) => {
        const frame = serializeBackend({ kind: "unknown", code, body })
        for (const r of [...normalFrontend().push(frame), ...new BackendParser().push(frame)]) {
          if (isError(r)) expect(r.reason).toBe("malformed-message")
        }
      }),
      { numRuns: 300 }
    )
  })

  it("a typed length below 4 is bad-length, above the maximum is message-too-large, as soon as the header is in", () => {
    const header = (code: number, len: number) => {
      const b = new Uint8Array(5)
      b[0] = code
      new DataView(b.buffer).setInt32(1, len)
      return b
    }
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }), int32, (code, len) => {
        const max = 4096
        const expected = len < 4 ? "bad-length" : len > max ? "message-too-large" : undefined
        for (const p of [
          new BackendParser({ maxMessageSize: max }),
          new FrameSplitter({ maxMessageSize: max }),
          (() => {
            const f = new FrontendParser({ maxMessageSize: max })
            f.push(STARTUP)
            return f
          })()
        ]) {
          const out: Array<{ kind: string; reason?: string }> = p.push(header(code, len))
          if (expected === undefined) expect(out.filter((r) => r.reason === "bad-length" || r.reason === "message-too-large")).toEqual([])
          else expect(out).toMatchObject([{ kind: "error", reason: expected }])
        }
      }),
      RUNS
    )
  })

  it("a startup-family length over 10 KiB is startup-too-large; below 8 is bad-length", () => {
    fc.assert(
      fc.property(int32, (len) => {
        const b = new Uint8Array(4)
        new DataView(b.buffer).setInt32(0, len)
        const out = new FrontendParser().push(b)
        if (len < 8) expect(out).toMatchObject([{ kind: "error", reason: "bad-length" }])
        else if (len > MAX_STARTUP_PACKET_SIZE) expect(out).toMatchObject([{ kind: "error", reason: "startup-too-large" }])
        else expect(out).toEqual([])
      }),
      RUNS
    )
  })

  it("a real startup message over 10 KiB is refused even when it arrives in pieces", () => {
    const big = serializeFrontend({ kind: "startup", protocolVersion: PROTOCOL_3_0, parameters: [["options", "x".repeat(11_000)]] })
    fc.assert(
      fc.property(randomCuts(big.length), (cuts) => {
        const out = pushSplits(() => new FrontendParser(), big, cuts)
        expect(out[0]).toMatchObject({ kind: "error", reason: "startup-too-large" })
        // Later pushes are refused with the same error.
        for (const r of out) expect(r).toBe(out[0])
      }),
      { numRuns: 50 }
    )
  })
})
