/**
 * Incremental RESP parser for requests (what a Redis client sends) and
 * replies (what a Redis server sends).
 *
 * `push(chunk)` returns every top-level value that became complete, so a
 * pipelined chunk yields many commands. Malformed input gives a
 * `ProtocolError` value, never an exception; the parser then refuses all
 * further input, returning the same error again (Redis closes the
 * connection after a protocol error too).
 *
 * No quadratic work: aggregates under construction live on an explicit
 * stack, so finished elements are never re-parsed; only the unfinished
 * token (a header line, or one bulk string's bytes) is kept between pushes,
 * in memory that grows geometrically up to the declared bulk length, and a
 * line is never rescanned for CRLF. Complete bulk strings are zero-copy
 * views of the chunk or of that buffer, which is never written again once
 * it has backed a value.
 */
import { PendingBytes } from "../internal/pendingBytes.ts"
import { RespType } from "./resp.ts"
import type { RespValue } from "./resp.ts"

// ---------------------------------------------------------------------------
// Errors and limits
// ---------------------------------------------------------------------------

export type ProtocolErrorReason =
  /** Bulk length above `maxBulkLength` (Redis: "invalid bulk length", proto-max-bulk-len). */
  | "bulk-too-large"
  /** A length that is not a decimal integer, negative other than -1, or -1 where null is not allowed. */
  | "invalid-length"
  /** Aggregate length above `maxMultibulkLength` (Redis: "invalid multibulk length"). */
  | "multibulk-too-large"
  /** Aggregates nested deeper than `maxDepth`. */
  | "nesting-too-deep"
  /** A header or inline line longer than `maxInlineLength` without CRLF (Redis: "too big inline request"). */
  | "line-too-long"
  /** An inline command with an unterminated quote (Redis: "unbalanced quotes in request"). */
  | "unbalanced-quotes"
  /** A type byte that is unknown, or not allowed here (requests: only `$` inside `*`). */
  | "invalid-type"
  | "invalid-integer"
  | "invalid-double"
  | "invalid-boolean"
  /** Bulk data not followed by CRLF: the length lied. */
  | "missing-crlf"

/** A protocol violation; after one, the parser accepts no more input. */
export interface ProtocolError {
  readonly kind: "error"
  readonly reason: ProtocolErrorReason
  readonly detail: string
}

const protocolError = (reason: ProtocolErrorReason, detail: string): ProtocolError => ({ kind: "error", reason, detail })

/** 512 MiB, Redis's default `proto-max-bulk-len`. */
export const DEFAULT_MAX_BULK_LENGTH = 512 * 1024 * 1024
/**
 * 2^31 - 1, the bound Redis applies to a request's multibulk count
 * (INT_MAX). The declared count is never preallocated, so it bounds work,
 * not memory; memory grows only with elements actually received. Redis
 * allows unauthenticated clients 10 elements; pass `maxMultibulkLength: 10`
 * for a parser that sits before authentication.
 */
export const DEFAULT_MAX_MULTIBULK_LENGTH = 2 ** 31 - 1
/** Nesting depth limit for replies (requests never nest). Real replies nest a few levels. */
export const DEFAULT_MAX_DEPTH = 64
/** 64 KiB, Redis's PROTO_INLINE_MAX_SIZE: the longest inline command or header line. */
export const DEFAULT_MAX_INLINE_LENGTH = 64 * 1024

export interface ParserOptions {
  /**
   * `request`: what a client sends (arrays of bulk strings, or inline
   * commands), as strictly as Redis reads it. `reply`: any RESP2/RESP3 value.
   */
  readonly mode: "request" | "reply"
  readonly maxBulkLength?: number
  readonly maxMultibulkLength?: number
  readonly maxDepth?: number
  readonly maxInlineLength?: number
}

// ---------------------------------------------------------------------------
// Buffering (the scheme the PostgreSQL and MySQL parsers share, ../internal/pendingBytes.ts)
// ---------------------------------------------------------------------------

/** Smallest store allocated for a leftover tail: 4 KiB, the RESP parser's own setting (PostgreSQL and MySQL use 8 KiB). */
const MIN_TAIL = 4 * 1024

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

/** An aggregate under construction. */
interface Frame {
  readonly type: number
  /** Elements still owed (for maps and attributes: 2 per pair). */
  remaining: number
  readonly items: Array<RespValue>
  /** For the value an attribute annotates: the attribute pairs. */
  readonly attributes?: ReadonlyArray<readonly [RespValue, RespValue]>
}

