/**
 * The decisions of a group commit, the same on every engine and thread: given the chain head and
 * the current versions of the batch's streams, all read under the write lock, which requests
 * commit, with which seqs, versions and hashes. Pure and free of Effect, so the SQLite writer
 * thread (`sqliteWriterWorker.ts`) loads it without the runtime.
 */
import type { ChainedFields } from "../../domain/Chain.ts"
import { sealCanonical } from "../../domain/Chain.ts"

/** A draft made complete in the appender's fiber: id and time assigned, payload canonical. */
export interface PlannedDraft {
  readonly id: string
  readonly time: string
  readonly type: string
  readonly code: string
  readonly actor: string
  /** `canonicalize(payload)` */
  readonly payloadJson: string
  /** The caller chose the id (a retry may repeat it), so it is checked against the log. */
  readonly explicitId: boolean
}

export interface PlanRequest {
  readonly stream: string
  readonly expectedVersion: number | "any"
  readonly drafts: ReadonlyArray<PlannedDraft>
}

/** An `events` row: exactly the table's columns (the payload lives in the body). */
export interface SealedRow extends Omit<ChainedFields, "payload"> {
  readonly body: string
  readonly hash: string
}

/**
 * Plain and compact data, as it crosses a thread boundary (a structured clone costs by the object,
 * so no object per event); the store turns it into `StoredEvent`s or errors. A committed request's
 * events are numbered `seq`, `seq + 1`, … and versioned `version`, `version + 1`, …; each one's
 * prev_hash is the hash before it, the first one's `prevHash`.
 */
export type PlanOutcome =
  | {
    readonly _tag: "Committed"
    readonly seq: number
    readonly version: number
    readonly prevHash: string
    readonly hashes: ReadonlyArray<string>
    readonly bodies: ReadonlyArray<string>
  }
  | { readonly _tag: "VersionConflict"; readonly stream: string; readonly expected: number; readonly actual: number }
  | { readonly _tag: "Rejected"; readonly message: string }

export interface ChainHead {
  readonly seq: number
  readonly hash: string
}

export interface Plan {
  /** One per request, in request order. */
  readonly outcomes: ReadonlyArray<PlanOutcome>
  /** The rows to insert, in seq order. */
  readonly rows: ReadonlyArray<SealedRow>
  /** The head after the rows. */
  readonly head: ChainHead
}

const describe = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

/**
 * Plans one batch on top of `head`. `versions` holds the current version of every stream in the
 * batch and `taken` the explicit ids that already exist; both are updated in place with what the
 * committed requests add, so a later request in the batch sees the earlier ones.
 */
export const planBatch = (
  batch: ReadonlyArray<PlanRequest>,
  head: ChainHead,
  versions: Map<string, number>,
  taken: Set<string>
): Plan => {
  const outcomes: Array<PlanOutcome> = []
  const rows: Array<SealedRow> = []
  let seq = head.seq
  let prevHash = head.hash
  for (const p of batch) {
    const current = versions.get(p.stream) ?? 0
    if (p.expectedVersion !== "any" && p.expectedVersion !== current) {
      outcomes.push({ _tag: "VersionConflict", stream: p.stream, expected: p.expectedVersion, actual: current })
      continue
    }
    const duplicate = p.drafts.find((d) => taken.has(d.id))
    if (duplicate !== undefined) {
      outcomes.push({ _tag: "Rejected", message: `event id ${duplicate.id} already exists` })
      continue
    }
    // Sealed into locals first: a field JSON cannot carry (sealCanonical throws) fails only this
    // request, and the seqs and hashes it would have used go to the next one.
    const sealed: Array<SealedRow> = []
    let version = current
    let nextSeq = seq
    let nextPrev = prevHash
    try {
      for (const d of p.drafts) {
        nextSeq += 1
        version += 1
        const fields = { seq: nextSeq, id: d.id, type: d.type, code: d.code, time: d.time, stream: p.stream, version, actor: d.actor, prev_hash: nextPrev }
        const { body, hash } = sealCanonical(fields, d.payloadJson)
        sealed.push({ ...fields, body, hash })
        nextPrev = hash
      }
    } catch (cause) {
      outcomes.push({ _tag: "Rejected", message: `event is not JSON: ${describe(cause)}` })
      continue
    }
    for (const d of p.drafts) taken.add(d.id)
    for (const r of sealed) rows.push(r)
    outcomes.push({
      _tag: "Committed",
      seq: seq + 1,
      version: current + 1,
      prevHash: prevHash,
      hashes: sealed.map((r) => r.hash),
      bodies: sealed.map((r) => r.body)
    })
    seq = nextSeq
    prevHash = nextPrev
    versions.set(p.stream, version)
  }
  return { outcomes, rows, head: { seq, hash: prevHash } }
}
