/**
 * The contract every `Bus` layer passes: NATS subject semantics, request/reply, queue groups,
 * subscription lifetime and durable-publish deduplication. Each test builds its own instance of the
 * layer (torn down with the test's scope, after the subscriptions the test opened).
 */
import { describe, expect, it } from "@effect/vitest"
import type { Scope } from "effect"
import { Cause, Chunk, Context, Effect, Exit, Fiber, Layer, Ref, Schedule, Stream } from "effect"
import type { BusError, BusMessage, BusShape } from "../src/adapters/Bus.ts"
import { Bus } from "../src/adapters/Bus.ts"

const enc = (s: string) => new TextEncoder().encode(s)
const dec = (b: Uint8Array) => new TextDecoder().decode(b)

/** A short unique token, so tests never see each other's traffic. */
export const uniq = () => `t${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`

/** Builds the layer in the current scope and returns the service. */
export const buildBus = (layer: Layer.Layer<Bus, BusError>): Effect.Effect<BusShape, BusError, Scope.Scope> =>
  Layer.build(layer).pipe(Effect.map(Context.get(Bus)))

/** Runs `stream` in the background, collecting every message into a ref. */
export const collect = (stream: Stream.Stream<BusMessage, BusError>) =>
  Effect.gen(function* () {
    const got = yield* Ref.make<ReadonlyArray<BusMessage>>([])
    const fiber = yield* stream.pipe(
      Stream.runForEach((m) => Ref.update(got, (xs) => [...xs, m])),
      Effect.forkScoped
    )
    return { got, fiber }
  })

/** Waits (polling) until `cond` holds on the ref's value, failing after `ms`. */
export const waitFor = <A>(ref: Ref.Ref<A>, cond: (a: A) => boolean, ms = 5_000) =>
  Ref.get(ref).pipe(
    Effect.flatMap((a) => (cond(a) ? Effect.succeed(a) : Effect.fail("not yet" as const))),
    Effect.retry({ schedule: spaced10, times: Math.ceil(ms / 10) }),
    Effect.orDie
  )

const spaced10 = Schedule.spaced("10 millis")

/** Asserts the exit failed with a `BusError` of the given reason. */
export const expectBusError = <A>(exit: Exit.Exit<A, BusError>, reason: BusError["reason"]) => {
  expect(Exit.isFailure(exit)).toBe(true)
  if (Exit.isFailure(exit)) {
    const [err] = Chunk.toReadonlyArray(Cause.failures(exit.cause))
    expect(err?._tag).toBe("BusError")
    expect(err?.reason).toBe(reason)
  }
}

/** Subject cases: pattern → subjects that match and subjects that do not. */
export const subjectCases: ReadonlyArray<{
  readonly pattern: string
  readonly match: ReadonlyArray<string>
  readonly noMatch: ReadonlyArray<string>
}> = [
  { pattern: "P.a.b", match: ["P.a.b"], noMatch: ["P.a", "P.a.b.c", "P.a.bb", "P.A.b"] },
  { pattern: "P.a.*", match: ["P.a.b", "P.a.c"], noMatch: ["P.a", "P.a.b.c", "P.b.a"] },
  { pattern: "P.*.c", match: ["P.a.c", "P.b.c"], noMatch: ["P.c", "P.a.b.c", "P.a.d"] },
  { pattern: "P.*.*", match: ["P.a.b"], noMatch: ["P.a", "P.a.b.c"] },
  { pattern: "P.>", match: ["P.a", "P.a.b", "P.a.b.c.d"], noMatch: ["Q.a"] },
  { pattern: "P.a.>", match: ["P.a.b", "P.a.b.c"], noMatch: ["P.a", "P.b.a", "P.ab.c"] },
  { pattern: "P.*.>", match: ["P.a.b", "P.x.y.z"], noMatch: ["P.a"] },
  { pattern: "*.P.x", match: ["a.P.x", "b.P.x"], noMatch: ["P.x", "a.b.P.x", "a.P.y"] }
]

