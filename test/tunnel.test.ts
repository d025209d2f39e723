/**
 * The reverse tunnel with real sockets and real TLS: agents dial a tunnel listener on 127.0.0.1,
 * with host certificates made by `adapters/x509.ts`, and the proxy opens streams back to them.
 */
import { createHash, randomBytes } from "node:crypto"
import type * as http2 from "node:http2"
import * as net from "node:net"
import * as tls from "node:tls"
import { Readable } from "node:stream"
import { pipeline } from "node:stream/promises"
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit, Option, Queue, Runtime, Scope } from "effect"
import type { CertificateAuthority } from "../src/adapters/x509.ts"
import { generateCa, generateEcdsaKeyPair, signHostCert, signUserCert } from "../src/adapters/x509.ts"
import { Identity, makeHostIdentity } from "../src/domain/Identity.ts"
import type { SystemRole } from "../src/domain/Identity.ts"
import * as TunnelAgent from "../src/actors/TunnelAgent.ts"
import * as TunnelServer from "../src/actors/TunnelServer.ts"
import { DatabaseResource, NodeResource, Resources } from "../src/protocols/tunnel/wire.ts"

interface Pair {
  readonly cert: string
  readonly key: string
}

let hostCa: CertificateAuthority
let otherCa: CertificateAuthority
let proxyPair: Pair

const run = <A, E>(e: Effect.Effect<A, E>) => Effect.runPromise(e)
const expires = () => new Date(Date.now() + 3_600_000)

const hostPair = async (ca: CertificateAuthority, hostId: string, nodeName: string, systemRole: SystemRole): Promise<Pair> => {
  const keys = await run(generateEcdsaKeyPair())
  const identity = makeHostIdentity({ hostId, nodeName, systemRole, clusterName: "main", expires: expires() })
  const { pem } = await run(
    signHostCert({
      caCert: ca.certPem,
      caKey: ca.keyPem,
      publicKey: keys.publicKeyPem,
      identity,
      notAfter: identity.expires,
      dnsNames: ["localhost"],
      ipAddresses: ["127.0.0.1"]
    })
  )
  return { cert: pem, key: keys.privateKeyPem }
}

beforeAll(async () => {
  hostCa = await run(generateCa("main", "main", 1))
  // Same subject name as the real host CA, another key: only the signature tells them apart.
  otherCa = await run(generateCa("main", "main", 1))
  proxyPair = await hostPair(hostCa, "proxy-1", "proxy", "Proxy")
})

const pgResources = new Resources({
  databases: [
    new DatabaseResource({ name: "echo", protocol: "postgres", labels: { env: "test" } }),
    new DatabaseResource({ name: "boom", protocol: "postgres", labels: {} }),
    new DatabaseResource({ name: "whoami", protocol: "postgres", labels: {} })
  ]
})

/** echo: bytes back; boom: fail after the first chunk; whoami: the dial's meta as JSON. */
const handler = ({ target, stream }: TunnelAgent.DialRequest): Effect.Effect<void, Error> => {
  switch (target.name) {
    case "boom":
      return Effect.async<void, Error>((resume) => {
        stream.once("data", () => resume(Effect.fail(new Error("the database went away"))))
      })
    case "whoami":
      return Effect.async<void>((resume) => {
        stream.end(JSON.stringify(target.meta), () => resume(Effect.void))
      })
    default:
      return Effect.async<void>((resume) => {
        stream.pipe(stream)
        stream.once("close", () => resume(Effect.void))
      })
  }
}

const FAST = { heartbeatIntervalMs: 100, deadAfterMs: 600 } as const

const startProxy = (port = 0, options: TunnelServer.TunnelServerOptions = FAST) =>
  Effect.gen(function* () {
    const server = yield* TunnelServer.make(options)
    const listening = yield* TunnelServer.listen(server, {
      host: "127.0.0.1",
      port,
      cert: proxyPair.cert,
      key: proxyPair.key,
      hostCaPems: [hostCa.certPem]
    })
    return { server, port: listening.port }
  })

