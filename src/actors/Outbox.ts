/**
 * The outbox publisher: every committed event goes on the bus as
 * `remoteler.<cluster>.events.<type>`, in seq order, at least once, with the event id as message
 * id so the bus drops repeats. Its checkpoint moves only after the bus accepted a batch, so a crash
 * or a bus outage loses nothing: the next run starts again from the checkpoint.
 */
import { Chunk, Context, Effect, Layer, Ref, Stream } from "effect"
import { Bus } from "../adapters/Bus.ts"
import { EventStore } from "../adapters/EventStore.ts"
import { eventSubject, toAuditJson } from "../domain/AuditEvent.ts"
import { causeMessage, supervise } from "./supervise.ts"

export const CHECKPOINT = "outbox"

export interface OutboxShape {
  /** The last seq the bus has accepted, and the last failure while the bus is down. */
  readonly status: Effect.Effect<{ readonly position: number; readonly error: string | undefined }>
}

export class Outbox extends Context.Tag("remoteler/Outbox")<Outbox, OutboxShape>() {}

export const layer = (clusterName: string) =>
  Layer.scoped(
    Outbox,
    Effect.gen(function* () {
      const store = yield* EventStore
      const bus = yield* Bus
      const position = yield* Ref.make(yield* store.getCheckpoint(CHECKPOINT))
      const lastError = yield* Ref.make<string | undefined>(undefined)
      const encoder = new TextEncoder()

      const run = Effect.gen(function* () {
        const from = (yield* store.getCheckpoint(CHECKPOINT)) + 1
        yield* store.tail(from).pipe(
          Stream.groupedWithin(512, "20 millis"),
          Stream.runForEach((chunk) =>
            Effect.gen(function* () {
              for (const e of chunk) {
                const body = encoder.encode(JSON.stringify(toAuditJson(e, clusterName)))
                yield* bus.publishDurable(eventSubject(clusterName, e.type), body, e.id)
              }
              const last = Chunk.unsafeLast(chunk).seq
              yield* store.setCheckpoint(CHECKPOINT, last)
              yield* Ref.set(position, last)
              yield* Ref.set(lastError, undefined)
            })
          )
        )
      })

      yield* supervise("outbox", run, (cause) => Ref.set(lastError, causeMessage(cause)))
      return Outbox.of({
        status: Effect.all({ position: Ref.get(position), error: Ref.get(lastError) })
      })
    })
  )
