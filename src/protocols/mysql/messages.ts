/**
 * MySQL/MariaDB client/server protocol messages (protocol 4.1), as plain
 * discriminated unions, plus the constants they use.
 *
 * Byte fields that come out of a parser are zero-copy views of the pushed
 * bytes (except logical packets reassembled from several wire packets); they
 * stay valid as long as the caller does not mutate the chunks it pushed.
 *
 * Reference: https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html
 */

// ---------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------

/** Capability flags (CLIENT_*). Bit 31 is negative as an int32; test with `(caps & flag) !== 0`. */
export const Capability = {
  LONG_PASSWORD: 1,
  FOUND_ROWS: 2,
  LONG_FLAG: 4,
  CONNECT_WITH_DB: 8,
  NO_SCHEMA: 16,
  COMPRESS: 32,
  ODBC: 64,
  LOCAL_FILES: 128,
  IGNORE_SPACE: 256,
  PROTOCOL_41: 512,
  INTERACTIVE: 1024,
  SSL: 2048,
  IGNORE_SIGPIPE: 4096,
  TRANSACTIONS: 8192,
  RESERVED: 16384,
  SECURE_CONNECTION: 32768,
  MULTI_STATEMENTS: 1 << 16,
  MULTI_RESULTS: 1 << 17,
  PS_MULTI_RESULTS: 1 << 18,
  PLUGIN_AUTH: 1 << 19,
  CONNECT_ATTRS: 1 << 20,
  PLUGIN_AUTH_LENENC_CLIENT_DATA: 1 << 21,
  CAN_HANDLE_EXPIRED_PASSWORDS: 1 << 22,
  SESSION_TRACK: 1 << 23,
  DEPRECATE_EOF: 1 << 24,
  OPTIONAL_RESULTSET_METADATA: 1 << 25,
  ZSTD_COMPRESSION: 1 << 26,
  QUERY_ATTRIBUTES: 1 << 27,
  MULTI_FACTOR_AUTHENTICATION: 1 << 28,
  CAPABILITY_EXTENSION: 1 << 29,
  SSL_VERIFY_SERVER_CERT: 1 << 30,
  REMEMBER_OPTIONS: 2 ** 31
} as const

/** Server status flags (SERVER_*) carried by OK/EOF. */
export const ServerStatus = {
  IN_TRANS: 0x0001,
  AUTOCOMMIT: 0x0002,
  MORE_RESULTS_EXISTS: 0x0008,
  NO_GOOD_INDEX_USED: 0x0010,
  NO_INDEX_USED: 0x0020,
  CURSOR_EXISTS: 0x0040,
  LAST_ROW_SENT: 0x0080,
  DB_DROPPED: 0x0100,
  NO_BACKSLASH_ESCAPES: 0x0200,
  METADATA_CHANGED: 0x0400,
  QUERY_WAS_SLOW: 0x0800,
  PS_OUT_PARAMS: 0x1000,
  IN_TRANS_READONLY: 0x2000,
  SESSION_STATE_CHANGED: 0x4000
} as const

/** Command bytes (COM_*), the first payload byte of every command-phase client packet. */
export const Command = {
  SLEEP: 0x00,
  QUIT: 0x01,
  INIT_DB: 0x02,
  QUERY: 0x03,
  FIELD_LIST: 0x04,
  CREATE_DB: 0x05,
  DROP_DB: 0x06,
  REFRESH: 0x07,
  SHUTDOWN: 0x08,
  STATISTICS: 0x09,
  PROCESS_INFO: 0x0a,
  CONNECT: 0x0b,
  PROCESS_KILL: 0x0c,
  DEBUG: 0x0d,
  PING: 0x0e,
  TIME: 0x0f,
  DELAYED_INSERT: 0x10,
  CHANGE_USER: 0x11,
  BINLOG_DUMP: 0x12,
  TABLE_DUMP: 0x13,
  CONNECT_OUT: 0x14,
  REGISTER_SLAVE: 0x15,
  STMT_PREPARE: 0x16,
  STMT_EXECUTE: 0x17,
  STMT_SEND_LONG_DATA: 0x18,
  STMT_CLOSE: 0x19,
  STMT_RESET: 0x1a,
  SET_OPTION: 0x1b,
  STMT_FETCH: 0x1c,
  DAEMON: 0x1d,
  BINLOG_DUMP_GTID: 0x1e,
  RESET_CONNECTION: 0x1f
} as const

