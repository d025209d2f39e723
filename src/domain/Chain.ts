/**
 * Canonical JSON (RFC 8785, JCS) and the SHA-256 hash chain.
 *
 * A committed event is stored as its canonical JSON `body`, which already contains `seq` and
 * `prev_hash`; its `hash` is SHA-256 over those exact bytes. Hashing the stored bytes (and not a
 * re-serialisation of the parsed value) is what makes *any* changed byte detectable: a
 * whitespace-only edit of the body changes the hash just as a changed value does.
 */
import { createHash } from "node:crypto"

/** The `prev_hash` of the first event in the log. */
export const GENESIS_HASH = "0".repeat(64)

// `String.prototype.isWellFormed` is ES2024: Node 20 has it, our `lib` (ES2023) does not type it.
const isWellFormed = (s: string): boolean => (s as unknown as { isWellFormed(): boolean }).isWellFormed()

/**
 * RFC 8785 leaves nothing to choose once the value is JSON: ECMAScript `Number::toString` is its
 * number form (JSON.stringify uses it; -0 becomes 0), JSON.stringify's string escaping is its
 * string form (only the quote, the backslash and U+0000..U+001F escaped, short forms first),
 * and members are sorted by UTF-16 code units, which is what `Array.prototype.sort` does with no
 * comparator. What RFC 8785 adds is refusals: a string with a lone surrogate (JSON.stringify would
 * escape it as `\udXXX`; I-JSON forbids it), and a number that is not finite.
 */
const serialize = (value: unknown, ancestors: Array<object>): string => {
  switch (typeof value) {
    case "string":
      if (!isWellFormed(value)) throw new TypeError("a string holds a lone surrogate (not I-JSON)")
      return JSON.stringify(value)
    case "number":
      if (!Number.isFinite(value)) throw new TypeError(`${value} has no JSON form`)
      return JSON.stringify(value)
    case "boolean":
      return value ? "true" : "false"
    case "object": {
      if (value === null) return "null"
      if (ancestors.includes(value)) throw new TypeError("a value contains itself (cycle)")
      ancestors.push(value)
      try {
        // Objects that say how they serialise (Date) are canonicalised as that, as JSON.stringify would.
        const json = (value as { toJSON?: unknown }).toJSON
        if (typeof json === "function") return serialize(json.call(value), ancestors)
        if (Array.isArray(value)) {
          // JSON.stringify writes `null` for an undefined element: a silent change, so refused.
          let out = "["
          for (let i = 0; i < value.length; i++) {
            if (i > 0) out += ","
            out += serialize(value[i], ancestors)
          }
          return out + "]"
        }
        const record = value as Record<string, unknown>
        const keys = Object.keys(record).sort()
        let out = "{"
        let first = true
        for (const key of keys) {
          const member = record[key]
          // An undefined member is left out, as JSON.stringify does: an absent optional field
          // reads back as absent, so nothing changes meaning (and callers rely on it).
          if (member === undefined) continue
          if (!isWellFormed(key)) throw new TypeError("a key holds a lone surrogate (not I-JSON)")
          out += (first ? "" : ",") + JSON.stringify(key) + ":" + serialize(member, ancestors)
          first = false
        }
        return out + "}"
      } finally {
        ancestors.pop()
      }
    }
    default:
      // undefined, function, symbol, bigint.
      throw new TypeError(`a ${typeof value} has no JSON form`)
  }
}

/**
 * RFC 8785 canonical JSON. Throws a TypeError on what JSON cannot carry exactly: non-finite
 * numbers, strings with lone surrogates, undefined (except as an object member, which is left
 * out), functions, symbols, bigints, cycles.
 */
export const canonicalize = (value: unknown): string => serialize(value, [])

export const sha256Hex = (text: string): string => createHash("sha256").update(text, "utf8").digest("hex")

/** The fields of a committed event that the hash covers, in the shape the body stores. */
export interface ChainedFields {
  readonly seq: number
  readonly id: string
  readonly type: string
  readonly code: string
  readonly time: string
  readonly stream: string
  readonly version: number
  readonly actor: string
  readonly payload: unknown
  readonly prev_hash: string
}

/** Serialises an event for storage and computes its hash. */
export const seal = (fields: ChainedFields): { readonly body: string; readonly hash: string } =>
  sealCanonical(fields, canonicalize(fields.payload))

/**
 * `seal` with the payload already canonical (`canonicalize(fields.payload)`): appenders
 * canonicalise payloads in their own fibers, so the commit, which must run in order, only
 * writes the members out and hashes. They are written in RFC 8785 order (actor, code, id,
 * payload, prev_hash, seq, stream, time, type, version), which yields the bytes
 * `canonicalize(fields)` would; test/property/canonical.test.ts checks that.
 */
export const sealCanonical = (
  fields: Omit<ChainedFields, "payload">,
  payloadJson: string
): { readonly body: string; readonly hash: string } => {
  const body = `{"actor":${serialize(fields.actor, [])},"code":${serialize(fields.code, [])},"id":${serialize(fields.id, [])},` +
    `"payload":${payloadJson},"prev_hash":${serialize(fields.prev_hash, [])},"seq":${serialize(fields.seq, [])},` +
    `"stream":${serialize(fields.stream, [])},"time":${serialize(fields.time, [])},"type":${serialize(fields.type, [])},` +
    `"version":${serialize(fields.version, [])}}`
  return { body, hash: sha256Hex(body) }
}

/** A stored row as `verify` sees it: the body, its hash, and the indexed columns taken from it. */
export interface StoredEventRow {
  readonly seq: number
  readonly body: string
  readonly prev_hash: string
  readonly hash: string
  readonly id?: string
  readonly type?: string
  readonly code?: string
  readonly time?: string
  readonly stream?: string
  readonly version?: number
  readonly actor?: string
}

/** Columns stored beside the body for indexing; each must equal the body's field. */
const INDEXED_COLUMNS = ["id", "type", "code", "time", "stream", "version", "actor"] as const

export type ChainBreak = {
  readonly seq: number
  readonly reason: "hash-mismatch" | "prev-hash-mismatch" | "seq-gap" | "body-not-canonical" | "column-mismatch"
}

/**
 * Checks one row against the hash of the row before it. Pure, so a verifier can stream rows
 * through it in seq order and stop at the first break.
 */
export const checkLink = (
  row: StoredEventRow,
  expectedSeq: number,
  expectedPrevHash: string
): ChainBreak | undefined => {
  if (row.seq !== expectedSeq) return { seq: expectedSeq, reason: "seq-gap" }
  if (sha256Hex(row.body) !== row.hash) return { seq: row.seq, reason: "hash-mismatch" }
  let parsed: ChainedFields
  try {
    parsed = JSON.parse(row.body) as ChainedFields
  } catch {
    return { seq: row.seq, reason: "body-not-canonical" }
  }
  if (canonicalize(parsed) !== row.body) return { seq: row.seq, reason: "body-not-canonical" }
  if (parsed.seq !== row.seq) return { seq: row.seq, reason: "column-mismatch" }
  // The hash covers the body only; an edited index column (type, stream, ...) would mislead
  // searches without touching the body, so each one must still equal the body's field.
  for (const column of INDEXED_COLUMNS) {
    const value = row[column]
    if (value !== undefined && value !== parsed[column]) return { seq: row.seq, reason: "column-mismatch" }
  }
  if (parsed.prev_hash !== row.prev_hash || row.prev_hash !== expectedPrevHash) {
    return { seq: row.seq, reason: "prev-hash-mismatch" }
  }
  return undefined
}
