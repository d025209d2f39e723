/**
 * Presence: ephemeral heartbeats on `remoteler.<cluster>.presence.<kind>.<id>` (DESIGN: NATS
 * subjects). Proxies publish their own (so peers and agents learn every proxy) and their agents'
 * (so every auth instance keeps the same inventory: a plain subscription, not a queue group, so
 * each instance hears each heartbeat). Heartbeats are signed like auth requests, with the proxy's
 * host certificate; a message that does not verify is dropped, so a process on the bus without a
 * cluster identity cannot put a database or node in anyone's inventory.
 */
import { Effect, Either, Option, Stream } from "effect"
import type { Scope } from "effect"
import { makeVerifier, RpcCredentials, signHeaders } from "./AuthApiBus.ts"
import type { BusError, BusShape } from "./Bus.ts"
import type { ApiError } from "../domain/Errors.ts"

export type PresenceKind = "agent" | "proxy"

export const presenceSubject = (clusterName: string, kind: PresenceKind, id: string) =>
  `remoteler.${clusterName}.presence.${kind}.${id.replace(/[.*>\s]/g, "_")}`

const enc = new TextEncoder()
const dec = new TextDecoder()

/** Publishes one heartbeat, signed with the proxy's identity when it has one. */
export const publish = (
  bus: BusShape,
  clusterName: string,
  kind: PresenceKind,
  id: string,
  body: unknown
): Effect.Effect<void, BusError> =>
  Effect.gen(function* () {
    const subject = presenceSubject(clusterName, kind, id)
    const data = enc.encode(JSON.stringify(body))
    const creds = yield* Effect.serviceOption(RpcCredentials)
    yield* bus.publish(subject, data, Option.isSome(creds) ? signHeaders(creds.value, subject, data) : undefined)
  })

/** A verified heartbeat: who sent it (the proxy's host id) and its JSON body. */
export interface Heartbeat {
  readonly proxyHostId: string
  readonly body: unknown
}

/**
 * Heartbeats of one kind from every proxy, checked against the host CAs auth trusts now;
 * unsigned, forged or replayed ones are logged and dropped.
 */
export const subscribe = (
  bus: BusShape,
  clusterName: string,
  kind: PresenceKind,
  trustedHostCas: Effect.Effect<ReadonlyArray<string>, ApiError>
): Effect.Effect<Stream.Stream<Heartbeat>, BusError, Scope.Scope> =>
  Effect.gen(function* () {
    const verify = makeVerifier(trustedHostCas)
    const messages = yield* bus.subscribe(`remoteler.${clusterName}.presence.${kind}.>`)
    return messages.pipe(
      Stream.catchAll((e) => Stream.fromEffect(Effect.logWarning(`presence subscription ended: ${e.message}`)).pipe(Stream.drain)),
      Stream.mapEffect((msg) =>
        Effect.gen(function* () {
          const caller = yield* verify(msg.subject, msg.data, msg.headers)
          if (Either.isLeft(caller)) {
            yield* Effect.logWarning(`presence on ${msg.subject} dropped: ${caller.left}`)
            return Option.none<Heartbeat>()
          }
          try {
            return Option.some<Heartbeat>({ proxyHostId: caller.right, body: JSON.parse(dec.decode(msg.data)) as unknown })
          } catch {
            return Option.none<Heartbeat>()
          }
        })
      ),
      Stream.filterMap((x) => x)
    )
  })
