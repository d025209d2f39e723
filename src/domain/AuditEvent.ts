/**
 * The audit form of an event: Teleport's JSON field names (`event`, `code`, `time`, `uid`, `user`,
 * `sid`, `cluster_name`, ...) with the payload's fields beside them, plus our `seq` and `hash`.
 * This is what `tctl audit search` prints and what the outbox publishes for SIEMs.
 */
import type { AuditIndexEntry, StoredEvent } from "../adapters/EventStore.ts"

export type AuditJson = Readonly<Record<string, unknown>>

const asObject = (payload: unknown): Record<string, unknown> =>
  payload !== null && typeof payload === "object" && !Array.isArray(payload)
    ? (payload as Record<string, unknown>)
    : { payload }

/** Who the event is about for `--user`: the payload's `user` (Teleport's field) or else the actor. */
const userOf = (e: StoredEvent): string => {
  const p = asObject(e.payload)
  return typeof p["user"] === "string" ? p["user"] : e.actor
}

export const toAuditJson = (e: StoredEvent, clusterName: string): AuditJson => ({
  ...asObject(e.payload),
  event: e.type,
  code: e.code,
  time: e.time,
  uid: e.id,
  user: userOf(e),
  cluster_name: clusterName,
  seq: e.seq,
  hash: e.hash
})

export const auditIndexEntry = (e: StoredEvent): AuditIndexEntry => {
  const p = asObject(e.payload)
  return {
    seq: e.seq,
    time: e.time,
    type: e.type,
    user: userOf(e),
    sid: typeof p["sid"] === "string" ? p["sid"] : null
  }
}

/** The bus subject an event is published on. */
export const eventSubject = (clusterName: string, type: string) => `remoteler.${clusterName}.events.${type}`
