/**
 * The ~/.tsh store: exact paths and modes of Teleport's layout, current-profile switching, logout
 * that leaves no key behind, and identity files that read back what was written.
 */
import { generateKeyPairSync } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import { decodeIdentityFile, encodeIdentityFile, readIdentityFile, writeIdentityFile } from "../src/adapters/IdentityFile.ts"
import type { LoginMaterial } from "../src/adapters/TshProfile.ts"
import * as Profiles from "../src/adapters/TshProfile.ts"
import { generateCa, generateEcdsaKeyPair, signUserCert } from "../src/adapters/x509.ts"
import { privateKeyToOpenSsh, publicKeyBlob, publicKeyLine, signCertificate, userCertFields } from "../src/protocols/ssh/cert.ts"

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "tsh-"))

/** A full set of login material signed by throwaway CAs. */
const material = (proxy: string, user: string, cluster: string) =>
  Effect.gen(function* () {
    const userCa = yield* generateCa("user-ca", cluster, 1)
    const hostCa = yield* generateCa("host-ca", cluster, 1)
    const tlsKeys = yield* generateEcdsaKeyPair()
    const expires = new Date(Date.now() + 3_600_000)
    const tls = yield* signUserCert({
      caCert: userCa.certPem,
      caKey: userCa.privateKey,
      publicKey: tlsKeys.publicKeyPem,
      identity: { username: user, roles: ["access"], logins: [user], routeToCluster: cluster, traits: {} },
      notAfter: expires
    })
    const sshCa = generateKeyPairSync("ed25519")
    const ssh = generateKeyPairSync("ed25519")
    const sshPublicKey = publicKeyLine(publicKeyBlob(ssh.publicKey))
    const cert = signCertificate(
      userCertFields({ publicKey: publicKeyBlob(ssh.publicKey), username: user, logins: [user], roles: ["access"], traits: {}, routeToCluster: cluster, expires }),
      sshCa.privateKey
    )
    const hostSsh = generateKeyPairSync("ed25519")
    const m: LoginMaterial = {
      proxy,
      user,
      cluster,
      sshProxyAddr: `${Profiles.profileName(proxy)}:3023`,
      tlsPrivateKeyPem: tlsKeys.privateKeyPem,
      tlsCert: tls.pem,
      sshPrivateKey: privateKeyToOpenSsh(ssh.privateKey, user),
      sshPublicKey,
      sshCert: cert.line,
      caCerts: [hostCa.certPem],
      knownHosts: [`@cert-authority ${cluster},*.${cluster} ${publicKeyLine(publicKeyBlob(hostSsh.publicKey))} type=host`]
    }
    return m
  })

const mode = (p: string) => fs.statSync(p).mode & 0o777

/** Every file under `dir`, relative, sorted. */
const walk = (dir: string): Array<string> =>
  fs.existsSync(dir)
    ? fs
        .readdirSync(dir, { recursive: true, encoding: "utf8" })
        .filter((f) => fs.statSync(path.join(dir, f)).isFile())
        .sort()
    : []

