/**
 * `tsh` as a user runs it (the real bin/tsh.mjs process) against a FAKE PROXY: a small in-test
 * HTTPS server that speaks the proxy's web API contract (domain/WebApi.ts: find and the password
 * login) and signs with our own X.509 and SSH helpers. It is a fake because the real proxy does not
 * exist yet; the end-to-end login against `remoteler start` belongs with the proxy.
 */
import { generateKeyPairSync } from "node:crypto"
import * as fs from "node:fs"
import type { ServerResponse } from "node:http"
import * as https from "node:https"
import type { TLSSocket } from "node:tls"
import type { AddressInfo } from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Effect, Either } from "effect"
import { readIdentityFile, writeIdentityFile } from "../src/adapters/IdentityFile.ts"
import { loadProfile } from "../src/adapters/TshProfile.ts"
import * as WebApi from "../src/adapters/WebApiClient.ts"
import type { CertificateAuthority } from "../src/adapters/x509.ts"
import { generateCa, generateEcdsaKeyPair, parseCertIdentity, signHostCert, signUserCert } from "../src/adapters/x509.ts"
import type { LoginRequest } from "../src/domain/WebApi.ts"
import { decodeCertificate, parsePublicKeyLine, publicKeyBlob, publicKeyLine, signCertificate, userCertFields } from "../src/protocols/ssh/cert.ts"
import { bin, node } from "./fixtures/processes.ts"

const PASSWORD = "correct horse"
const OTP = "123456"

interface FakeProxy {
  readonly addr: string
  readonly logins: Array<LoginRequest>
  readonly hostCa: CertificateAuthority
  readonly close: () => Promise<void>
}