/** An attribute's value slot: an internal frame type. */
const ATTRIBUTE_VALUE = -1

const latin1 = new TextDecoder("latin1")
const utf8 = new TextDecoder("utf-8")

const INTEGER = /^[+-]?\d+$/
const DOUBLE = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/
const INT64_MIN = -(2n ** 63n)
const INT64_MAX = 2n ** 63n - 1n

/** Thrown inside a step to stop with a typed error. Internal. */
class Stop extends Error {
  constructor(readonly error: ProtocolError) {
    super(error.detail)
  }
}
const stop = (reason: ProtocolErrorReason, detail: string): never => {
  throw new Stop(protocolError(reason, detail))
}

const pairs = (items: ReadonlyArray<RespValue>): Array<readonly [RespValue, RespValue]> => {
  const out: Array<readonly [RespValue, RespValue]> = []
  for (let i = 0; i + 1 < items.length; i += 2) out.push([items[i]!, items[i + 1]!])
  return out
}

export type ParseResult = RespValue | ProtocolError

export class RespParser {
  private readonly tail = new PendingBytes(MIN_TAIL)
  private failure: ProtocolError | undefined
  private expected = 0
  /** Bytes of the current line already searched for LF (never rescanned). */
  private scanned = 0
  private readonly stack: Array<Frame> = []
  private readonly request: boolean
  private readonly maxBulk: number
  private readonly maxMultibulk: number
  private readonly maxDepth: number
  private readonly maxInline: number

  constructor(options: ParserOptions) {
    this.request = options.mode === "request"
    this.maxBulk = options.maxBulkLength ?? DEFAULT_MAX_BULK_LENGTH
    this.maxMultibulk = options.maxMultibulkLength ?? DEFAULT_MAX_MULTIBULK_LENGTH
    this.maxDepth = options.maxDepth ?? DEFAULT_MAX_DEPTH
    this.maxInline = options.maxInlineLength ?? DEFAULT_MAX_INLINE_LENGTH
  }

  /** The error that stopped this parser, if any. */
  get error(): ProtocolError | undefined {
    return this.failure
  }

  /** True when no value is partly received. */
  get idle(): boolean {
    return this.stack.length === 0 && this.expected === 0 && this.scanned === 0
  }

  push(chunk: Uint8Array): Array<ParseResult> {
    if (this.failure !== undefined) return [this.failure]
    const out: Array<ParseResult> = []
    const data = this.tail.begin(chunk, this.expected)
    let off = 0
    try {
      while (off < data.length) {
        const next = this.step(data, off, out)
        if (next === off) break
        off = next
      }
    } catch (e) {
      if (!(e instanceof Stop)) throw e
      this.failure = e.error
      this.tail.clear()
      this.stack.length = 0
      out.push(e.error)
      return out
    }
    this.tail.end(data, off, this.expected)
    return out
  }

  /** Index of the LF ending the line that starts at `off`, or -1 (remembering how far we looked). */
  private lineEnd(data: Uint8Array, off: number): number {
    const from = off + Math.max(0, this.scanned - 1)
    const lf = data.indexOf(0x0a, from)
    if (lf === -1) {
      this.scanned = data.length - off
      if (this.scanned > this.maxInline) stop("line-too-long", `no CRLF within ${this.maxInline} bytes`)
      return -1
    }
    this.scanned = 0
    if (lf - off > this.maxInline) stop("line-too-long", `line of ${lf - off} bytes exceeds ${this.maxInline}`)
    return lf
  }

  /** The header line after the type byte, CRLF required. */
  private headerText(data: Uint8Array, off: number, lf: number): string {
    if (lf === off || data[lf - 1] !== 0x0d) stop("missing-crlf", "line not ended by CRLF")
    return latin1.decode(data.subarray(off + 1, lf - 1))
  }

  private length(text: string, allowNull: boolean, what: string): number {
    if (!INTEGER.test(text) || text.length > 20) stop("invalid-length", `${what} length ${JSON.stringify(text.slice(0, 32))}`)
    const n = Number(text)
    if (n === -1 && allowNull) return -1
    if (n < 0) stop("invalid-length", `${what} length ${n}`)
    return n
  }

