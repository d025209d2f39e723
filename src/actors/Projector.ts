/**
 * The projector: applies committed events, in seq order, to the in-memory RBAC view and to the
 * persisted audit index. The audit index keeps a checkpoint (written in the same transaction as
 * its rows); the RBAC view is small and is rebuilt from the log at start.
 *
 * An event that does not decode stops the projector at that seq: it is never skipped, and
 * `status` names it until someone repairs the log.
 */
import type { Context} from "effect";
import { Chunk, Effect, Either, FiberHandle, Layer, ParseResult, Ref, Schema, Stream, SubscriptionRef } from "effect"
import type { StoredEvent , StoreError } from "../adapters/EventStore.ts"
import { EventStore } from "../adapters/EventStore.ts"
import { auditIndexEntry } from "../domain/AuditEvent.ts"
import { Unavailable } from "../domain/Errors.ts"
import { CommittedEvent, EventTypes } from "../domain/Event.ts"
import type { EventType } from "../domain/Event.ts"
import { causeMessage, supervise } from "./supervise.ts"

export const AUDIT_CHECKPOINT = "audit_index"

/** A pure fold the projector maintains. */
export interface Fold<S> {
  readonly empty: S
  readonly apply: (state: S, event: CommittedEvent) => S
}

export class ProjectionError extends Schema.TaggedError<ProjectionError>()("ProjectionError", {
  seq: Schema.Number,
  message: Schema.String
}) {}

export interface ProjectorShape<S> {
  readonly state: Effect.Effect<S>
  /** The last seq applied to the view. */
  readonly position: Effect.Effect<number>
  /** Waits until the view has applied `seq` (read-your-writes after an append). */
  readonly awaitSeq: (seq: number, timeoutMs?: number) => Effect.Effect<void, Unavailable>
  /** Empties the view and the audit index and applies the log again from seq 1. */
  readonly replay: Effect.Effect<{ readonly events: number; readonly millis: number }, Unavailable>
  readonly status: Effect.Effect<{
    readonly position: number
    readonly auditCheckpoint: number
    readonly error: string | undefined
  }>
}

/** Decodes a stored event into the typed union; a failure names the seq and the field. */
export const decodeStored = (e: StoredEvent): Either.Either<CommittedEvent, ProjectionError> => {
  const fail = (why: string) => Either.left(new ProjectionError({ seq: e.seq, message: `event seq ${e.seq} (${e.type}) does not decode: ${why}` }))
  if (!Object.hasOwn(EventTypes, e.type)) return fail("unknown event type")
  // The payload alone first, so the message names its field rather than every union member.
  const payload = Schema.decodeUnknownEither(EventTypes[e.type as EventType].payload as Schema.Schema<unknown, unknown>)(e.payload)
  if (Either.isLeft(payload)) {
    const issue = ParseResult.ArrayFormatter.formatErrorSync(payload.left)[0]
    return fail(`payload${issue === undefined || issue.path.length === 0 ? "" : `.${issue.path.join(".")}`}: ${issue?.message ?? "invalid"}`)
  }
  return Schema.decodeUnknownEither(CommittedEvent)({
    seq: e.seq,
    id: e.id,
    type: e.type,
    code: e.code,
    time: e.time,
    stream: e.stream,
    version: e.version,
    actor: e.actor,
    payload: e.payload,
    prev_hash: e.prev_hash,
    hash: e.hash
  }).pipe(
    Either.mapLeft((err) => {
      const issue = ParseResult.ArrayFormatter.formatErrorSync(err)[0]
      return new ProjectionError({
        seq: e.seq,
        message: `event seq ${e.seq} (${e.type}) does not decode: ${issue?.path.join(".") ?? ""}: ${issue?.message ?? "invalid"}`
      })
    })
  )
}

