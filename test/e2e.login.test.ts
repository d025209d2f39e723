/**
 * Certificate authorities, local login and the proxy's HTTPS API, end to end with real processes
 * and real tools: `remoteler start` (auth + proxy), `tctl`, `tsh`, `openssl`, `ssh-keygen`, and a
 * throwaway OpenSSH `sshd`.
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as X509 from "../src/adapters/x509.ts"
import { totpCode } from "../src/domain/Totp.ts"
import type { Cluster } from "./fixtures/cluster.ts"
import { request, startCluster, stopCluster } from "./fixtures/cluster.ts"
import { bin, node } from "./fixtures/processes.ts"
import { startSshd } from "./fixtures/sshd.ts"

const auditEvents = async (c: Cluster, type: string) => {
  const r = await c.tctl("audit", "search", `--type=${type}`, "--format=json")
  return r.stdout.trim() === "" ? [] : r.stdout.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>)
}

describe("login with password and one-time code (second_factor otp)", () => {
  let c: Cluster

  beforeAll(async () => {
    c = await startCluster("otp")
  })
  afterAll(() => stopCluster(c))

  it("invites a user, who sets a password and a TOTP device on the invite page, then logs in with tsh", async () => {
    const add = await c.tctl("users", "add", "alice", "--roles=access", "--logins=alice,root")
    expect(add.code).toBe(0)
    const url = /https:\/\/localhost:\d+\/web\/invite\/([0-9a-f]{64})/.exec(add.stdout)
    expect(url).not.toBeNull()
    const token = url![1]!

    const page = await request(c.port, "GET", `/web/invite/${token}`)
    expect(page.status).toBe(200)
    expect(page.body).toContain("<svg")
    const info = JSON.parse((await request(c.port, "GET", `/v1/webapi/invite/${token}`)).body) as { user: string; totp_secret: string }
    expect(info.user).toBe("alice")

    const weak = await request(c.port, "POST", `/v1/webapi/invite/${token}`, { body: { password: "short", otp_token: totpCode(info.totp_secret, Date.now()) } })
    expect(weak.status).toBe(400)
    const done = await request(c.port, "POST", `/v1/webapi/invite/${token}`, {
      body: { password: "correct horse battery", otp_token: totpCode(info.totp_secret, Date.now()) }
    })
    expect(done.body).toContain("alice")
    expect(done.status).toBe(200)
    // The invite is single use.
    expect((await request(c.port, "GET", `/v1/webapi/invite/${token}`)).status).toBe(404)

    // The code used at enrolment cannot be replayed; the next step's code is accepted.
    const login = await c.tsh(
      ["login", `--proxy=localhost:${c.port}`, "--user=alice", "--insecure"],
      `correct horse battery\n${totpCode(info.totp_secret, Date.now() + 30_000)}\n`
    )
    expect(login.stderr).not.toMatch(/ERROR/)
    expect(login.code).toBe(0)
    expect(login.stdout).toMatch(/Logged in as:\s+alice/)

    const status = JSON.parse((await c.tsh(["status", "--format=json"])).stdout) as { active: { username?: string; user?: string } }
    expect(JSON.stringify(status)).toContain("alice")

    const bad = await c.tsh(["login", `--proxy=localhost:${c.port}`, "--user=alice", "--insecure"], "correct horse battery\n000000\n")
    expect(bad.code).toBe(1)
    expect(bad.stderr).toMatch(/invalid credentials/)

    const logins = await auditEvents(c, "user.login")
    expect(logins.some((e) => e["success"] === true && e["code"] === "T1000I")).toBe(true)
    expect(logins.some((e) => e["success"] === false && e["code"] === "T1000W")).toBe(true)
    const certs = await auditEvents(c, "cert.create")
    expect(certs.length).toBeGreaterThan(0)
    expect(certs[0]!["code"]).toBe("TC000I")
  })
})

describe("certificates, CAs, lockout and the proxy API (second_factor off)", () => {
  let c: Cluster
  const tmp = (name: string) => path.join(c.dir, name)

  beforeAll(async () => {
    c = await startCluster("off")
    expect((await c.tctl("users", "add", "alice", "--roles=access", "--logins=alice,root")).code).toBe(0)
    expect((await node(bin("tctl"), ["--data-dir", `${c.dir}/data`, "users", "set-password", "alice"], { input: "correct horse battery\n" })).code).toBe(0)
  })
  afterAll(() => stopCluster(c))

  it("stores certificates in ~/.tsh that openssl and ssh-keygen accept, and logout leaves no key", async () => {
    const login = await c.tsh(["login", `--proxy=localhost:${c.port}`, "--user=alice", "--insecure"], "correct horse battery\n")
    expect(login.code).toBe(0)
    const keys = path.join(c.tshHome, "keys", "localhost")
    const crt = path.join(keys, "alice.crt")
    expect(fs.existsSync(crt)).toBe(true)
    expect(fs.existsSync(path.join(keys, "alice.key"))).toBe(true)
    expect(fs.readFileSync(path.join(c.tshHome, "current-profile"), "utf8").trim()).toBe("localhost")

    const userCa = await c.tctl("auth", "export", "--type=user", "--format=tls")
    fs.writeFileSync(tmp("user-ca.pem"), userCa.stdout)
    expect(execFileSync("openssl", ["verify", "-CAfile", tmp("user-ca.pem"), crt], { encoding: "utf8" })).toMatch(/OK/)
    const text = execFileSync("openssl", ["x509", "-in", crt, "-noout", "-text"], { encoding: "utf8" })
    expect(text).toMatch(/CN\s*=\s*alice/)
    expect(text).toMatch(/O\s*=\s*access/)
    expect(text).toMatch(/L\s*=\s*alice/)

    const sshCert = path.join(keys, "alice-ssh", "main-cert.pub")
    const listed = execFileSync("ssh-keygen", ["-L", "-f", sshCert], { encoding: "utf8" })
    expect(listed).toMatch(/Type: ssh-ed25519-cert-v01@openssh.com user certificate/)
    expect(listed).toMatch(/Principals:\s+alice\s+root/)
    expect(listed).toMatch(/Valid: from \S+ to \S+/)

    const out = await c.tsh(["logout"])
    expect(out.code).toBe(0)
    const left = fs.existsSync(path.join(c.tshHome, "keys")) ? fs.readdirSync(path.join(c.tshHome, "keys"), { recursive: true }) : []
    expect(left).toEqual([])
    expect((await c.tsh(["status"])).code).toBe(1)
  })

  it("tctl auth sign --format=openssh is accepted by a stock sshd trusting the exported user CA; another CA is refused", async () => {
    const trusted = (await c.tctl("auth", "export", "--type=user")).stdout
    expect(trusted).toMatch(/^ssh-ed25519 AAAA/)
    const sshd = await startSshd({ trustedUserCaKeys: trusted })
    try {
      const signed = await c.tctl("auth", "sign", "--user=alice", "--format=openssh", `--out=${tmp("alice")}`, "--ttl=1h")
      expect(signed.code).toBe(0)
      const ssh = (key: string, cert: string) =>
        execFileSync(
          "ssh",
          [
            "-F", "/dev/null", "-p", String(sshd.port), "-i", key, "-o", `CertificateFile=${cert}`, "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "root@127.0.0.1", "echo via-cert"
          ],
          { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 20_000 }
        )
      expect(ssh(tmp("alice"), tmp("alice-cert.pub")).trim()).toBe("via-cert")

      // A certificate for the same key from a CA the sshd does not trust.
      execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", tmp("other_ca")])
      fs.copyFileSync(tmp("alice.pub"), tmp("other.pub"))
      execFileSync("ssh-keygen", ["-q", "-s", tmp("other_ca"), "-I", "alice", "-n", "root", "-V", "+1h", tmp("other.pub")])
      expect(() => ssh(tmp("alice"), tmp("other-cert.pub"))).toThrow()
    } finally {
      await sshd.stop()
    }
  })

  it("the proxy refuses an expired certificate and one from another CA, and audits both", async () => {
    expect((await c.tctl("auth", "sign", "--user=alice", "--format=tls", `--out=${tmp("short")}`, "--ttl=2s")).code).toBe(0)
    const cert = fs.readFileSync(tmp("short.crt"), "utf8")
    const key = fs.readFileSync(tmp("short.key"), "utf8")
    const ok = await request(c.port, "GET", "/v1/webapi/whoami", { cert, key })
    expect(ok.status).toBe(200)
    expect(JSON.parse(ok.body).user).toBe("alice")
    await new Promise((r) => setTimeout(r, 2_500))
    const expired = await request(c.port, "GET", "/v1/webapi/whoami", { cert, key })
    expect(expired.status).toBe(401)
    expect(expired.body).toMatch(/expired/i)

    const foreign = await Effect.runPromise(
      Effect.gen(function* () {
        const ca = yield* X509.generateCa("evil CA", "main", 1)
        const keys = yield* X509.generateEcdsaKeyPair()
        const issued = yield* X509.signUserCert({
          caCert: ca.cert,
          caKey: ca.privateKey,
          publicKey: keys.publicKeyPem,
          identity: { username: "alice", roles: ["editor"], logins: ["root"], routeToCluster: "main", traits: {} },
          notAfter: new Date(Date.now() + 3600_000)
        })
        return { cert: issued.pem, key: keys.privateKeyPem }
      })
    )
    const refused = await request(c.port, "GET", "/v1/webapi/whoami", foreign)
    expect(refused.status).toBe(401)
    const audited = await auditEvents(c, "auth")
    expect(audited.length).toBeGreaterThanOrEqual(2)
    expect(audited.every((e) => e["code"] === "T3007W" && e["user"] === "alice")).toBe(true)
  })

  it("rotation: in init old certificates work; from update_servers they are refused; new ones work throughout", async () => {
    const sign = async (name: string) => {
      expect((await c.tctl("auth", "sign", "--user=alice", "--format=tls", `--out=${tmp(name)}`, "--ttl=1h")).code).toBe(0)
      return { cert: fs.readFileSync(tmp(`${name}.crt`), "utf8"), key: fs.readFileSync(tmp(`${name}.key`), "utf8") }
    }
    const whoami = async (creds: { cert: string; key: string }) => (await request(c.port, "GET", "/v1/webapi/whoami", creds)).status
    const old = await sign("old")
    expect((await c.tctl("auth", "rotate", "--type=user", "--manual", "--phase=init")).code).toBe(0)
    expect(await whoami(old)).toBe(200)
    const bad = await c.tctl("auth", "rotate", "--type=user", "--manual", "--phase=standby")
    expect(bad.code).toBe(1)
    expect(bad.stderr).toMatch(/cannot go to phase standby from init/)
    expect((await c.tctl("auth", "rotate", "--type=user", "--manual", "--phase=update_clients")).code).toBe(0)
    const fresh = await sign("fresh")
    expect(await whoami(old)).toBe(200)
    expect(await whoami(fresh)).toBe(200)
    expect((await c.tctl("auth", "rotate", "--type=user", "--manual", "--phase=update_servers")).code).toBe(0)
    await new Promise((r) => setTimeout(r, 2_500)) // the proxy caches the trusted CAs for 2 s
    expect(await whoami(old)).toBe(401)
    expect(await whoami(fresh)).toBe(200)
    expect((await c.tctl("auth", "rotate", "--type=user", "--manual", "--phase=standby")).code).toBe(0)
    expect(await whoami(fresh)).toBe(200)
    const cas = JSON.parse((await c.tctl("get", "cert_authorities", "--format=json")).stdout) as Array<{ spec: { type: string; phase: string } }>
    expect(cas.find((x) => x.spec.type === "user")!.spec.phase).toBe("standby")
    expect((await c.tctl("get", "cert_authorities", "--format=json")).stdout).not.toMatch(/PRIVATE KEY/)
    const phases = (await auditEvents(c, "ca.rotate")).map((e) => e["phase"])
    expect(phases).toEqual(["init", "update_clients", "update_servers", "standby"])
  })

  it("gives the same answer for a wrong password and an unknown user, and locks after five failures", async () => {
    const login = (user: string, password: string) =>
      c.tsh(["login", `--proxy=localhost:${c.port}`, `--user=${user}`, "--insecure"], `${password}\n`)
    const unknown = await login("nobody", "whatever password")
    const wrong = await login("alice", "wrong password!!")
    expect(unknown.code).toBe(1)
    expect(wrong.code).toBe(1)
    expect(unknown.stderr.replace(/nobody/g, "X")).toBe(wrong.stderr.replace(/alice/g, "X"))
    for (let i = 0; i < 4; i++) expect((await login("alice", "wrong password!!")).code).toBe(1)
    const sixth = await login("alice", "correct horse battery")
    expect(sixth.code).toBe(1)
    expect(sixth.stderr).toMatch(/invalid credentials/)
    expect((await auditEvents(c, "lock.created")).length).toBe(1)

    expect((await c.tctl("users", "unlock", "alice")).code).toBe(0)
    expect((await login("alice", "correct horse battery")).code).toBe(0)
  })

  it("answers a malformed public key or TTL with a 400 and a clear message", async () => {
    const body = { user: "alice", password: "correct horse battery", pub_key: "not a key", tls_pub_key: "nope" }
    const r = await request(c.port, "POST", "/v1/webapi/ssh/certs", { body })
    expect(r.status).toBe(400)
    expect(JSON.parse(r.body).error.message).toMatch(/pub_key/)
    const ttl = await request(c.port, "POST", "/v1/webapi/ssh/certs", { body: { ...body, ttl_seconds: -5 } })
    expect(ttl.status).toBe(400)
    const garbage = await request(c.port, "POST", "/v1/webapi/ssh/certs", { body: "[[[" })
    expect(garbage.status).toBe(400)
  })
})
