/**
 * The in-process bus (the embedded default). Same subject semantics as NATS: `*` one token, `>` one
 * or more trailing tokens, queue groups deliver each message to one member, requests go through an
 * `_INBOX.<random>` subject and fail with `NoResponders` when nobody subscribes.
 */
import { Clock, Deferred, Duration, Effect, Layer, Queue, Stream } from "effect"
import type { BusMessage, BusShape } from "./Bus.ts"
import { Bus, BusError, isValidSubject, subjectMatches } from "./Bus.ts"

interface Subscriber {
  readonly pattern: string
  readonly queue: string | undefined
  readonly deliver: (msg: BusMessage) => void
}

/** How many recent `msgId`s `publishDurable` remembers, and for how long (JetStream's default window). */
const DEDUPE_MAX_IDS = 100_000
const DEDUPE_WINDOW_MS = 2 * 60 * 1000

const badSubject = (subject: string) =>
  new BusError({ reason: "BadSubject", message: `invalid subject ${JSON.stringify(subject)}` })

const checkSubject = (subject: string, allowWildcards: boolean) =>
  isValidSubject(subject, allowWildcards) ? Effect.void : Effect.fail(badSubject(subject))

const randomToken = () => crypto.randomUUID().replaceAll("-", "")

/** Builds one independent in-memory bus. */
export const make: Effect.Effect<BusShape> = Effect.sync(() => {
  const subscribers = new Set<Subscriber>()
  // Insertion-ordered, so the oldest ids are evicted first.
  const recentIds = new Map<string, number>()
  let roundRobin = 0

  /** Delivers to every matching plain subscriber and to one member of each matching queue group. */
  const dispatch = (msg: BusMessage): number => {
    const groups = new Map<string, Array<Subscriber>>()
    let delivered = 0
    for (const sub of subscribers) {
      if (!subjectMatches(sub.pattern, msg.subject)) continue
      if (sub.queue === undefined) {
        sub.deliver(msg)
        delivered++
      } else {
        const members = groups.get(sub.queue)
        if (members) members.push(sub)
        else groups.set(sub.queue, [sub])
      }
    }
    for (const members of groups.values()) {
      const member = members[roundRobin++ % members.length]
      if (member) {
        member.deliver(msg)
        delivered++
      }
    }
    return delivered
  }

  const message = (
    subject: string,
    data: Uint8Array,
    headers: Readonly<Record<string, string>> | undefined,
    replyTo?: string
  ): BusMessage => ({
    subject,
    data,
    ...(replyTo !== undefined ? { replyTo } : {}),
    ...(headers !== undefined ? { headers: { ...headers } } : {})
  })

  const publish: BusShape["publish"] = (subject, data, headers) =>
    checkSubject(subject, false).pipe(Effect.andThen(Effect.sync(() => void dispatch(message(subject, data, headers)))))

  const subscribe: BusShape["subscribe"] = (subject, options) =>
    Effect.gen(function* () {
      yield* checkSubject(subject, true)
      const queueName = options?.queue
      if (queueName !== undefined && (queueName.length === 0 || /\s/.test(queueName))) {
        return yield* Effect.fail(
          new BusError({ reason: "BadSubject", message: `invalid queue group ${JSON.stringify(queueName)}` })
        )
      }
      const mailbox = yield* Queue.unbounded<BusMessage>()
      const sub: Subscriber = { pattern: subject, queue: queueName, deliver: (msg) => void mailbox.unsafeOffer(msg) }
      // Registered before this effect completes, so a publish right after is delivered.
      yield* Effect.acquireRelease(
        Effect.sync(() => subscribers.add(sub)),
        () => Effect.sync(() => subscribers.delete(sub)).pipe(Effect.andThen(Queue.shutdown(mailbox)))
      )
      return Stream.fromQueue(mailbox)
    })

  const request: BusShape["request"] = (subject, data, timeoutMs, headers) =>
    Effect.gen(function* () {
      yield* checkSubject(subject, false)
      const inbox = `_INBOX.${randomToken()}`
      const answer = yield* Deferred.make<BusMessage>()
      const sub: Subscriber = { pattern: inbox, queue: undefined, deliver: (msg) => Deferred.unsafeDone(answer, Effect.succeed(msg)) }
      return yield* Effect.acquireUseRelease(
        Effect.sync(() => subscribers.add(sub)),
        () =>
          Effect.suspend(() =>
            dispatch(message(subject, data, headers, inbox)) === 0
              ? Effect.fail(new BusError({ reason: "NoResponders", message: `no responders on ${subject}` }))
              : Deferred.await(answer).pipe(
                  Effect.timeoutFail({
                    duration: Duration.millis(timeoutMs),
                    onTimeout: () =>
                      new BusError({ reason: "Timeout", message: `request on ${subject} timed out after ${timeoutMs} ms` })
                  })
                )
          ),
        () => Effect.sync(() => subscribers.delete(sub))
      )
    })

  const reply: BusShape["reply"] = (msg, data, headers) =>
    msg.replyTo === undefined
      ? Effect.fail(new BusError({ reason: "BadSubject", message: `message on ${msg.subject} has no reply subject` }))
      : publish(msg.replyTo, data, headers)

  /** True when `msgId` was seen within the window; remembers it otherwise. */
  const seen = (msgId: string, now: number): boolean => {
    for (const [id, at] of recentIds) {
      if (recentIds.size <= DEDUPE_MAX_IDS && now - at < DEDUPE_WINDOW_MS) break
      recentIds.delete(id)
    }
    if (recentIds.has(msgId)) return true
    recentIds.set(msgId, now)
    return false
  }

  const publishDurable: BusShape["publishDurable"] = (subject, data, msgId) =>
    checkSubject(subject, false).pipe(
      Effect.andThen(Clock.currentTimeMillis),
      Effect.map((now) => {
        if (!seen(msgId, now)) dispatch(message(subject, data, undefined))
      })
    )

  return Bus.of({ publish, subscribe, request, reply, publishDurable })
})

/** An in-process bus; each build of the layer is a separate bus. */
export const layer: Layer.Layer<Bus> = Layer.effect(Bus, make)
