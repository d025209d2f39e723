import { execSync } from "node:child_process"
import { mkdtemp, rm, writeFile } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import { Chunk, Effect, Exit, Redacted, Schedule, Stream } from "effect"
import * as BusNats from "../src/adapters/BusNats.ts"
import { buildBus, busContract, collect, expectBusError, uniq, waitFor } from "./bus.contract.ts"
import type { NatsServer } from "./fixtures/nats.ts"
import { startNatsServer } from "./fixtures/nats.ts"

const enc = (s: string) => new TextEncoder().encode(s)
const dec = (b: Uint8Array) => new TextDecoder().decode(b)

const SIEM_PASS = "siem-secret"

let server: NatsServer
beforeAll(async () => {
  server = await startNatsServer({
    nkey: true,
    extraUsers: [
      {
        user: "siem",
        pass: SIEM_PASS,
        // May read only its own corner; `remoteler.>` is off limits.
        permissions: { subscribe: { allow: ["public.>", "_INBOX.>"] }, publish: { allow: ["public.>"] } }
      }
    ]
  })
})
afterAll(async () => {
  await server?.dispose()
})

const options = (): BusNats.NatsOptions => ({
  url: server.url,
  user: server.user,
  pass: Redacted.make(server.pass),
  name: "bus-contract",
  reconnectTimeWaitMs: 100
})

busContract("nats", () => BusNats.layer(options()))

