/**
 * Session recordings on auth: the bytes of each session's asciicast file, uploaded by the node
 * (or by the proxy, for agentless nodes) in order, resumable from whatever auth already holds.
 * One tag, two layers: `RecordingStoreSqlite.layer` (a file beside the event store) and
 * `RecordingStorePg.layer` (tables in the event store's database, so every auth instance sees
 * every recording). Recordings are not events: the hash chain vouches for them through the
 * `session_recording_sha256` that the session's `session.end` event carries.
 *
 * Upload rules (`planUpload`, shared by both layers):
 * - bytes auth already holds are skipped, so a retried or overlapping upload is harmless;
 * - an upload that starts past the end (a gap) stores nothing and answers the stored length, so
 *   the uploader resends from there;
 * - `done` with the last byte marks the recording complete and fixes its SHA-256; a complete
 *   recording takes no new bytes;
 * - a recording belongs to the host that uploaded its first bytes: another host is refused.
 */
import type { Effect } from "effect"
import { Context, Schema } from "effect"
import type { StoreError } from "./EventStore.ts"

/** The most bytes one upload may carry (the bus carries a request in one message). */
export const MAX_UPLOAD_BYTES = 512 * 1024
/** The most bytes one read hands out (same reason). */
export const MAX_READ_BYTES = 512 * 1024

export interface RecordingInfo {
  readonly sessionId: string
  /** The host that uploaded it (the node's host id, or `agentless/<node>` for the proxy's own). */
  readonly hostId: string
  /** Bytes held. */
  readonly size: number
  /** The uploader said the file is complete, and these are all its bytes. */
  readonly done: boolean
  /** SHA-256 (hex) of the whole file, once done. */
  readonly sha256: string | undefined
  readonly created: string
  readonly updated: string
}

export interface UploadRequest {
  readonly hostId: string
  readonly sessionId: string
  /** Byte offset of `data` in the file. */
  readonly offset: number
  readonly data: Uint8Array
  readonly done: boolean
}

export interface UploadResult {
  /** Bytes auth holds after this upload: the uploader continues from here. */
  readonly stored: number
  /** True when the upload started past `stored` and nothing was taken. */
  readonly gap: boolean
  readonly done: boolean
  readonly sha256: string | undefined
}

/** The upload cannot be taken, whatever is retried: another host's session, or a complete one. */
export class RecordingConflict extends Schema.TaggedError<RecordingConflict>()("RecordingConflict", {
  message: Schema.String
}) {}

export interface RecordingStoreShape {
  readonly upload: (req: UploadRequest) => Effect.Effect<UploadResult, RecordingConflict | StoreError>
  /** Every recording, newest first. */
  readonly list: Effect.Effect<ReadonlyArray<RecordingInfo>, StoreError>
  readonly info: (sessionId: string) => Effect.Effect<RecordingInfo | undefined, StoreError>
  /** Up to `limit` bytes from `offset` (fewer at the end of what is held). */
  readonly read: (sessionId: string, offset: number, limit: number) => Effect.Effect<Uint8Array, StoreError>
}

export class RecordingStore extends Context.Tag("remoteler/RecordingStore")<RecordingStore, RecordingStoreShape>() {}

/** What an upload does, decided from the recording's current state. */
export type UploadPlan =
  | { readonly _tag: "Refuse"; readonly message: string }
  | { readonly _tag: "Gap"; readonly stored: number }
  /** Store `data[skip..]` at `position` (none when skip covers it all), then maybe complete. */
  | { readonly _tag: "Store"; readonly skip: number; readonly position: number; readonly complete: boolean; readonly stored: number }

export const planUpload = (
  current: { readonly hostId: string; readonly size: number; readonly done: boolean } | undefined,
  req: { readonly hostId: string; readonly offset: number; readonly length: number; readonly done: boolean }
): UploadPlan => {
  const size = current?.size ?? 0
  if (current !== undefined && current.hostId !== req.hostId) {
    return { _tag: "Refuse", message: `session recording belongs to host ${current.hostId}, not ${req.hostId}` }
  }
  if (req.offset > size) return { _tag: "Gap", stored: size }
  const skip = size - req.offset
  const end = req.offset + req.length
  const fresh = Math.max(0, req.length - skip)
  if (current?.done === true) {
    if (fresh > 0) return { _tag: "Refuse", message: `session recording is complete at ${size} bytes; it takes no more` }
    return { _tag: "Store", skip: req.length, position: size, complete: false, stored: size }
  }
  const stored = Math.max(size, end)
  // `done` counts only when this upload reaches the end of what is held: a late retry of an
  // earlier part that says done (it cannot, but a confused uploader might) completes nothing.
  return { _tag: "Store", skip: Math.min(skip, req.length), position: size, complete: req.done && end === stored, stored }
}
