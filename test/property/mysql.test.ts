/**
 * Property tests for the MySQL wire codec (STYLE item 11): mysql2's packet
 * builders as an independent producer of bytes, decode(encode(m)) = m in both
 * directions, split-anywhere equivalence, 16 MiB packet splitting, lying
 * lengths as typed errors, random input never throwing or hanging.
 */
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import * as fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  Capability,
  ClientPacketParser,
  ColumnType,
  CursorFlag,
  MAX_PACKET_PAYLOAD,
  PacketSplitter,
  ServerPacketParser,
  ServerStatus,
  cachingSha2Scramble,
  decodeColumnDefinition,
  decodeEof,
  decodeErr,
  decodeHandshake,
  decodeOk,
  decodeTextRow,
  encodeServer,
  errPacketBytes,
  framePacket,
  nativePasswordScramble,
  scrambleOf,
  serializeClient,
  serializeServer
} from "../../src/protocols/mysql/index.ts"
import { useTargets } from "../../src/protocols/mysql/engine.ts"
import type {
  BinaryValue,
  BoundParam,
  ClientMessage,
  ClientParseResult,
  ColumnDefinition41,
  HandshakeResponse41,
  HandshakeV10,
  OkPacket,
  ProtocolError,
  ServerMessage,
  ServerParseResult
} from "../../src/protocols/mysql/index.ts"

const require = createRequire(import.meta.url)
// mysql2's internal packet builders (not in its "exports", so by file path): an independent producer of wire bytes.
const mysql2Lib = join(dirname(require.resolve("mysql2")), "lib")
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const Packets = require(join(mysql2Lib, "packets/index.js")) as any
const auth41 = require(join(mysql2Lib, "auth_41.js")) as { calculateToken(pw: string, s1: Buffer, s2: Buffer): Buffer }
const sha2 = require(join(mysql2Lib, "auth_plugins/caching_sha2_password.js")) as { calculateToken(pw: string, scramble: Buffer): Buffer }

const RUNS = { numRuns: 120 }
const UTF8MB4 = 45
const utf8 = new TextEncoder()
const fromUtf8 = new TextDecoder()
const u8 = (b: Uint8Array): Uint8Array => new Uint8Array(b)
const concat = (parts: ReadonlyArray<Uint8Array>): Uint8Array => new Uint8Array(Buffer.concat(parts))

/** mysql2's packet with its 4-byte header filled in, as bytes. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const wire = (packet: any, sequenceId = 0): Uint8Array => {
  packet.writeHeader(sequenceId)
  return u8(packet.buffer)
}

// ---------------------------------------------------------------------------
// Arbitraries
// ---------------------------------------------------------------------------

const text = (maxLength = 16) =>
  fc
    .string({ unit: "binary", maxLength })
    .map((s) => s.replaceAll("\0", ""))
    .filter((s) => fromUtf8.decode(utf8.encode(s)) === s)
const bytes = (maxLength = 32) => fc.uint8Array({ maxLength }).map(u8)
const uint8 = fc.integer({ min: 0, max: 0xff })
const uint16 = fc.integer({ min: 0, max: 0xffff })
const uint32 = fc.integer({ min: 0, max: 0xffffffff })
const uint64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })
const attrs = fc.array(fc.tuple(text(), text()), { maxLength: 4 })

const OPTIONAL_CAPS = [
  Capability.LONG_PASSWORD,
  Capability.CONNECT_WITH_DB,
  Capability.SECURE_CONNECTION,
  Capability.PLUGIN_AUTH,
  Capability.CONNECT_ATTRS,
  Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA,
  Capability.SESSION_TRACK,
  Capability.DEPRECATE_EOF,
  Capability.MULTI_RESULTS,
  Capability.QUERY_ATTRIBUTES,
  Capability.ZSTD_COMPRESSION,
  Capability.REMEMBER_OPTIONS
]
const caps = fc.subarray(OPTIONAL_CAPS).map((fs) => fs.reduce((a, f) => (a | f) >>> 0, Capability.PROTOCOL_41))

const handshakeResponse: fc.Arbitrary<HandshakeResponse41> = caps.chain((c) => {
  const has = (f: number) => (c & f) !== 0
  const authResponse = has(Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA)
    ? bytes(300)
    : has(Capability.SECURE_CONNECTION)
      ? bytes(255)
      : bytes(20).map((b) => b.filter((x) => x !== 0))
  return fc.record({
    kind: fc.constant("handshakeResponse41" as const),
    capabilities: fc.constant(c),
    maxPacketSize: uint32,
    charset: uint8,
    mariadbCapabilities: uint32,
    username: text(),
    authResponse,
    ...(has(Capability.CONNECT_WITH_DB) ? { database: text() } : {}),
    ...(has(Capability.PLUGIN_AUTH) ? { authPluginName: text() } : {}),
    ...(has(Capability.CONNECT_ATTRS) ? { attributes: attrs } : {}),
    ...(has(Capability.ZSTD_COMPRESSION) ? { zstdCompressionLevel: uint8 } : {})
  })
})

const datetime = fc.record({
  kind: fc.constant("datetime" as const),
  year: uint16,
  month: fc.integer({ min: 0, max: 12 }),
  day: fc.integer({ min: 0, max: 31 }),
  hour: fc.integer({ min: 0, max: 23 }),
  minute: fc.integer({ min: 0, max: 59 }),
  second: fc.integer({ min: 0, max: 59 }),
  microsecond: fc.integer({ min: 0, max: 999999 })
})
const time = fc.record({
  kind: fc.constant("time" as const),
  negative: fc.boolean(),
  days: fc.integer({ min: 0, max: 34 }),
  hours: fc.integer({ min: 0, max: 23 }),
  minutes: fc.integer({ min: 0, max: 59 }),
  seconds: fc.integer({ min: 0, max: 59 }),
  microseconds: fc.integer({ min: 0, max: 999999 })
})

/** A (type, unsigned, value) triple that the binary protocol can carry. */
const typedValue: fc.Arbitrary<{ type: number; unsigned: boolean; value: BinaryValue }> = fc.oneof(
  fc.boolean().chain((u) => fc.record({ type: fc.constant<number>(ColumnType.TINY), unsigned: fc.constant(u), value: u ? uint8 : fc.integer({ min: -128, max: 127 }) })),
  fc.boolean().chain((u) => fc.record({ type: fc.constantFrom<number>(ColumnType.SHORT, ColumnType.YEAR), unsigned: fc.constant(u), value: u ? uint16 : fc.integer({ min: -0x8000, max: 0x7fff }) })),
  fc.boolean().chain((u) => fc.record({ type: fc.constantFrom<number>(ColumnType.LONG, ColumnType.INT24), unsigned: fc.constant(u), value: u ? uint32 : fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }) })),
  fc.boolean().chain((u) => fc.record({ type: fc.constant<number>(ColumnType.LONGLONG), unsigned: fc.constant(u), value: u ? uint64 : fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }) })),
  fc.record({ type: fc.constant<number>(ColumnType.FLOAT), unsigned: fc.constant(false), value: fc.float({ noDefaultInfinity: false }).map(Math.fround) }),
  fc.record({ type: fc.constant<number>(ColumnType.DOUBLE), unsigned: fc.constant(false), value: fc.double() }),
  fc.record({ type: fc.constantFrom<number>(ColumnType.VAR_STRING, ColumnType.STRING, ColumnType.BLOB, ColumnType.NEWDECIMAL, ColumnType.JSON), unsigned: fc.constant(false), value: bytes(40) }),
  fc.record({ type: fc.constantFrom<number>(ColumnType.DATE, ColumnType.DATETIME, ColumnType.TIMESTAMP), unsigned: fc.constant(false), value: datetime }),
  fc.record({ type: fc.constant<number>(ColumnType.TIME), unsigned: fc.constant(false), value: time }),
  fc.record({ type: fc.constantFrom<number>(ColumnType.NULL, ColumnType.VAR_STRING, ColumnType.LONG), unsigned: fc.constant(false), value: fc.constant(null) })
)

