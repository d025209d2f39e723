/**
 * Join tokens: `tctl tokens add|ls|rm`, and the proxy's join endpoint that turns a valid token into
 * a host certificate (host CA, host UUID in the identity). Agents' own use of it (storing the
 * certificate, renewing it, the tunnel) builds on this.
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, Either } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as X509 from "../src/adapters/x509.ts"
import type { Cluster } from "./fixtures/cluster.ts"
import { request, startCluster, stopCluster } from "./fixtures/cluster.ts"

describe("join tokens", () => {
  let c: Cluster
  beforeAll(async () => {
    c = await startCluster("off")
  })
  afterAll(() => stopCluster(c))

  const newToken = async (type: string, ttl = "30m") => {
    const r = await c.tctl("tokens", "add", `--type=${type}`, `--ttl=${ttl}`)
    expect(r.stderr).toBe("")
    expect(r.code).toBe(0)
    const token = /The invite token: ([0-9a-f]{32})/.exec(r.stdout)![1]!
    expect(r.stdout).toContain(`--token=${token}`)
    expect(r.stdout).toContain(`--proxy=localhost:${c.port}`)
    return token
  }
  const join = async (token: string, role: string, nodeName = "db-agent-1") => {
    const keys = await Effect.runPromise(X509.generateEcdsaKeyPair())
    const r = await request(c.port, "POST", "/v1/webapi/host/join", { body: { token, role, node_name: nodeName, tls_pub_key: keys.publicKeyPem } })
    return { status: r.status, body: JSON.parse(r.body) as Record<string, unknown> }
  }

  it("issues a host certificate for a valid token, with the host UUID in the identity, signed by the host CA", async () => {
    const token = await newToken("db")
    const r = await join(token, "db")
    expect(r.status).toBe(200)
    const hostId = String(r.body["host_id"])
    expect(hostId).toMatch(/^[0-9a-f-]{36}$/)
    const identity = X509.parseCertIdentity(String(r.body["tls_cert"]))
    expect(Either.isRight(identity)).toBe(true)
    if (Either.isRight(identity)) {
      expect(identity.right.username).toBe(hostId)
      expect(identity.right.systemRole).toBe("Db")
      expect(identity.right.nodeName).toBe("db-agent-1")
    }
    const hostCa = (await c.tctl("auth", "export", "--type=host", "--format=tls")).stdout
    fs.writeFileSync(path.join(c.dir, "host-ca.pem"), hostCa)
    fs.writeFileSync(path.join(c.dir, "agent.crt"), String(r.body["tls_cert"]))
    expect(execFileSync("openssl", ["verify", "-CAfile", path.join(c.dir, "host-ca.pem"), path.join(c.dir, "agent.crt")], { encoding: "utf8" })).toMatch(/OK/)

    // Tokens are reusable until they expire (several agents may join with one).
    expect((await join(token, "db", "db-agent-2")).status).toBe(200)
    const joins = (await c.tctl("audit", "search", "--type=instance.join", "--format=json")).stdout.trim().split("\n").map((l) => JSON.parse(l))
    expect(joins.map((j: { node_name: string }) => j.node_name)).toEqual(["db-agent-1", "db-agent-2"])
    expect(joins[0].code).toBe("TJ001I")
    // The token itself is never in the log.
    expect((await c.tctl("audit", "search", "--format=json")).stdout).not.toContain(token)
  })

  it("refuses a wrong role, an unknown and a deleted token with the same answer, and audits each", async () => {
    const token = await newToken("node")
    const wrongRole = await join(token, "db")
    expect(wrongRole.status).toBe(403)
    expect(wrongRole.body).toEqual({ error: { message: "invalid join token" } })
    expect((await join("0".repeat(32), "node")).body).toEqual({ error: { message: "invalid join token" } })

    const ls = JSON.parse((await c.tctl("tokens", "ls", "--format=json")).stdout) as Array<{ name: string; roles: Array<string> }>
    const listed = ls.find((t) => t.roles.includes("node"))!
    expect((await c.tctl("tokens", "rm", listed.name)).code).toBe(0)
    expect((await join(token, "node")).status).toBe(403)
    expect(JSON.parse((await c.tctl("tokens", "ls", "--format=json")).stdout).some((t: { name: string }) => t.name === listed.name)).toBe(false)

    const failures = (await c.tctl("audit", "search", "--type=instance.join", "--format=json")).stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { success: boolean; code: string; error?: string })
      .filter((j) => !j.success)
    expect(failures.map((f) => f.error)).toEqual(["token does not allow role db", "unknown token", "token was deleted"])
    expect(failures.every((f) => f.code === "TJ001E")).toBe(true)
  })

  it("refuses bad input with a 400 and a clear message", async () => {
    const bad = await request(c.port, "POST", "/v1/webapi/host/join", { body: { token: "x", role: "wizard", node_name: "n", tls_pub_key: "k" } })
    expect(bad.status).toBe(400)
    const rm = await c.tctl("tokens", "rm", "nosuchtoken")
    expect(rm.code).toBe(1)
    expect(rm.stderr).toMatch(/not found/)
    const t = await c.tctl("tokens", "add", "--type=wizard")
    expect(t.code).toBe(1)
    expect(t.stderr).toMatch(/--type/)
  })
})