describe("TshProfile", () => {
  it.effect("saveLogin lays the files out exactly, keys 0600 and directories 0700", () =>
    Effect.gen(function* () {
      const root = path.join(tmp(), ".tsh")
      const m = yield* material("proxy.example.com", "alice", "main")
      const p = yield* Profiles.saveLogin(root, m)
      expect(walk(root)).toEqual([
        "current-profile",
        "keys/proxy.example.com/alice-ssh/main-cert.pub",
        "keys/proxy.example.com/alice.crt",
        "keys/proxy.example.com/alice.key",
        "keys/proxy.example.com/alice.ssh",
        "keys/proxy.example.com/alice.ssh.pub",
        "keys/proxy.example.com/certs.pem",
        "known_hosts",
        "proxy.example.com.yaml"
      ])
      expect(p.tlsKey).toBe(path.join(root, "keys/proxy.example.com/alice.key"))
      expect(p.sshCert).toBe(path.join(root, "keys/proxy.example.com/alice-ssh/main-cert.pub"))
      for (const f of walk(root)) expect([f, mode(path.join(root, f))]).toEqual([f, 0o600])
      for (const d of [root, path.join(root, "keys"), path.join(root, "keys/proxy.example.com"), p.sshCertDir]) {
        expect([d, mode(d)]).toEqual([d, 0o700])
      }
      expect(fs.readFileSync(p.current, "utf8")).toBe("proxy.example.com\n")
      expect(fs.readFileSync(p.profile, "utf8")).toBe(
        "web_proxy_addr: proxy.example.com:3080\nssh_proxy_addr: proxy.example.com:3023\nuser: alice\ncluster: main\ntls_routing_enabled: true\n"
      )
      expect(fs.readFileSync(p.tlsKey, "utf8")).toBe(m.tlsPrivateKeyPem)
      expect(fs.readFileSync(p.sshKey, "utf8")).toMatch(/^-----BEGIN OPENSSH PRIVATE KEY-----\n/)
      expect(fs.readFileSync(p.sshCert, "utf8")).toBe(`${m.sshCert}\n`)
      expect(fs.readFileSync(p.knownHosts, "utf8")).toBe(`${m.knownHosts[0]}\n`)
      // no temp files left behind by the atomic writes
      expect(walk(root).some((f) => f.endsWith(".tmp"))).toBe(false)

      const loaded = yield* Profiles.loadProfile(root)
      expect(loaded.name).toBe("proxy.example.com")
      expect(loaded.current).toBe(true)
      expect(loaded.file).toEqual({
        web_proxy_addr: "proxy.example.com:3080",
        ssh_proxy_addr: "proxy.example.com:3023",
        user: "alice",
        cluster: "main",
        tls_routing_enabled: true
      })
      expect(loaded.tlsCert).toBe(m.tlsCert)
      expect(loaded.sshCert).toBe(m.sshCert)
      expect(loaded.sshPublicKey).toBe(m.sshPublicKey)
      expect(loaded.caCerts).toBe(m.caCerts[0])
    })
  )

  it.effect("current-profile follows the last login and can be switched; a port stays out of the name", () =>
    Effect.gen(function* () {
      const root = tmp()
      yield* Profiles.saveLogin(root, yield* material("a.example.com:4080", "alice", "one"))
      yield* Profiles.saveLogin(root, yield* material("b.example.com", "bob", "two"))
      expect(yield* Profiles.listProfiles(root)).toEqual(["a.example.com", "b.example.com"])
      expect(yield* Profiles.currentProfile(root)).toEqual(Option.some("b.example.com"))
      expect((yield* Profiles.loadProfile(root)).file.user).toBe("bob")
      expect((yield* Profiles.loadProfile(root, "a.example.com:4080")).file.web_proxy_addr).toBe("a.example.com:4080")
      yield* Profiles.setCurrentProfile(root, "a.example.com:4080")
      const a = yield* Profiles.loadProfile(root)
      expect([a.name, a.file.user, a.current]).toEqual(["a.example.com", "alice", true])
      expect((yield* Profiles.loadProfile(root, "b.example.com")).current).toBe(false)
    })
  )

  it.effect("removeLogin deletes every key file of the profile and its pointer; other profiles stay", () =>
    Effect.gen(function* () {
      const root = tmp()
      const a = yield* material("a.example.com", "alice", "one")
      const b = yield* material("b.example.com", "bob", "two")
      yield* Profiles.saveLogin(root, a)
      yield* Profiles.saveLogin(root, b)
      // a database certificate from a later `tsh db login` goes too
      const dbCert = path.join(root, "keys/b.example.com/bob-db/two/pg.crt")
      Profiles.writeFileAtomic(dbCert, "x")

      const removed = yield* Profiles.removeLogin(root)
      expect(removed).toEqual(Option.some({ name: "b.example.com", user: "bob" }))
      expect(walk(root)).toEqual([
        "a.example.com.yaml",
        "keys/a.example.com/alice-ssh/one-cert.pub",
        "keys/a.example.com/alice.crt",
        "keys/a.example.com/alice.key",
        "keys/a.example.com/alice.ssh",
        "keys/a.example.com/alice.ssh.pub",
        "keys/a.example.com/certs.pem",
        "known_hosts"
      ])
      expect(fs.readFileSync(path.join(root, "known_hosts"), "utf8")).toBe(`${a.knownHosts[0]}\n`)
      expect(yield* Profiles.currentProfile(root)).toEqual(Option.none())
      const err = yield* Effect.flip(Profiles.loadProfile(root))
      expect(err.reason).toBe("NotLoggedIn")

      expect(yield* Profiles.removeLogin(root, "a.example.com")).toEqual(Option.some({ name: "a.example.com", user: "alice" }))
      expect(walk(root)).toEqual([])
      expect(fs.existsSync(path.join(root, "keys"))).toBe(false)
      expect(yield* Profiles.removeLogin(root, "a.example.com")).toEqual(Option.none())
    })
  )

  it.effect("removeAllLogins empties the store", () =>
    Effect.gen(function* () {
      const root = tmp()
      yield* Profiles.saveLogin(root, yield* material("a.example.com", "alice", "one"))
      yield* Profiles.saveLogin(root, yield* material("b.example.com", "bob", "two"))
      const removed = yield* Profiles.removeAllLogins(root)
      expect(removed.map((r) => r.name).sort()).toEqual(["a.example.com", "b.example.com"])
      expect(walk(root)).toEqual([])
    })
  )

  it("parses proxy addresses with the 3080 default", () => {
    expect(Profiles.parseProxyAddr("proxy.example.com")).toEqual({ host: "proxy.example.com", port: 3080 })
    expect(Profiles.parseProxyAddr("127.0.0.1:443")).toEqual({ host: "127.0.0.1", port: 443 })
    expect(Profiles.parseProxyAddr("[::1]:3080")).toEqual({ host: "::1", port: 3080 })
    expect(Profiles.parseProxyAddr("https://p.example.com:3080/")).toEqual({ host: "p.example.com", port: 3080 })
    expect(Profiles.parseProxyAddr("p:99999")).toBeUndefined()
    expect(Profiles.parseProxyAddr("a b")).toBeUndefined()
  })

  it("tshHome is $TSH_HOME, else ~/.tsh", () => {
    expect(Profiles.tshHome({ TSH_HOME: "/x/y" })).toBe("/x/y")
    expect(Profiles.tshHome({})).toBe(path.join(os.homedir(), ".tsh"))
  })
})

