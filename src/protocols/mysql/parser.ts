/**
 * Decoders for MySQL packet payloads and incremental parsers for both directions.
 *
 * - `ClientPacketParser`: we are the server (a MySQL client talks to us); it
 *   follows the connection phases (handshake response, auth exchange,
 *   commands, LOCAL INFILE data) and remembers prepared statements'
 *   parameter counts and types, which COM_STMT_EXECUTE needs to be decoded.
 * - `ServerPacketParser`: we are the client (a MySQL server talks to us);
 *   told what the client sent (`expect`), it decodes the responses; result
 *   set rows pass through undecoded.
 *
 * `push(chunk)` returns everything that became complete, each message with
 * the sequence id of its packet. Malformed input gives a `ProtocolError`
 * value, never an exception; the parser then refuses further input.
 */
import { Capability, ColumnType, Command, CursorFlag, MAX_PACKET_PAYLOAD, ServerStatus } from "./messages.ts"
import type {
  BinaryValue,
  BoundParam,
  ClientCommand,
  ClientMessage,
  ColumnDefinition41,
  ConnectAttribute,
  EofPacket,
  ErrPacket,
  HandshakeResponse41,
  HandshakeV10,
  OkPacket,
  SSLRequest,
  ServerMessage,
  StmtPrepareOk
} from "./messages.ts"
import { PacketFramer, protocolError } from "./packet.ts"
import type { FramingOptions, LogicalPacket, ProtocolError, ProtocolErrorReason } from "./packet.ts"
import { MalformedPacket, Reader } from "./reader.ts"

/** A decoded message and the sequence id of the (first) packet that carried it. */
export interface Parsed<M> {
  readonly kind: "packet"
  readonly sequenceId: number
  readonly message: M
}

export type ClientParseResult = Parsed<ClientMessage> | ProtocolError
export type ServerParseResult = Parsed<ServerMessage> | ProtocolError

/** A layout this codec refuses (pre-4.1). Internal. */
class Unsupported extends Error {
  readonly _tag = "Unsupported"
}

const has = (caps: number, flag: number): boolean => (caps & flag) !== 0

const guard = <A>(what: string, f: () => A): A | ProtocolError => {
  try {
    return f()
  } catch (e) {
    if (e instanceof MalformedPacket) return protocolError("malformed-packet", `${what}: ${e.message}`)
    if (e instanceof Unsupported) return protocolError("unsupported-protocol", `${what}: ${e.message}`)
    throw e
  }
}

const isError = (x: unknown): x is ProtocolError =>
  typeof x === "object" && x !== null && (x as { kind?: unknown }).kind === "error" && "reason" in x

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

const readAttributes = (r: Reader): Array<ConnectAttribute> => {
  const block = new Reader(r.lenencBytes("connection attributes"))
  const attrs: Array<ConnectAttribute> = []
  while (block.remaining > 0) {
    const name = block.lenencString("attribute name")
    attrs.push([name, block.lenencString("attribute value")])
  }
  return attrs
}

/** Parameter types whose binary value is a string<lenenc> (the serializer writes them from this same set; not part of index.ts). */
export const LENENC_TYPES: ReadonlySet<number> = new Set([
  ColumnType.DECIMAL,
  ColumnType.NEWDECIMAL,
  ColumnType.VARCHAR,
  ColumnType.BIT,
  ColumnType.ENUM,
  ColumnType.SET,
  ColumnType.TINY_BLOB,
  ColumnType.MEDIUM_BLOB,
  ColumnType.LONG_BLOB,
  ColumnType.BLOB,
  ColumnType.VAR_STRING,
  ColumnType.STRING,
  ColumnType.GEOMETRY,
  ColumnType.JSON,
  ColumnType.VECTOR
])

