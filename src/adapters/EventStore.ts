/**
 * The event store: one append-only, hash-chained log, plus the small tables that live beside it
 * (secrets, checkpoints, the audit index). One tag, two layers: `EventStoreSqlite.layer` (the
 * embedded default) and `EventStorePg.layer` (cluster mode). Both pass `test/store.contract.ts`.
 */
import type { Effect, Stream } from "effect"
import { Context, Schema } from "effect"
import type { ChainedFields } from "../domain/Chain.ts"

/** One event to append. `id` and `time` are assigned by the store when absent. */
export interface EventDraft {
  readonly id?: string
  readonly time?: string
  readonly type: string
  readonly code: string
  readonly actor: string
  readonly payload: unknown
}

/**
 * Events for one stream, appended atomically. `expectedVersion` is the stream's current version
 * (0 for a new stream); `"any"` skips the check (audit streams such as `session/<sid>`).
 */
export interface AppendRequest {
  readonly stream: string
  readonly expectedVersion: number | "any"
  readonly events: ReadonlyArray<EventDraft>
}

/** A stored event: the chained fields (payload parsed from the body), the body and its hash. */
export interface StoredEvent extends ChainedFields {
  readonly body: string
  readonly hash: string
}

/** The stream was not at the version the writer expected: someone else wrote first. */
export class VersionConflict extends Schema.TaggedError<VersionConflict>()("VersionConflict", {
  stream: Schema.String,
  expected: Schema.Number,
  actual: Schema.Number
}) {
  override get message() {
    return `stream ${this.stream} is at version ${this.actual}, expected ${this.expected}`
  }
}

/** Anything the storage engine refused or could not do: the append did not commit. */
export class StoreError extends Schema.TaggedError<StoreError>()("StoreError", {
  reason: Schema.Literal("Unavailable", "DiskFull", "Corrupt", "Unknown"),
  message: Schema.String,
  cause: Schema.optional(Schema.Unknown)
}) {}

/** Filter for the audit index (a projection the projector maintains, searchable by these fields). */
export interface AuditQuery {
  readonly fromTime?: string
  readonly toTime?: string
  readonly types?: ReadonlyArray<string>
  readonly user?: string
  readonly sid?: string
  readonly limit: number
  /** newest first when true */
  readonly descending?: boolean
}

/** What the projector extracts from an event for the audit index. */
export interface AuditIndexEntry {
  readonly seq: number
  readonly time: string
  readonly type: string
  readonly user: string | null
  readonly sid: string | null
}

export interface EventStoreShape {
  /**
   * Appends events to one stream. Concurrent callers are group-committed: their requests share
   * one transaction, and each gets back its own events with `seq`, `prev_hash` and `hash`.
   * A version conflict fails only the request that caused it.
   */
  readonly append: (req: AppendRequest) => Effect.Effect<ReadonlyArray<StoredEvent>, VersionConflict | StoreError>
  /** Events with `seq >= fromSeq`, in order, at most `limit`. */
  readonly read: (fromSeq: number, limit: number) => Effect.Effect<ReadonlyArray<StoredEvent>, StoreError>
  /** Events with the given seqs (any order in, seq order out). */
  readonly readSeqs: (seqs: ReadonlyArray<number>) => Effect.Effect<ReadonlyArray<StoredEvent>, StoreError>
  /** All events from `fromSeq` on, then every new one as it commits. Never ends by itself. */
  readonly tail: (fromSeq: number) => Stream.Stream<StoredEvent, StoreError>
  /** The highest committed seq (0 for an empty log). */
  readonly head: Effect.Effect<number, StoreError>
  /** Current version of one stream (0 when it has no events). */
  readonly streamVersion: (stream: string) => Effect.Effect<number, StoreError>

  /** Secrets: key material never replayed, published or searchable. */
  readonly putSecret: (keyId: string, value: Uint8Array) => Effect.Effect<void, StoreError>
  readonly getSecret: (keyId: string) => Effect.Effect<Uint8Array | undefined, StoreError>
  readonly deleteSecret: (keyId: string) => Effect.Effect<void, StoreError>

  /** Checkpoints of actors (projector, outbox), by name. 0 when never set. */
  readonly getCheckpoint: (name: string) => Effect.Effect<number, StoreError>
  readonly setCheckpoint: (name: string, seq: number) => Effect.Effect<void, StoreError>

  /**
   * The audit index. `indexAudit` writes entries and the checkpoint in one transaction, so the
   * index never runs ahead of or behind its checkpoint. `resetAudit` empties both (replay).
   */
  readonly indexAudit: (
    entries: ReadonlyArray<AuditIndexEntry>,
    checkpointName: string,
    checkpoint: number
  ) => Effect.Effect<void, StoreError>
  readonly resetAudit: (checkpointName: string) => Effect.Effect<void, StoreError>
  readonly searchAudit: (query: AuditQuery) => Effect.Effect<ReadonlyArray<StoredEvent>, StoreError>
}

export class EventStore extends Context.Tag("remoteler/EventStore")<EventStore, EventStoreShape>() {}