describe("BusNats", () => {
  it("parseNatsUrl splits credentials out and redacts the password", () => {
    const o = BusNats.parseNatsUrl("nats://alice:s%40cret@10.0.0.1:4222")
    expect(o.url).toBe("nats://10.0.0.1:4222")
    expect(o.user).toBe("alice")
    expect(o.pass && Redacted.value(o.pass)).toBe("s@cret")
    expect(String(o.pass)).not.toContain("cret")
    expect(JSON.stringify(o)).not.toContain("cret")
    const t = BusNats.parseNatsUrl("tok@127.0.0.1:4222, nats://127.0.0.1:4223")
    expect(t.url).toBe("nats://127.0.0.1:4222,nats://127.0.0.1:4223")
    expect(t.token && Redacted.value(t.token)).toBe("tok")
    expect(BusNats.describeTarget({ url: "nats://bob:pw@h:1" })).toBe("bob@nats://h:1")
  })

  it.scopedLive("layerFromUrl connects with credentials in the URL", () =>
    Effect.gen(function* () {
      const b = yield* buildBus(BusNats.layerFromUrl(server.urlWithAuth))
      const s = `${uniq()}.x`
      const stream = yield* b.subscribe(s)
      yield* b.publish(s, enc("hello"))
      const got = yield* stream.pipe(Stream.take(1), Stream.runCollect)
      expect(Chunk.toReadonlyArray(got).map((m) => dec(m.data))).toEqual(["hello"])
    })
  )

  it.scopedLive("connects with an nkey seed file", () =>
    Effect.gen(function* () {
      const b = yield* buildBus(BusNats.layer({ url: server.url, nkeySeedFile: server.nkeySeedFile! }))
      yield* b.publish(`${uniq()}.nk`, enc("x"))
    })
  )

  it.scopedLive("an unauthenticated connection is refused", () =>
    Effect.gen(function* () {
      expectBusError(yield* Effect.exit(buildBus(BusNats.layer({ url: server.url }))), "Unavailable")
      const wrong = yield* Effect.exit(
        buildBus(BusNats.layer({ url: server.url, user: server.user, pass: Redacted.make("wrong") }))
      )
      expectBusError(wrong, "Unavailable")
      // The password never shows up in the error.
      expect(JSON.stringify(Exit.isFailure(wrong) ? String(wrong.cause) : "")).not.toContain(server.pass)
    })
  )

  it.scopedLive("a user without permission cannot subscribe to remoteler.>", () =>
    Effect.gen(function* () {
      const siem = yield* buildBus(
        BusNats.layer({ url: server.url, user: "siem", pass: Redacted.make(SIEM_PASS), ensureStream: false })
      )
      const main = yield* buildBus(BusNats.layer(options()))
      const denied = yield* Effect.exit(
        siem.subscribe("remoteler.>").pipe(
          Effect.flatMap((stream) => Stream.runCollect(stream)),
          Effect.timeout("5 seconds")
        )
      )
      expect(Exit.isFailure(denied)).toBe(true)
      expect(String(Exit.isFailure(denied) ? denied.cause : "")).toMatch(/[Pp]ermission/)
      // Its allowed corner still works, and nothing from remoteler.> leaks to it.
      const ok = yield* collect(yield* siem.subscribe("public.>"))
      yield* main.publish(`remoteler.main.events.${uniq()}`, enc("secret"))
      yield* main.publish("public.hello", enc("hi"))
      const got = yield* waitFor(ok.got, (xs) => xs.length >= 1)
      expect(got.map((m) => dec(m.data))).toEqual(["hi"])
    })
  )

  it.scopedLive("a subscription on one connection is live for a publish on another", () =>
    Effect.gen(function* () {
      const a = yield* buildBus(BusNats.layer(options()))
      const b = yield* buildBus(BusNats.layer(options()))
      for (let i = 0; i < 20; i++) {
        const s = `${uniq()}.cross`
        const stream = yield* a.subscribe(s)
        yield* b.publish(s, enc(String(i)))
        const got = yield* stream.pipe(Stream.take(1), Stream.runCollect, Effect.timeout("2 seconds"))
        expect(Chunk.toReadonlyArray(got).map((m) => dec(m.data))).toEqual([String(i)])
      }
    })
  )

  it.scopedLive("queue group members on separate connections share the work", () =>
    Effect.gen(function* () {
      const buses = yield* Effect.forEach([1, 2, 3], () => buildBus(BusNats.layer(options())))
      const s = `remoteler.main.rpc.auth.${uniq()}`
      yield* Effect.forEach(buses, (b, i) =>
        b.subscribe(s, { queue: "auth" }).pipe(
          Effect.flatMap((stream) =>
            stream.pipe(Stream.runForEach((m) => b.reply(m, enc(String(i)))), Effect.forkScoped)
          )
        )
      )
      const answers = yield* Effect.forEach(Array.from({ length: 30 }), () => buses[0]!.request(s, enc("q"), 2_000))
      expect(answers).toHaveLength(30)
      expect(new Set(answers.map((m) => dec(m.data))).size).toBeGreaterThan(1)
    })
  )

  it.scopedLive("publishDurable with a repeated msgId lands in the JetStream stream once", () =>
    Effect.gen(function* () {
      const b = yield* buildBus(BusNats.layer(options()))
      const s = `remoteler.${uniq()}.events.db.session.query`
      const id = uniq()
      yield* b.publishDurable(s, enc("e1"), id)
      yield* b.publishDurable(s, enc("e1 again"), id)
      yield* b.publishDurable(s, enc("e2"), uniq())
      const counts = yield* Effect.promise(async () => {
        const nc = await connect({ servers: server.url, user: server.user, pass: server.pass })
        try {
          const jsm = await jetstreamManager(nc)
          const info = await jsm.streams.info(BusNats.DEFAULT_STREAM_NAME, { subjects_filter: s })
          const first = await jsm.streams.getMessage(BusNats.DEFAULT_STREAM_NAME, { last_by_subj: s })
          return { subjects: info.state.subjects ?? {}, last: first ? dec(first.data) : undefined }
        } finally {
          await nc.close()
        }
      })
      expect(counts.subjects[s]).toBe(2)
      expect(counts.last).toBe("e2")
    })
  )

  it.scopedLive("publishDurable to a subject outside the stream fails", () =>
    Effect.gen(function* () {
      const b = yield* buildBus(BusNats.layer(options()))
      const exit = yield* Effect.exit(b.publishDurable(`${uniq()}.not.captured`, enc("x"), uniq()))
      expectBusError(exit, "NoResponders")
    })
  )

  it.scopedLive("after the server restarts, the layer reconnects and publish/subscribe work again", () =>
    Effect.gen(function* () {
      const b = yield* buildBus(BusNats.layer(options()))
      const s = `${uniq()}.restart`
      const old = yield* collect(yield* b.subscribe(s))
      yield* b.subscribe(`${s}.echo`).pipe(
        Effect.flatMap((stream) => stream.pipe(Stream.runForEach((m) => b.reply(m, m.data)), Effect.forkScoped))
      )
      yield* b.publish(s, enc("before"))
      yield* waitFor(old.got, (xs) => xs.length === 1)

      yield* Effect.promise(() => server.restart())

      // Requests fail while the client reconnects; retry until the echo subscription is back.
      const echoed = yield* b.request(`${s}.echo`, enc("ping"), 500).pipe(
        Effect.retry({ schedule: Schedule.spaced("100 millis"), times: 150 })
      )
      expect(dec(echoed.data)).toBe("ping")
      // The subscription made before the restart receives again.
      yield* b.publish(s, enc("after"))
      const got = yield* waitFor(old.got, (xs) => xs.length === 2)
      expect(got.map((m) => dec(m.data))).toEqual(["before", "after"])
      // A new subscription works, and durable publishing still works (the stream survived).
      const fresh = yield* b.subscribe(`${s}.fresh`)
      yield* b.publish(`${s}.fresh`, enc("new"))
      const f = yield* fresh.pipe(Stream.take(1), Stream.runCollect, Effect.timeout("5 seconds"))
      expect(Chunk.toReadonlyArray(f).map((m) => dec(m.data))).toEqual(["new"])
      yield* b.publishDurable(`remoteler.${uniq()}.events.after.restart`, enc("x"), uniq()).pipe(
        Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 50 })
      )
    })
  )
})

