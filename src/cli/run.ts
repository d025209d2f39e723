/**
 * Runs a CLI program: errors are printed as one clear line (never a stack trace) and set the exit
 * code; argument errors are already printed by @effect/cli.
 */
import { ValidationError } from "@effect/cli"
import type { Layer } from "effect";
import { Cause, Console, Effect } from "effect"

const messageOf = (e: unknown): string =>
  typeof e === "object" && e !== null && "message" in e && typeof e.message === "string" && e.message !== ""
    ? e.message
    : String(e)

export const runCli = <E, R>(
  program: (argv: ReadonlyArray<string>) => Effect.Effect<void, E, R>,
  context: Layer.Layer<R>,
  runMain: (effect: Effect.Effect<void>) => void
) =>
  runMain(
    program(process.argv).pipe(
      Effect.catchAllCause((cause) => {
        if (Cause.isInterruptedOnly(cause)) return Effect.void
        const failure = Cause.failureOption(cause)
        if (failure._tag === "Some" && ValidationError.isValidationError(failure.value)) {
          return Effect.sync(() => {
            process.exitCode = 1
          })
        }
        const err = failure._tag === "Some" ? failure.value : Cause.squash(cause)
        return Console.error(`ERROR: ${messageOf(err)}`).pipe(
          Effect.zipRight(
            Effect.sync(() => {
              process.exitCode = 1
            })
          )
        )
      }),
      Effect.provide(context)
    )
  )