/** Decodes one binary-protocol value of `type` (COM_STMT_EXECUTE parameters, binary rows). */
export const readBinaryValue = (r: Reader, type: number, unsigned: boolean): BinaryValue => {
  switch (type) {
    case ColumnType.NULL:
      return null
    case ColumnType.TINY:
      return unsigned ? r.uint8() : r.int8()
    case ColumnType.SHORT:
    case ColumnType.YEAR:
      return unsigned ? r.uint16() : r.int16()
    case ColumnType.LONG:
    case ColumnType.INT24:
      return unsigned ? r.uint32() : r.int32()
    case ColumnType.LONGLONG:
      return unsigned ? r.uint64() : r.int64()
    case ColumnType.FLOAT:
      return r.float32()
    case ColumnType.DOUBLE:
      return r.float64()
    case ColumnType.DATE:
    case ColumnType.DATETIME:
    case ColumnType.TIMESTAMP:
    case ColumnType.NEWDATE: {
      // length 0 | 4 (date) | 7 (+ h:m:s) | 11 (+ microseconds)
      const len = r.uint8("datetime length")
      if (len !== 0 && len !== 4 && len !== 7 && len !== 11) throw new MalformedPacket(`datetime length ${len}`)
      const v = { kind: "datetime" as const, year: 0, month: 0, day: 0, hour: 0, minute: 0, second: 0, microsecond: 0 }
      if (len >= 4) {
        v.year = r.uint16()
        v.month = r.uint8()
        v.day = r.uint8()
      }
      if (len >= 7) {
        v.hour = r.uint8()
        v.minute = r.uint8()
        v.second = r.uint8()
      }
      if (len === 11) v.microsecond = r.uint32()
      return v
    }
    case ColumnType.TIME: {
      // length 0 | 8 (sign, days, h:m:s) | 12 (+ microseconds)
      const len = r.uint8("time length")
      if (len !== 0 && len !== 8 && len !== 12) throw new MalformedPacket(`time length ${len}`)
      const v = { kind: "time" as const, negative: false, days: 0, hours: 0, minutes: 0, seconds: 0, microseconds: 0 }
      if (len >= 8) {
        const sign = r.uint8()
        if (sign > 1) throw new MalformedPacket(`time sign byte ${sign}`)
        v.negative = sign === 1
        v.days = r.uint32()
        v.hours = r.uint8()
        v.minutes = r.uint8()
        v.seconds = r.uint8()
      }
      if (len === 12) v.microseconds = r.uint32()
      return v
    }
    default:
      if (LENENC_TYPES.has(type)) return r.lenencBytes("parameter value")
      throw new MalformedPacket(`parameter type 0x${type.toString(16)} has no known binary layout`)
  }
}

/** The type part of a bound parameter, remembered between executions. */
export interface ParamType {
  readonly type: number
  readonly unsigned: boolean
  readonly name?: string
}

/**
 * null bitmap, new-params-bound flag, types (with names under
 * CLIENT_QUERY_ATTRIBUTES), then the non-NULL values. `previous` supplies
 * the types when the flag is 0; undefined then means "cannot decode".
 */
const readParams = (
  r: Reader,
  n: number,
  withNames: boolean,
  previous: ReadonlyArray<ParamType> | undefined
): { readonly newParamsBound: boolean; readonly params: Array<BoundParam> } | undefined => {
  if (n === 0) return { newParamsBound: false, params: [] }
  // Each parameter needs at least a bitmap bit; a count beyond the payload is a lie.
  if (n > r.remaining * 8) throw new MalformedPacket(`parameter count ${n} exceeds the payload`)
  const bitmap = r.bytes((n + 7) >> 3, "null bitmap")
  const flag = r.uint8("new-params-bound flag")
  if (flag > 1) throw new MalformedPacket(`new-params-bound flag ${flag}`)
  let types: ReadonlyArray<ParamType>
  if (flag === 1) {
    const t = new Array<ParamType>(n)
    for (let i = 0; i < n; i++) {
      const type = r.uint8("parameter type")
      const unsigned = (r.uint8("parameter flag") & 0x80) !== 0
      t[i] = withNames ? { type, unsigned, name: r.lenencString("parameter name") } : { type, unsigned }
    }
    types = t
  } else {
    if (previous === undefined || previous.length !== n) return undefined
    types = previous
  }
  const params = new Array<BoundParam>(n)
  for (let i = 0; i < n; i++) {
    const t = types[i]!
    const isNull = (bitmap[i >> 3]! & (1 << (i & 7))) !== 0
    const value = isNull ? null : readBinaryValue(r, t.type, t.unsigned)
    params[i] = t.name === undefined ? { type: t.type, unsigned: t.unsigned, value } : { type: t.type, unsigned: t.unsigned, name: t.name, value }
  }
  return { newParamsBound: flag === 1, params }
}

// ---------------------------------------------------------------------------
// Client -> server payloads
// ---------------------------------------------------------------------------

/**
 * HandshakeResponse41, or the 32-byte SSLRequest (CLIENT_SSL and nothing
 * after the filler). Layout:
 * int<4> caps, int<4> max packet, int<1> charset, 19 filler, int<4> MariaDB caps,
 * string<NUL> user, auth response, [string<NUL> db], [string<NUL> plugin],
 * [lenenc attrs], [int<1> zstd level].
 */