describe("BusNats over TLS", () => {
  let tlsServer: NatsServer
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "remoteler-nats-tls-"))
    const sh = (cmd: string) => execSync(cmd, { cwd: dir, stdio: "pipe" })
    // A throwaway CA and a server certificate for 127.0.0.1; the NATS client checks an IP server
    // against the name "localhost", so the certificate carries both.
    sh(`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem`)
    sh(`openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr`)
    await writeFile(join(dir, "ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    sh(`openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out server.pem`)
    tlsServer = await startNatsServer({ tls: { certFile: join(dir, "server.pem"), keyFile: join(dir, "server.key") } })
  })
  afterAll(async () => {
    await tlsServer?.dispose()
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  it.scopedLive("connects with the CA file and works", () =>
    Effect.gen(function* () {
      const b = yield* buildBus(
        BusNats.layer({
          url: tlsServer.url,
          user: tlsServer.user,
          pass: Redacted.make(tlsServer.pass),
          tls: { caFile: join(dir, "ca.pem") }
        })
      )
      const s = `${uniq()}.tls`
      const stream = yield* b.subscribe(s)
      yield* b.publish(s, enc("secure"))
      const got = yield* stream.pipe(Stream.take(1), Stream.runCollect, Effect.timeout("5 seconds"))
      expect(Chunk.toReadonlyArray(got).map((m) => dec(m.data))).toEqual(["secure"])
    })
  )

  it.scopedLive("refuses a server certificate it cannot verify", () =>
    Effect.gen(function* () {
      const exit = yield* Effect.exit(
        buildBus(BusNats.layer({ url: tlsServer.url, user: tlsServer.user, pass: Redacted.make(tlsServer.pass), tls: {} }))
      )
      expectBusError(exit, "Unavailable")
    })
  )
})