const startAgent = (port: number, pair: Pair, extra: Partial<TunnelAgent.TunnelAgentOptions> = {}) =>
  TunnelAgent.make({
    host: "127.0.0.1",
    port,
    cert: pair.cert,
    key: pair.key,
    ca: [hostCa.certPem],
    resources: pgResources,
    onDial: handler,
    backoff: { initialMs: 20, maxMs: 200 },
    deadAfterMs: 2_000,
    ...extra
  })

/** Polls `get` until `cond` holds, or dies after `ms`. */
const waitUntil = <A>(get: Effect.Effect<A>, cond: (a: A) => boolean, ms = 2_000, what = "condition") =>
  Effect.gen(function* () {
    const deadline = Date.now() + ms
    for (;;) {
      const a = yield* get
      if (cond(a)) return a
      if (Date.now() > deadline) return yield* Effect.dieMessage(`timed out after ${ms} ms waiting for ${what}`)
      yield* Effect.sleep(10)
    }
  })

const listed = (server: TunnelServer.TunnelServerApi, hostId: string) =>
  waitUntil(server.agent(hostId), Option.isSome, 2_000, `${hostId} to be listed`).pipe(Effect.map((o) => Option.getOrThrow(o)))

/** Writes `total` bytes of random data to `stream` and reads the echo; returns both hashes. */
const echoRoundTrip = (stream: http2.ClientHttp2Stream, total: number, chunk = 1 << 20) =>
  Effect.promise(async () => {
    const block = randomBytes(Math.min(chunk, total))
    const sent = createHash("sha256")
    const received = createHash("sha256")
    let got = 0
    const reading = new Promise<void>((resolve, reject) => {
      stream.on("data", (c: Buffer) => {
        received.update(c)
        got += c.length
      })
      stream.once("end", resolve)
      stream.once("error", reject)
    })
    async function* source() {
      let left = total
      let i = 0
      while (left > 0) {
        // vary each block so a reordered or repeated chunk changes the hash
        const b = Buffer.from(block.subarray(0, Math.min(left, block.length)))
        b.writeUInt32BE(i++, 0)
        sent.update(b)
        left -= b.length
        yield b
      }
    }
    await pipeline(Readable.from(source()), stream)
    await reading
    return { sent: sent.digest("hex"), received: received.digest("hex"), got }
  })

const readAll = (stream: http2.ClientHttp2Stream) =>
  Effect.promise(
    () =>
      new Promise<Buffer>((resolve, reject) => {
        const chunks: Array<Buffer> = []
        stream.on("data", (c: Buffer) => chunks.push(c))
        stream.once("end", () => resolve(Buffer.concat(chunks)))
        stream.once("error", reject)
      })
  )

