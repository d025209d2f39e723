/**
 * RESP encoders: `serialize(value)` for any RESP2/RESP3 value, plus reply
 * helpers. Values that cannot be encoded faithfully (a CR/LF inside a simple
 * string, a verbatim format that is not 3 bytes) throw `RangeError`.
 */
import { concatBytes } from "../internal/pendingBytes.ts"
import { encodeText } from "../internal/text.ts"
import type { RespValue } from "./resp.ts"
import type { ProtocolError } from "./parser.ts"

const CRLF = new Uint8Array([0x0d, 0x0a])

const line = (s: string): string => {
  if (/[\r\n]/.test(s)) throw new RangeError("CR or LF inside a RESP line")
  return s
}

const doubleText = (x: number): string => {
  if (Number.isNaN(x)) return "nan"
  if (x === Infinity) return "inf"
  if (x === -Infinity) return "-inf"
  if (Object.is(x, -0)) return "-0"
  return String(x)
}

/** Appends the encoding of `v` to `out` (a list of pieces joined once at the end). */
const write = (v: RespValue, out: Array<Uint8Array | string>): void => {
  switch (v.kind) {
    case "simple":
      out.push(`+${line(v.value)}\r\n`)
      return
    case "error":
      out.push(`-${line(v.value)}\r\n`)
      return
    case "integer":
      if (v.value < -(2n ** 63n) || v.value >= 2n ** 63n) throw new RangeError(`${v.value} is not a 64-bit integer`)
      out.push(`:${v.value}\r\n`)
      return
    case "bulk":
      if (v.value === null) out.push("$-1\r\n")
      else out.push(`$${v.value.length}\r\n`, v.value, CRLF)
      return
    case "array":
      if (v.value === null) {
        out.push("*-1\r\n")
        return
      }
      out.push(`*${v.value.length}\r\n`)
      for (const e of v.value) write(e, out)
      return
    case "null":
      out.push("_\r\n")
      return
    case "boolean":
      out.push(v.value ? "#t\r\n" : "#f\r\n")
      return
    case "double":
      out.push(`,${doubleText(v.value)}\r\n`)
      return
    case "bigNumber":
      out.push(`(${v.value}\r\n`)
      return
    case "bulkError":
      out.push(`!${v.value.length}\r\n`, v.value, CRLF)
      return
    case "verbatim": {
      const format = encodeText(v.format)
      if (format.length !== 3 || format.includes(0x3a)) throw new RangeError("verbatim format must be 3 bytes without ':'")
      out.push(`=${v.value.length + 4}\r\n${v.format}:`, v.value, CRLF)
      return
    }
    case "map":
    case "attribute": {
      const pairs = v.kind === "map" ? v.value : v.attributes
      out.push(`${v.kind === "map" ? "%" : "|"}${pairs.length}\r\n`)
      for (const [k, x] of pairs) {
        write(k, out)
        write(x, out)
      }
      if (v.kind === "attribute") write(v.value, out)
      return
    }
    case "set":
    case "push":
      out.push(`${v.kind === "set" ? "~" : ">"}${v.value.length}\r\n`)
      for (const e of v.value) write(e, out)
      return
    case "inline":
      // Inline commands are re-sent as the equivalent multibulk: inline quoting cannot carry every byte.
      write({ kind: "array", value: v.args.map((a) => ({ kind: "bulk", value: a })) }, out)
      return
  }
}

/** The wire bytes of one RESP value. */
export const serialize = (v: RespValue): Uint8Array => {
  const pieces: Array<Uint8Array | string> = []
  write(v, pieces)
  const bytes = pieces.map((p) => (typeof p === "string" ? encodeText(p) : p))
  let size = 0
  for (const b of bytes) size += b.length
  return concatBytes(bytes, size)
}

/** A command as a client sends it: an array of bulk strings. */
export const serializeCommand = (name: string, args: ReadonlyArray<Uint8Array | string>): Uint8Array =>
  serialize({
    kind: "array",
    value: [name, ...args].map((a) => ({ kind: "bulk" as const, value: typeof a === "string" ? encodeText(a) : a }))
  })

/**
 * An error reply, e.g. `errorReply("access to redis cache-prod denied by role dev", "NOPERM")`.
 * CR and LF become spaces, as Redis does, so the message cannot break the framing.
 */
export const errorReply = (message: string, code = "ERR"): Uint8Array =>
  serialize({ kind: "error", value: `${code} ${message}`.replace(/[\r\n]/g, " ") })

/** A parser's protocol error as the reply Redis sends before closing the connection. */
export const protocolErrorReply = (e: ProtocolError): Uint8Array => {
  const text: Record<ProtocolError["reason"], string> = {
    "bulk-too-large": "invalid bulk length",
    "invalid-length": "invalid length",
    "multibulk-too-large": "invalid multibulk length",
    "nesting-too-deep": "too deeply nested",
    "line-too-long": "too big inline request",
    "unbalanced-quotes": "unbalanced quotes in request",
    "invalid-type": "unexpected type byte",
    "invalid-integer": "invalid integer",
    "invalid-double": "invalid double",
    "invalid-boolean": "invalid boolean",
    "missing-crlf": "expected CRLF"
  }
  return errorReply(`Protocol error: ${text[e.reason]}`)
}