/** The fake proxy. User "late" gets certificates that expired a minute ago. */
const startFakeProxy = async (): Promise<FakeProxy> => {
  const { hostCa, userCa, serverKey, serverCert } = await Effect.runPromise(
    Effect.gen(function* () {
      const hostCa = yield* generateCa("host-ca", "main", 1)
      const userCa = yield* generateCa("user-ca", "main", 1)
      const serverKey = yield* generateEcdsaKeyPair()
      const serverCert = yield* signHostCert({
        caCert: hostCa.certPem,
        caKey: hostCa.privateKey,
        publicKey: serverKey.publicKeyPem,
        identity: { username: "proxy-1", roles: ["Proxy"], logins: [], routeToCluster: "main", traits: {}, hostId: "proxy-1", nodeName: "proxy", systemRole: "Proxy" },
        notAfter: new Date(Date.now() + 86_400_000),
        dnsNames: ["localhost"],
        ipAddresses: ["127.0.0.1"]
      })
      return { hostCa, userCa, serverKey, serverCert }
    })
  )
  const sshUserCa = generateKeyPairSync("ed25519")
  const sshHostCa = generateKeyPairSync("ed25519")
  const logins: Array<LoginRequest> = []
  let port = 0

  const reply = (res: ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { "content-type": "application/json" })
    res.end(JSON.stringify(body))
  }

  // asks for a client certificate (whoami is mTLS) and judges it in the handler
  const server = https.createServer({ key: serverKey.privateKeyPem, cert: serverCert.pem, requestCert: true, rejectUnauthorized: false, ca: [userCa.certPem] }, (req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      void (async () => {
        if (req.method === "GET" && req.url === "/v1/webapi/find") {
          return reply(res, 200, {
            cluster_name: "main",
            server_version: "0.1.0",
            auth: { type: "local", second_factor: "otp" },
            proxy: { web_public_addr: `127.0.0.1:${port}`, ssh_public_addr: "127.0.0.1:3023" }
          })
        }
        if (req.method === "GET" && req.url === "/v1/webapi/whoami") {
          const socket = req.socket as TLSSocket
          if (!socket.authorized) return reply(res, 401, { error: { message: "a user certificate is required" } })
          const id = Either.getOrThrow(parseCertIdentity(socket.getPeerX509Certificate()!.toString()))
          return reply(res, 200, { user: id.username, roles: id.roles })
        }
        if (req.method === "POST" && req.url === "/v1/webapi/ssh/certs") {
          const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as LoginRequest
          logins.push(body)
          if (!["alice", "late"].includes(body.user) || body.password !== PASSWORD || body.otp_token !== OTP) {
            return reply(res, 403, { error: { message: "invalid user, password or second factor" } })
          }
          const now = Date.now()
          const ttl = Math.min(body.ttl_seconds ?? 12 * 3600, 30 * 3600) * 1000
          const expires = new Date(body.user === "late" ? now - 60_000 : now + ttl)
          const issueAt = new Date(body.user === "late" ? now - 3_600_000 : now)
          const logins_ = [body.user, "root"]
          const tls = await Effect.runPromise(
            signUserCert({
              caCert: userCa.certPem,
              caKey: userCa.privateKey,
              publicKey: body.tls_pub_key,
              identity: { username: body.user, roles: ["access", "editor"], logins: logins_, routeToCluster: "main", traits: { logins: logins_ } },
              notAfter: expires,
              now: issueAt
            })
          )
          const pub = Either.getOrThrow(parsePublicKeyLine(body.pub_key))
          const ssh = signCertificate(
            userCertFields({ publicKey: pub.blob, username: body.user, logins: logins_, roles: ["access", "editor"], traits: {}, routeToCluster: "main", expires, now: issueAt }),
            sshUserCa.privateKey
          )
          return reply(res, 200, {
            username: body.user,
            cluster_name: "main",
            cert: ssh.line,
            tls_cert: tls.pem,
            tls_ca_certs: [hostCa.certPem],
            host_signers: [`@cert-authority main,*.main ${publicKeyLine(publicKeyBlob(sshHostCa.publicKey))} type=host`],
            expires: expires.toISOString(),
            roles: ["access", "editor"],
            logins: logins_
          })
        }
        reply(res, 404, { error: { message: `no route ${req.method} ${req.url}` } })
      })().catch((e: unknown) => reply(res, 500, { error: { message: String(e) } }))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  port = (server.address() as AddressInfo).port
  return {
    addr: `127.0.0.1:${port}`,
    logins,
    hostCa,
    close: () => new Promise((resolve) => server.close(() => resolve()))
  }
}

const tsh = (home: string, args: ReadonlyArray<string>, input?: string, env: NodeJS.ProcessEnv = {}) =>
  node(bin("tsh"), args, { env: { TSH_HOME: home, NODE_EXTRA_CA_CERTS: "", ...env }, ...(input !== undefined ? { input } : {}) })

const newHome = () => path.join(fs.mkdtempSync(path.join(os.tmpdir(), "tsh-cli-")), ".tsh")

const files = (dir: string): Array<string> =>
  fs.existsSync(dir)
    ? fs
        .readdirSync(dir, { recursive: true, encoding: "utf8" })
        .filter((f) => fs.statSync(path.join(dir, f)).isFile())
        .sort()
    : []

describe("tsh against a fake proxy", () => {
  let proxy: FakeProxy
  beforeAll(async () => {
    proxy = await startFakeProxy()
  })
  afterAll(async () => {
    await proxy.close()
  })

  it("refuses an untrusted proxy without --insecure and writes nothing", async () => {
    const home = newHome()
    const r = await tsh(home, ["login", `--proxy=${proxy.addr}`, "--user=alice"], `${PASSWORD}\n${OTP}\n`)
    expect(r.code).toBe(1)
    expect(r.stderr).toContain(`ERROR: cannot verify the TLS certificate of proxy ${proxy.addr}`)
    expect(r.stderr).toContain("--insecure")
    expect(r.stderr).not.toMatch(/\n\s+at /)
    expect(files(home)).toEqual([])
  })

  it("logs in with password and OTP from stdin, shows status, trusts the cluster CA afterwards, logs out leaving no key", async () => {
    const home = newHome()
    const before = proxy.logins.length
    const r = await tsh(home, ["login", `--proxy=${proxy.addr}`, "--insecure"], `${PASSWORD}\n${OTP}\n`, { USER: "alice" })
    expect(r.stderr).toContain(`WARNING: You are using an insecure connection to the Remoteler proxy https://${proxy.addr}`)
    expect(r.stderr).toContain("Enter password for Remoteler user alice:")
    expect(r.stderr).toContain("Enter an OTP code from a device:")
    expect(r.code).toBe(0)
    expect(r.stdout).toContain(`> Profile URL:        https://${proxy.addr}\n`)
    expect(r.stdout).toContain("  Logged in as:       alice\n")

    // the proxy saw public keys only
    const sent = proxy.logins[before]!
    expect(sent).toMatchObject({ user: "alice", password: PASSWORD, otp_token: OTP })
    expect(sent.pub_key).toMatch(/^ssh-ed25519 AAAA/)
    expect(sent.tls_pub_key).toMatch(/^-----BEGIN PUBLIC KEY-----/)
    expect(JSON.stringify(sent)).not.toContain("PRIVATE KEY")

    expect(files(home)).toEqual([
      "127.0.0.1.yaml",
      "current-profile",
      "keys/127.0.0.1/alice-ssh/main-cert.pub",
      "keys/127.0.0.1/alice.crt",
      "keys/127.0.0.1/alice.key",
      "keys/127.0.0.1/alice.ssh",
      "keys/127.0.0.1/alice.ssh.pub",
      "keys/127.0.0.1/certs.pem",
      "known_hosts"
    ])
    for (const f of files(home)) expect([f, fs.statSync(path.join(home, f)).mode & 0o777]).toEqual([f, 0o600])
    const yaml = fs.readFileSync(path.join(home, "127.0.0.1.yaml"), "utf8")
    expect(yaml).toContain(`web_proxy_addr: ${proxy.addr}\n`)
    expect(yaml).toContain("ssh_proxy_addr: 127.0.0.1:3023\n")
    expect(yaml).toContain("user: alice\n")
    expect(yaml).toContain("cluster: main\n")
    // what is on disk is what the proxy signed, for the keys that are on disk
    const tlsCert = fs.readFileSync(path.join(home, "keys/127.0.0.1/alice.crt"), "utf8")
    expect(Either.getOrThrow(parseCertIdentity(tlsCert)).username).toBe("alice")
    const sshCert = Either.getOrThrow(decodeCertificate(fs.readFileSync(path.join(home, "keys/127.0.0.1/alice-ssh/main-cert.pub"), "utf8").trim()))
    expect(publicKeyLine(sshCert.publicKey)).toBe(fs.readFileSync(path.join(home, "keys/127.0.0.1/alice.ssh.pub"), "utf8").trim())

    const st = await tsh(home, ["status"])
    expect(st.code).toBe(0)
    const lines = st.stdout.trimEnd().split("\n")
    expect(lines.slice(0, 5)).toEqual([
      `> Profile URL:        https://${proxy.addr}`,
      "  Logged in as:       alice",
      "  Cluster:            main",
      "  Roles:              access, editor",
      "  Logins:             alice, root"
    ])
    expect(lines[5]).toMatch(/^ {2}Valid until: {8}\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0000 UTC \[valid for 1[12]h\d+m0s\]$/)
    expect(lines[6]).toBe(
      "  Extensions:         permit-X11-forwarding, permit-agent-forwarding, permit-port-forwarding, permit-pty, permit-user-rc"
    )

    const js = await tsh(home, ["status", "--format=json"])
    expect(js.code).toBe(0)
    const parsed = JSON.parse(js.stdout) as { active: Record<string, unknown>; profiles: Array<unknown> }
    expect(parsed.active).toMatchObject({
      profile_url: `https://${proxy.addr}`,
      username: "alice",
      cluster: "main",
      roles: ["access", "editor"],
      logins: ["alice", "root"],
      traits: { logins: ["alice", "root"] }
    })
    expect(new Date(parsed.active["valid_until"] as string).getTime()).toBeGreaterThan(Date.now() + 11 * 3600_000)
    expect(parsed.profiles).toEqual([])

    // certs.pem now holds the cluster's host CA, which signed the proxy's certificate: no --insecure needed
    const again = await tsh(home, ["login", `--proxy=${proxy.addr}`, "--user=alice", "--ttl=90"], `${PASSWORD}\n${OTP}\n`)
    expect(again.stderr).not.toContain("WARNING")
    expect(again.code).toBe(0)
    expect(again.stdout).toMatch(/\[valid for 1h30m0s\]/)
    expect(proxy.logins.at(-1)!.ttl_seconds).toBe(5400)

    const out = await tsh(home, ["logout"])
    expect(out.code).toBe(0)
    expect(out.stdout.trim()).toBe("Logged out all users from all proxies.")
    expect(files(home)).toEqual([])
    const after = await tsh(home, ["status"])
    expect(after.code).toBe(1)
    expect(after.stderr.trim()).toBe("ERROR: Not logged in.")
  })

  it("a wrong password or a missing OTP line fails with the proxy's message and saves nothing", async () => {
    const home = newHome()
    const bad = await tsh(home, ["login", `--proxy=${proxy.addr}`, "--user=alice", "--insecure"], `wrong\n${OTP}\n`)
    expect(bad.code).toBe(1)
    expect(bad.stderr).toContain("ERROR: invalid user, password or second factor")
    const short = await tsh(home, ["login", `--proxy=${proxy.addr}`, "--user=alice", "--insecure"], `${PASSWORD}\n`)
    expect(short.code).toBe(1)
    expect(short.stderr).toContain("ERROR: no one-time code on stdin")
    expect(files(home)).toEqual([])
  })

  it("names the proxy when it cannot be reached", async () => {
    const r = await tsh(newHome(), ["login", "--proxy=127.0.0.1:1", "--user=alice"], `${PASSWORD}\n${OTP}\n`)
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("ERROR: cannot reach proxy 127.0.0.1:1")
  })

  it("shows EXPIRED for expired certificates", async () => {
    const home = newHome()
    const r = await tsh(home, ["login", `--proxy=${proxy.addr}`, "--user=late", "--insecure"], `${PASSWORD}\n${OTP}\n`)
    expect(r.code).toBe(0)
    const st = await tsh(home, ["status"])
    expect(st.stdout).toMatch(/ {2}Valid until: {8}.* \[EXPIRED\]\n/)
  })

  it("-i reads an identity file instead of ~/.tsh", async () => {
    const home = newHome()
    const r = await tsh(home, ["login", `--proxy=${proxy.addr}`, "--user=alice", "--insecure"], `${PASSWORD}\n${OTP}\n`)
    expect(r.code).toBe(0)
    const p = await Effect.runPromise(loadProfile(home))
    const idFile = path.join(path.dirname(home), "alice.identity")
    await Effect.runPromise(
      writeIdentityFile(idFile, {
        tlsPrivateKeyPem: p.tlsPrivateKeyPem,
        sshPrivateKey: p.sshPrivateKey,
        sshCert: p.sshCert,
        tlsCert: p.tlsCert,
        caCerts: [p.caCerts],
        knownHosts: []
      })
    )
    expect((await Effect.runPromise(readIdentityFile(idFile))).tlsCert).toBe(p.tlsCert)

    // the stored certificate and key authenticate to the proxy (mTLS), verified with certs.pem
    const me = await Effect.runPromise(WebApi.whoami(proxy.addr, { tlsCert: p.tlsCert, key: p.tlsPrivateKeyPem, caCerts: p.caCerts }))
    expect(me).toEqual({ user: "alice", roles: ["access", "editor"] })
    expect((await Effect.runPromise(WebApi.find(proxy.addr, { caCerts: p.caCerts }))).cluster_name).toBe("main")
    const untrusted = await Effect.runPromise(Effect.flip(WebApi.find(proxy.addr)))
    expect(untrusted.reason).toBe("Untrusted")
    const empty = newHome()
    for (const args of [["-i", idFile, "status"], ["status", "-i", idFile], ["--identity", idFile, "status", "--format=json"]]) {
      const st = await tsh(empty, args)
      expect(st.code).toBe(0)
      if (args.includes("--format=json")) {
        expect(JSON.parse(st.stdout)).toMatchObject({ active: { identity_file: idFile, username: "alice", cluster: "main" } })
      } else {
        expect(st.stdout).toContain(`> Identity file:      ${idFile}\n  Logged in as:       alice\n  Cluster:            main\n`)
      }
    }
    const missing = await tsh(empty, ["-i", path.join(path.dirname(home), "nope"), "status"])
    expect(missing.code).toBe(1)
    expect(missing.stderr).toContain("ERROR: cannot read identity file")
  })
})
