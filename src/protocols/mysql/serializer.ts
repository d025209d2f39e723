/**
 * Encoders for MySQL payloads (the inverse of parser.ts's decoders), framing
 * helpers and the ERR builder used for Remoteler's own refusals.
 *
 * `encodeClient`/`encodeServer` return a payload; `serializeClient`/
 * `serializeServer` frame it (splitting at 16 MiB) from a sequence id.
 * Values that cannot be encoded faithfully throw `RangeError`: those are
 * programming errors, not input.
 */
import { Capability, ColumnType, Command, CursorFlag, ServerStatus } from "./messages.ts"
import type {
  BinaryValue,
  BoundParam,
  ClientMessage,
  ConnectAttribute,
  ErrPacket,
  ServerMessage
} from "./messages.ts"
import { framePacket } from "./packet.ts"
import { LENENC_TYPES } from "./parser.ts"
import type { ProtocolError } from "./packet.ts"
import { Writer } from "./writer.ts"

const has = (caps: number, flag: number): boolean => (caps & flag) !== 0

const writeAttributes = (w: Writer, attrs: ReadonlyArray<ConnectAttribute>): void => {
  const block = new Writer()
  for (const [k, v] of attrs) block.lenencString(k).lenencString(v)
  w.lenencBytes(block.finish())
}

const wrongValue = (type: number, v: BinaryValue): never => {
  throw new RangeError(`value ${String(v)} does not fit parameter type 0x${type.toString(16)}`)
}

/** Writes one non-NULL binary-protocol value; dates and times take their shortest form. */
export const writeBinaryValue = (w: Writer, type: number, unsigned: boolean, v: BinaryValue): void => {
  switch (type) {
    case ColumnType.TINY:
      if (typeof v !== "number") return wrongValue(type, v)
      if (unsigned) w.uint8(v)
      else w.int8(v)
      return
    case ColumnType.SHORT:
    case ColumnType.YEAR:
      if (typeof v !== "number") return wrongValue(type, v)
      if (unsigned) w.uint16(v)
      else w.int16(v)
      return
    case ColumnType.LONG:
    case ColumnType.INT24:
      if (typeof v !== "number") return wrongValue(type, v)
      if (unsigned) w.uint32(v)
      else w.int32(v)
      return
    case ColumnType.LONGLONG:
      if (typeof v !== "bigint") return wrongValue(type, v)
      if (unsigned) w.uint64(v)
      else w.int64(v)
      return
    case ColumnType.FLOAT:
      if (typeof v !== "number") return wrongValue(type, v)
      w.float32(v)
      return
    case ColumnType.DOUBLE:
      if (typeof v !== "number") return wrongValue(type, v)
      w.float64(v)
      return
    case ColumnType.DATE:
    case ColumnType.DATETIME:
    case ColumnType.TIMESTAMP:
    case ColumnType.NEWDATE: {
      if (v === null || typeof v !== "object" || !("kind" in v) || v.kind !== "datetime") return wrongValue(type, v)
      const len = v.microsecond !== 0 ? 11 : v.hour !== 0 || v.minute !== 0 || v.second !== 0 ? 7 : v.year !== 0 || v.month !== 0 || v.day !== 0 ? 4 : 0
      w.uint8(len)
      if (len >= 4) w.uint16(v.year).uint8(v.month).uint8(v.day)
      if (len >= 7) w.uint8(v.hour).uint8(v.minute).uint8(v.second)
      if (len === 11) w.uint32(v.microsecond)
      return
    }
    case ColumnType.TIME: {
      if (v === null || typeof v !== "object" || !("kind" in v) || v.kind !== "time") return wrongValue(type, v)
      const len = v.microseconds !== 0 ? 12 : v.negative || v.days !== 0 || v.hours !== 0 || v.minutes !== 0 || v.seconds !== 0 ? 8 : 0
      w.uint8(len)
      if (len >= 8) w.uint8(v.negative ? 1 : 0).uint32(v.days).uint8(v.hours).uint8(v.minutes).uint8(v.seconds)
      if (len === 12) w.uint32(v.microseconds)
      return
    }
    default:
      if (LENENC_TYPES.has(type) && v instanceof Uint8Array) {
        w.lenencBytes(v)
        return
      }
      return wrongValue(type, v)
  }
}