export const decodeHandshakeResponse = (payload: Uint8Array): SSLRequest | HandshakeResponse41 | ProtocolError =>
  guard("handshake response", () => {
    const r = new Reader(payload)
    const capabilities = r.uint32("capability flags")
    if (!has(capabilities, Capability.PROTOCOL_41)) throw new Unsupported("client does not speak protocol 4.1")
    const maxPacketSize = r.uint32("max packet size")
    const charset = r.uint8("charset")
    r.skip(19)
    const mariadbCapabilities = r.uint32("filler")
    if (r.remaining === 0 && has(capabilities, Capability.SSL)) {
      return { kind: "sslRequest" as const, capabilities, maxPacketSize, charset, mariadbCapabilities }
    }
    const username = r.nulString("username")
    const authResponse = has(capabilities, Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA)
      ? r.lenencBytes("auth response")
      : has(capabilities, Capability.SECURE_CONNECTION)
        ? r.bytes(r.uint8("auth response length"), "auth response")
        : r.nulBytes("auth response")
    const m: { -readonly [K in keyof HandshakeResponse41]: HandshakeResponse41[K] } = {
      kind: "handshakeResponse41",
      capabilities,
      maxPacketSize,
      charset,
      mariadbCapabilities,
      username,
      authResponse
    }
    if (has(capabilities, Capability.CONNECT_WITH_DB)) m.database = r.nulString("database")
    if (has(capabilities, Capability.PLUGIN_AUTH)) m.authPluginName = r.nulString("auth plugin name")
    if (has(capabilities, Capability.CONNECT_ATTRS)) m.attributes = readAttributes(r)
    if (has(capabilities, Capability.ZSTD_COMPRESSION)) m.zstdCompressionLevel = r.uint8("zstd level")
    r.end("handshake response")
    return m
  })

/** What the client parser knows about a prepared statement. */
export interface StatementInfo {
  readonly paramCount: number
  /** Types from the last execution that sent them. */
  readonly types?: ReadonlyArray<ParamType>
}

export interface CommandContext {
  /** Negotiated capabilities. */
  readonly capabilities: number
  readonly statement?: (statementId: number) => StatementInfo | undefined
}

const readChangeUser = (r: Reader, caps: number): ClientCommand => {
  const username = r.nulString("username")
  const authResponse = has(caps, Capability.SECURE_CONNECTION)
    ? r.bytes(r.uint8("auth response length"), "auth response")
    : r.nulBytes("auth response")
  const database = r.nulString("database")
  if (r.remaining === 0) return { kind: "changeUser", username, authResponse, database }
  const charset = r.uint16("charset")
  if (!has(caps, Capability.PLUGIN_AUTH) || r.remaining === 0) {
    return { kind: "changeUser", username, authResponse, database, charset }
  }
  const authPluginName = r.nulString("auth plugin name")
  if (!has(caps, Capability.CONNECT_ATTRS) || r.remaining === 0) {
    return { kind: "changeUser", username, authResponse, database, charset, authPluginName }
  }
  return { kind: "changeUser", username, authResponse, database, charset, authPluginName, attributes: readAttributes(r) }
}

/** Decodes a command-phase packet (first byte is the COM_* code). */
export const decodeCommand = (payload: Uint8Array, ctx: CommandContext): ClientCommand | ProtocolError =>
  guard("command", () => {
    const r = new Reader(payload)
    const command = r.uint8("command")
    let m: ClientCommand
    switch (command) {
      case Command.QUERY: {
        if (!has(ctx.capabilities, Capability.QUERY_ATTRIBUTES)) {
          m = { kind: "query", text: r.restString() }
          break
        }
        // int<lenenc> parameter_count, int<lenenc> parameter_set_count (always 1), then as COM_STMT_EXECUTE.
        const n = r.lenenc("parameter count")
        r.lenenc("parameter set count")
        const p = readParams(r, n, true, undefined)
        if (p === undefined) throw new MalformedPacket("query attributes without types")
        m = { kind: "query", text: r.restString(), attributes: p.params }
        break
      }
      case Command.STMT_PREPARE:
        m = { kind: "stmtPrepare", text: r.restString() }
        break
      case Command.STMT_EXECUTE: {
        const statementId = r.uint32("statement id")
        const flags = r.uint8("flags")
        const iterationCount = r.uint32("iteration count")
        const restStart = r.position
        const info = ctx.statement?.(statementId)
        const withAttrs = has(ctx.capabilities, Capability.QUERY_ATTRIBUTES)
        let n = info?.paramCount
        if (withAttrs && (flags & CursorFlag.PARAMETER_COUNT_AVAILABLE) !== 0) n = r.lenenc("parameter count")
        const p = n === undefined ? undefined : readParams(r, n, withAttrs, info?.types)
        if (p === undefined) {
          return { kind: "stmtExecuteUndecoded", statementId, flags, iterationCount, rest: payload.subarray(restStart) }
        }
        m = { kind: "stmtExecute", statementId, flags, iterationCount, newParamsBound: p.newParamsBound, params: p.params }
        break
      }
      case Command.STMT_SEND_LONG_DATA: {
        const statementId = r.uint32("statement id")
        const paramId = r.uint16("param id")
        m = { kind: "stmtSendLongData", statementId, paramId, data: r.rest() }
        break
      }
      case Command.STMT_CLOSE:
        m = { kind: "stmtClose", statementId: r.uint32("statement id") }
        break
      case Command.STMT_RESET:
        m = { kind: "stmtReset", statementId: r.uint32("statement id") }
        break
      case Command.STMT_FETCH: {
        const statementId = r.uint32("statement id")
        m = { kind: "stmtFetch", statementId, rows: r.uint32("rows") }
        break
      }
      case Command.INIT_DB:
        m = { kind: "initDb", schema: r.restString() }
        break
      case Command.CHANGE_USER:
        m = readChangeUser(r, ctx.capabilities)
        break
      case Command.PING:
        m = { kind: "ping" }
        break
      case Command.QUIT:
        m = { kind: "quit" }
        break
      case Command.RESET_CONNECTION:
        m = { kind: "resetConnection" }
        break
      default:
        m = { kind: "unknownCommand", command, body: r.rest() }
    }
    r.end(`command 0x${command.toString(16)}`)
    return m
  })

