/**
 * PostgreSQL v3 wire messages, both directions, as plain discriminated unions.
 *
 * Byte fields (`Uint8Array`) that come out of a parser are zero-copy views of
 * the bytes that were pushed; they stay valid as long as the caller does not
 * mutate the chunks it pushed.
 *
 * Reference: https://www.postgresql.org/docs/current/protocol-message-formats.html
 */

// ---------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------

/** Protocol 3.0 as sent in StartupMessage: major 3 in the high 16 bits, minor in the low 16. */
export const PROTOCOL_3_0 = 196608
/** Request codes of the untyped startup-family packets (1234.5679, 1234.5680, 1234.5678). */
export const SSL_REQUEST_CODE = 80877103
export const GSSENC_REQUEST_CODE = 80877104
export const CANCEL_REQUEST_CODE = 80877102

/** Authentication request subtypes carried in the backend 'R' message. */
export const AuthCode = {
  Ok: 0,
  KerberosV5: 2,
  CleartextPassword: 3,
  MD5Password: 5,
  GSS: 7,
  GSSContinue: 8,
  SSPI: 9,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12
} as const

/** Format codes used by Bind, RowDescription, Copy*Response and FunctionCall. */
export type FormatCode = number // 0 = text, 1 = binary; kept numeric so unknown codes survive a relay

// ---------------------------------------------------------------------------
// Frontend (client -> server)
// ---------------------------------------------------------------------------

/** A startup parameter in wire order; duplicates and `_pq_.` options are preserved. */
export type StartupParameter = readonly [name: string, value: string]

export interface StartupMessage {
  readonly kind: "startup"
  /** (major << 16) | minor; 196608 for 3.0, 196610 for 3.2. */
  readonly protocolVersion: number
  readonly parameters: ReadonlyArray<StartupParameter>
}
export interface SSLRequest {
  readonly kind: "sslRequest"
}
export interface GSSENCRequest {
  readonly kind: "gssEncRequest"
}
export interface CancelRequest {
  readonly kind: "cancelRequest"
  readonly processId: number
  /** 4 bytes in protocol 3.0; up to 256 bytes from protocol 3.2 on. */
  readonly secretKey: Uint8Array
}
/** A startup-family packet whose request code we do not know (e.g. protocol 2.0). */
export interface UnknownRequest {
  readonly kind: "unknownRequest"
  readonly code: number
  readonly body: Uint8Array
}
export interface Query {
  readonly kind: "query"
  readonly text: string
}
export interface Parse {
  readonly kind: "parse"
  readonly name: string
  readonly text: string
  readonly paramTypes: ReadonlyArray<number>
}
export interface Bind {
  readonly kind: "bind"
  readonly portal: string
  readonly statement: string
  readonly paramFormats: ReadonlyArray<FormatCode>
  readonly values: ReadonlyArray<Uint8Array | null>
  readonly resultFormats: ReadonlyArray<FormatCode>
}
/** 'S' = prepared statement, 'P' = portal. */
export type DescribeTarget = "S" | "P"
export interface Describe {
  readonly kind: "describe"
  readonly target: DescribeTarget
  readonly name: string
}
export interface Execute {
  readonly kind: "execute"
  readonly portal: string
  /** 0 = no limit. */
  readonly maxRows: number
}
export interface Sync {
  readonly kind: "sync"
}
export interface Flush {
  readonly kind: "flush"
}
export interface Close {
  readonly kind: "close"
  readonly target: DescribeTarget
  readonly name: string
}
export interface Terminate {
  readonly kind: "terminate"
}
export interface CopyData {
  readonly kind: "copyData"
  readonly data: Uint8Array
}
export interface CopyDone {
  readonly kind: "copyDone"
}
export interface CopyFail {
  readonly kind: "copyFail"
  readonly message: string
}
export interface FunctionCall {
  readonly kind: "functionCall"
  readonly functionOid: number
  readonly argFormats: ReadonlyArray<FormatCode>
  readonly args: ReadonlyArray<Uint8Array | null>
  readonly resultFormat: FormatCode
}
/**
 * The frontend 'p' message: PasswordMessage, SASLInitialResponse, SASLResponse or
 * GSSResponse. Which one it is depends on the authentication exchange in
 * progress, so it is kept raw; see `readPasswordMessage` and friends.
 */
export interface AuthResponse {
  readonly kind: "authResponse"
  readonly data: Uint8Array
}
/** A typed message whose code we do not know. */
export interface UnknownMessage {
  readonly kind: "unknown"
  /** The message type byte. */
  readonly code: number
  readonly body: Uint8Array
}

export type StartupFamilyMessage = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest | UnknownRequest

export type FrontendMessage =
  | StartupFamilyMessage
  | Query
  | Parse
  | Bind
  | Describe
  | Execute
  | Sync
  | Flush
  | Close
  | Terminate
  | CopyData
  | CopyDone
  | CopyFail
  | FunctionCall
  | AuthResponse
  | UnknownMessage