const writeParams = (w: Writer, params: ReadonlyArray<BoundParam>, newParamsBound: boolean, withNames: boolean): void => {
  const n = params.length
  if (n === 0) return
  const bitmap = new Uint8Array((n + 7) >> 3)
  params.forEach((p, i) => {
    if (p.value === null) bitmap[i >> 3]! |= 1 << (i & 7)
  })
  w.bytes(bitmap).uint8(newParamsBound ? 1 : 0)
  if (newParamsBound) {
    for (const p of params) {
      w.uint8(p.type).uint8(p.unsigned ? 0x80 : 0)
      if (withNames) w.lenencString(p.name ?? "")
    }
  }
  for (const p of params) if (p.value !== null) writeBinaryValue(w, p.type, p.unsigned, p.value)
}

/**
 * Encodes a client message's payload. `capabilities` (the negotiated set)
 * decides optional layouts of commands; handshake responses use their own.
 */
export const encodeClient = (m: ClientMessage, capabilities: number): Uint8Array => {
  const w = new Writer()
  switch (m.kind) {
    case "sslRequest":
      w.uint32(m.capabilities).uint32(m.maxPacketSize).uint8(m.charset).zeros(19).uint32(m.mariadbCapabilities)
      break
    case "handshakeResponse41": {
      const caps = m.capabilities
      w.uint32(caps).uint32(m.maxPacketSize).uint8(m.charset).zeros(19).uint32(m.mariadbCapabilities)
      w.nulString(m.username)
      if (has(caps, Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA)) w.lenencBytes(m.authResponse)
      else if (has(caps, Capability.SECURE_CONNECTION)) w.uint8(m.authResponse.length).bytes(m.authResponse)
      else w.nulBytes(m.authResponse)
      if (has(caps, Capability.CONNECT_WITH_DB)) w.nulString(m.database ?? "")
      if (has(caps, Capability.PLUGIN_AUTH)) w.nulString(m.authPluginName ?? "")
      if (has(caps, Capability.CONNECT_ATTRS)) writeAttributes(w, m.attributes ?? [])
      if (has(caps, Capability.ZSTD_COMPRESSION)) w.uint8(m.zstdCompressionLevel ?? 3)
      break
    }
    case "authData":
    case "localInfileData":
      w.bytes(m.data)
      break
    case "query":
      w.uint8(Command.QUERY)
      if (has(capabilities, Capability.QUERY_ATTRIBUTES)) {
        const attrs = m.attributes ?? []
        w.lenenc(attrs.length).lenenc(1)
        writeParams(w, attrs, true, true)
      }
      w.string(m.text)
      break
    case "stmtPrepare":
      w.uint8(Command.STMT_PREPARE).string(m.text)
      break
    case "stmtExecute":
      w.uint8(Command.STMT_EXECUTE).uint32(m.statementId).uint8(m.flags).uint32(m.iterationCount)
      if (has(capabilities, Capability.QUERY_ATTRIBUTES) && (m.flags & CursorFlag.PARAMETER_COUNT_AVAILABLE) !== 0) {
        w.lenenc(m.params.length)
      }
      writeParams(w, m.params, m.newParamsBound, has(capabilities, Capability.QUERY_ATTRIBUTES))
      break
    case "stmtExecuteUndecoded":
      w.uint8(Command.STMT_EXECUTE).uint32(m.statementId).uint8(m.flags).uint32(m.iterationCount).bytes(m.rest)
      break
    case "stmtSendLongData":
      w.uint8(Command.STMT_SEND_LONG_DATA).uint32(m.statementId).uint16(m.paramId).bytes(m.data)
      break
    case "stmtClose":
      w.uint8(Command.STMT_CLOSE).uint32(m.statementId)
      break
    case "stmtReset":
      w.uint8(Command.STMT_RESET).uint32(m.statementId)
      break
    case "stmtFetch":
      w.uint8(Command.STMT_FETCH).uint32(m.statementId).uint32(m.rows)
      break
    case "initDb":
      w.uint8(Command.INIT_DB).string(m.schema)
      break
    case "changeUser":
      w.uint8(Command.CHANGE_USER).nulString(m.username)
      if (has(capabilities, Capability.SECURE_CONNECTION)) w.uint8(m.authResponse.length).bytes(m.authResponse)
      else w.nulBytes(m.authResponse)
      w.nulString(m.database)
      if (m.charset !== undefined) {
        w.uint16(m.charset)
        if (m.authPluginName !== undefined) {
          w.nulString(m.authPluginName)
          if (m.attributes !== undefined) writeAttributes(w, m.attributes)
        }
      }
      break
    case "ping":
      w.uint8(Command.PING)
      break
    case "quit":
      w.uint8(Command.QUIT)
      break
    case "resetConnection":
      w.uint8(Command.RESET_CONNECTION)
      break
    case "unknownCommand":
      w.uint8(m.command).bytes(m.body)
      break
  }
  return w.finish()
}