// ---------------------------------------------------------------------------
// Server -> client payloads
// ---------------------------------------------------------------------------

/**
 * HandshakeV10: int<1> 10, string<NUL> version, int<4> connection id,
 * 8 bytes auth data, 0x00, caps low int<2>, charset, status int<2>,
 * caps high int<2>, int<1> auth data length, 6 zero bytes, int<4> MariaDB
 * caps, [max(13, len-8) bytes auth data], [string<NUL> plugin name].
 */
export const decodeHandshake = (payload: Uint8Array): HandshakeV10 | ProtocolError =>
  guard("handshake", () => {
    const r = new Reader(payload)
    const protocolVersion = r.uint8("protocol version")
    if (protocolVersion !== 10) throw new Unsupported(`protocol version ${protocolVersion}`)
    const serverVersion = r.nulString("server version")
    const connectionId = r.uint32("connection id")
    const authPluginDataPart1 = r.bytes(8, "auth-plugin-data-part-1")
    r.skip(1)
    const low = r.uint16("capability flags")
    const charset = r.uint8("charset")
    const statusFlags = r.uint16("status flags")
    const capabilities = ((r.uint16("capability flags") << 16) | low) >>> 0
    const authPluginDataLength = r.uint8("auth plugin data length")
    r.skip(6)
    const mariadbCapabilities = r.uint32("reserved")
    const authPluginDataPart2 = has(capabilities, Capability.SECURE_CONNECTION)
      ? r.bytes(Math.max(13, authPluginDataLength - 8), "auth-plugin-data-part-2")
      : new Uint8Array(0)
    const base = {
      kind: "handshakeV10" as const,
      protocolVersion,
      serverVersion,
      connectionId,
      authPluginDataPart1,
      capabilities,
      charset,
      statusFlags,
      authPluginDataLength,
      mariadbCapabilities,
      authPluginDataPart2
    }
    if (!has(capabilities, Capability.PLUGIN_AUTH)) {
      r.end("handshake")
      return base
    }
    const authPluginName = r.nulString("auth plugin name")
    r.end("handshake")
    return { ...base, authPluginName }
  })

/** OK_Packet (header 0x00, or 0xfe ending a result set under CLIENT_DEPRECATE_EOF). */
export const decodeOk = (payload: Uint8Array, capabilities: number): OkPacket | ProtocolError =>
  guard("OK packet", () => {
    const r = new Reader(payload)
    const header = r.uint8("header")
    if (header !== 0x00 && header !== 0xfe) throw new MalformedPacket(`OK header 0x${header.toString(16)}`)
    const affectedRows = r.lenencBig("affected rows")
    const lastInsertId = r.lenencBig("last insert id")
    const statusFlags = r.uint16("status flags")
    const warnings = r.uint16("warnings")
    const base = { kind: "ok" as const, header: header as 0x00 | 0xfe, affectedRows, lastInsertId, statusFlags, warnings }
    if (!has(capabilities, Capability.SESSION_TRACK)) return { ...base, info: r.restString() }
    const info = r.remaining > 0 ? r.lenencString("info") : ""
    if ((statusFlags & ServerStatus.SESSION_STATE_CHANGED) !== 0 && r.remaining > 0) {
      const sessionStateChanges = r.lenencBytes("session state changes")
      r.end("OK packet")
      return { ...base, info, sessionStateChanges }
    }
    r.end("OK packet")
    return { ...base, info }
  })

