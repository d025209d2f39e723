/**
 * Incremental parsers for both directions, plus a frame splitter for relaying.
 *
 * - `FrontendParser`: we are the server (psql talks to us). The first packet is
 *   an untyped startup-family packet; typed messages follow the StartupMessage.
 * - `BackendParser`: we are the client (PostgreSQL talks to us).
 * - `FrameSplitter`: splits typed frames without decoding bodies.
 *
 * `push(chunk)` returns everything that became complete. Malformed input gives
 * a `ProtocolError` value (never an exception); the parser then refuses all
 * further input, returning the same error again.
 *
 * Buffering (cf. pg-protocol's `mergeBuffer`, in ../internal/pendingBytes.ts): when nothing is pending, frames
 * are cut straight out of the pushed chunk (zero copy); only the unfinished
 * tail is copied, into memory we own, which then grows geometrically (bounded
 * by the frame's declared length), so a large COPY stream costs linear time.
 * Memory that has backed a returned message is never written again, so
 * returned byte views stay valid; callers must not mutate chunks they push.
 */
import { AuthCode, BackendCode, CANCEL_REQUEST_CODE, FrontendCode, GSSENC_REQUEST_CODE, NOTICE_FIELD_CODES, SSL_REQUEST_CODE } from "./messages.ts"
import type {
  AuthResponse,
  BackendMessage,
  DescribeTarget,
  FieldDescription,
  FrontendMessage,
  NoticeFieldName,
  NoticeFields,
  StartupFamilyMessage,
  StartupParameter
} from "./messages.ts"
import { PendingBytes } from "../internal/pendingBytes.ts"
import { MalformedMessage, Reader, decodeText } from "./reader.ts"

// ---------------------------------------------------------------------------
// Errors and limits
// ---------------------------------------------------------------------------

export type ProtocolErrorReason =
  /** Declared length below the minimum for its frame (4 typed, 8 startup). */
  | "bad-length"
  /** Declared length above `maxMessageSize`. */
  | "message-too-large"
  /** Startup-family packet above MAX_STARTUP_PACKET_SIZE. */
  | "startup-too-large"
  /** A complete frame whose body does not match its message layout. */
  | "malformed-message"
  /** Bytes where none may come: after SSLRequest/GSSENCRequest before re-arming, or after CancelRequest. */
  | "unexpected-data"

/** A protocol violation; after one, the parser accepts no more input. */
export interface ProtocolError {
  readonly kind: "error"
  readonly reason: ProtocolErrorReason
  readonly detail: string
  /** Type byte of the offending frame, when there was one. */
  readonly code?: number
}

/**
 * Largest startup-family packet accepted: 10 KiB. PostgreSQL itself uses
 * 10000 bytes (MAX_STARTUP_PACKET_LENGTH); a legitimate startup is far smaller.
 */
export const MAX_STARTUP_PACKET_SIZE = 10 * 1024

/**
 * Default ceiling for a typed message's declared length: 256 MiB. PostgreSQL
 * accepts messages up to 1 GiB - 1 and a single bytea/text value can be that
 * large, so a deployment relaying such values must raise `maxMessageSize`;
 * the default bounds what one connection can make us buffer.
 */
export const DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024

export interface ParserOptions {
  /** Upper bound for the int32 length of a typed message (which counts itself). */
  readonly maxMessageSize?: number
}

export type FrontendParseResult = FrontendMessage | ProtocolError
export type BackendParseResult = BackendMessage | ProtocolError

const protocolError = (reason: ProtocolErrorReason, detail: string, code?: number): ProtocolError =>
  code === undefined ? { kind: "error", reason, detail } : { kind: "error", reason, detail, code }

// ---------------------------------------------------------------------------
// Body decoders (exported for FrameSplitter users that decode selectively)
// ---------------------------------------------------------------------------