/** Encodes a server message's payload; `capabilities` (negotiated) decides OK/prepare-OK/column-count layouts. */
export const encodeServer = (m: ServerMessage, capabilities: number): Uint8Array => {
  const w = new Writer()
  switch (m.kind) {
    case "handshakeV10": {
      const caps = m.capabilities
      w.uint8(m.protocolVersion).nulString(m.serverVersion).uint32(m.connectionId)
      if (m.authPluginDataPart1.length !== 8) throw new RangeError("auth-plugin-data-part-1 must be 8 bytes")
      w.bytes(m.authPluginDataPart1).uint8(0)
      w.uint16(caps & 0xffff).uint8(m.charset).uint16(m.statusFlags).uint16(caps >>> 16)
      w.uint8(m.authPluginDataLength).zeros(6).uint32(m.mariadbCapabilities)
      if (has(caps, Capability.SECURE_CONNECTION)) {
        if (m.authPluginDataPart2.length !== Math.max(13, m.authPluginDataLength - 8)) {
          throw new RangeError("auth-plugin-data-part-2 length disagrees with auth plugin data length")
        }
        w.bytes(m.authPluginDataPart2)
      }
      if (has(caps, Capability.PLUGIN_AUTH)) w.nulString(m.authPluginName ?? "")
      break
    }
    case "ok":
      w.uint8(m.header).lenenc(m.affectedRows).lenenc(m.lastInsertId).uint16(m.statusFlags).uint16(m.warnings)
      if (has(capabilities, Capability.SESSION_TRACK)) {
        w.lenencString(m.info)
        if ((m.statusFlags & ServerStatus.SESSION_STATE_CHANGED) !== 0 && m.sessionStateChanges !== undefined) {
          w.lenencBytes(m.sessionStateChanges)
        }
      } else w.string(m.info)
      break
    case "err":
      w.uint8(0xff).uint16(m.code)
      if (m.sqlState !== undefined) {
        if (!/^[\x20-\x7e]{5}$/.test(m.sqlState)) throw new RangeError(`invalid SQLSTATE ${JSON.stringify(m.sqlState)}`)
        w.uint8(0x23).string(m.sqlState)
      }
      w.string(m.message)
      break
    case "eof":
      w.uint8(0xfe).uint16(m.warnings).uint16(m.statusFlags)
      break
    case "authSwitchRequest":
      w.uint8(0xfe).nulString(m.pluginName).bytes(m.pluginData)
      break
    case "oldAuthSwitchRequest":
      w.uint8(0xfe)
      break
    case "authMoreData":
      w.uint8(0x01).bytes(m.data)
      break
    case "stmtPrepareOk":
      w.uint8(0).uint32(m.statementId).uint16(m.columnCount).uint16(m.paramCount).uint8(0).uint16(m.warnings)
      if (m.metadataFollows !== undefined) w.uint8(m.metadataFollows)
      break
    case "columnCount":
      w.lenenc(m.count)
      if (m.metadataFollows !== undefined) w.uint8(m.metadataFollows)
      break
    case "columnDefinition":
      w.lenencString(m.catalog).lenencString(m.schema).lenencString(m.table).lenencString(m.orgTable)
      w.lenencString(m.name).lenencString(m.orgName).lenenc(0x0c)
      w.uint16(m.charset).uint32(m.columnLength).uint8(m.type).uint16(m.flags).uint8(m.decimals).zeros(2)
      break
    case "localInfileRequest":
      w.uint8(0xfb).string(m.filename)
      break
    case "row":
    case "raw":
      w.bytes(m.payload)
      break
  }
  return w.finish()
}