/** ERR_Packet: 0xff, int<2> code, ['#' + 5-char SQLSTATE], message<EOF>. */
export const decodeErr = (payload: Uint8Array): ErrPacket | ProtocolError =>
  guard("ERR packet", () => {
    const r = new Reader(payload)
    if (r.uint8("header") !== 0xff) throw new MalformedPacket("ERR header is not 0xff")
    const code = r.uint16("error code")
    if (r.peek() === 0x23 && r.remaining >= 6) {
      r.skip(1)
      const sqlState = String.fromCharCode(...r.bytes(5, "sql state"))
      return { kind: "err" as const, code, sqlState, message: r.restString() }
    }
    return { kind: "err" as const, code, message: r.restString() }
  })

/** EOF_Packet: 0xfe, int<2> warnings, int<2> status. */
export const decodeEof = (payload: Uint8Array): EofPacket | ProtocolError =>
  guard("EOF packet", () => {
    const r = new Reader(payload)
    if (r.uint8("header") !== 0xfe) throw new MalformedPacket("EOF header is not 0xfe")
    const warnings = r.uint16("warnings")
    const statusFlags = r.uint16("status flags")
    r.end("EOF packet")
    return { kind: "eof" as const, warnings, statusFlags }
  })

/** COM_STMT_PREPARE_OK: 0x00, int<4> id, int<2> columns, int<2> params, 0x00, int<2> warnings, [int<1> metadata_follows]. */
export const decodeStmtPrepareOk = (payload: Uint8Array, capabilities: number): StmtPrepareOk | ProtocolError =>
  guard("COM_STMT_PREPARE_OK", () => {
    const r = new Reader(payload)
    if (r.uint8("status") !== 0x00) throw new MalformedPacket("status is not 0x00")
    const statementId = r.uint32("statement id")
    const columnCount = r.uint16("column count")
    const paramCount = r.uint16("param count")
    r.skip(1)
    const warnings = r.remaining > 0 ? r.uint16("warnings") : 0
    const base = { kind: "stmtPrepareOk" as const, statementId, columnCount, paramCount, warnings }
    if (has(capabilities, Capability.OPTIONAL_RESULTSET_METADATA) && r.remaining > 0) {
      const metadataFollows = r.uint8("metadata follows")
      r.end("COM_STMT_PREPARE_OK")
      return { ...base, metadataFollows }
    }
    r.end("COM_STMT_PREPARE_OK")
    return base
  })

/**
 * ColumnDefinition41: six string<lenenc> (catalog, schema, table, org_table,
 * name, org_name), int<lenenc> 0x0c, int<2> charset, int<4> length,
 * int<1> type, int<2> flags, int<1> decimals, 2 filler. COM_FIELD_LIST
 * appends default values, which are skipped.
 */
export const decodeColumnDefinition = (payload: Uint8Array): ColumnDefinition41 | ProtocolError =>
  guard("column definition", () => {
    const r = new Reader(payload)
    const catalog = r.lenencString("catalog")
    const schema = r.lenencString("schema")
    const table = r.lenencString("table")
    const orgTable = r.lenencString("org_table")
    const name = r.lenencString("name")
    const orgName = r.lenencString("org_name")
    const fixed = r.lenenc("fixed fields length")
    if (fixed !== 0x0c) throw new MalformedPacket(`fixed fields length ${fixed}, expected 12`)
    const charset = r.uint16("charset")
    const columnLength = r.uint32("column length")
    const type = r.uint8("type")
    const flags = r.uint16("flags")
    const decimals = r.uint8("decimals")
    r.skip(2)
    return { kind: "columnDefinition" as const, catalog, schema, table, orgTable, name, orgName, charset, columnLength, type, flags, decimals }
  })

/** A text-protocol row: `columnCount` string<lenenc> values, 0xfb meaning NULL. */
export const decodeTextRow = (payload: Uint8Array, columnCount: number): Array<Uint8Array | null> | ProtocolError =>
  guard("text row", () => {
    const r = new Reader(payload)
    if (columnCount > payload.length) throw new MalformedPacket(`${columnCount} columns cannot fit ${payload.length} bytes`)
    const out = new Array<Uint8Array | null>(columnCount)
    for (let i = 0; i < columnCount; i++) {
      if (r.peek() === 0xfb) {
        r.skip(1)
        out[i] = null
      } else out[i] = r.lenencBytes("column value")
    }
    r.end("text row")
    return out
  })

/** Decodes a server packet in the authentication phase. */
export const decodeAuthResponse = (payload: Uint8Array, capabilities: number): ServerMessage | ProtocolError => {
  switch (payload[0]) {
    case 0x00:
      return decodeOk(payload, capabilities)
    case 0xff:
      return decodeErr(payload)
    case 0x01:
      return { kind: "authMoreData", data: payload.subarray(1) }
    case 0xfe: {
      if (payload.length === 1) return { kind: "oldAuthSwitchRequest" }
      return guard("AuthSwitchRequest", () => {
        const r = new Reader(payload)
        r.skip(1)
        const pluginName = r.nulString("plugin name")
        return { kind: "authSwitchRequest" as const, pluginName, pluginData: r.rest() }
      })
    }
    default:
      return protocolError("malformed-packet", `auth phase packet starting with 0x${(payload[0] ?? 0).toString(16)}`)
  }
}

