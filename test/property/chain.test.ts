/**
 * The hash chain: a log sealed event by event verifies, and changing any byte of any stored field
 * of any event is detected at that event (or, for a hash column, at it or the next one).
 */
import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { checkLink, GENESIS_HASH, seal } from "../../src/domain/Chain.ts"
import type { StoredEventRow } from "../../src/domain/Chain.ts"

type Row = Required<StoredEventRow>

const eventArb = fc.record({
  type: fc.constantFrom("user.create", "role.created", "db.session.query", "cert.create"),
  stream: fc.stringMatching(/^[a-z]{1,8}\/[a-z0-9]{1,8}$/),
  actor: fc.constantFrom("admin", "alice", "system"),
  payload: fc.jsonValue({ maxDepth: 3 })
})

const buildLog = (events: ReadonlyArray<{ type: string; stream: string; actor: string; payload: unknown }>) => {
  const rows: Array<Row> = []
  let prev = GENESIS_HASH
  events.forEach((e, i) => {
    const fields = {
      seq: i + 1,
      id: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
      type: e.type,
      code: "X0000I",
      time: new Date(1_700_000_000_000 + i).toISOString(),
      stream: e.stream,
      version: 1,
      actor: e.actor,
      payload: e.payload,
      prev_hash: prev
    }
    const { body, hash } = seal(fields)
    rows.push({ seq: fields.seq, body, prev_hash: prev, hash, id: fields.id, type: e.type, code: fields.code, time: fields.time, stream: e.stream, version: 1, actor: e.actor })
    prev = hash
  })
  return rows
}

/** Verifies in order like `tctl audit verify`; the seq of the first break, or undefined. */
const verify = (rows: ReadonlyArray<Row>): number | undefined => {
  let prev = GENESIS_HASH
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i]!
    const broken = checkLink(r, i + 1, prev)
    if (broken !== undefined) return broken.seq
    prev = r.hash
  }
  return undefined
}

const flipChar = (s: string, at: number, to: string) => s.slice(0, at) + to + s.slice(at + 1)

describe("hash chain", () => {
  it.prop("an untouched log verifies", [fc.array(eventArb, { minLength: 1, maxLength: 20 })], ([events]) => {
    expect(verify(buildLog(events))).toBeUndefined()
  })

  it.prop("changing any byte of any stored field is detected at that event or the next", [
    fc.array(eventArb, { minLength: 1, maxLength: 12 }),
    fc.nat(),
    fc.constantFrom("body", "hash", "prev_hash", "type", "stream", "actor", "time", "id", "code"),
    fc.nat(),
    fc.integer({ min: 32, max: 126 })
  ], ([events, which, field, pos, charCode]) => {
    const rows = buildLog(events)
    const index = which % rows.length
    const row = rows[index]!
    const original = String(row[field as keyof Row])
    const at = pos % original.length
    const replacement = String.fromCharCode(charCode)
    fc.pre(original[at] !== replacement)
    rows[index] = { ...row, [field]: flipChar(original, at, replacement) }
    const brokenAt = verify(rows)
    expect(brokenAt).toBeDefined()
    // A changed `hash` column can only show when the next event's prev_hash no longer matches,
    // or at the event itself since hash = SHA-256(body).
    expect([index + 1, index + 2]).toContain(brokenAt)
  })

  it.prop("a deleted or reordered event breaks the chain", [fc.array(eventArb, { minLength: 2, maxLength: 12 }), fc.nat()], ([events, which]) => {
    const rows = buildLog(events)
    const index = which % (rows.length - 1)
    const swapped = [...rows]
    ;[swapped[index], swapped[index + 1]] = [swapped[index + 1]!, swapped[index]!]
    expect(verify(swapped)).toBe(index + 1)
    const deleted = rows.filter((_, i) => i !== index)
    expect(verify(deleted)).toBe(index + 1)
  })
})