describe("IdentityFile", () => {
  it.effect("writes Teleport's order (keys, ssh cert, tls cert, @cert-authority, CA certs) and reads it back", () =>
    Effect.gen(function* () {
      const m = yield* material("p.example.com", "alice", "main")
      const extraCa = yield* generateCa("second", "main", 1)
      const contents = {
        tlsPrivateKeyPem: m.tlsPrivateKeyPem,
        sshPrivateKey: m.sshPrivateKey,
        sshCert: m.sshCert,
        tlsCert: m.tlsCert,
        caCerts: [m.caCerts[0]!, extraCa.certPem],
        knownHosts: m.knownHosts
      }
      const text = encodeIdentityFile(contents)
      const order = [
        text.indexOf("-----BEGIN PRIVATE KEY-----"),
        text.indexOf("-----BEGIN OPENSSH PRIVATE KEY-----"),
        text.indexOf("ssh-ed25519-cert-v01@openssh.com"),
        text.indexOf("-----BEGIN CERTIFICATE-----"),
        text.indexOf("@cert-authority")
      ]
      expect(order.every((i) => i >= 0)).toBe(true)
      expect([...order].sort((x, y) => x - y)).toEqual(order)

      const file = path.join(tmp(), "alice.pem")
      yield* writeIdentityFile(file, contents)
      expect(mode(file)).toBe(0o600)
      expect(fs.readFileSync(file, "utf8")).toBe(text)
      const back = yield* readIdentityFile(file)
      expect(back).toEqual(contents)
    })
  )

  it.effect("reads a Teleport-style file with one key and CRLF line ends; refuses garbage", () =>
    Effect.gen(function* () {
      const m = yield* material("p.example.com", "alice", "main")
      const text = [m.tlsPrivateKeyPem, m.sshCert, m.tlsCert, m.caCerts[0]!].join("\n").replace(/\n/g, "\r\n")
      const back = yield* decodeIdentityFile(text)
      expect(back.sshPrivateKey).toBe("")
      expect(back.tlsCert).toBe(m.tlsCert)
      expect(back.caCerts).toEqual([m.caCerts[0]])
      for (const bad of ["", "hello\n", m.tlsPrivateKeyPem, `${m.tlsPrivateKeyPem}${m.sshCert}\n`, "-----BEGIN CERTIFICATE-----\nAAAA\n"]) {
        const e = yield* Effect.flip(decodeIdentityFile(bad))
        expect(e.reason).toBe("Malformed")
      }
    })
  )
})