  private step(data: Uint8Array, off: number, out: Array<ParseResult>): number {
    this.expected = 0
    const type = data[off]!
    const top = this.stack[this.stack.length - 1]
    if (this.request) {
      if (top === undefined && type !== RespType.Array) return this.inline(data, off, out)
      if (top !== undefined && type !== RespType.BulkString) {
        stop("invalid-type", `expected '$', got '${String.fromCharCode(type)}'`)
      }
    }
    // Bulk-like values: header, then exactly n bytes, then CRLF.
    if (type === RespType.BulkString || type === RespType.BulkError || type === RespType.VerbatimString) {
      const lf = this.lineEnd(data, off)
      if (lf === -1) return off
      const text = this.headerText(data, off, lf)
      const n = this.length(text, type === RespType.BulkString && !this.request, "bulk")
      if (n > this.maxBulk) stop("bulk-too-large", `bulk length ${n} exceeds ${this.maxBulk}`)
      const start = lf + 1
      if (n === -1) {
        this.emit({ kind: "bulk", value: null }, out)
        return start
      }
      const end = start + n
      if (data.length < end + 2) {
        this.expected = end + 2 - off
        return off
      }
      if (data[end] !== 0x0d || data[end + 1] !== 0x0a) stop("missing-crlf", `bulk of ${n} bytes not followed by CRLF`)
      const body = data.subarray(start, end)
      if (type === RespType.BulkString) this.emit({ kind: "bulk", value: body }, out)
      else if (type === RespType.BulkError) this.emit({ kind: "bulkError", value: body }, out)
      else {
        if (n < 4 || body[3] !== 0x3a) stop("invalid-length", "verbatim string without a 3-byte format")
        this.emit({ kind: "verbatim", format: latin1.decode(body.subarray(0, 3)), value: body.subarray(4) }, out)
      }
      return end + 2
    }
    const lf = this.lineEnd(data, off)
    if (lf === -1) return off
    const text = this.headerText(data, off, lf)
    const next = lf + 1
    switch (type) {
      case RespType.SimpleString:
        this.emit({ kind: "simple", value: utf8.decode(data.subarray(off + 1, lf - 1)) }, out)
        return next
      case RespType.Error:
        this.emit({ kind: "error", value: utf8.decode(data.subarray(off + 1, lf - 1)) }, out)
        return next
      case RespType.Integer: {
        if (!INTEGER.test(text)) stop("invalid-integer", `integer ${JSON.stringify(text.slice(0, 32))}`)
        const v = BigInt(text)
        if (v < INT64_MIN || v > INT64_MAX) stop("invalid-integer", "integer out of 64-bit range")
        this.emit({ kind: "integer", value: v }, out)
        return next
      }
      case RespType.BigNumber:
        if (!INTEGER.test(text)) stop("invalid-integer", `big number ${JSON.stringify(text.slice(0, 32))}`)
        this.emit({ kind: "bigNumber", value: BigInt(text) }, out)
        return next
      case RespType.Null:
        if (text !== "") stop("invalid-length", "null with a payload")
        this.emit({ kind: "null" }, out)
        return next
      case RespType.Boolean:
        if (text !== "t" && text !== "f") stop("invalid-boolean", `boolean ${JSON.stringify(text.slice(0, 32))}`)
        this.emit({ kind: "boolean", value: text === "t" }, out)
        return next
      case RespType.Double: {
        const lower = text.toLowerCase()
        let v: number
        if (lower === "inf" || lower === "+inf") v = Infinity
        else if (lower === "-inf") v = -Infinity
        else if (lower === "nan" || lower === "-nan") v = NaN
        else if (DOUBLE.test(text)) v = Number(text)
        else return stop("invalid-double", `double ${JSON.stringify(text.slice(0, 32))}`)
        this.emit({ kind: "double", value: v }, out)
        return next
      }
      case RespType.Array:
      case RespType.Map:
      case RespType.Set:
      case RespType.Attribute:
      case RespType.Push: {
        const n = this.length(text, type === RespType.Array, "multibulk")
        if (n > this.maxMultibulk) stop("multibulk-too-large", `aggregate length ${n} exceeds ${this.maxMultibulk}`)
        if (n === -1) {
          this.emit({ kind: "array", value: null }, out)
          return next
        }
        if (this.request && this.stack.length > 0) stop("invalid-type", "nested array in a request")
        if (this.stack.length >= this.maxDepth) stop("nesting-too-deep", `nesting deeper than ${this.maxDepth}`)
        const count = type === RespType.Map || type === RespType.Attribute ? n * 2 : n
        if (count === 0) {
          if (type === RespType.Attribute) this.stack.push({ type: ATTRIBUTE_VALUE, remaining: 1, items: [], attributes: [] })
          else this.emit(this.finish({ type, remaining: 0, items: [] }), out)
          return next
        }
        this.stack.push({ type, remaining: count, items: [] })
        return next
      }
      default:
        return stop("invalid-type", `unknown type byte 0x${type.toString(16)}`)
    }
  }