/** OK, ERR or EOF by their header byte; anything else comes back raw. */
const decodeGeneric = (payload: Uint8Array, capabilities: number): ServerMessage | ProtocolError => {
  const h = payload[0]
  if (h === 0x00) return decodeOk(payload, capabilities)
  if (h === 0xff) return decodeErr(payload)
  if (h === 0xfe && payload.length < 9) return decodeEof(payload)
  return { kind: "raw", payload }
}

// ---------------------------------------------------------------------------
// Parsers
// ---------------------------------------------------------------------------

export interface ParserOptions extends FramingOptions {
  /**
   * Capabilities the server side advertised (ours, when we are the server);
   * the negotiated set is the client's flags AND these. Default: all.
   */
  readonly serverCapabilities?: number
}

/**
 * Where a ClientPacketParser is:
 * - `handshake`: the next packet is a HandshakeResponse41 or SSLRequest;
 * - `tlsRequested`: after SSLRequest; bytes are kept unparsed (they are TLS) until `resumeAfterTls()`;
 * - `auth`: auth exchange (AuthSwitchResponse, passwords); `authenticated()` ends it;
 * - `command`: COM_* packets;
 * - `localInfile`: file contents after a LOCAL INFILE request, until an empty packet;
 * - `closed`: after COM_QUIT.
 */
export type ClientPhase = "handshake" | "tlsRequested" | "auth" | "command" | "localInfile" | "closed"

/** Server-side parser of what a MySQL client sends. */
export class ClientPacketParser extends PacketFramer<Parsed<ClientMessage>> {
  private mode: ClientPhase = "handshake"
  private caps = 0
  private readonly serverCaps: number
  private readonly statements = new Map<number, StatementInfo>()
  private readonly lookup = (id: number): StatementInfo | undefined => this.statements.get(id)

  constructor(options?: ParserOptions) {
    super(options)
    this.serverCaps = options?.serverCapabilities ?? 0xffffffff
  }

  get phase(): ClientPhase {
    return this.mode
  }

  /** Negotiated capabilities (0 until the handshake response). */
  get capabilities(): number {
    return this.caps
  }

  /**
   * After an SSLRequest: returns the bytes received after it (the start of
   * the client's TLS handshake, for the TLS layer) and expects the full
   * HandshakeResponse41, decrypted, next.
   */
  resumeAfterTls(): Uint8Array {
    if (this.mode !== "tlsRequested") return new Uint8Array(0)
    this.mode = "handshake"
    this.paused = false
    return this.drain()
  }

  /** The server accepted the credentials (OK sent): commands follow. */
  authenticated(): void {
    if (this.mode === "auth") this.mode = "command"
  }

  /** A LOCAL INFILE request went to the client: file packets follow, then an empty one. */
  expectLocalInfile(): void {
    if (this.mode === "command") this.mode = "localInfile"
  }

  /** A COM_STMT_PREPARE_OK was relayed; needed to decode COM_STMT_EXECUTE for it. */
  prepared(statementId: number, paramCount: number): void {
    this.statements.set(statementId, { paramCount })
  }

  protected onPacket(p: LogicalPacket, out: Array<ClientParseResult>): void {
    const emit = (m: ClientMessage | ProtocolError): void => {
      if (isError(m)) this.fail(out, { ...m, sequenceId: p.sequenceId })
      else out.push({ kind: "packet", sequenceId: p.sequenceId, message: m })
    }
    switch (this.mode) {
      case "handshake": {
        const m = decodeHandshakeResponse(p.payload)
        if (!isError(m)) {
          this.caps = (m.capabilities & this.serverCaps) >>> 0
          if (m.kind === "sslRequest") {
            this.mode = "tlsRequested"
            this.paused = true
          } else this.mode = "auth"
        }
        return emit(m)
      }
      case "auth":
        return emit({ kind: "authData", data: p.payload })
      case "localInfile":
        if (p.payload.length === 0) this.mode = "command"
        return emit({ kind: "localInfileData", data: p.payload })
      case "command": {
        const m = decodeCommand(p.payload, { capabilities: this.caps, statement: this.lookup })
        if (!isError(m)) this.track(m)
        return emit(m)
      }
      case "tlsRequested":
      case "closed":
        return this.fail(out, protocolError("unexpected-packet", `packet received in phase ${this.mode}`, p.sequenceId))
    }
  }