const int16Array = (r: Reader): Array<number> => {
  const n = r.count16()
  const out = new Array<number>(n)
  for (let i = 0; i < n; i++) out[i] = r.int16()
  return out
}

const nullableArray = (r: Reader): Array<Uint8Array | null> => {
  const n = r.count16()
  const out = new Array<Uint8Array | null>(n)
  for (let i = 0; i < n; i++) out[i] = r.nullableBytes()
  return out
}

const target = (r: Reader): DescribeTarget => {
  const t = r.uint8()
  if (t === 0x53) return "S"
  if (t === 0x50) return "P"
  throw new MalformedMessage(`describe/close target ${t} is neither 'S' nor 'P'`)
}

/** Decodes a startup-family packet body (after the length; starts with the request code). Throws MalformedMessage. */
const decodeStartupBody = (body: Uint8Array): StartupFamilyMessage => {
  const r = new Reader(body)
  const code = r.int32()
  switch (code) {
    case SSL_REQUEST_CODE:
      r.end()
      return { kind: "sslRequest" }
    case GSSENC_REQUEST_CODE:
      r.end()
      return { kind: "gssEncRequest" }
    case CANCEL_REQUEST_CODE: {
      const processId = r.int32()
      const secretKey = r.rest()
      // Protocol 3.2 allows keys of 4..256 bytes.
      if (secretKey.length < 4 || secretKey.length > 256) throw new MalformedMessage("cancel key length out of range")
      return { kind: "cancelRequest", processId, secretKey }
    }
  }
  if (code >>> 16 !== 3) return { kind: "unknownRequest", code, body: r.rest() }
  // Pairs of cstrings, ended by an empty name.
  const parameters: Array<StartupParameter> = []
  for (;;) {
    const name = r.cstring()
    if (name === "") break
    parameters.push([name, r.cstring()])
  }
  r.end()
  return { kind: "startup", protocolVersion: code, parameters }
}

const decodeFrontendBody = (code: number, r: Reader): FrontendMessage => {
  switch (code) {
    case FrontendCode.Query:
      return { kind: "query", text: r.cstring() }
    case FrontendCode.Parse: {
      const name = r.cstring()
      const text = r.cstring()
      const n = r.count16()
      const paramTypes = new Array<number>(n)
      for (let i = 0; i < n; i++) paramTypes[i] = r.uint32()
      return { kind: "parse", name, text, paramTypes }
    }
    case FrontendCode.Bind: {
      const portal = r.cstring()
      const statement = r.cstring()
      const paramFormats = int16Array(r)
      const values = nullableArray(r)
      const resultFormats = int16Array(r)
      return { kind: "bind", portal, statement, paramFormats, values, resultFormats }
    }
    case FrontendCode.Describe: {
      const t = target(r)
      return { kind: "describe", target: t, name: r.cstring() }
    }
    case FrontendCode.Execute: {
      const portal = r.cstring()
      return { kind: "execute", portal, maxRows: r.uint32() }
    }
    case FrontendCode.Sync:
      return { kind: "sync" }
    case FrontendCode.Flush:
      return { kind: "flush" }
    case FrontendCode.Close: {
      const t = target(r)
      return { kind: "close", target: t, name: r.cstring() }
    }
    case FrontendCode.Terminate:
      return { kind: "terminate" }
    case FrontendCode.CopyData:
      return { kind: "copyData", data: r.rest() }
    case FrontendCode.CopyDone:
      return { kind: "copyDone" }
    case FrontendCode.CopyFail:
      return { kind: "copyFail", message: r.cstring() }
    case FrontendCode.FunctionCall: {
      const functionOid = r.uint32()
      const argFormats = int16Array(r)
      const args = nullableArray(r)
      return { kind: "functionCall", functionOid, argFormats, args, resultFormat: r.int16() }
    }
    case FrontendCode.AuthResponse:
      return { kind: "authResponse", data: r.rest() }
    default:
      return { kind: "unknown", code, body: r.rest() }
  }
}