  private finish(f: Frame): RespValue {
    switch (f.type) {
      case RespType.Array:
        return { kind: "array", value: f.items }
      case RespType.Map:
        return { kind: "map", value: pairs(f.items) }
      case RespType.Set:
        return { kind: "set", value: f.items }
      case RespType.Push:
        return { kind: "push", value: f.items }
      default:
        return { kind: "attribute", attributes: f.attributes ?? [], value: f.items[0]! }
    }
  }

  /** Hands a finished value to the aggregate under construction, or out if top-level. */
  private emit(v: RespValue, out: Array<ParseResult>): void {
    let value = v
    for (;;) {
      const top = this.stack[this.stack.length - 1]
      if (top === undefined) {
        out.push(value)
        return
      }
      top.items.push(value)
      top.remaining -= 1
      if (top.remaining > 0) return
      this.stack.pop()
      if (top.type === RespType.Attribute) {
        // The attribute annotates the next value: wait for it at the same depth.
        this.stack.push({ type: ATTRIBUTE_VALUE, remaining: 1, items: [], attributes: pairs(top.items) })
        return
      }
      value = this.finish(top)
    }
  }

  /** An inline command: one line (LF, optional CR), split like sdssplitargs. */
  private inline(data: Uint8Array, off: number, out: Array<ParseResult>): number {
    const lf = this.lineEnd(data, off)
    if (lf === -1) return off
    const end = lf > off && data[lf - 1] === 0x0d ? lf - 1 : lf
    const args = splitArgs(data.subarray(off, end))
    // Redis skips empty lines (clients send bare newlines to keep connections alive).
    if (args.length > 0) out.push({ kind: "inline", args })
    return lf + 1
  }
}

const isSpace = (c: number): boolean => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d || c === 0x0b || c === 0x0c
const hexVal = (c: number): number =>
  c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : c >= 0x41 && c <= 0x46 ? c - 0x37 : -1

/**
 * Redis's sdssplitargs: space-separated words; "double quotes" understand
 * \n \r \t \b \a \\ \" and \xHH; 'single quotes' understand \'; a closing
 * quote must be followed by a space or the end of the line.
 */
export const splitArgs = (line: Uint8Array): Array<Uint8Array> => {
  const args: Array<Uint8Array> = []
  let i = 0
  const n = line.length
  for (;;) {
    while (i < n && isSpace(line[i]!)) i++
    if (i >= n) return args
    const cur: Array<number> = []
    let inDq = false
    let inSq = false
    for (;;) {
      const c = line[i]
      if (inDq) {
        if (c === undefined) stop("unbalanced-quotes", "unterminated double quote")
        else if (c === 0x5c && line[i + 1] === 0x78 && i + 3 < n && hexVal(line[i + 2]!) >= 0 && hexVal(line[i + 3]!) >= 0) {
          cur.push(hexVal(line[i + 2]!) * 16 + hexVal(line[i + 3]!))
          i += 3
        } else if (c === 0x5c && i + 1 < n) {
          i++
          const e = line[i]!
          cur.push(e === 0x6e ? 0x0a : e === 0x72 ? 0x0d : e === 0x74 ? 0x09 : e === 0x62 ? 0x08 : e === 0x61 ? 0x07 : e)
        } else if (c === 0x22) {
          if (i + 1 < n && !isSpace(line[i + 1]!)) stop("unbalanced-quotes", "closing quote must be followed by a space")
          i++
          break
        } else cur.push(c)
      } else if (inSq) {
        if (c === undefined) stop("unbalanced-quotes", "unterminated single quote")
        else if (c === 0x5c && line[i + 1] === 0x27) {
          i++
          cur.push(0x27)
        } else if (c === 0x27) {
          if (i + 1 < n && !isSpace(line[i + 1]!)) stop("unbalanced-quotes", "closing quote must be followed by a space")
          i++
          break
        } else cur.push(c)
      } else {
        if (c === undefined || isSpace(c)) break
        if (c === 0x22) inDq = true
        else if (c === 0x27) inSq = true
        else cur.push(c)
      }
      i++
    }
    args.push(Uint8Array.from(cur))
  }
}