const boundParams = (named: boolean) =>
  fc.array(
    fc.tuple(typedValue, text(8)).map(([t, name]): BoundParam => (named ? { ...t, name } : t)),
    { maxLength: 6 }
  )

/** Commands, given whether CLIENT_QUERY_ATTRIBUTES was negotiated. */
const command = (attrsNegotiated: boolean): fc.Arbitrary<ClientMessage> =>
  fc.oneof(
    attrsNegotiated
      ? fc.record({ kind: fc.constant("query" as const), text: text(64), attributes: boundParams(true) })
      : fc.record({ kind: fc.constant("query" as const), text: text(64) }),
    fc.record({ kind: fc.constant("stmtPrepare" as const), text: text(64) }),
    fc.record({ kind: fc.constant("stmtSendLongData" as const), statementId: uint32, paramId: uint16, data: bytes() }),
    fc.record({ kind: fc.constant("stmtClose" as const), statementId: uint32 }),
    fc.record({ kind: fc.constant("stmtReset" as const), statementId: uint32 }),
    fc.record({ kind: fc.constant("stmtFetch" as const), statementId: uint32, rows: uint32 }),
    fc.record({ kind: fc.constant("initDb" as const), schema: text() }),
    fc.constant({ kind: "ping" as const }),
    fc.constant({ kind: "resetConnection" as const }),
    fc.record({
      kind: fc.constant("unknownCommand" as const),
      command: fc.constantFrom(0x04, 0x05, 0x07, 0x08, 0x09, 0x0c, 0x12, 0x1b),
      body: bytes()
    })
  )

const NEGOTIATED_BASE = (Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH | Capability.CONNECT_WITH_DB) >>> 0

const handshakeV10: fc.Arbitrary<HandshakeV10> = fc
  .record({ c: caps.map((c) => (c | Capability.SECURE_CONNECTION) >>> 0), dataLen: fc.integer({ min: 0, max: 40 }) })
  .chain(({ c, dataLen }) =>
    fc.record({
      kind: fc.constant("handshakeV10" as const),
      protocolVersion: fc.constant(10),
      serverVersion: text(),
      connectionId: uint32,
      authPluginDataPart1: fc.uint8Array({ minLength: 8, maxLength: 8 }).map(u8),
      capabilities: fc.constant(c),
      charset: uint8,
      statusFlags: uint16,
      authPluginDataLength: fc.constant(dataLen),
      mariadbCapabilities: uint32,
      authPluginDataPart2: fc.uint8Array({ minLength: Math.max(13, dataLen - 8), maxLength: Math.max(13, dataLen - 8) }).map(u8),
      ...((c & Capability.PLUGIN_AUTH) !== 0 ? { authPluginName: text() } : {})
    })
  )

const okPacket = (sessionTrack: boolean, header: 0x00 | 0xfe = 0x00): fc.Arbitrary<OkPacket> =>
  fc
    .record({
      affectedRows: uint64,
      lastInsertId: uint64,
      statusFlags: uint16.map((s) => s & ~ServerStatus.MORE_RESULTS_EXISTS),
      warnings: uint16,
      info: text(24),
      changes: bytes(16)
    })
    .map(({ changes, ...o }): OkPacket => {
      const base = { kind: "ok" as const, header, ...o }
      return sessionTrack && (o.statusFlags & ServerStatus.SESSION_STATE_CHANGED) !== 0 ? { ...base, sessionStateChanges: changes } : base
    })