const decodeNotice = (r: Reader): NoticeFields => {
  const fields: { -readonly [K in NoticeFieldName]?: string } & { other?: Array<readonly [string, string]> } = {}
  for (;;) {
    const code = r.uint8()
    if (code === 0) break
    const value = r.cstring()
    const name = NOTICE_FIELD_BY_CODE.get(code)
    if (name !== undefined) fields[name] = value
    else (fields.other ??= []).push([String.fromCharCode(code), value])
  }
  return fields
}

const NOTICE_FIELD_BY_CODE: ReadonlyMap<number, NoticeFieldName> = new Map(
  NOTICE_FIELD_CODES.map(([name, code]) => [code.charCodeAt(0), name])
)

const decodeAuth = (r: Reader, body: Uint8Array): BackendMessage => {
  const sub = r.int32()
  switch (sub) {
    case AuthCode.Ok:
      return { kind: "authenticationOk" }
    case AuthCode.KerberosV5:
      return { kind: "authenticationKerberosV5" }
    case AuthCode.CleartextPassword:
      return { kind: "authenticationCleartextPassword" }
    case AuthCode.MD5Password:
      return { kind: "authenticationMD5Password", salt: r.bytes(4) }
    case AuthCode.GSS:
      return { kind: "authenticationGSS" }
    case AuthCode.GSSContinue:
      return { kind: "authenticationGSSContinue", data: r.rest() }
    case AuthCode.SSPI:
      return { kind: "authenticationSSPI" }
    case AuthCode.SASL: {
      const mechanisms: Array<string> = []
      for (;;) {
        const m = r.cstring()
        if (m === "") break
        mechanisms.push(m)
      }
      return { kind: "authenticationSASL", mechanisms }
    }
    case AuthCode.SASLContinue:
      return { kind: "authenticationSASLContinue", data: r.rest() }
    case AuthCode.SASLFinal:
      return { kind: "authenticationSASLFinal", data: r.rest() }
    default:
      // An auth method from the future: hand it over undecoded rather than failing.
      r.rest()
      return { kind: "unknown", code: BackendCode.Authentication, body }
  }
}