export interface SerializeOptions {
  /** Negotiated capabilities. Default 0 (handshake messages carry their own). */
  readonly capabilities?: number
  /** Sequence id of the first wire packet. Default 0. */
  readonly sequenceId?: number
}

/** A client message framed as wire packets. */
export const serializeClient = (m: ClientMessage, options?: SerializeOptions): Uint8Array =>
  framePacket(encodeClient(m, options?.capabilities ?? 0), options?.sequenceId ?? 0)

/** A server message framed as wire packets. */
export const serializeServer = (m: ServerMessage, options?: SerializeOptions): Uint8Array =>
  framePacket(encodeServer(m, options?.capabilities ?? 0), options?.sequenceId ?? 0)

/** Server error codes and SQLSTATEs Remoteler sends. https://dev.mysql.com/doc/mysql-errors/8.0/en/server-error-reference.html */
export const ErrorCode = {
  /** ER_DBACCESS_DENIED_ERROR, SQLSTATE 42000: "Access denied for user ... to database ...". */
  DbAccessDenied: 1044,
  /** ER_ACCESS_DENIED_ERROR, SQLSTATE 28000. */
  AccessDenied: 1045,
  /** ER_NET_PACKET_TOO_LARGE, SQLSTATE 08S01. */
  NetPacketTooLarge: 1153,
  /** ER_NET_PACKETS_OUT_OF_ORDER, SQLSTATE 08S01. */
  NetPacketsOutOfOrder: 1156,
  /** ER_MALFORMED_PACKET, SQLSTATE HY000. */
  MalformedPacket: 1835,
  /** ER_NOT_SUPPORTED_AUTH_MODE, SQLSTATE 08004. */
  NotSupportedAuthMode: 1251,
  /** ER_UNKNOWN_COM_ERROR, SQLSTATE 08S01. */
  UnknownCommand: 1047
} as const

/**
 * The ERR message for a refusal, e.g.
 * `errPacket(1045, "28000", "access to db my-prod as db user root denied by role dev")`.
 */
export const errPacket = (code: number, sqlState: string, message: string): ErrPacket => ({ kind: "err", code, sqlState, message })

/** ERR bytes framed with `sequenceId` (one more than the packet being answered). */
export const errPacketBytes = (code: number, sqlState: string, message: string, sequenceId: number): Uint8Array =>
  serializeServer(errPacket(code, sqlState, message), { sequenceId })

/** A parser's protocol error as the ERR a MySQL server would send before closing. */
export const protocolErrPacket = (e: ProtocolError): ErrPacket => {
  switch (e.reason) {
    case "packet-too-large":
      return errPacket(ErrorCode.NetPacketTooLarge, "08S01", "Got a packet bigger than 'max_allowed_packet' bytes")
    case "bad-sequence":
      return errPacket(ErrorCode.NetPacketsOutOfOrder, "08S01", "Got packets out of order")
    case "unsupported-protocol":
      return errPacket(ErrorCode.NotSupportedAuthMode, "08004", "Client does not support authentication protocol requested by server; consider upgrading MySQL client")
    case "malformed-packet":
    case "unexpected-packet":
      return errPacket(ErrorCode.MalformedPacket, "HY000", `Malformed communication packet: ${e.detail}`)
  }
}


