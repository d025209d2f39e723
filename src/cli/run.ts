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

/**
 * @effect/cli reads a repeated option only as `--name value`; people write `--name=value` too,
 * so that form is split before parsing.
 */
export const splitRepeated = (argv: ReadonlyArray<string>, names: ReadonlyArray<string>): ReadonlyArray<string> =>
  argv.flatMap((arg) => {
    const name = names.find((n) => arg.startsWith(`--${n}=`))
    return name === undefined ? [arg] : [`--${name}`, arg.slice(name.length + 3)]
  })

export const runCli = <E, R>(
  program: (argv: ReadonlyArray<string>) => Effect.Effect<void, E, R>,
  context: Layer.Layer<R>,
  runMain: (effect: Effect.Effect<void>) => void,
  repeatedOptions: ReadonlyArray<string> = []
) =>
  runMain(
    program(splitRepeated(process.argv, repeatedOptions)).pipe(
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