export const busContract = (name: string, makeLayer: () => Layer.Layer<Bus, BusError>) =>
  describe(`Bus contract: ${name}`, () => {
    const bus = () => buildBus(makeLayer())

    describe("subject wildcards", () => {
      for (const c of subjectCases) {
        it.scopedLive(`${c.pattern} matches ${c.match.join(", ")}; not ${c.noMatch.join(", ")}`, () =>
          Effect.gen(function* () {
            const b = yield* bus()
            const p = uniq()
            const q = uniq()
            const sub = (s: string) => s.replaceAll("P", p).replaceAll("Q", q)
            const stream = yield* b.subscribe(sub(c.pattern))
            const { got } = yield* collect(stream)
            const published = [...c.noMatch, ...c.match].map(sub)
            for (const s of published) yield* b.publish(s, enc(s))
            // Ordered on one connection: once the last match arrived, the others would have too.
            const last = sub(c.match[c.match.length - 1]!)
            const received = yield* waitFor(got, (xs) => xs.some((m) => m.subject === last))
            // Other traffic (e.g. server advisories under `*.P.x`-like patterns) is ignored.
            const ours = received.filter((m) => published.includes(m.subject)).map((m) => m.subject)
            expect(new Set(ours)).toEqual(new Set(c.match.map(sub)))
            expect(received.every((m) => dec(m.data) === m.subject)).toBe(true)
          })
        )
      }

      it.scopedLive("a single `>` matches every subject; a single `*` only one token", () =>
        Effect.gen(function* () {
          const b = yield* bus()
          const p = uniq()
          const all = yield* collect(yield* b.subscribe(">"))
          const one = yield* collect(yield* b.subscribe("*"))
          yield* b.publish(`${p}.a.b`, enc("deep"))
          yield* b.publish(p, enc("one"))
          const gotAll = yield* waitFor(all.got, (xs) => xs.filter((m) => m.subject.startsWith(p)).length === 2)
          expect(gotAll.filter((m) => m.subject.startsWith(p)).map((m) => dec(m.data))).toEqual(["deep", "one"])
          const gotOne = yield* waitFor(one.got, (xs) => xs.some((m) => m.subject === p))
          expect(gotOne.some((m) => m.subject === `${p}.a.b`)).toBe(false)
        })
      )
    })

    it.scopedLive("invalid subjects fail with BadSubject", () =>
      Effect.gen(function* () {
        const b = yield* bus()
        for (const s of ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "a.b*", ">.a"]) {
          expectBusError(yield* Effect.exit(b.publish(s, enc("x"))), "BadSubject")
          expectBusError(yield* Effect.exit(b.request(s, enc("x"), 100)), "BadSubject")
          expectBusError(yield* Effect.exit(b.publishDurable(s, enc("x"), uniq())), "BadSubject")
        }
        for (const s of ["", "a..b", "a.>.b", ">.a", "a.b*", "a b", "a.>x"]) {
          expectBusError(yield* Effect.exit(Effect.scoped(b.subscribe(s))), "BadSubject")
        }
      })
    )

    it.scopedLive("subscribe is live when its effect completes", () =>
      Effect.gen(function* () {
        const b = yield* bus()
        const s = `${uniq()}.live`
        const stream = yield* b.subscribe(s)
        yield* b.publish(s, enc("first"), { "x-test": "1" })
        const [m] = Chunk.toReadonlyArray(yield* stream.pipe(Stream.take(1), Stream.runCollect))
        expect(m?.subject).toBe(s)
        expect(dec(m!.data)).toBe("first")
        expect(m?.headers?.["x-test"]).toBe("1")
      })
    )

    it.scopedLive("request/reply", () =>
      Effect.gen(function* () {
        const b = yield* bus()
        const s = `${uniq()}.rpc.echo`
        const requests = yield* b.subscribe(s, { queue: "auth" })
        yield* requests.pipe(
          Stream.runForEach((m) => b.reply(m, enc(`echo:${dec(m.data)}`), { "x-from": "server" })),
          Effect.forkScoped
        )
        const r1 = yield* b.request(s, enc("hi"), 2_000, { "x-req": "1" })
        expect(dec(r1.data)).toBe("echo:hi")
        expect(r1.headers?.["x-from"]).toBe("server")
        const r2 = yield* b.request(s, enc("again"), 2_000)
        expect(dec(r2.data)).toBe("echo:again")
      })
    )

    it.scopedLive("a request to a subject nobody subscribes to fails with NoResponders", () =>
      Effect.gen(function* () {
        const b = yield* bus()
        const started = Date.now()
        expectBusError(yield* Effect.exit(b.request(`${uniq()}.nobody`, enc("x"), 5_000)), "NoResponders")
        expect(Date.now() - started).toBeLessThan(4_000)
      })
    )

    it.scopedLive("a request nobody answers fails with Timeout", () =>
      Effect.gen(function* () {
        const b = yield* bus()
        const s = `${uniq()}.silent`
        yield* b.subscribe(s)
        const started = Date.now()
        expectBusError(yield* Effect.exit(b.request(s, enc("x"), 300)), "Timeout")
        expect(Date.now() - started).toBeGreaterThanOrEqual(250)
      })
    )

    it.scopedLive("reply to a message without a reply subject fails with BadSubject", () =>
      Effect.gen(function* () {
        const b = yield* bus()
        expectBusError(yield* Effect.exit(b.reply({ subject: "a.b", data: enc("x") }, enc("y"))), "BadSubject")
      })
    )

    it.scopedLive("a queue group delivers each message to exactly one member; plain subscribers get all", () =>
      Effect.gen(function* () {
        const b = yield* bus()
        const s = `${uniq()}.work`
        const members = [
          yield* collect(yield* b.subscribe(s, { queue: "workers" })),
          yield* collect(yield* b.subscribe(s, { queue: "workers" })),
          yield* collect(yield* b.subscribe(s, { queue: "workers" }))
        ]
        const plainA = yield* collect(yield* b.subscribe(s))
        const plainB = yield* collect(yield* b.subscribe(`${s.split(".")[0]}.>`))
        const n = 60
        for (let i = 0; i < n; i++) yield* b.publish(s, enc(String(i)))
        const expected = Array.from({ length: n }, (_, i) => String(i))
        expect((yield* waitFor(plainA.got, (xs) => xs.length >= n)).map((m) => dec(m.data))).toEqual(expected)
        expect((yield* waitFor(plainB.got, (xs) => xs.length >= n)).map((m) => dec(m.data))).toEqual(expected)
        // Wait for all n across the group, then a little longer so a duplicate would show.
        yield* Effect.retry(
          Effect.gen(function* () {
            let count = 0
            for (const m of members) count += (yield* Ref.get(m.got)).length
            if (count < n) return yield* Effect.fail("not yet")
          }),
          { schedule: spaced10, times: 500 }
        )
        yield* Effect.sleep("200 millis")
        const perMember = yield* Effect.forEach(members, (m) => Ref.get(m.got))
        const all = perMember.flat().map((m) => dec(m.data))
        expect(all.length).toBe(n)
        expect(new Set(all)).toEqual(new Set(expected))
        // With 60 messages, every member gets some (round-robin or random).
        expect(perMember.every((xs) => xs.length > 0)).toBe(true)
      })
    )

    it.scopedLive("closing the subscription's scope ends its stream and unsubscribes", () =>
      Effect.gen(function* () {
        const b = yield* bus()
        const s = `${uniq()}.scoped`
        const fiber = yield* Effect.scoped(
          Effect.gen(function* () {
            const stream = yield* b.subscribe(s)
            // Forked outside the inner scope, so only the subscription ends it.
            const f = yield* Effect.forkDaemon(Stream.runCollect(stream))
            yield* b.publish(s, enc("before"))
            yield* Effect.sleep("50 millis")
            return f
          })
        )
        const got = yield* Fiber.join(fiber).pipe(Effect.timeout("5 seconds"))
        expect(Chunk.toReadonlyArray(got).map((m) => dec(m.data))).toEqual(["before"])
        expectBusError(yield* Effect.exit(b.request(s, enc("x"), 2_000)), "NoResponders")
      })
    )

    it.scopedLive("publishDurable drops a repeated msgId", () =>
      Effect.gen(function* () {
        const b = yield* bus()
        const s = `remoteler.${uniq()}.events.test.dedupe`
        const stream = yield* b.subscribe(s)
        const { got } = yield* collect(stream)
        const id = uniq()
        yield* b.publishDurable(s, enc("one"), id)
        yield* b.publishDurable(s, enc("one again"), id)
        yield* b.publishDurable(s, enc("two"), uniq())
        yield* waitFor(got, (xs) => xs.some((m) => dec(m.data) === "two"))
        yield* Effect.sleep("100 millis")
        expect((yield* Ref.get(got)).map((m) => dec(m.data))).toEqual(["one", "two"])
      })
    )
  })