const decodeBackendBody = (code: number, r: Reader, body: Uint8Array): BackendMessage => {
  switch (code) {
    case BackendCode.Authentication:
      return decodeAuth(r, body)
    case BackendCode.BackendKeyData: {
      const processId = r.int32()
      const secretKey = r.rest()
      if (secretKey.length < 4 || secretKey.length > 256) throw new MalformedMessage("cancel key length out of range")
      return { kind: "backendKeyData", processId, secretKey }
    }
    case BackendCode.BindComplete:
      return { kind: "bindComplete" }
    case BackendCode.CloseComplete:
      return { kind: "closeComplete" }
    case BackendCode.CommandComplete:
      return { kind: "commandComplete", tag: r.cstring() }
    case BackendCode.CopyData:
      return { kind: "copyData", data: r.rest() }
    case BackendCode.CopyDone:
      return { kind: "copyDone" }
    case BackendCode.CopyInResponse:
    case BackendCode.CopyOutResponse:
    case BackendCode.CopyBothResponse: {
      const kind =
        code === BackendCode.CopyInResponse
          ? "copyInResponse"
          : code === BackendCode.CopyOutResponse
            ? "copyOutResponse"
            : "copyBothResponse"
      const format = r.uint8()
      return { kind, format, columnFormats: int16Array(r) }
    }
    case BackendCode.DataRow:
      return { kind: "dataRow", columns: nullableArray(r) }
    case BackendCode.EmptyQueryResponse:
      return { kind: "emptyQueryResponse" }
    case BackendCode.ErrorResponse:
      return { kind: "errorResponse", fields: decodeNotice(r) }
    case BackendCode.NoticeResponse:
      return { kind: "noticeResponse", fields: decodeNotice(r) }
    case BackendCode.FunctionCallResponse:
      return { kind: "functionCallResponse", result: r.nullableBytes() }
    case BackendCode.NegotiateProtocolVersion: {
      const newestMinor = r.int32()
      const n = r.int32()
      if (n < 0 || n > r.remaining) throw new MalformedMessage(`bad option count ${n}`)
      const unrecognizedOptions: Array<string> = []
      for (let i = 0; i < n; i++) unrecognizedOptions.push(r.cstring())
      return { kind: "negotiateProtocolVersion", newestMinor, unrecognizedOptions }
    }
    case BackendCode.NoData:
      return { kind: "noData" }
    case BackendCode.NotificationResponse: {
      const processId = r.int32()
      const channel = r.cstring()
      return { kind: "notificationResponse", processId, channel, payload: r.cstring() }
    }
    case BackendCode.ParameterDescription: {
      const n = r.count16()
      const typeOids = new Array<number>(n)
      for (let i = 0; i < n; i++) typeOids[i] = r.uint32()
      return { kind: "parameterDescription", typeOids }
    }
    case BackendCode.ParameterStatus: {
      const name = r.cstring()
      return { kind: "parameterStatus", name, value: r.cstring() }
    }
    case BackendCode.ParseComplete:
      return { kind: "parseComplete" }
    case BackendCode.PortalSuspended:
      return { kind: "portalSuspended" }
    case BackendCode.ReadyForQuery: {
      const s = r.uint8()
      if (s !== 0x49 && s !== 0x54 && s !== 0x45) throw new MalformedMessage(`bad transaction status ${s}`)
      return { kind: "readyForQuery", status: s === 0x49 ? "I" : s === 0x54 ? "T" : "E" }
    }
    case BackendCode.RowDescription: {
      const n = r.count16()
      const fields = new Array<FieldDescription>(n)
      for (let i = 0; i < n; i++) {
        fields[i] = {
          name: r.cstring(),
          tableOID: r.uint32(),
          columnAttr: r.int16(),
          typeOID: r.uint32(),
          typeSize: r.int16(),
          typeModifier: r.int32(),
          format: r.int16()
        }
      }
      return { kind: "rowDescription", fields }
    }
    default:
      return { kind: "unknown", code, body: r.rest() }
  }
}

const guard = <A>(code: number | undefined, f: () => A): A | ProtocolError => {
  try {
    return f()
  } catch (e) {
    if (e instanceof MalformedMessage) {
      const what = code === undefined ? "startup packet" : `message '${String.fromCharCode(code)}'`
      return protocolError("malformed-message", `${what}: ${e.message}`, code)
    }
    throw e
  }
}

/** Decodes a typed frontend message body (the bytes after code and length). */
export const decodeFrontend = (code: number, body: Uint8Array): FrontendParseResult =>
  guard(code, () => {
    const r = new Reader(body)
    const m = decodeFrontendBody(code, r)
    r.end()
    return m
  })

/** Decodes a startup-family packet body (the bytes after the length). */
export const decodeStartup = (body: Uint8Array): StartupFamilyMessage | ProtocolError =>
  guard(undefined, () => decodeStartupBody(body))

/** Decodes a typed backend message body (the bytes after code and length). */
export const decodeBackend = (code: number, body: Uint8Array): BackendParseResult =>
  guard(code, () => {
    const r = new Reader(body)
    const m = decodeBackendBody(code, r, body)
    r.end()
    return m
  })

// ---------------------------------------------------------------------------
// AuthResponse interpretation (the caller knows which auth exchange is running)
// ---------------------------------------------------------------------------

/** PasswordMessage: the password, or undefined if the body is not exactly one cstring. */
export const readPasswordMessage = (msg: AuthResponse): string | undefined => {
  const end = msg.data.indexOf(0)
  return end === msg.data.length - 1 ? decodeText(msg.data.subarray(0, end)) : undefined
}