/** Column/parameter types (MYSQL_TYPE_*). */
export const ColumnType = {
  DECIMAL: 0x00,
  TINY: 0x01,
  SHORT: 0x02,
  LONG: 0x03,
  FLOAT: 0x04,
  DOUBLE: 0x05,
  NULL: 0x06,
  TIMESTAMP: 0x07,
  LONGLONG: 0x08,
  INT24: 0x09,
  DATE: 0x0a,
  TIME: 0x0b,
  DATETIME: 0x0c,
  YEAR: 0x0d,
  NEWDATE: 0x0e,
  VARCHAR: 0x0f,
  BIT: 0x10,
  TIMESTAMP2: 0x11,
  DATETIME2: 0x12,
  TIME2: 0x13,
  TYPED_ARRAY: 0x14,
  VECTOR: 0xf2,
  INVALID: 0xf3,
  BOOL: 0xf4,
  JSON: 0xf5,
  NEWDECIMAL: 0xf6,
  ENUM: 0xf7,
  SET: 0xf8,
  TINY_BLOB: 0xf9,
  MEDIUM_BLOB: 0xfa,
  LONG_BLOB: 0xfb,
  BLOB: 0xfc,
  VAR_STRING: 0xfd,
  STRING: 0xfe,
  GEOMETRY: 0xff
} as const

/** COM_STMT_EXECUTE flags byte. */
export const CursorFlag = {
  NO_CURSOR: 0x00,
  READ_ONLY: 0x01,
  FOR_UPDATE: 0x02,
  SCROLLABLE: 0x04,
  /** With CLIENT_QUERY_ATTRIBUTES: a parameter count is on the wire. */
  PARAMETER_COUNT_AVAILABLE: 0x08
} as const

/** Largest payload of one wire packet; a payload of exactly this size is followed by another packet. */
export const MAX_PACKET_PAYLOAD = 0xffffff

// ---------------------------------------------------------------------------
// Binary protocol values (COM_STMT_EXECUTE parameters)
// ---------------------------------------------------------------------------

/** DATE/DATETIME/TIMESTAMP in the binary protocol; encoded in the shortest of its 0/4/7/11-byte forms. */
export interface MysqlDateTime {
  readonly kind: "datetime"
  readonly year: number
  readonly month: number
  readonly day: number
  readonly hour: number
  readonly minute: number
  readonly second: number
  readonly microsecond: number
}

/** TIME in the binary protocol; encoded in the shortest of its 0/8/12-byte forms. */
export interface MysqlTime {
  readonly kind: "time"
  readonly negative: boolean
  readonly days: number
  readonly hours: number
  readonly minutes: number
  readonly seconds: number
  readonly microseconds: number
}

/**
 * A decoded binary value: integers up to LONG as numbers, LONGLONG as bigint,
 * FLOAT/DOUBLE as numbers, everything length-encoded (strings, blobs,
 * decimals, JSON, bit, enum, set, geometry) as raw bytes.
 */
export type BinaryValue = null | number | bigint | Uint8Array | MysqlDateTime | MysqlTime

export interface BoundParam {
  readonly type: number
  readonly unsigned: boolean
  /** Query attribute name (CLIENT_QUERY_ATTRIBUTES); "" for ordinary bind parameters. */
  readonly name?: string
  readonly value: BinaryValue
}

// ---------------------------------------------------------------------------
// Client -> server
// ---------------------------------------------------------------------------

export type ConnectAttribute = readonly [name: string, value: string]

/** The 32-byte short HandshakeResponse sent with CLIENT_SSL before the TLS handshake. */
export interface SSLRequest {
  readonly kind: "sslRequest"
  readonly capabilities: number
  readonly maxPacketSize: number
  readonly charset: number
  /** MariaDB extended capabilities, in the last 4 of the 23 filler bytes. */
  readonly mariadbCapabilities: number
}