describe("reverse tunnel", () => {
  let agentPair: Pair
  let nodePair: Pair
  let foreignPair: Pair
  beforeAll(async () => {
    agentPair = await hostPair(hostCa, "db-host-1", "db-1", "Db")
    nodePair = await hostPair(hostCa, "node-host-1", "node-1", "Node")
    foreignPair = await hostPair(otherCa, "db-host-x", "db-x", "Db")
  })

  it.scopedLive("an agent connects and is listed with its resources; resource changes reach the proxy", () =>
    Effect.gen(function* () {
      const { server, port } = yield* startProxy()
      const events = yield* server.subscribe
      const started = Date.now()
      const agent = yield* startAgent(port, agentPair)
      const info = yield* listed(server, "db-host-1")
      expect(Date.now() - started).toBeLessThan(2_000)
      expect(info).toMatchObject({ hostId: "db-host-1", nodeName: "db-1", systemRole: "Db", remoteAddress: "127.0.0.1" })
      expect(info.resources.databases.map((d) => d.name)).toEqual(["echo", "boom", "whoami"])
      expect(info.resources.databases[0]?.labels).toEqual({ env: "test" })
      const connected = yield* Queue.take(events)
      expect(connected._tag).toBe("AgentConnected")
      expect((yield* agent.status).state).toBe("connected")

      yield* agent.setResources(
        new Resources({ databases: [new DatabaseResource({ name: "pg2", protocol: "postgres", labels: {} })] })
      )
      const changed = yield* Queue.take(events)
      expect(changed._tag).toBe("AgentResourcesChanged")
      const after = Option.getOrThrow(yield* server.agent("db-host-1"))
      expect(after.resources.databases.map((d) => d.name)).toEqual(["pg2"])
      expect(after.resourcesVersion).toBe(2)

      // a node agent advertises its node
      yield* startAgent(port, nodePair, {
        resources: new Resources({ databases: [], node: new NodeResource({ name: "node-1", labels: { os: "linux" } }) })
      })
      const node = yield* listed(server, "node-host-1")
      expect(node.systemRole).toBe("Node")
      expect(node.resources.node?.labels).toEqual({ os: "linux" })
      expect((yield* server.agents).map((a) => a.hostId)).toEqual(["db-host-1", "node-host-1"])
    })
  )

  it.scopedLive("bytes round-trip through a dialed stream, 64 MiB intact, and meta reaches the handler", () =>
    Effect.gen(function* () {
      const { server, port } = yield* startProxy()
      yield* startAgent(port, agentPair)
      yield* listed(server, "db-host-1")

      const meta = { identity: JSON.stringify({ user: "alice", roles: ["dev"] }), note: "zoë ☃" }
      const who = yield* server.dial("db-host-1", { kind: "db", name: "whoami", meta })
      who.end()
      expect(JSON.parse((yield* readAll(who)).toString("utf8"))).toEqual(meta)

      const small = yield* server.dial("db-host-1", { kind: "db", name: "echo", meta: {} })
      const r1 = yield* echoRoundTrip(small, 10)
      expect(r1.got).toBe(10)
      expect(r1.received).toBe(r1.sent)

      const big = yield* server.dial("db-host-1", { kind: "db", name: "echo", meta: {} })
      const r2 = yield* echoRoundTrip(big, 64 << 20)
      expect(r2.got).toBe(64 << 20)
      expect(r2.received).toBe(r2.sent)
    })
  )

  // 50 echoes at once keep data in flight both ways; with oversized connection windows this wedged
  // the tunnel (see DEFAULT_CONNECTION_WINDOW).
  it.scopedLive("50 concurrent streams multiplex over one tunnel", () =>
    Effect.gen(function* () {
      const { server, port } = yield* startProxy()
      yield* startAgent(port, agentPair)
      yield* listed(server, "db-host-1")
      // all 50 open before any byte flows, then all transfer at once
      const streams = yield* Effect.all(
        Array.from({ length: 50 }, () => server.dial("db-host-1", { kind: "db", name: "echo", meta: {} })),
        { concurrency: "unbounded" }
      )
      const ids = new Set(streams.map((s) => s.id))
      expect(ids.size).toBe(50)
      const results = yield* Effect.all(
        streams.map((s) => echoRoundTrip(s, 256 * 1024, 16 * 1024)),
        { concurrency: "unbounded" }
      )
      for (const r of results) {
        expect(r.got).toBe(256 * 1024)
        expect(r.received).toBe(r.sent)
      }
    })
  )

  it.scopedLive("dialing an unknown host id fails with AgentNotConnected; an unknown target with DialFailed", () =>
    Effect.gen(function* () {
      const { server, port } = yield* startProxy()
      const missing = yield* Effect.flip(server.dial("nobody", { kind: "db", name: "echo", meta: {} }))
      expect(missing._tag).toBe("AgentNotConnected")
      expect(missing.message).toContain("nobody")

      yield* startAgent(port, agentPair)
      yield* listed(server, "db-host-1")
      const unknown = yield* Effect.flip(server.dial("db-host-1", { kind: "db", name: "nope", meta: {} }))
      expect(unknown).toMatchObject({ _tag: "DialFailed", reason: "UnknownTarget" })
      expect(unknown.message).toContain("no db named nope")
      const wrongKind = yield* Effect.flip(server.dial("db-host-1", { kind: "ssh", name: "echo", meta: {} }))
      expect(wrongKind).toMatchObject({ _tag: "DialFailed", reason: "UnknownTarget" })
    })
  )

  it.scopedLive("a stream whose far side errors fails only that stream", () =>
    Effect.gen(function* () {
      const { server, port } = yield* startProxy()
      yield* startAgent(port, agentPair)
      yield* listed(server, "db-host-1")
      const healthy = yield* server.dial("db-host-1", { kind: "db", name: "echo", meta: {} })
      const doomed = yield* server.dial("db-host-1", { kind: "db", name: "boom", meta: {} })
      doomed.write("hello")
      const failure = yield* Effect.promise(
        () =>
          new Promise<unknown>((resolve) => {
            doomed.resume()
            doomed.once("error", resolve)
            doomed.once("close", () => resolve(`closed with code ${doomed.rstCode}`))
          })
      )
      expect(String(failure)).toMatch(/NGHTTP2_INTERNAL_ERROR|code 2/)
      const r = yield* echoRoundTrip(healthy, 1 << 20)
      expect(r.received).toBe(r.sent)
      expect(Option.isSome(yield* server.agent("db-host-1"))).toBe(true)
      const again = yield* server.dial("db-host-1", { kind: "db", name: "echo", meta: {} })
      const r2 = yield* echoRoundTrip(again, 1000)
      expect(r2.received).toBe(r2.sent)
    })
  )

  it.scopedLive("closing the agent's scope removes it at once, by the socket closing", () =>
    Effect.gen(function* () {
      const { server, port } = yield* startProxy(0, { heartbeatIntervalMs: 1_000, deadAfterMs: 10_000 })
      const events = yield* server.subscribe
      const scope = yield* Scope.make()
      yield* Scope.extend(startAgent(port, agentPair), scope)
      yield* listed(server, "db-host-1")
      expect((yield* Queue.take(events))._tag).toBe("AgentConnected")
      const t0 = Date.now()
      yield* Scope.close(scope, Exit.void)
      const gone = yield* Queue.take(events)
      expect(Date.now() - t0).toBeLessThan(1_000)
      expect(gone._tag).toBe("AgentDisconnected")
      if (gone._tag === "AgentDisconnected") expect(["GoAway", "Closed"]).toContain(gone.reason)
      expect(yield* server.agents).toEqual([])
      const e = yield* Effect.flip(server.dial("db-host-1", { kind: "db", name: "echo", meta: {} }))
      expect(e._tag).toBe("AgentNotConnected")
    })
  )

  it.scopedLive("reconnect drops the tunnel and the agent comes back at once", () =>
    Effect.gen(function* () {
      const { server, port } = yield* startProxy()
      const events = yield* server.subscribe
      const agent = yield* startAgent(port, agentPair)
      yield* listed(server, "db-host-1")
      expect((yield* Queue.take(events))._tag).toBe("AgentConnected")
      yield* agent.reconnect
      expect((yield* Queue.take(events))._tag).toBe("AgentDisconnected")
      expect((yield* Queue.take(events))._tag).toBe("AgentConnected")
      const s = yield* agent.status
      expect(s).toMatchObject({ state: "connected", connects: 2, attempts: 0, lastError: "reconnect requested" })
    })
  )

  it.scopedLive("an agent that goes silent without closing its socket is dropped by heartbeat within deadAfterMs, then reconnects", () =>
    Effect.gen(function* () {
      const { server, port } = yield* startProxy(0, { heartbeatIntervalMs: 100, deadAfterMs: 800 })
      const relay = yield* freezableRelay(port)
      const events = yield* server.subscribe
      const agent = yield* startAgent(relay.port, agentPair)
      yield* listed(server, "db-host-1")
      expect((yield* Queue.take(events))._tag).toBe("AgentConnected")
      // the network goes dark: no FIN, no RST, bytes just stop
      relay.freeze()
      const t0 = Date.now()
      const gone = yield* Queue.take(events)
      const elapsed = Date.now() - t0
      expect(gone).toMatchObject({ _tag: "AgentDisconnected", reason: "HeartbeatTimeout" })
      // not before the deadline (so it was not a socket close), and not much after it
      expect(elapsed).toBeGreaterThan(800 - 100 - 50)
      expect(elapsed).toBeLessThan(800 + 100 + 500)
      expect(yield* server.agents).toEqual([])
      // the agent sees the dead socket from its side too, and comes back once the network does
      relay.thaw()
      yield* listed(server, "db-host-1")
      expect((yield* agent.status).connects).toBeGreaterThanOrEqual(2)
    })
  )

  it.scopedLive("the agent reconnects after the proxy's listener restarts", () =>
    Effect.gen(function* () {
      const first = yield* Scope.make()
      const { server, port } = yield* Scope.extend(startProxy(), first)
      const agent = yield* startAgent(port, agentPair)
      yield* listed(server, "db-host-1")
      yield* Scope.close(first, Exit.void)
      yield* waitUntil(agent.status, (s) => s.state !== "connected", 2_000, "the agent to notice")
      yield* Effect.sleep(300) // a few failed attempts against a closed port
      const down = yield* agent.status
      expect(down.connects).toBe(1)
      const again = yield* startProxy(port)
      yield* listed(again.server, "db-host-1")
      const s = yield* agent.status
      expect(s).toMatchObject({ state: "connected", connects: 2, attempts: 0 })
      const stream = yield* again.server.dial("db-host-1", { kind: "db", name: "echo", meta: {} })
      const r = yield* echoRoundTrip(stream, 4096)
      expect(r.received).toBe(r.sent)
    })
  )

  it.scopedLive("an agent with a certificate from another CA is refused at TLS", () =>
    Effect.gen(function* () {
      const { server, port } = yield* startProxy()
      const agent = yield* startAgent(port, foreignPair)
      const s = yield* waitUntil(agent.status, (st) => st.attempts >= 2, 3_000, "failed attempts")
      expect(s.connects).toBe(0)
      expect(s.lastError).toMatch(/refused before the tunnel started|certificate|alert/i)
      expect(yield* server.agents).toEqual([])
    })
  )

  it.scopedLive("acceptVerified refuses a foreign CA, a user certificate and a proxy certificate; accepts a host one", () =>
    Effect.gen(function* () {
      const server = yield* TunnelServer.make(FAST)
      // a listener that lets any certificate through TLS, so only acceptVerified judges
      const results: Array<Exit.Exit<TunnelServer.AgentIdentity, TunnelServer.AgentRejected>> = []
      const runtime = yield* Effect.runtime<never>()
      const listener = tls.createServer({
        cert: proxyPair.cert,
        key: proxyPair.key,
        requestCert: true,
        rejectUnauthorized: false,
        ALPNProtocols: ["remoteler-tunnel"]
      })
      listener.on("secureConnection", (socket: tls.TLSSocket) => {
        Runtime.runFork(runtime)(
          Effect.exit(server.acceptVerified(socket, [hostCa.certPem])).pipe(Effect.map((e) => results.push(e)))
        )
      })
      const port = yield* Effect.acquireRelease(
        Effect.async<number>((resume) => {
          listener.listen(0, "127.0.0.1", () => resume(Effect.succeed((listener.address() as net.AddressInfo).port)))
        }),
        () => Effect.sync(() => listener.close())
      )
      const userKeys = yield* generateEcdsaKeyPair()
      const user = new Identity({ username: "alice", roles: ["dev"], logins: [], routeToCluster: "main", traits: {}, expires: expires() })
      const userCert = yield* signUserCert({ caCert: hostCa.certPem, caKey: hostCa.keyPem, publicKey: userKeys.publicKeyPem, identity: user, notAfter: user.expires })
      const tryWith = (pair: Pair) =>
        Effect.gen(function* () {
          const scope = yield* Scope.make()
          const before = results.length
          yield* Scope.extend(startAgent(port, pair), scope)
          yield* waitUntil(Effect.sync(() => results.length), (n) => n > before, 3_000, "a verdict")
          yield* Scope.close(scope, Exit.void)
          return results[before]!
        })
      const foreign = yield* tryWith(foreignPair)
      expect(Exit.isFailure(foreign) && Cause.squash(foreign.cause)).toMatchObject({ _tag: "AgentRejected", reason: "BadCertificate" })
      const asUser = yield* tryWith({ cert: userCert.pem, key: userKeys.privateKeyPem })
      expect(Exit.isFailure(asUser) && Cause.squash(asUser.cause)).toMatchObject({ _tag: "AgentRejected", reason: "NotAnAgent" })
      const asProxy = yield* tryWith(proxyPair)
      expect(Exit.isFailure(asProxy) && Cause.squash(asProxy.cause)).toMatchObject({ _tag: "AgentRejected", reason: "NotAnAgent" })
      const good = yield* tryWith(agentPair)
      expect(good).toEqual(Exit.succeed({ hostId: "db-host-1", nodeName: "db-1", systemRole: "Db" }))
      expect(yield* server.agents).toEqual([])
    })
  )

  it.scopedLive("the agent refuses a proxy whose certificate is not a Proxy host certificate", () =>
    Effect.gen(function* () {
      const server = yield* TunnelServer.make(FAST)
      // a "proxy" presenting an agent's certificate, trusted by the CA but not a proxy
      const { port } = yield* TunnelServer.listen(server, {
        host: "127.0.0.1",
        port: 0,
        cert: agentPair.cert,
        key: agentPair.key,
        hostCaPems: [hostCa.certPem]
      })
      const agent = yield* startAgent(port, nodePair)
      const s = yield* waitUntil(agent.status, (st) => st.attempts >= 1, 3_000, "a failed attempt")
      expect(s.lastError).toContain("not a Proxy host certificate")
      expect(s.connects).toBe(0)
    })
  )
})

