/**
 * Supervision for long-lived actor fibers: a failure is logged and the actor restarts after an
 * exponential, jittered backoff capped at a few seconds; interruption (shutdown) is never retried.
 */
import { Cause, Effect, Schedule } from "effect"
import type { Scope , Duration} from "effect"

/** 100 ms, 200 ms, ... capped at `maxDelay`, each delay jittered so restarts do not synchronise. */
export const restartSchedule = (maxDelay: Duration.DurationInput = "5 seconds") =>
  Schedule.exponential("100 millis", 2).pipe(Schedule.either(Schedule.spaced(maxDelay)), Schedule.jittered)

/**
 * Runs `actor` forever in a fiber owned by the current scope, restarting it after failures.
 * `onError` sees every failure first (to expose it in `status`).
 */
export const supervise = <E, R>(
  name: string,
  actor: Effect.Effect<unknown, E, R>,
  onError: (cause: Cause.Cause<E>) => Effect.Effect<void> = () => Effect.void
): Effect.Effect<void, never, R | Scope.Scope> =>
  actor.pipe(
    Effect.zipRight(Effect.fail(new ActorStopped({ name }))),
    Effect.tapErrorCause((cause) =>
      Cause.isInterruptedOnly(cause)
        ? Effect.void
        : Effect.logWarning(`${name} failed; restarting`, Cause.squash(cause)).pipe(
            Effect.zipRight(onError(cause as Cause.Cause<E>))
          )
    ),
    Effect.retry(restartSchedule()),
    Effect.annotateLogs("actor", name),
    Effect.forkScoped,
    Effect.asVoid
  )

class ActorStopped {
  readonly _tag = "ActorStopped"
  constructor(readonly props: { readonly name: string }) {}
  get message() {
    return `${this.props.name} stopped unexpectedly`
  }
}

/** One line for a failure: the error's message, not a stack trace. */
export const causeMessage = (cause: Cause.Cause<unknown>): string => {
  const e = Cause.squash(cause)
  return e instanceof Error || (typeof e === "object" && e !== null && "message" in e)
    ? String((e as { message: unknown }).message)
    : String(e)
}