  private track(m: ClientCommand): void {
    switch (m.kind) {
      case "quit":
        this.mode = "closed"
        return
      case "changeUser":
        this.statements.clear()
        this.mode = "auth"
        return
      case "resetConnection":
        this.statements.clear()
        return
      case "stmtClose":
        this.statements.delete(m.statementId)
        return
      case "stmtExecute": {
        const info = this.statements.get(m.statementId)
        if (m.newParamsBound && info !== undefined) {
          const types = m.params.map((x): ParamType => (x.name === undefined ? { type: x.type, unsigned: x.unsigned } : { type: x.type, unsigned: x.unsigned, name: x.name }))
          this.statements.set(m.statementId, { paramCount: info.paramCount, types })
        }
        return
      }
      default:
        return
    }
  }
}

/** What the server owes for one command, as remaining steps. */
type Step =
  | { readonly what: "simple" }
  | { readonly what: "raw" }
  /** COM_CHANGE_USER: an auth exchange, until OK or ERR. */
  | { readonly what: "auth" }
  /** A result set (or OK/ERR/LOCAL INFILE) for COM_QUERY / COM_STMT_EXECUTE; repeats with SERVER_MORE_RESULTS_EXISTS. */
  | { readonly what: "result" }
  | { readonly what: "prepare" }
  | { what: "defs"; n: number }
  | { readonly what: "eof" }
  | { readonly what: "rows" }
  /** COM_FIELD_LIST: column definitions until EOF. */
  | { readonly what: "fields" }

/**
 * Where a ServerPacketParser is: `handshake` (the greeting is next), `auth`
 * (OK/ERR/AuthSwitchRequest/AuthMoreData), `command`, `closed` (after an
 * ERR ended the handshake or auth).
 */
export type ServerPhase = "handshake" | "auth" | "command" | "closed"

/** Client-side parser of what a MySQL server sends. */
export class ServerPacketParser extends PacketFramer<Parsed<ServerMessage>> {
  private mode: ServerPhase = "handshake"
  private clientCaps: number
  private serverCaps = 0xffffffff
  /** Steps owed per command sent, oldest first; each inner array is consumed from the front. */
  private readonly pending: Array<Array<Step>> = []

  /**
   * `capabilities`: the client's flags, when the parser will not see the handshake response through `expect`.
   * `established`: the server's capabilities, for a parser that joins a connection already past
   * authentication (a relay that did the handshake itself): it starts in the command phase.
   */
  constructor(options?: FramingOptions & { readonly capabilities?: number; readonly established?: { readonly serverCapabilities: number } }) {
    super(options)
    this.clientCaps = options?.capabilities ?? 0
    if (options?.established !== undefined) {
      this.serverCaps = options.established.serverCapabilities
      this.mode = "command"
    }
  }

  get phase(): ServerPhase {
    return this.mode
  }

  /** Commands whose responses have not been read in full yet. */
  get outstanding(): number {
    return this.pending.length
  }

  /** Negotiated capabilities: the client's flags AND the greeting's. */
  get capabilities(): number {
    return (this.clientCaps & this.serverCaps) >>> 0
  }

  /** Tells the parser what the client sent (in order), so it knows what comes back. */
  expect(m: ClientMessage): void {
    switch (m.kind) {
      case "handshakeResponse41":
        this.clientCaps = m.capabilities
        return
      case "sslRequest":
      case "authData":
      case "localInfileData":
      case "quit":
      case "stmtClose":
      case "stmtSendLongData":
        return
      case "changeUser":
        this.pending.push([{ what: "auth" }])
        return
      case "query":
      case "stmtExecute":
      case "stmtExecuteUndecoded":
        this.pending.push([{ what: "result" }])
        return
      case "stmtFetch":
        this.pending.push([{ what: "rows" }])
        return
      case "stmtPrepare":
        this.pending.push([{ what: "prepare" }])
        return
      case "unknownCommand":
        this.pending.push([m.command === Command.FIELD_LIST ? { what: "fields" } : m.command === Command.STATISTICS ? { what: "raw" } : { what: "simple" }])
        return
      default:
        this.pending.push([{ what: "simple" }])
    }
  }

  protected onPacket(p: LogicalPacket, out: Array<ServerParseResult>): void {
    const emit = (m: ServerMessage | ProtocolError): void => {
      if (isError(m)) this.fail(out, { ...m, sequenceId: p.sequenceId })
      else out.push({ kind: "packet", sequenceId: p.sequenceId, message: m })
    }
    const payload = p.payload
    switch (this.mode) {
      case "handshake": {
        const m = payload[0] === 0xff ? decodeErr(payload) : decodeHandshake(payload)
        if (!isError(m)) {
          if (m.kind === "err") this.mode = "closed"
          else {
            this.serverCaps = m.capabilities
            this.mode = "auth"
          }
        }
        return emit(m)
      }
      case "auth": {
        const m = decodeAuthResponse(payload, this.capabilities)
        if (!isError(m)) {
          if (m.kind === "ok") this.mode = "command"
          else if (m.kind === "err") this.mode = "closed"
        }
        return emit(m)
      }
      case "closed":
        return this.fail(out, protocolError("unexpected-packet", "packet after the connection was refused", p.sequenceId))
      case "command":
        return emit(this.response(payload))
    }
  }