const columnDef: fc.Arbitrary<ColumnDefinition41> = fc.record({
  kind: fc.constant("columnDefinition" as const),
  catalog: fc.constant("def"),
  schema: text(),
  table: text(),
  orgTable: text(),
  name: text(),
  orgName: text(),
  charset: uint16,
  columnLength: uint32,
  type: uint8,
  flags: uint16,
  decimals: uint8
})

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/** Canonical text: bytes as hex, bigints and awkward doubles tagged, object keys sorted. */
const canon = (v: unknown): string =>
  JSON.stringify(v, (_k, x: unknown) => {
    if (x instanceof Uint8Array) return `hex:${Buffer.from(x).toString("hex")}`
    if (x !== null && typeof x === "object" && !Array.isArray(x)) {
      return Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
    }
    if (typeof x === "bigint") return `big:${x}`
    if (typeof x === "number" && (!Number.isFinite(x) || Object.is(x, -0))) return `num:${Object.is(x, -0) ? "-0" : String(x)}`
    return x
  })

type Pushable<R> = { push(chunk: Uint8Array): Array<R> }

const pushSplits = <R>(p: Pushable<R>, data: Uint8Array, cuts: ReadonlyArray<number>): Array<R> => {
  const out: Array<R> = []
  let prev = 0
  for (const c of [...cuts, data.length]) {
    out.push(...p.push(data.subarray(prev, c)))
    prev = c
  }
  return out
}

const everyOffset = <R>(make: () => Pushable<R>, data: Uint8Array): void => {
  const whole = canon(make().push(data))
  for (let i = 0; i <= data.length; i++) {
    const split = canon(pushSplits(make(), data, [i]))
    if (split !== whole) expect(split).toBe(whole)
  }
}

const randomCuts = (len: number) =>
  fc.uniqueArray(fc.integer({ min: 0, max: len }), { maxLength: 24 }).map((xs) => xs.sort((a, b) => a - b))

const messages = <M>(rs: ReadonlyArray<{ kind: string } & ({ message: M } | ProtocolError)>): Array<M | ProtocolError> =>
  rs.map((r) => ("message" in r ? r.message : r))

const errorOf = (rs: ReadonlyArray<ClientParseResult | ServerParseResult>): ProtocolError | undefined => {
  const last = rs[rs.length - 1]
  return last !== undefined && last.kind === "error" ? last : undefined
}