/**
 * A TCP relay in front of the proxy that can stop forwarding without closing anything, the way a
 * dead NAT mapping or a pulled cable looks to both ends.
 */
const freezableRelay = (target: number) =>
  Effect.acquireRelease(
    Effect.async<{ port: number; freeze: () => void; thaw: () => void; server: net.Server; sockets: Set<net.Socket>; frozen: { value: boolean } }>(
      (resume) => {
        const sockets = new Set<net.Socket>()
        const frozen = { value: false }
        const server = net.createServer((inbound) => {
          if (frozen.value) {
            // new connections during the outage hang too
            sockets.add(inbound)
            inbound.pause()
            return
          }
          const outbound = net.connect(target, "127.0.0.1")
          for (const s of [inbound, outbound]) {
            sockets.add(s)
            s.on("error", () => {})
            s.once("close", () => sockets.delete(s))
          }
          const forward = (from: net.Socket, to: net.Socket) =>
            from.on("data", (chunk: Buffer) => {
              if (!frozen.value) to.write(chunk)
            })
          forward(inbound, outbound)
          forward(outbound, inbound)
          inbound.once("end", () => !frozen.value && outbound.end())
          outbound.once("end", () => !frozen.value && inbound.end())
        })
        server.listen(0, "127.0.0.1", () =>
          resume(
            Effect.succeed({
              port: (server.address() as net.AddressInfo).port,
              server,
              sockets,
              frozen,
              freeze: () => {
                frozen.value = true
              },
              thaw: () => {
                frozen.value = false
                // connections that lived through the outage lost bytes: they stay dead, as they would
                for (const s of sockets) s.destroy()
              }
            })
          )
        )
      }
    ),
    (relay) =>
      Effect.sync(() => {
        relay.server.close()
        for (const s of relay.sockets) s.destroy()
      })
  )