export const make = <S>(fold: Fold<S>) =>
  Effect.gen(function* () {
    const store = yield* EventStore
    const view = yield* Ref.make(fold.empty)
    const position = yield* SubscriptionRef.make(0)
    const lastError = yield* SubscriptionRef.make<string | undefined>(undefined)
    const auditCheckpoint = yield* Ref.make(yield* store.getCheckpoint(AUDIT_CHECKPOINT))
    const handle = yield* FiberHandle.make<void, never>()

    const applyChunk = (chunk: Chunk.Chunk<StoredEvent>) =>
      Effect.gen(function* () {
        const events: Array<CommittedEvent> = []
        for (const e of chunk) {
          const decoded = decodeStored(e)
          if (Either.isLeft(decoded)) {
            // Apply what came before the bad event, then stop at it.
            yield* commit(events)
            return yield* decoded.left
          }
          events.push(decoded.right)
        }
        yield* commit(events)
        // Audit rows are written only for seqs the index has not seen, so restarts are idempotent.
        const indexFrom = yield* Ref.get(auditCheckpoint)
        const fresh = Chunk.filter(chunk, (e) => e.seq > indexFrom)
        if (Chunk.isNonEmpty(fresh)) {
          const last = Chunk.lastNonEmpty(fresh).seq
          yield* store.indexAudit(Chunk.toReadonlyArray(Chunk.map(fresh, auditIndexEntry)), AUDIT_CHECKPOINT, last)
          yield* Ref.set(auditCheckpoint, last)
        }
      })

    const commit = (events: ReadonlyArray<CommittedEvent>) =>
      events.length === 0
        ? Effect.void
        : Ref.update(view, (s) => events.reduce(fold.apply, s)).pipe(
            Effect.zipRight(SubscriptionRef.set(position, events[events.length - 1]!.seq)),
            // Progress clears a failure reported by an earlier attempt.
            Effect.zipRight(SubscriptionRef.update(lastError, () => undefined))
          )

    const run: Effect.Effect<void, ProjectionError | StoreError> = Effect.gen(function* () {
      const from = (yield* SubscriptionRef.get(position)) + 1
      yield* store.tail(from).pipe(Stream.groupedWithin(2048, "10 millis"), Stream.runForEach(applyChunk))
    })

    const start = Effect.scoped(
      supervise("projector", run, (cause) => SubscriptionRef.set(lastError, causeMessage(cause))).pipe(
        Effect.zipRight(Effect.never)
      )
    )
    yield* FiberHandle.run(handle, start)

    // Waits for the position, but gives up as soon as the projector reports a failure.
    const awaitSeq = (seq: number, timeoutMs = 5_000) =>
      position.changes.pipe(
        Stream.takeUntil((p) => p >= seq),
        Stream.runDrain,
        Effect.raceFirst(
          lastError.changes.pipe(
            Stream.filter((e): e is string => e !== undefined),
            Stream.runHead,
            Effect.flatMap((e) => new Unavailable({ message: `projection stopped: ${e._tag === "Some" ? e.value : ""}` }))
          )
        ),
        Effect.timeoutFail({
          duration: timeoutMs,
          onTimeout: () =>
            new Unavailable({ message: `the RBAC view has not caught up with seq ${seq}; see 'tctl status'` })
        })
      )

    const replay = Effect.gen(function* () {
      const started = Date.now()
      yield* FiberHandle.clear(handle)
      yield* store.resetAudit(AUDIT_CHECKPOINT)
      yield* Ref.set(auditCheckpoint, 0)
      yield* Ref.set(view, fold.empty)
      yield* SubscriptionRef.set(position, 0)
      yield* SubscriptionRef.set(lastError, undefined)
      const head = yield* store.head
      yield* FiberHandle.run(handle, start)
      yield* awaitSeq(head, 600_000)
      return { events: head, millis: Date.now() - started }
    }).pipe(
      Effect.catchTag("StoreError", (e) => Effect.fail(new Unavailable({ message: `replay failed: ${e.message}` })))
    )

    return {
      state: Ref.get(view),
      position: SubscriptionRef.get(position),
      awaitSeq,
      replay,
      status: Effect.all({
        position: SubscriptionRef.get(position),
        auditCheckpoint: Ref.get(auditCheckpoint),
        error: SubscriptionRef.get(lastError)
      })
    } satisfies ProjectorShape<S>
  })

export const layer = <I, S>(tag: Context.Tag<I, ProjectorShape<S>>, fold: Fold<S>) => Layer.scoped(tag, make(fold))