/** A client parser in the command phase with `negotiated` capabilities. */
const commandParser = (negotiated: number): ClientPacketParser => {
  const p = new ClientPacketParser()
  const hr: HandshakeResponse41 = { kind: "handshakeResponse41", capabilities: negotiated, maxPacketSize: 0, charset: UTF8MB4, mariadbCapabilities: 0, username: "u", authResponse: new Uint8Array(0), database: "", authPluginName: "" }
  p.push(serializeClient(hr, { sequenceId: 1 }))
  p.authenticated()
  return p
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

describe("MySQL client messages: decode(encode(m)) = m", () => {
  it("HandshakeResponse41 for any capability mix", () => {
    fc.assert(
      fc.property(handshakeResponse, (m) => {
        const rs = new ClientPacketParser().push(serializeClient(m, { sequenceId: 1 }))
        expect(canon(rs)).toBe(canon([{ kind: "packet", sequenceId: 1, message: m }]))
      }),
      RUNS
    )
  })

  it("SSLRequest pauses the parser; the bytes after it (TLS) come back untouched", () => {
    fc.assert(
      fc.property(caps, uint32, uint8, bytes(64), (c, max, charset, tls) => {
        const m = { kind: "sslRequest" as const, capabilities: (c | Capability.SSL) >>> 0, maxPacketSize: max, charset, mariadbCapabilities: 0 }
        const p = new ClientPacketParser()
        const rs = p.push(concat([serializeClient(m, { sequenceId: 1 }), tls]))
        expect(canon(messages(rs))).toBe(canon([m]))
        expect(p.phase).toBe("tlsRequested")
        expect(Buffer.from(p.resumeAfterTls()).equals(Buffer.from(tls))).toBe(true)
        expect(p.phase).toBe("handshake")
      }),
      RUNS
    )
  })

  it("commands, with and without CLIENT_QUERY_ATTRIBUTES", () => {
    fc.assert(
      fc.property(
        fc.boolean().chain((qa) => fc.tuple(fc.constant(qa), fc.array(command(qa), { minLength: 1, maxLength: 6 }))),
        ([qa, cmds]) => {
          const negotiated = (NEGOTIATED_BASE | (qa ? Capability.QUERY_ATTRIBUTES : 0)) >>> 0
          const data = concat(cmds.map((m) => serializeClient(m, { capabilities: negotiated })))
          expect(canon(messages(commandParser(negotiated).push(data)))).toBe(canon(cmds))
        }
      ),
      RUNS
    )
  })

  it("COM_STMT_EXECUTE decodes with the prepared parameter count, and reuses types when new-params-bound is 0", () => {
    fc.assert(
      fc.property(fc.boolean(), uint32, boundParams(false).filter((ps) => ps.length > 0), fc.array(typedValue, { maxLength: 6 }), (qa, id, params, later) => {
        const negotiated = (NEGOTIATED_BASE | (qa ? Capability.QUERY_ATTRIBUTES : 0)) >>> 0
        const named = params.map((p) => (qa ? { ...p, name: "" } : p))
        const first: ClientMessage = { kind: "stmtExecute", statementId: id, flags: qa ? CursorFlag.PARAMETER_COUNT_AVAILABLE : 0, iterationCount: 1, newParamsBound: true, params: named }
        // Second execution: same types, new values (NULL or a value of that type), types not resent.
        const values = named.map((p, i) => {
          const alt = later[i]
          return alt !== undefined && alt.type === p.type && alt.unsigned === p.unsigned ? { ...p, value: alt.value } : { ...p, value: null }
        })
        const second: ClientMessage = { kind: "stmtExecute", statementId: id, flags: 0, iterationCount: 1, newParamsBound: false, params: values }
        const p = commandParser(negotiated)
        p.prepared(id, params.length)
        const data = concat([first, second].map((m) => serializeClient(m, { capabilities: negotiated })))
        expect(canon(messages(p.push(data)))).toBe(canon([first, second]))
        // Unknown statement: passed on undecoded, bytes intact.
        const rs = commandParser(negotiated).push(serializeClient(second, { capabilities: negotiated }))
        const m = messages(rs)[0] as ClientMessage
        expect(m.kind).toBe("stmtExecuteUndecoded")
        expect(Buffer.from(serializeClient(m, { capabilities: negotiated })).equals(Buffer.from(serializeClient(second, { capabilities: negotiated })))).toBe(true)
      }),
      RUNS
    )
  })

  it("COM_CHANGE_USER returns the parser to the auth phase", () => {
    fc.assert(
      fc.property(text(), bytes(40), text(), uint16, text(), attrs, (username, authResponse, database, charset, authPluginName, attributes) => {
        const negotiated = (NEGOTIATED_BASE | Capability.CONNECT_ATTRS) >>> 0
        const m: ClientMessage = { kind: "changeUser", username, authResponse, database, charset, authPluginName, attributes }
        const p = commandParser(negotiated)
        expect(canon(messages(p.push(serializeClient(m, { capabilities: negotiated }))))).toBe(canon([m]))
        expect(p.phase).toBe("auth")
      }),
      RUNS
    )
  })
})

describe("MySQL server messages: decode(encode(m)) = m", () => {
  it("HandshakeV10", () => {
    fc.assert(
      fc.property(handshakeV10, (m) => {
        expect(canon(decodeHandshake(encodeServer(m, 0)))).toBe(canon(m))
      }),
      RUNS
    )
  })

  it("OK (with and without CLIENT_SESSION_TRACK), ERR, EOF, column definitions", () => {
    fc.assert(
      fc.property(
        fc.boolean().chain((st) => fc.tuple(fc.constant(st), okPacket(st))),
        fc.record({ code: uint16, sqlState: fc.stringMatching(/^[0-9A-Z]{5}$/), message: text(40) }),
        uint16,
        uint16,
        columnDef,
        ([st, ok], e, warnings, statusFlags, col) => {
          const c = st ? Capability.SESSION_TRACK : 0
          expect(canon(decodeOk(encodeServer(ok, c), c))).toBe(canon(ok))
          const err = { kind: "err" as const, ...e }
          expect(canon(decodeErr(encodeServer(err, c)))).toBe(canon(err))
          const eof = { kind: "eof" as const, warnings, statusFlags }
          expect(canon(decodeEof(encodeServer(eof, c)))).toBe(canon(eof))
          expect(canon(decodeColumnDefinition(encodeServer(col, c)))).toBe(canon(col))
        }
      ),
      RUNS
    )
  })

  /** A whole conversation as the server sends it, and the messages the parser should produce. */
  const conversation = fc
    .record({
      deprecateEof: fc.boolean(),
      greeting: handshakeV10,
      switchTo: fc.option(fc.tuple(text(), bytes(21)), { nil: undefined }),
      columns: fc.array(columnDef, { minLength: 1, maxLength: 3 }),
      rows: fc.array(fc.array(fc.option(bytes(12), { nil: null }), { minLength: 3, maxLength: 3 }), { maxLength: 4 }),
      moreResults: fc.boolean(),
      prepare: fc.record({ statementId: uint32, params: fc.array(columnDef, { maxLength: 2 }), columns: fc.array(columnDef, { maxLength: 2 }) }),
      failure: fc.record({ code: uint16, sqlState: fc.constant("42000"), message: text(20) })
    })
    .map((o) => {
      const caps = ((o.deprecateEof ? Capability.DEPRECATE_EOF : 0) | NEGOTIATED_BASE) >>> 0
      const steps: Array<{ expect?: ClientMessage; send: Array<ServerMessage> }> = []
      const ok = (statusFlags = 0, header: 0 | 0xfe = 0): OkPacket => ({ kind: "ok", header, affectedRows: 0n, lastInsertId: 0n, statusFlags, warnings: 0, info: "" })
      const eof = (statusFlags = 0): ServerMessage => ({ kind: "eof", warnings: 0, statusFlags })
      const end = (statusFlags = 0): ServerMessage => (o.deprecateEof ? ok(statusFlags, 0xfe) : eof(statusFlags))
      const hr: ClientMessage = { kind: "handshakeResponse41", capabilities: caps, maxPacketSize: 0, charset: UTF8MB4, mariadbCapabilities: 0, username: "u", authResponse: new Uint8Array(0), database: "", authPluginName: "" }
      const auth: Array<ServerMessage> = o.switchTo === undefined ? [] : [{ kind: "authSwitchRequest", pluginName: o.switchTo[0], pluginData: o.switchTo[1] }]
      // The greeting offers at least what the client asks for (PLUGIN_AUTH among it, hence a plugin name).
      const greeting = { ...o.greeting, capabilities: (o.greeting.capabilities | caps) >>> 0, authPluginName: o.greeting.authPluginName ?? "caching_sha2_password" }
      steps.push({ send: [greeting] })
      steps.push({ expect: hr, send: [...auth, { kind: "authMoreData", data: new Uint8Array([3]) }, ok(ServerStatus.AUTOCOMMIT)] })
      const cols = o.columns.map((c) => ({ ...c }))
      const rowsOf = (n: number) => o.rows.map((r) => ({ kind: "row" as const, payload: encodeTextRow(r.slice(0, n)) }))
      const resultSet = (more: boolean): Array<ServerMessage> => [
        { kind: "columnCount", count: cols.length },
        ...cols,
        ...(o.deprecateEof ? [] : [eof()]),
        ...rowsOf(cols.length),
        end(more ? ServerStatus.MORE_RESULTS_EXISTS : 0)
      ]
      steps.push({ expect: { kind: "query", text: "select" }, send: [...resultSet(o.moreResults), ...(o.moreResults ? [ok()] : [])] })
      steps.push({ expect: { kind: "query", text: "bad" }, send: [{ kind: "err", ...o.failure }] })
      const prep = o.prepare
      steps.push({
        expect: { kind: "stmtPrepare", text: "select ?" },
        send: [
          { kind: "stmtPrepareOk", statementId: prep.statementId, columnCount: prep.columns.length, paramCount: prep.params.length, warnings: 0 },
          ...prep.params,
          ...(prep.params.length > 0 && !o.deprecateEof ? [eof()] : []),
          ...prep.columns,
          ...(prep.columns.length > 0 && !o.deprecateEof ? [eof()] : [])
        ]
      })
      steps.push({ expect: { kind: "stmtClose", statementId: prep.statementId }, send: [] })
      steps.push({ expect: { kind: "ping" }, send: [ok()] })
      steps.push({ expect: { kind: "stmtExecute", statementId: 1, flags: 0, iterationCount: 1, newParamsBound: false, params: [] }, send: resultSet(false) })
      const data = concat(steps.flatMap((s) => s.send.map((m, i) => serializeServer(m, { capabilities: caps, sequenceId: i + 1 }))))
      const expected = steps.flatMap((s) => s.send)
      const make = (): Pushable<ServerParseResult> => {
        const p = new ServerPacketParser()
        for (const s of steps) if (s.expect !== undefined) p.expect(s.expect)
        return p
      }
      return { data, expected, make }
    })

  it("a scripted conversation (greeting, auth switch, result sets, prepare, ERR) decodes message by message", () => {
    fc.assert(
      fc.property(conversation, ({ data, expected, make }) => {
        expect(canon(messages(make().push(data)))).toBe(canon(expected))
      }),
      RUNS
    )
  })

  it("the conversation split at random points parses as whole", () => {
    fc.assert(
      fc.property(
        conversation.chain((c) => fc.tuple(fc.constant(c), randomCuts(c.data.length))),
        ([{ data, expected, make }, cuts]) => {
          expect(canon(messages(pushSplits(make(), data, cuts)))).toBe(canon(expected))
        }
      ),
      RUNS
    )
  })

  it("split at every offset parses as whole (small conversations)", () => {
    fc.assert(
      fc.property(conversation, ({ data, make }) => {
        fc.pre(data.length < 700)
        everyOffset(make, data)
      }),
      { numRuns: 8 }
    )
  })
})

const encodeTextRow = (values: ReadonlyArray<Uint8Array | null>): Uint8Array =>
  concat(values.map((v) => (v === null ? new Uint8Array([0xfb]) : concat([lenenc(v.length), v]))))
const lenenc = (n: number): Uint8Array =>
  n < 0xfb ? new Uint8Array([n]) : new Uint8Array([0xfc, n & 0xff, n >> 8])

// ---------------------------------------------------------------------------
// mysql2 as an independent producer of bytes
// ---------------------------------------------------------------------------

describe("MySQL decoders read mysql2's packets", () => {
  it("COM_QUERY (with and without query attributes) and COM_STMT_PREPARE", () => {
    fc.assert(
      fc.property(text(80), fc.boolean(), (sql, qa) => {
        const flags = qa ? Capability.QUERY_ATTRIBUTES : 0
        const negotiated = (NEGOTIATED_BASE | flags) >>> 0
        const data = concat([wire(new Packets.Query(sql, UTF8MB4, undefined, flags).toPacket()), wire(new Packets.PrepareStatement(sql, UTF8MB4).toPacket())])
        const want = [qa ? { kind: "query", text: sql, attributes: [] } : { kind: "query", text: sql }, { kind: "stmtPrepare", text: sql }]
        expect(canon(messages(commandParser(negotiated).push(data)))).toBe(canon(want))
      }),
      RUNS
    )
  })

  it("HandshakeResponse (and its mysql_native_password token)", () => {
    const flags = fc.subarray([Capability.CONNECT_WITH_DB, Capability.PLUGIN_AUTH, Capability.CONNECT_ATTRS, Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA, Capability.SECURE_CONNECTION]).map((fs) => fs.reduce((a, f) => a | f, Capability.PROTOCOL_41 | Capability.LONG_PASSWORD | Capability.SECURE_CONNECTION))
    fc.assert(
      fc.property(flags, text(), text(), text(), fc.uint8Array({ minLength: 20, maxLength: 20 }), fc.dictionary(fc.stringMatching(/^[a-z_]{1,8}$/), text()), (f, user, database, password, scramble, connectAttributes) => {
        fc.pre(Object.keys(connectAttributes).every((k) => k !== "__proto__"))
        const s1 = Buffer.from(scramble.subarray(0, 8))
        const s2 = Buffer.from(scramble.subarray(8))
        const pkt = new Packets.HandshakeResponse({ user, database, password, authPluginData1: s1, authPluginData2: s2, flags: f, charsetNumber: UTF8MB4, connectAttributes })
        const rs = messages(new ClientPacketParser().push(wire(pkt.toPacket(), 1)))
        const m = rs[0] as HandshakeResponse41
        expect(m.kind).toBe("handshakeResponse41")
        expect(m.username).toBe(user)
        expect(m.capabilities).toBe(f)
        expect(m.charset).toBe(UTF8MB4)
        const token = nativePasswordScramble(password, scramble)
        expect(Buffer.from(m.authResponse).toString("hex")).toBe(Buffer.from(token).toString("hex"))
        if ((f & Capability.CONNECT_WITH_DB) !== 0) expect(m.database).toBe(database)
        if ((f & Capability.PLUGIN_AUTH) !== 0) expect(m.authPluginName).toBe("mysql_native_password")
        if ((f & Capability.CONNECT_ATTRS) !== 0) expect(m.attributes).toEqual(Object.entries(connectAttributes))
      }),
      RUNS
    )
  })

  it("SSLRequest, COM_STMT_CLOSE, COM_CHANGE_USER", () => {
    fc.assert(
      fc.property(uint32, text(), text(), (id, user, database) => {
        const f = NEGOTIATED_BASE
        const ssl = messages(new ClientPacketParser().push(wire(new Packets.SSLRequest(f, UTF8MB4).toPacket(), 1)))
        expect(canon(ssl)).toBe(canon([{ kind: "sslRequest", capabilities: (f | Capability.SSL) >>> 0, maxPacketSize: 0, charset: UTF8MB4, mariadbCapabilities: 0 }]))
        const change = new Packets.ChangeUser({ flags: f, user, database, password: "", authPluginData1: Buffer.alloc(8), authPluginData2: Buffer.alloc(12), charsetNumber: UTF8MB4 })
        const rs = messages(commandParser(f).push(concat([wire(new Packets.CloseStatement(id).toPacket()), wire(change.toPacket())])))
        expect(canon(rs)).toBe(
          canon([
            { kind: "stmtClose", statementId: id },
            { kind: "changeUser", username: user, authResponse: new Uint8Array(0), database, charset: UTF8MB4, authPluginName: "mysql_native_password" }
          ])
        )
      }),
      RUNS
    )
  })

  it("COM_STMT_EXECUTE with mysql2's parameter encoding", () => {
    const param = fc.oneof(
      fc.double({ noNaN: true }),
      text(20),
      fc.constant(null),
      fc.boolean(),
      bytes(20).map((b) => Buffer.from(b)),
      fc.date({ min: new Date("1000-01-01T00:00:00Z"), max: new Date("9999-12-31T00:00:00Z"), noInvalidDate: true })
    )
    fc.assert(
      fc.property(uint32, fc.array(param, { maxLength: 6 }), (id, values) => {
        const p = commandParser(NEGOTIATED_BASE)
        p.prepared(id, values.length)
        const m = messages(p.push(wire(new Packets.Execute(id, values, UTF8MB4, "Z").toPacket())))[0] as ClientMessage
        expect(m.kind).toBe("stmtExecute")
        if (m.kind !== "stmtExecute") return
        expect(m.statementId).toBe(id)
        expect(m.params.map((x) => x.value)).toEqual(
          values.map((v): BinaryValue => {
            if (v === null) return null
            if (typeof v === "number") return v
            if (typeof v === "boolean") return v ? 1 : 0
            if (typeof v === "string") return utf8.encode(v)
            if (v instanceof Date) {
              return { kind: "datetime", year: v.getUTCFullYear(), month: v.getUTCMonth() + 1, day: v.getUTCDate(), hour: v.getUTCHours(), minute: v.getUTCMinutes(), second: v.getUTCSeconds(), microsecond: v.getUTCMilliseconds() * 1000 }
            }
            return u8(v)
          })
        )
      }),
      RUNS
    )
  })

  it("Handshake, OK, EOF, ERR, AuthSwitchRequest and ColumnDefinition from mysql2", () => {
    fc.assert(
      fc.property(
        // mysql2 writes the version as CESU-8 after sizing it as UTF-8, so keep it ASCII as real versions are.
        fc.record({ serverVersion: fc.stringMatching(/^[0-9A-Za-z.+-]{0,24}$/), connectionId: uint32, charset: uint8, statusFlags: uint16, scramble: fc.uint8Array({ minLength: 20, maxLength: 20 }) }),
        fc.record({ affectedRows: fc.integer({ min: 0, max: 2 ** 40 }), insertId: fc.integer({ min: 0, max: 2 ** 40 }), serverStatus: uint16, warningCount: uint16, message: fc.constant("") }), // mysql2's OK.toPacket leaves the message out of its length
        fc.record({ code: uint16, message: text(20) }),
        columnDef.map((c) => ({ ...c, charset: UTF8MB4 })),
        ({ serverVersion, connectionId, charset, statusFlags, scramble }, ok, err, col) => {
          const capabilityFlags = (NEGOTIATED_BASE | Capability.LONG_PASSWORD) >>> 0
          const hs = new Packets.Handshake({ protocolVersion: 10, serverVersion, capabilityFlags, connectionId, authPluginData1: Buffer.from(scramble.subarray(0, 8)), authPluginData2: Buffer.from(scramble.subarray(8)), characterSet: charset, statusFlags })
          const h = decodeHandshake(wire(hs.toPacket(0)).subarray(4)) as HandshakeV10
          expect(h).toMatchObject({ protocolVersion: 10, serverVersion, connectionId, capabilities: capabilityFlags, charset, statusFlags, authPluginName: "mysql_native_password" })
          expect(Buffer.from(scrambleOf(h)).equals(Buffer.from(scramble))).toBe(true)

          const o = decodeOk(wire(Packets.OK.toPacket(ok, "utf8")).subarray(4), 0)
          expect(o).toEqual({ kind: "ok", header: 0, affectedRows: BigInt(ok.affectedRows), lastInsertId: BigInt(ok.insertId), statusFlags: ok.serverStatus, warnings: ok.warningCount, info: ok.message })
          expect(decodeEof(wire(Packets.EOF.toPacket(ok.warningCount, ok.serverStatus)).subarray(4))).toEqual({ kind: "eof", warnings: ok.warningCount, statusFlags: ok.serverStatus })
          // mysql2 writes the placeholder SQLSTATE "_____".
          expect(decodeErr(wire(Packets.Error.toPacket(err, "utf8")).subarray(4))).toEqual({ kind: "err", code: err.code, sqlState: "_____", message: err.message })
          const sw = new Packets.AuthSwitchRequest({ pluginName: "caching_sha2_password", pluginData: Buffer.from(scramble) })
          const p = new ServerPacketParser()
          p.push(serializeServer({ kind: "handshakeV10", protocolVersion: 10, serverVersion, connectionId, authPluginDataPart1: scramble.subarray(0, 8), capabilities: capabilityFlags, charset, statusFlags, authPluginDataLength: 21, mariadbCapabilities: 0, authPluginDataPart2: new Uint8Array(13), authPluginName: "x" }))
          expect(canon(messages(p.push(wire(sw.toPacket(), 2))))).toBe(canon([{ kind: "authSwitchRequest", pluginName: "caching_sha2_password", pluginData: scramble }]))

          const colPkt = Packets.ColumnDefinition.toPacket({ ...col, characterSet: col.charset, columnType: col.type }, 2)
          expect(canon(decodeColumnDefinition(wire(colPkt, 2).subarray(4)))).toBe(canon(col))
        }
      ),
      RUNS
    )
  })

  it("scrambles agree with mysql2's mysql_native_password and caching_sha2_password", () => {
    fc.assert(
      fc.property(text(24), fc.uint8Array({ minLength: 20, maxLength: 20 }), (password, scramble) => {
        const s = Buffer.from(scramble)
        const ours = Buffer.from(nativePasswordScramble(password, concat([scramble, new Uint8Array([0])])))
        expect(ours.toString("hex")).toBe(auth41.calculateToken(password, s.subarray(0, 8), s.subarray(8)).toString("hex"))
        const theirs = password === "" ? Buffer.alloc(0) : sha2.calculateToken(password, s)
        expect(Buffer.from(cachingSha2Scramble(password, scramble)).toString("hex")).toBe(theirs.toString("hex"))
      }),
      RUNS
    )
  })
})

// ---------------------------------------------------------------------------
// Framing, limits, robustness
// ---------------------------------------------------------------------------

describe("MySQL framing and robustness", () => {
  it("a > 16 MiB COM_QUERY is split into 0xffffff-byte packets and reassembled", () => {
    const size = 17 * 1024 * 1024
    const sql = "SELECT '" + "x".repeat(size) + "'"
    const bytesOut = serializeClient({ kind: "query", text: sql }, { capabilities: NEGOTIATED_BASE })
    // Two wire packets: 0xffffff bytes with seq 0, then the rest with seq 1.
    expect(bytesOut[0]! | (bytesOut[1]! << 8) | (bytesOut[2]! << 16)).toBe(MAX_PACKET_PAYLOAD)
    expect(bytesOut[3]).toBe(0)
    expect(bytesOut[4 + MAX_PACKET_PAYLOAD + 3]).toBe(1)
    const p = commandParser(NEGOTIATED_BASE)
    const out: Array<ClientParseResult> = []
    const t0 = performance.now()
    for (let i = 0; i < bytesOut.length; i += 1 << 20) out.push(...p.push(bytesOut.subarray(i, i + (1 << 20))))
    expect(performance.now() - t0).toBeLessThan(4000)
    expect(out).toHaveLength(1)
    const m = messages(out)[0] as ClientMessage
    expect(m.kind === "query" && m.text.length === sql.length && m.text === sql).toBe(true)
  })

  it("a payload of exactly 0xffffff bytes gets an empty trailing packet", () => {
    const payload = new Uint8Array(MAX_PACKET_PAYLOAD).fill(7)
    const framed = framePacket(payload, 5)
    expect(framed.length).toBe(MAX_PACKET_PAYLOAD + 8)
    expect(Array.from(framed.subarray(framed.length - 4))).toEqual([0, 0, 0, 6])
    const rs = new PacketSplitter().push(framed)
    expect(rs).toHaveLength(1)
    const r = rs[0]!
    expect("payload" in r && r.payload.length === MAX_PACKET_PAYLOAD && r.sequenceId === 5 && r.lastSequenceId === 6).toBe(true)
  })

  it("a continuation packet with the wrong sequence id is bad-sequence", () => {
    const head = new Uint8Array([0xff, 0xff, 0xff, 0])
    const p = new PacketSplitter()
    p.push(concat([head, new Uint8Array(MAX_PACKET_PAYLOAD)]))
    const rs = p.push(new Uint8Array([1, 0, 0, 7, 0x41]))
    expect(rs).toEqual([{ kind: "error", reason: "bad-sequence", detail: expect.any(String), sequenceId: 7 }])
  })

  it("a declared length above the limit fails on the header, before the bytes arrive", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 0xfffffe }), (len) => {
        const rs = new PacketSplitter({ maxPacketSize: len - 1 }).push(new Uint8Array([len & 0xff, (len >> 8) & 0xff, len >> 16, 0]))
        expect((rs[0] as ProtocolError).reason).toBe("packet-too-large")
      }),
      RUNS
    )
  })

  it("lying lengths and unterminated fields are typed errors", () => {
    fc.assert(
      fc.property(handshakeResponse, fc.integer({ min: 1, max: 1000 }), (m, cut) => {
        // Cut the payload short and re-frame it honestly: the fields now lie about what follows.
        const payload = serializeClient(m).subarray(4)
        const short = payload.subarray(0, Math.max(33, payload.length - cut))
        fc.pre(short.length < payload.length)
        const rs = new ClientPacketParser().push(framePacket(short, 1))
        const e = errorOf(rs)
        if ((m.capabilities & Capability.SSL) !== 0 && short.length === 32) return
        expect(e?.reason).toBe("malformed-packet")
      }),
      RUNS
    )
    // Username without its NUL.
    const noNul = concat([new Uint8Array([0x00, 0x02, 0x00, 0x00]), new Uint8Array(28), utf8.encode("root")])
    expect(errorOf(new ClientPacketParser().push(framePacket(noNul, 1)))).toMatchObject({ reason: "malformed-packet", detail: expect.stringContaining("username") })
    // A lenenc auth response claiming 250 bytes with 3 present.
    const lying = concat([new Uint8Array([0x00, 0x02, 0x20, 0x00]), new Uint8Array(28), utf8.encode("root\0"), new Uint8Array([0xfa, 1, 2, 3])])
    expect(errorOf(new ClientPacketParser().push(framePacket(lying, 1)))?.reason).toBe("malformed-packet")
    // A pre-4.1 client.
    expect(errorOf(new ClientPacketParser().push(framePacket(new Uint8Array(40), 1)))?.reason).toBe("unsupported-protocol")
    // A text row whose column claims more bytes than the row has.
    expect((decodeTextRow(new Uint8Array([5, 1, 2]), 1) as ProtocolError).reason).toBe("malformed-packet")
  })

  it("random bytes never throw and never hang, in every phase of both parsers", () => {
    const makers: ReadonlyArray<() => Pushable<unknown>> = [
      () => new ClientPacketParser(),
      () => commandParser(NEGOTIATED_BASE),
      () => commandParser((NEGOTIATED_BASE | Capability.QUERY_ATTRIBUTES) >>> 0),
      () => new ServerPacketParser(),
      () => {
        const p = new ServerPacketParser({ capabilities: NEGOTIATED_BASE })
        p.push(serializeServer({ kind: "handshakeV10", protocolVersion: 10, serverVersion: "8", connectionId: 1, authPluginDataPart1: new Uint8Array(8), capabilities: NEGOTIATED_BASE, charset: 1, statusFlags: 0, authPluginDataLength: 21, mariadbCapabilities: 0, authPluginDataPart2: new Uint8Array(13), authPluginName: "" }))
        p.push(serializeServer({ kind: "ok", header: 0, affectedRows: 0n, lastInsertId: 0n, statusFlags: 0, warnings: 0, info: "" }, { sequenceId: 2 }))
        for (const k of ["query", "stmtPrepare", "ping", "query"] as const) p.expect(k === "ping" ? { kind: k } : { kind: k, text: "" })
        return p
      }
    ]
    fc.assert(
      fc.property(fc.constantFrom(...makers), fc.uint8Array({ maxLength: 400 }), randomCuts(400), (make, data, cuts) => {
        const t0 = performance.now()
        pushSplits(make(), data, cuts.filter((c) => c <= data.length))
        expect(performance.now() - t0).toBeLessThan(500)
      }),
      { numRuns: 400 }
    )
    // Garbage framed as packets reaches the decoders rather than stopping at framing.
    fc.assert(
      fc.property(fc.constantFrom(...makers), fc.array(bytes(60), { maxLength: 6 }), (make, payloads) => {
        make().push(concat(payloads.map((b, i) => framePacket(b, i & 0xff))))
      }),
      { numRuns: 400 }
    )
  })

  it("errPacketBytes builds the denial a MySQL client shows", () => {
    const b = errPacketBytes(1045, "28000", "Access denied for user 'root'@'%' (using password: YES)", 2)
    expect(b[3]).toBe(2)
    expect(decodeErr(b.subarray(4))).toEqual({ kind: "err", code: 1045, sqlState: "28000", message: "Access denied for user 'root'@'%' (using password: YES)" })
    const db = errPacketBytes(1044, "42000", "Access denied for user 'alice'@'%' to database 'prod'", 1)
    expect(decodeErr(db.subarray(4))).toMatchObject({ code: 1044, sqlState: "42000" })
  })
})

describe("USE detection (the engine's db_names check on COM_QUERY)", () => {
  it("never throws, and finds a USE statement after any statements that contain no quotes or comments", () => {
    fc.assert(fc.property(fc.string({ unit: "binary", maxLength: 200 }), (s) => Array.isArray(useTargets(s))), RUNS)
    const plain = fc.string({ maxLength: 30 }).map((s) => s.replace(/[;'"`#\\/*-]/g, " "))
    const ident = fc.stringMatching(/^[a-z_][a-z0-9_]{0,15}$/)
    fc.assert(
      fc.property(fc.array(plain, { maxLength: 4 }), ident, fc.boolean(), (before, db, quoted) => {
        const sql = [...before.map((b) => `SELECT ${b}`), `USE ${quoted ? `\`${db}\`` : db}`].join("; ")
        expect(useTargets(sql)).toEqual([db])
      }),
      RUNS
    )
  })
})
