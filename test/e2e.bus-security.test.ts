/**
 * Requests to auth on the bus: with NATS as the bus, any process that may publish on the cluster's
 * subjects could try to call auth. Methods that carry their own credential (login, invite, join)
 * answer anyone; every other method answers only requests signed by a proxy identity the cluster
 * issued, and never the same signed request twice.
 */
import { connect } from "@nats-io/transport-node"
import { headers as natsHeaders } from "@nats-io/nats-core"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as X509 from "../src/adapters/x509.ts"
import type { Cluster } from "./fixtures/cluster.ts"
import { request, startCluster, stopCluster } from "./fixtures/cluster.ts"
import type { NatsServer } from "./fixtures/nats.ts"
import { startNatsServer } from "./fixtures/nats.ts"

describe("auth RPC over NATS", () => {
  let nats: NatsServer
  let c: Cluster

  beforeAll(async () => {
    nats = await startNatsServer()
    c = await startCluster("off", [], [`--nats=${nats.urlWithAuth}`])
  })
  afterAll(async () => {
    await stopCluster(c)
    await nats?.dispose()
  })

  const call = async (method: string, body: unknown, hdrs?: Record<string, string>) => {
    const nc = await connect({ servers: nats.url, user: nats.user, pass: nats.pass })
    try {
      const h = natsHeaders()
      for (const [k, v] of Object.entries(hdrs ?? {})) h.set(k, v)
      const reply = await nc.request(`remoteler.main.rpc.auth.${method}`, JSON.stringify(body), { timeout: 10_000, headers: h })
      return reply.json<{ ok?: unknown; error?: { _tag: string; message: string } }>()
    } finally {
      await nc.close()
    }
  }

  it("works for the cluster's own proxy: its requests are signed", async () => {
    const find = await request(c.port, "GET", "/v1/webapi/find")
    expect(find.status).toBe(200)
    // whoami needs the trusted user CAs, a signed method.
    const who = await request(c.port, "GET", "/v1/webapi/whoami")
    expect(who.status).toBe(401)
    expect(who.body).toMatch(/client certificate is required/)
  })

  it("answers methods that carry their own credential to anyone on the bus", async () => {
    const find = await call("web.find", {})
    expect(find.error).toBeUndefined()
    const join = await call("web.join", { token: "0".repeat(32), role: "db", node_name: "x", tls_pub_key: "k" })
    expect(join.error?.message).toBe("invalid join token")
  })

  it("refuses an unsigned request, and one signed by an identity the cluster did not issue", async () => {
    const unsigned = await call("web.db_client_cert", { host_id: "h", db_user: "postgres", tls_pub_key: "k" })
    expect(unsigned.ok).toBeUndefined()
    expect(unsigned.error?._tag).toBe("Forbidden")
    expect(unsigned.error?.message).toMatch(/not signed by a proxy identity/)

    const forged = await Effect.runPromise(
      Effect.gen(function* () {
        const ca = yield* X509.generateCa("rogue host CA", "main", 1)
        const keys = yield* X509.generateEcdsaKeyPair()
        const cert = yield* X509.signHostCert({
          caCert: ca.cert,
          caKey: ca.privateKey,
          publicKey: keys.publicKeyPem,
          identity: { username: "rogue", roles: ["Proxy"], logins: [], routeToCluster: "main", traits: {}, hostId: "rogue", nodeName: "rogue", systemRole: "Proxy" },
          notAfter: new Date(Date.now() + 3600_000)
        })
        return { cert: cert.pem, key: keys.privateKeyPem }
      })
    )
    const { createHash, sign } = await import("node:crypto")
    const subject = "remoteler.main.rpc.auth.web.agent_events"
    const body = Buffer.from(JSON.stringify({ host_id: "rogue", events: [] }))
    const ts = String(Date.now())
    const nonce = "a".repeat(32)
    const sig = sign("sha256", createHash("sha256").update(`${subject}\n${ts}\n${nonce}\n`).update(body).digest(), forged.key)
    const refused = await call("web.agent_events", { host_id: "rogue", events: [] }, {
      "remoteler-cert": Buffer.from(forged.cert).toString("base64"),
      "remoteler-signature": sig.toString("base64"),
      "remoteler-ts": ts,
      "remoteler-nonce": nonce
    })
    expect(refused.error?._tag).toBe("Forbidden")
    expect(refused.error?.message).toMatch(/not trusted/)

    const admin = await call("users.create", { name: "mallory", roles: ["editor"], traits: {} })
    expect(admin.error?.message).toMatch(/not available over the bus/)
  })
})