// ---------------------------------------------------------------------------
// Backend (server -> client)
// ---------------------------------------------------------------------------

export interface AuthenticationOk {
  readonly kind: "authenticationOk"
}
export interface AuthenticationKerberosV5 {
  readonly kind: "authenticationKerberosV5"
}
export interface AuthenticationCleartextPassword {
  readonly kind: "authenticationCleartextPassword"
}
export interface AuthenticationMD5Password {
  readonly kind: "authenticationMD5Password"
  /** Exactly 4 bytes. */
  readonly salt: Uint8Array
}
export interface AuthenticationGSS {
  readonly kind: "authenticationGSS"
}
export interface AuthenticationGSSContinue {
  readonly kind: "authenticationGSSContinue"
  readonly data: Uint8Array
}
export interface AuthenticationSSPI {
  readonly kind: "authenticationSSPI"
}
export interface AuthenticationSASL {
  readonly kind: "authenticationSASL"
  readonly mechanisms: ReadonlyArray<string>
}
export interface AuthenticationSASLContinue {
  readonly kind: "authenticationSASLContinue"
  readonly data: Uint8Array
}
export interface AuthenticationSASLFinal {
  readonly kind: "authenticationSASLFinal"
  readonly data: Uint8Array
}
export type AuthenticationMessage =
  | AuthenticationOk
  | AuthenticationKerberosV5
  | AuthenticationCleartextPassword
  | AuthenticationMD5Password
  | AuthenticationGSS
  | AuthenticationGSSContinue
  | AuthenticationSSPI
  | AuthenticationSASL
  | AuthenticationSASLContinue
  | AuthenticationSASLFinal

export interface BackendKeyData {
  readonly kind: "backendKeyData"
  readonly processId: number
  /** 4 bytes in protocol 3.0; up to 256 bytes from protocol 3.2 on. */
  readonly secretKey: Uint8Array
}
export interface BindComplete {
  readonly kind: "bindComplete"
}
export interface CloseComplete {
  readonly kind: "closeComplete"
}
export interface CommandComplete {
  readonly kind: "commandComplete"
  /** e.g. "SELECT 3", "INSERT 0 1". */
  readonly tag: string
}
export interface CopyResponse<K extends "copyInResponse" | "copyOutResponse" | "copyBothResponse"> {
  readonly kind: K
  /** Overall format: 0 text, 1 binary. */
  readonly format: FormatCode
  readonly columnFormats: ReadonlyArray<FormatCode>
}
export type CopyInResponse = CopyResponse<"copyInResponse">
export type CopyOutResponse = CopyResponse<"copyOutResponse">
export type CopyBothResponse = CopyResponse<"copyBothResponse">
export interface DataRow {
  readonly kind: "dataRow"
  readonly columns: ReadonlyArray<Uint8Array | null>
}
export interface EmptyQueryResponse {
  readonly kind: "emptyQueryResponse"
}

/**
 * ErrorResponse / NoticeResponse fields, named after their code letters.
 * https://www.postgresql.org/docs/current/protocol-error-fields.html
 */
export interface NoticeFields {
  /** S: localized severity. */
  readonly severity?: string
  /** V: severity, never localized (PostgreSQL >= 9.6). */
  readonly severityNonLocalized?: string
  /** C: SQLSTATE. */
  readonly code?: string
  /** M */
  readonly message?: string
  /** D */
  readonly detail?: string
  /** H */
  readonly hint?: string
  /** P: 1-based character position in the query string. */
  readonly position?: string
  /** p */
  readonly internalPosition?: string
  /** q */
  readonly internalQuery?: string
  /** W */
  readonly where?: string
  /** s */
  readonly schema?: string
  /** t */
  readonly table?: string
  /** c */
  readonly column?: string
  /** d */
  readonly dataType?: string
  /** n */
  readonly constraint?: string
  /** F */
  readonly file?: string
  /** L */
  readonly line?: string
  /** R */
  readonly routine?: string
  /** Fields with code letters not listed above, in wire order (clients must ignore them; a relay keeps them). */
  readonly other?: ReadonlyArray<readonly [code: string, value: string]>
}
export type NoticeFieldName = Exclude<keyof NoticeFields, "other">

/** Code letter of each named field, in the order our serializer writes them. */
export const NOTICE_FIELD_CODES: ReadonlyArray<readonly [NoticeFieldName, string]> = [
  ["severity", "S"],
  ["severityNonLocalized", "V"],
  ["code", "C"],
  ["message", "M"],
  ["detail", "D"],
  ["hint", "H"],
  ["position", "P"],
  ["internalPosition", "p"],
  ["internalQuery", "q"],
  ["where", "W"],
  ["schema", "s"],
  ["table", "t"],
  ["column", "c"],
  ["dataType", "d"],
  ["constraint", "n"],
  ["file", "F"],
  ["line", "L"],
  ["routine", "R"]
]