export interface HandshakeResponse41 {
  readonly kind: "handshakeResponse41"
  readonly capabilities: number
  readonly maxPacketSize: number
  readonly charset: number
  readonly mariadbCapabilities: number
  readonly username: string
  readonly authResponse: Uint8Array
  /** Present iff CLIENT_CONNECT_WITH_DB. */
  readonly database?: string
  /** Present iff CLIENT_PLUGIN_AUTH. */
  readonly authPluginName?: string
  /** Present iff CLIENT_CONNECT_ATTRS, in wire order. */
  readonly attributes?: ReadonlyArray<ConnectAttribute>
  /** Present iff CLIENT_ZSTD_COMPRESSION_ALGORITHM. */
  readonly zstdCompressionLevel?: number
}

/** Anything the client sends during authentication after the handshake response (AuthSwitchResponse, a password for full auth, ...). */
export interface AuthData {
  readonly kind: "authData"
  readonly data: Uint8Array
}

export interface Query {
  readonly kind: "query"
  readonly text: string
  /** Present iff CLIENT_QUERY_ATTRIBUTES was negotiated. */
  readonly attributes?: ReadonlyArray<BoundParam>
}
export interface StmtPrepare {
  readonly kind: "stmtPrepare"
  readonly text: string
}
export interface StmtExecute {
  readonly kind: "stmtExecute"
  readonly statementId: number
  readonly flags: number
  readonly iterationCount: number
  /** new-params-bound-flag; when false the types are the previous execution's and are not on the wire. */
  readonly newParamsBound: boolean
  /** Bind parameters, then (CLIENT_QUERY_ATTRIBUTES) query attributes. */
  readonly params: ReadonlyArray<BoundParam>
}
/** COM_STMT_EXECUTE for a statement whose parameter count or types the parser does not know. */
export interface StmtExecuteUndecoded {
  readonly kind: "stmtExecuteUndecoded"
  readonly statementId: number
  readonly flags: number
  readonly iterationCount: number
  /** Everything after the iteration count. */
  readonly rest: Uint8Array
}
export interface StmtSendLongData {
  readonly kind: "stmtSendLongData"
  readonly statementId: number
  readonly paramId: number
  readonly data: Uint8Array
}
export interface StmtClose {
  readonly kind: "stmtClose"
  readonly statementId: number
}
export interface StmtReset {
  readonly kind: "stmtReset"
  readonly statementId: number
}
export interface StmtFetch {
  readonly kind: "stmtFetch"
  readonly statementId: number
  readonly rows: number
}
export interface InitDb {
  readonly kind: "initDb"
  readonly schema: string
}
export interface ChangeUser {
  readonly kind: "changeUser"
  readonly username: string
  /** 1-byte length with CLIENT_SECURE_CONNECTION, else NUL-terminated. */
  readonly authResponse: Uint8Array
  readonly database: string
  /** Absent when the packet ends after the database (old clients). */
  readonly charset?: number
  /** Present iff CLIENT_PLUGIN_AUTH (and charset present). */
  readonly authPluginName?: string
  /** Present iff CLIENT_CONNECT_ATTRS (and plugin name present). */
  readonly attributes?: ReadonlyArray<ConnectAttribute>
}
export interface Ping {
  readonly kind: "ping"
}
export interface Quit {
  readonly kind: "quit"
}
export interface ResetConnection {
  readonly kind: "resetConnection"
}
/** During LOCAL INFILE: a chunk of the file; an empty one ends the file. */
export interface LocalInfileData {
  readonly kind: "localInfileData"
  readonly data: Uint8Array
}
/** A command this codec does not decode (FIELD_LIST, BINLOG_DUMP, SET_OPTION, ...). */
export interface UnknownCommand {
  readonly kind: "unknownCommand"
  readonly command: number
  readonly body: Uint8Array
}

export type ClientCommand =
  | Query
  | StmtPrepare
  | StmtExecute
  | StmtExecuteUndecoded
  | StmtSendLongData
  | StmtClose
  | StmtReset
  | StmtFetch
  | InitDb
  | ChangeUser
  | Ping
  | Quit
  | ResetConnection
  | UnknownCommand

export type ClientMessage = SSLRequest | HandshakeResponse41 | AuthData | LocalInfileData | ClientCommand

// ---------------------------------------------------------------------------
// Server -> client
// ---------------------------------------------------------------------------