  private response(payload: Uint8Array): ServerMessage | ProtocolError {
    const steps = this.pending[0]
    if (steps === undefined) {
      // The server may say why it is closing the connection (e.g. ER_CLIENT_INTERACTION_TIMEOUT).
      if (payload[0] === 0xff) return decodeErr(payload)
      return protocolError("unexpected-packet", "server packet with no command outstanding")
    }
    const done = (): void => {
      steps.shift()
      if (steps.length === 0) this.pending.shift()
    }
    const step = steps[0]!
    const caps = this.capabilities
    const deprecateEof = has(caps, Capability.DEPRECATE_EOF)
    const h = payload[0]
    switch (step.what) {
      case "simple":
        done()
        return decodeGeneric(payload, caps)
      case "auth": {
        const m = decodeAuthResponse(payload, caps)
        if (isError(m) || m.kind === "ok" || m.kind === "err") done()
        return m
      }
      case "raw":
        done()
        return { kind: "raw", payload }
      case "result": {
        if (h === 0x00) {
          const m = decodeOk(payload, caps)
          if (!isError(m) && (m.statusFlags & ServerStatus.MORE_RESULTS_EXISTS) === 0) done()
          return m
        }
        if (h === 0xff) {
          done()
          return decodeErr(payload)
        }
        if (h === 0xfb) return { kind: "localInfileRequest", filename: new TextDecoder().decode(payload.subarray(1)) }
        const m = guard("column count", () => {
          const r = new Reader(payload)
          const count = r.lenenc("column count")
          if (count === 0) throw new MalformedPacket("column count 0")
          if (has(caps, Capability.OPTIONAL_RESULTSET_METADATA)) {
            const metadataFollows = r.uint8("metadata follows")
            r.end("column count")
            return { kind: "columnCount" as const, count, metadataFollows }
          }
          r.end("column count")
          return { kind: "columnCount" as const, count }
        })
        if (isError(m)) return m
        // Keep the "result" step at the front of the queue: after the rows a terminator with
        // SERVER_MORE_RESULTS_EXISTS starts another result; "rows" removes it otherwise.
        const n = m.metadataFollows === 0 ? 0 : m.count
        const next: Array<Step> = []
        if (n > 0) next.push({ what: "defs", n })
        if (!deprecateEof) next.push({ what: "eof" })
        next.push({ what: "rows" })
        steps.unshift(...next)
        return m
      }
      case "prepare": {
        if (h === 0xff) {
          done()
          return decodeErr(payload)
        }
        const m = decodeStmtPrepareOk(payload, caps)
        if (isError(m)) return m
        done()
        if (m.metadataFollows !== 0) {
          const next: Array<Step> = []
          for (const n of [m.paramCount, m.columnCount]) {
            if (n === 0) continue
            next.push({ what: "defs", n })
            if (!deprecateEof) next.push({ what: "eof" })
          }
          if (next.length > 0) {
            if (steps.length === 0) this.pending.unshift(next)
            else steps.unshift(...next)
          }
        }
        return m
      }
      case "defs": {
        step.n -= 1
        if (step.n === 0) done()
        return decodeColumnDefinition(payload)
      }
      case "eof":
        if (h === 0xff) {
          this.pending.shift()
          return decodeErr(payload)
        }
        done()
        return decodeEof(payload)
      case "rows": {
        if (h === 0xff) {
          this.endResult(steps, 0)
          return decodeErr(payload)
        }
        // A row starting with 0xfe would be a >= 16 MiB first column, hence a full-size payload.
        if (h === 0xfe && payload.length < MAX_PACKET_PAYLOAD) {
          const m = deprecateEof ? decodeOk(payload, caps) : decodeEof(payload)
          if (isError(m)) return m
          this.endResult(steps, m.statusFlags)
          return m
        }
        return { kind: "row", payload }
      }
      case "fields":
        if (h === 0xff) {
          done()
          return decodeErr(payload)
        }
        if (h === 0xfe && payload.length < 9) {
          done()
          return decodeEof(payload)
        }
        return decodeColumnDefinition(payload)
    }
  }

  /** After a result's terminator: drop "rows", and the "result" under it unless more results follow. */
  private endResult(steps: Array<Step>, statusFlags: number): void {
    steps.shift()
    if (steps[0]?.what === "result" && (statusFlags & ServerStatus.MORE_RESULTS_EXISTS) === 0) steps.shift()
    if (steps.length === 0) this.pending.shift()
  }
}

export type { ProtocolError, ProtocolErrorReason }