export interface ErrorResponse {
  readonly kind: "errorResponse"
  readonly fields: NoticeFields
}
export interface NoticeResponse {
  readonly kind: "noticeResponse"
  readonly fields: NoticeFields
}
export interface FunctionCallResponse {
  readonly kind: "functionCallResponse"
  readonly result: Uint8Array | null
}
export interface NegotiateProtocolVersion {
  readonly kind: "negotiateProtocolVersion"
  /** Newest minor protocol version the server supports for the requested major. */
  readonly newestMinor: number
  /** `_pq_.` options the server did not recognise. */
  readonly unrecognizedOptions: ReadonlyArray<string>
}
export interface NoData {
  readonly kind: "noData"
}
export interface NotificationResponse {
  readonly kind: "notificationResponse"
  readonly processId: number
  readonly channel: string
  readonly payload: string
}
export interface ParameterDescription {
  readonly kind: "parameterDescription"
  readonly typeOids: ReadonlyArray<number>
}
export interface ParameterStatus {
  readonly kind: "parameterStatus"
  readonly name: string
  readonly value: string
}
export interface ParseComplete {
  readonly kind: "parseComplete"
}
export interface PortalSuspended {
  readonly kind: "portalSuspended"
}
/** I = idle, T = in a transaction block, E = in a failed transaction block. */
export type TransactionStatus = "I" | "T" | "E"
export interface ReadyForQuery {
  readonly kind: "readyForQuery"
  readonly status: TransactionStatus
}
export interface FieldDescription {
  readonly name: string
  /** 0 when the column is not a simple table column. */
  readonly tableOID: number
  readonly columnAttr: number
  readonly typeOID: number
  /** Negative for variable-width types. */
  readonly typeSize: number
  readonly typeModifier: number
  readonly format: FormatCode
}
export interface RowDescription {
  readonly kind: "rowDescription"
  readonly fields: ReadonlyArray<FieldDescription>
}

export type BackendMessage =
  | AuthenticationMessage
  | BackendKeyData
  | BindComplete
  | CloseComplete
  | CommandComplete
  | CopyData
  | CopyDone
  | CopyInResponse
  | CopyOutResponse
  | CopyBothResponse
  | DataRow
  | EmptyQueryResponse
  | ErrorResponse
  | NoticeResponse
  | FunctionCallResponse
  | NegotiateProtocolVersion
  | NoData
  | NotificationResponse
  | ParameterDescription
  | ParameterStatus
  | ParseComplete
  | PortalSuspended
  | ReadyForQuery
  | RowDescription
  | UnknownMessage

// ---------------------------------------------------------------------------
// Message type bytes
// ---------------------------------------------------------------------------

const c = (s: string): number => s.charCodeAt(0)

/** Type bytes of frontend messages. 'p' is shared by every authentication response. */
export const FrontendCode = {
  Bind: c("B"),
  Close: c("C"),
  CopyData: c("d"),
  CopyDone: c("c"),
  CopyFail: c("f"),
  Describe: c("D"),
  Execute: c("E"),
  Flush: c("H"),
  FunctionCall: c("F"),
  Parse: c("P"),
  AuthResponse: c("p"),
  Query: c("Q"),
  Sync: c("S"),
  Terminate: c("X")
} as const

/** Type bytes of backend messages. */
export const BackendCode = {
  Authentication: c("R"),
  BackendKeyData: c("K"),
  BindComplete: c("2"),
  CloseComplete: c("3"),
  CommandComplete: c("C"),
  CopyData: c("d"),
  CopyDone: c("c"),
  CopyInResponse: c("G"),
  CopyOutResponse: c("H"),
  CopyBothResponse: c("W"),
  DataRow: c("D"),
  EmptyQueryResponse: c("I"),
  ErrorResponse: c("E"),
  FunctionCallResponse: c("V"),
  NegotiateProtocolVersion: c("v"),
  NoData: c("n"),
  NoticeResponse: c("N"),
  NotificationResponse: c("A"),
  ParameterDescription: c("t"),
  ParameterStatus: c("S"),
  ParseComplete: c("1"),
  PortalSuspended: c("s"),
  ReadyForQuery: c("Z"),
  RowDescription: c("T")
} as const

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/** Big-endian 4-byte secret key, the only form protocol 3.0 knows. */
export const secretKeyFromInt32 = (n: number): Uint8Array => {
  const out = new Uint8Array(4)
  new DataView(out.buffer).setInt32(0, n)
  return out
}

/** The int32 value of a 4-byte secret key; undefined for the longer keys of protocol 3.2. */
export const secretKeyToInt32 = (key: Uint8Array): number | undefined =>
  key.length === 4 ? new DataView(key.buffer, key.byteOffset, 4).getInt32(0) : undefined

/** Startup parameters as a record; a repeated name keeps its last value, as the server does. */
export const startupParameters = (msg: StartupMessage): Record<string, string> => {
  const out: Record<string, string> = Object.create(null) as Record<string, string>
  for (const [k, v] of msg.parameters) out[k] = v
  return out
}