/** SASLInitialResponse: mechanism and client-first message (null when the client sent length -1). */
export const readSASLInitialResponse = (
  msg: AuthResponse
): { readonly mechanism: string; readonly response: Uint8Array | null } | undefined => {
  try {
    const r = new Reader(msg.data)
    const mechanism = r.cstring()
    const response = r.nullableBytes()
    r.end()
    return { mechanism, response }
  } catch (e) {
    if (e instanceof MalformedMessage) return undefined
    throw e
  }
}

/** SASLResponse / GSSResponse: the mechanism data, unframed. */
export const readSASLResponse = (msg: AuthResponse): Uint8Array => msg.data

// ---------------------------------------------------------------------------
// Buffering
// ---------------------------------------------------------------------------

/** Smallest store allocated for a leftover tail (the MySQL parser uses the same, RESP a smaller one). */
const MIN_TAIL = 8 * 1024

const readInt32 = (b: Uint8Array, at: number): number =>
  ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) | 0

/**
 * Shared push loop. `step` looks at `data[off..]`: it returns a larger offset after
 * emitting one item, or `off` when it needs more bytes (setting `expected`).
 */
abstract class Framed<T> {
  private readonly tail = new PendingBytes(MIN_TAIL)
  private failure: ProtocolError | undefined
  /** Full size of the frame in progress, once its header is known; 0 otherwise. */
  protected expected = 0
  protected readonly maxMessageSize: number

  protected constructor(options?: ParserOptions) {
    this.maxMessageSize = options?.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE
  }

  /** The error that stopped this parser, if any. */
  get error(): ProtocolError | undefined {
    return this.failure
  }

  /** Bytes received but not yet part of a complete frame. */
  get pendingBytes(): number {
    return this.tail.size
  }

  push(chunk: Uint8Array): Array<T | ProtocolError> {
    if (this.failure !== undefined) return [this.failure]
    const data = this.tail.begin(chunk, this.expected)
    const out: Array<T | ProtocolError> = []
    let off = 0
    while (off < data.length) {
      this.expected = 0
      const next = this.step(data, off, out)
      if (this.failure !== undefined) {
        this.tail.clear()
        return out
      }
      if (next === off) break
      off = next
    }
    this.tail.end(data, off, this.expected)
    return out
  }

  protected fail(out: Array<T | ProtocolError>, e: ProtocolError): void {
    this.failure = e
    out.push(e)
  }

  protected abstract step(data: Uint8Array, off: number, out: Array<T | ProtocolError>): number

  /**
   * Cuts one typed frame [code][int32 len][body]; returns the new offset, or
   * `off` if incomplete or failed. The header is checked as soon as it is
   * complete, so a lying length fails at once instead of waiting for bytes.
   */
  protected typedFrame(
    data: Uint8Array,
    off: number,
    out: Array<T | ProtocolError>,
    emit: (code: number, body: Uint8Array, frame: Uint8Array) => T | ProtocolError
  ): number {
    const avail = data.length - off
    if (avail < 5) return off
    const code = data[off]!
    const len = readInt32(data, off + 1)
    if (len < 4) {
      this.fail(out, protocolError("bad-length", `message length ${len} is below 4`, code))
      return off
    }
    if (len > this.maxMessageSize) {
      this.fail(out, protocolError("message-too-large", `message length ${len} exceeds ${this.maxMessageSize}`, code))
      return off
    }
    const total = len + 1
    if (avail < total) {
      this.expected = total
      return off
    }
    const r = emit(code, data.subarray(off + 5, off + total), data.subarray(off, off + total))
    if (r !== null && typeof r === "object" && "kind" in r && r.kind === "error") {
      this.fail(out, r as ProtocolError)
      return off
    }
    out.push(r)
    return off + total
  }
}

// ---------------------------------------------------------------------------
// Parsers
// ---------------------------------------------------------------------------

