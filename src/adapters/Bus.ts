/**
 * The message bus. One tag, two layers with identical subject semantics: `BusMemory.layer`
 * (in-process, the embedded default) and `BusNats.layer` (NATS, cluster mode). Both pass
 * `test/bus.contract.ts`.
 *
 * Subjects are NATS subjects: dot-separated tokens, `*` matches exactly one token, `>` matches one
 * or more trailing tokens. A queue group delivers each message to one member of the group.
 */
import type { Effect, Scope, Stream } from "effect"
import { Context, Schema } from "effect"

export interface BusMessage {
  readonly subject: string
  readonly data: Uint8Array
  /** Present on requests: where `reply` sends the answer. */
  readonly replyTo?: string
  readonly headers?: Readonly<Record<string, string>>
}

export class BusError extends Schema.TaggedError<BusError>()("BusError", {
  reason: Schema.Literal("Unavailable", "Timeout", "NoResponders", "BadSubject", "Unknown"),
  message: Schema.String,
  cause: Schema.optional(Schema.Unknown)
}) {}

export interface SubscribeOptions {
  readonly queue?: string
}

export interface BusShape {
  readonly publish: (
    subject: string,
    data: Uint8Array,
    headers?: Readonly<Record<string, string>>
  ) => Effect.Effect<void, BusError>
  /**
   * Messages on matching subjects from the moment the subscription is live (the returned stream is
   * subscribed when this effect completes, so nothing published afterwards is missed). Ends when
   * the scope closes.
   */
  readonly subscribe: (
    subject: string,
    options?: SubscribeOptions
  ) => Effect.Effect<Stream.Stream<BusMessage, BusError>, BusError, Scope.Scope>
  /** Sends a request and waits for the first reply. `NoResponders` when nobody listens. */
  readonly request: (
    subject: string,
    data: Uint8Array,
    timeoutMs: number,
    headers?: Readonly<Record<string, string>>
  ) => Effect.Effect<BusMessage, BusError>
  /** Answers a request message received through `subscribe`. */
  readonly reply: (
    msg: BusMessage,
    data: Uint8Array,
    headers?: Readonly<Record<string, string>>
  ) => Effect.Effect<void, BusError>
  /**
   * Durable publish for the outbox: with NATS, a JetStream publish into `REMOTELER_EVENTS` with
   * `msgId` as the Nats-Msg-Id (duplicates dropped by the server); in memory, a plain publish that
   * drops a repeated `msgId`.
   */
  readonly publishDurable: (subject: string, data: Uint8Array, msgId: string) => Effect.Effect<void, BusError>
}

export class Bus extends Context.Tag("remoteler/Bus")<Bus, BusShape>() {}

/** True when `subject` is matched by `pattern` under NATS rules (`*` one token, `>` the rest). */
export const subjectMatches = (pattern: string, subject: string): boolean => {
  const p = pattern.split(".")
  const s = subject.split(".")
  for (let i = 0; i < p.length; i++) {
    const tok = p[i]
    if (tok === ">") return s.length > i
    if (i >= s.length) return false
    if (tok !== "*" && tok !== s[i]) return false
  }
  return p.length === s.length
}

/** Valid subject tokens: non-empty, no whitespace; wildcards only as whole tokens, `>` only last. */
export const isValidSubject = (subject: string, allowWildcards: boolean): boolean => {
  if (subject.length === 0) return false
  const toks = subject.split(".")
  return toks.every((t, i) => {
    if (t.length === 0 || /\s/.test(t)) return false
    if (t === "*" || t === ">") return allowWildcards && (t === "*" || i === toks.length - 1)
    return !t.includes("*") && !t.includes(">")
  })
}