export interface HandshakeV10 {
  readonly kind: "handshakeV10"
  /** Always 10 for this layout. */
  readonly protocolVersion: number
  readonly serverVersion: string
  readonly connectionId: number
  /** auth-plugin-data-part-1: always 8 bytes. */
  readonly authPluginDataPart1: Uint8Array
  /** All 32 bits (lower and upper halves joined). */
  readonly capabilities: number
  readonly charset: number
  readonly statusFlags: number
  /** The length byte as sent (0 without CLIENT_PLUGIN_AUTH). */
  readonly authPluginDataLength: number
  /** MariaDB extended capabilities in the last 4 of the 10 reserved bytes (0 for MySQL). */
  readonly mariadbCapabilities: number
  /** auth-plugin-data-part-2 as on the wire, trailing NUL included (with CLIENT_SECURE_CONNECTION). */
  readonly authPluginDataPart2: Uint8Array
  /** Present iff CLIENT_PLUGIN_AUTH. */
  readonly authPluginName?: string
}

export interface OkPacket {
  readonly kind: "ok"
  /** 0x00, or 0xfe when it ends a result set under CLIENT_DEPRECATE_EOF. */
  readonly header: 0x00 | 0xfe
  readonly affectedRows: bigint
  readonly lastInsertId: bigint
  readonly statusFlags: number
  readonly warnings: number
  readonly info: string
  /** Raw session state changes (CLIENT_SESSION_TRACK and SERVER_SESSION_STATE_CHANGED). */
  readonly sessionStateChanges?: Uint8Array
}

export interface ErrPacket {
  readonly kind: "err"
  readonly code: number
  /** Five characters after the '#' marker; absent in pre-4.1 style errors. */
  readonly sqlState?: string
  readonly message: string
}

export interface EofPacket {
  readonly kind: "eof"
  readonly warnings: number
  readonly statusFlags: number
}

export interface AuthSwitchRequest {
  readonly kind: "authSwitchRequest"
  readonly pluginName: string
  readonly pluginData: Uint8Array
}
/** The lone 0xfe asking for the pre-4.1 password hash. */
export interface OldAuthSwitchRequest {
  readonly kind: "oldAuthSwitchRequest"
}
/** 0x01 then plugin data (e.g. caching_sha2_password fast-auth result 0x03 / perform-full-auth 0x04). */
export interface AuthMoreData {
  readonly kind: "authMoreData"
  readonly data: Uint8Array
}

export interface StmtPrepareOk {
  readonly kind: "stmtPrepareOk"
  readonly statementId: number
  readonly columnCount: number
  readonly paramCount: number
  readonly warnings: number
  /** Present iff CLIENT_OPTIONAL_RESULTSET_METADATA: 0 none, 1 full. */
  readonly metadataFollows?: number
}

export interface ColumnCount {
  readonly kind: "columnCount"
  readonly count: number
  /** Present iff CLIENT_OPTIONAL_RESULTSET_METADATA. */
  readonly metadataFollows?: number
}

export interface ColumnDefinition41 {
  readonly kind: "columnDefinition"
  readonly catalog: string
  readonly schema: string
  readonly table: string
  readonly orgTable: string
  readonly name: string
  readonly orgName: string
  readonly charset: number
  readonly columnLength: number
  readonly type: number
  readonly flags: number
  readonly decimals: number
}

/** LOCAL INFILE request (0xfb then the file name). */
export interface LocalInfileRequest {
  readonly kind: "localInfileRequest"
  readonly filename: string
}

/** A result row passed through undecoded (text or binary; see `decodeTextRow`). */
export interface Row {
  readonly kind: "row"
  readonly payload: Uint8Array
}

/** A packet the parser does not decode in its position (e.g. COM_STATISTICS's string). */
export interface RawPacket {
  readonly kind: "raw"
  readonly payload: Uint8Array
}

export type ServerMessage =
  | HandshakeV10
  | OkPacket
  | ErrPacket
  | EofPacket
  | AuthSwitchRequest
  | OldAuthSwitchRequest
  | AuthMoreData
  | StmtPrepareOk
  | ColumnCount
  | ColumnDefinition41
  | LocalInfileRequest
  | Row
  | RawPacket