/**
 * Where a FrontendParser is in the connection:
 * - `expectStartup`: the next packet is untyped (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest);
 * - `encryptionRequested`: after SSLRequest/GSSENCRequest; no bytes may arrive until `rearmStartup()`;
 * - `normal`: typed messages;
 * - `closed`: after CancelRequest or an unknown request code; the connection must end.
 */
export type FrontendParserState = "expectStartup" | "encryptionRequested" | "normal" | "closed"

/** Server-side parser of what a client sends. */
export class FrontendParser extends Framed<FrontendMessage> {
  private mode: FrontendParserState = "expectStartup"

  constructor(options?: ParserOptions) {
    super(options)
  }

  get state(): FrontendParserState {
    return this.mode
  }

  /**
   * After answering SSLRequest/GSSENCRequest ('S'/'G' then a handshake, or 'N'),
   * expect another startup-family packet. Feed decrypted bytes from here on.
   */
  rearmStartup(): void {
    if (this.mode === "encryptionRequested") this.mode = "expectStartup"
  }

  protected step(data: Uint8Array, off: number, out: Array<FrontendParseResult>): number {
    switch (this.mode) {
      case "normal":
        return this.typedFrame(data, off, out, decodeFrontend)
      case "expectStartup":
        return this.startup(data, off, out)
      case "encryptionRequested":
        // Bytes sent before our answer to SSLRequest were not encrypted and may be
        // injected (CVE-2021-23214); PostgreSQL rejects them too.
        this.fail(out, protocolError("unexpected-data", "received unencrypted data after an encryption request"))
        return off
      case "closed":
        this.fail(out, protocolError("unexpected-data", "received data after a CancelRequest or unsupported request"))
        return off
    }
  }

  private startup(data: Uint8Array, off: number, out: Array<FrontendParseResult>): number {
    const avail = data.length - off
    if (avail < 4) return off
    const len = readInt32(data, off)
    if (len < 8) {
      this.fail(out, protocolError("bad-length", `startup packet length ${len} is below 8`))
      return off
    }
    if (len > MAX_STARTUP_PACKET_SIZE) {
      this.fail(out, protocolError("startup-too-large", `startup packet length ${len} exceeds ${MAX_STARTUP_PACKET_SIZE}`))
      return off
    }
    if (avail < len) {
      this.expected = len
      return off
    }
    const m = decodeStartup(data.subarray(off + 4, off + len))
    if (m.kind === "error") {
      this.fail(out, m)
      return off
    }
    this.mode =
      m.kind === "startup"
        ? "normal"
        : m.kind === "sslRequest" || m.kind === "gssEncRequest"
          ? "encryptionRequested"
          : "closed"
    out.push(m)
    return off + len
  }
}

/** Client-side parser of what a PostgreSQL server sends. */
export class BackendParser extends Framed<BackendMessage> {
  constructor(options?: ParserOptions) {
    super(options)
  }

  protected step(data: Uint8Array, off: number, out: Array<BackendParseResult>): number {
    return this.typedFrame(data, off, out, decodeBackend)
  }
}

/** One typed frame, undecoded. `bytes` is the whole frame (header included), ready to forward. */
export interface Frame {
  readonly kind: "frame"
  readonly code: number
  readonly body: Uint8Array
  readonly bytes: Uint8Array
}

/**
 * Splits a typed message stream (either direction, after startup) into frames
 * without decoding bodies: the fast path for relaying DataRow/CopyData.
 * Decode a frame later with `decodeFrontend`/`decodeBackend` if needed.
 */
export class FrameSplitter extends Framed<Frame> {
  constructor(options?: ParserOptions) {
    super(options)
  }

  protected step(data: Uint8Array, off: number, out: Array<Frame | ProtocolError>): number {
    return this.typedFrame(data, off, out, (code, body, bytes) => ({ kind: "frame", code, body, bytes }))
  }
}
