/**
 * Canonical JSON (RFC 8785, via the maintained `canonicalize` package) and the SHA-256 hash chain.
 *
 * A committed event is stored as its canonical JSON `body`, which already contains `seq` and
 * `prev_hash`; its `hash` is SHA-256 over those exact bytes. Hashing the stored bytes (and not a
 * re-serialisation of the parsed value) is what makes *any* changed byte detectable: a
 * whitespace-only edit of the body changes the hash just as a changed value does.
 */
import { createHash } from "node:crypto"
import canonicalizeJson from "canonicalize"

/** The `prev_hash` of the first event in the log. */
export const GENESIS_HASH = "0".repeat(64)

/** RFC 8785 canonical JSON. Throws on values JSON cannot carry (functions, NaN, cycles). */
export const canonicalize = (value: unknown): string => {
  const out = canonicalizeJson(value)
  if (out === undefined) throw new TypeError("value has no canonical JSON form")
  return out
}

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
export const seal = (fields: ChainedFields): { readonly body: string; readonly hash: string } => {
  const body = canonicalize(fields)
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
