/**
 * RESP2 and RESP3 values as a discriminated union.
 *
 * Byte fields that come out of the parser are zero-copy views of the pushed
 * bytes; they stay valid as long as the caller does not mutate those chunks.
 *
 * Reference: https://redis.io/docs/latest/develop/reference/protocol-spec/
 */

/** The type byte that starts each RESP value. */
export const RespType = {
  SimpleString: 0x2b, // +
  Error: 0x2d, // -
  Integer: 0x3a, // :
  BulkString: 0x24, // $
  Array: 0x2a, // *
  Null: 0x5f, // _
  Boolean: 0x23, // #
  Double: 0x2c, // ,
  BigNumber: 0x28, // (
  BulkError: 0x21, // !
  VerbatimString: 0x3d, // =
  Map: 0x25, // %
  Set: 0x7e, // ~
  Attribute: 0x7c, // |
  Push: 0x3e // >
} as const

/** `+OK` */
export interface SimpleString {
  readonly kind: "simple"
  readonly value: string
}
/** `-ERR message` */
export interface SimpleError {
  readonly kind: "error"
  readonly value: string
}
/** `:42` — a signed 64-bit integer. */
export interface Integer {
  readonly kind: "integer"
  readonly value: bigint
}
/** `$5\r\nhello` — `null` for the RESP2 null bulk `$-1`. */
export interface BulkString {
  readonly kind: "bulk"
  readonly value: Uint8Array | null
}
/** `*2\r\n...` — `null` for the RESP2 null array `*-1`. */
export interface RespArray {
  readonly kind: "array"
  readonly value: ReadonlyArray<RespValue> | null
}
/** RESP3 `_` */
export interface RespNull {
  readonly kind: "null"
}
/** RESP3 `#t` / `#f` */
export interface RespBoolean {
  readonly kind: "boolean"
  readonly value: boolean
}
/** RESP3 `,3.14`, `,inf`, `,-inf`, `,nan` */
export interface RespDouble {
  readonly kind: "double"
  readonly value: number
}
/** RESP3 `(3492890328409238509324850943850943825024385` */
export interface BigNumber {
  readonly kind: "bigNumber"
  readonly value: bigint
}
/** RESP3 `!21\r\nSYNTAX invalid syntax` */
export interface BulkError {
  readonly kind: "bulkError"
  readonly value: Uint8Array
}
/** RESP3 `=15\r\ntxt:Some string` — a three-byte format, then the text. */
export interface VerbatimString {
  readonly kind: "verbatim"
  readonly format: string
  readonly value: Uint8Array
}
/** RESP3 `%` — pairs in wire order (keys may be any value, duplicates kept). */
export interface RespMap {
  readonly kind: "map"
  readonly value: ReadonlyArray<readonly [RespValue, RespValue]>
}
/** RESP3 `~` */
export interface RespSet {
  readonly kind: "set"
  readonly value: ReadonlyArray<RespValue>
}
/** RESP3 `|` — attributes and the value they annotate, which follows them on the wire. */
export interface RespAttribute {
  readonly kind: "attribute"
  readonly attributes: ReadonlyArray<readonly [RespValue, RespValue]>
  readonly value: RespValue
}
/** RESP3 `>` — out-of-band data (pub/sub messages, invalidations). */
export interface RespPush {
  readonly kind: "push"
  readonly value: ReadonlyArray<RespValue>
}
/** An inline command (`PING\r\n`, as typed into telnet), split like redis-cli/sdssplitargs. Requests only. */
export interface InlineCommand {
  readonly kind: "inline"
  readonly args: ReadonlyArray<Uint8Array>
}

export type RespValue =
  | SimpleString
  | SimpleError
  | Integer
  | BulkString
  | RespArray
  | RespNull
  | RespBoolean
  | RespDouble
  | BigNumber
  | BulkError
  | VerbatimString
  | RespMap
  | RespSet
  | RespAttribute
  | RespPush
  | InlineCommand

/** A command as a server sees it. */
export interface RedisCommand {
  /** The command name, upper-cased (ASCII only, as Redis compares names case-insensitively). */
  readonly name: string
  /** The arguments after the name. */
  readonly args: ReadonlyArray<Uint8Array>
}

const latin1 = new TextDecoder("latin1")

/**
 * The command in a request: an array of bulk strings or an inline command.
 * Undefined for anything else, and for the empty commands Redis ignores (`*0`, `*-1`, blank lines).
 */
export const commandOf = (v: RespValue): RedisCommand | undefined => {
  let parts: ReadonlyArray<Uint8Array>
  if (v.kind === "inline") parts = v.args
  else if (v.kind === "array" && v.value !== null) {
    const out: Array<Uint8Array> = []
    for (const e of v.value) {
      if (e.kind !== "bulk" || e.value === null) return undefined
      out.push(e.value)
    }
    parts = out
  } else return undefined
  const [first, ...args] = parts
  if (first === undefined) return undefined
  // latin1 keeps one char per byte, so non-ASCII names stay distinct and never match a real command.
  const name = latin1.decode(first).replace(/[a-z]+/g, (s) => s.toUpperCase())
  return { name, args }
}
