/**
 * Cluster mode with real processes: two auth services and one proxy of its own, sharing one
 * PostgreSQL and one authenticated nats-server. Killing an auth process interrupts nobody's login,
 * a NATS restart mid-workload loses nothing, and the log stays one verified chain.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { request } from "./fixtures/cluster.ts"
import type { NatsServer } from "./fixtures/nats.ts"
import { startNatsServer } from "./fixtures/nats.ts"
import type { PostgresServer } from "./fixtures/postgres.ts"
import { startPostgresAsync } from "./fixtures/postgres.ts"
import type { Service } from "./fixtures/processes.ts"
import { bin, freePort, node, startService } from "./fixtures/processes.ts"

describe("two auth services and a proxy on PostgreSQL and NATS", () => {
  let pg: PostgresServer
  let nats: NatsServer
  let dir: string
  let storage: string
  let port: number
  const auths: Array<Service> = []
  let proxy: Service | undefined

  const startAuth = async (name: string) => {
    fs.writeFileSync(path.join(dir, "auth.yaml"), "auth_service:\n  authentication: { second_factor: \"off\" }\n")
    const s = startService(process.execPath, [
      bin("remoteler"), "start", "--roles=auth", "-c", path.join(dir, "auth.yaml"), "--data-dir", path.join(dir, name), `--storage=${storage}`, `--nats=${nats.urlWithAuth}`
    ])
    await s.waitFor(/auth service running/, 90_000)
    return s
  }
  const tctl = (name: string, ...args: Array<string>) => node(bin("tctl"), ["--data-dir", path.join(dir, name), ...args], { input: "correct horse battery\n" })
  const login = () => loginStatus(port)

  beforeAll(async () => {
    ;[pg, nats] = await Promise.all([startPostgresAsync(), startNatsServer()])
    storage = await pg.createDatabase("remoteler")
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "remoteler-cluster2-"))
    // Two auth processes at once: they race to create the CAs, and one wins.
    auths.push(...(await Promise.all([startAuth("auth1"), startAuth("auth2")])))
    port = await freePort()
    const token = /--token=([0-9a-f]{32})/.exec((await tctl("auth1", "tokens", "add", "--type=proxy")).stdout)![1]!
    fs.writeFileSync(path.join(dir, "proxy.yaml"), `proxy_service:\n  web_listen_addr: 127.0.0.1:${port}\n  public_addr: localhost:${port}\n`)
    proxy = startService(process.execPath, [bin("remoteler"), "start", "--roles=proxy", "-c", path.join(dir, "proxy.yaml"), "--data-dir", path.join(dir, "proxy"), `--nats=${nats.urlWithAuth}`, `--token=${token}`])
    await proxy.waitFor(/proxy running/, 90_000)
    expect((await tctl("auth2", "users", "add", "alice", "--roles=access", "--logins=alice")).code).toBe(0)
    expect((await tctl("auth1", "users", "set-password", "alice")).code).toBe(0)
  })
  afterAll(async () => {
    await proxy?.stop()
    for (const a of auths) await a.stop()
    await Promise.all([pg?.stop(), nats?.dispose()])
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  it("created each CA once, and both auth services see the same users", async () => {
    const cas = JSON.parse((await tctl("auth2", "get", "cert_authorities", "--format=json")).stdout) as Array<unknown>
    expect(cas).toHaveLength(3)
    const created = (await tctl("auth1", "audit", "search", "--type=ca.create", "--format=json")).stdout.trim().split("\n")
    expect(created).toHaveLength(3)
    for (const a of ["auth1", "auth2"]) {
      const users = JSON.parse((await tctl(a, "users", "ls", "--format=json")).stdout) as Array<{ name: string }>
      expect(users.map((u) => u.name)).toEqual(["alice"])
    }
  })

  it("keeps logins working while one auth process is killed, and through a NATS restart", async () => {
    for (let i = 0; i < 4; i++) expect(await login()).toBe(200)
    await auths[0]!.kill()
    for (let i = 0; i < 4; i++) expect(await login()).toBe(200)
    await nats.restart()
    const deadline = Date.now() + 30_000
    let status = 0
    while (Date.now() < deadline) {
      status = await login().catch(() => 0)
      if (status === 200) break
      await new Promise((r) => setTimeout(r, 500))
    }
    expect(status).toBe(200)
    const v = await tctl("auth2", "audit", "verify")
    expect(v.stdout).toMatch(/chain intact/)
    const logins = (await tctl("auth2", "audit", "search", "--type=user.login", "--format=json")).stdout.trim().split("\n").map((l) => JSON.parse(l) as { uid: string })
    expect(logins.length).toBeGreaterThanOrEqual(9)
    expect(new Set(logins.map((l) => l.uid)).size).toBe(logins.length)
  })
})

/** One password login through the proxy's HTTPS API; the HTTP status. */
async function loginStatus(port: number): Promise<number> {
  const { Effect } = await import("effect")
  const X509 = await import("../src/adapters/x509.ts")
  const { generateKeyPairSync } = await import("node:crypto")
  const ssh = await import("../src/protocols/ssh/cert.ts")
  const keys = await Effect.runPromise(X509.generateEcdsaKeyPair())
  const pub = ssh.publicKeyLine(ssh.publicKeyBlob(generateKeyPairSync("ed25519").publicKey))
  const r = await request(port, "POST", "/v1/webapi/ssh/certs", {
    body: { user: "alice", password: "correct horse battery", pub_key: pub, tls_pub_key: keys.publicKeyPem }
  })
  if (r.status !== 200) console.error(`login answered ${r.status}: ${r.body}`)
  return r.status
}
