/** Cross-checks the SSH certificate codec against OpenSSH's own `ssh-keygen`. */
import { execFileSync } from "node:child_process"
import { generateKeyPairSync, type KeyObject } from "node:crypto"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Either } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import {
  FOREVER,
  decodeCertificate,
  defaultUserExtensions,
  ed25519PublicKeyBlob,
  fingerprintSha256,
  hostCertFields,
  parseOpenSshPrivateKey,
  parsePublicKeyLine,
  privateKeyToOpenSsh,
  publicKeyBlob,
  publicKeyLine,
  randomNonce,
  signCertificate,
  userCertFields,
  verifyCertificate,
  type Certificate
} from "../src/protocols/ssh/cert.ts"

let dir: string
const file = (name: string) => join(dir, name)
const keygen = (...args: Array<string>): string =>
  execFileSync("ssh-keygen", args, { encoding: "utf8", env: { ...process.env, TZ: "UTC" }, stdio: ["ignore", "pipe", "pipe"] })
const newKey = (name: string, type = "ed25519") => {
  keygen("-q", "-t", type, "-N", "", "-C", `${name}@test`, "-f", file(name))
  return Either.getOrThrow(parsePublicKeyLine(readFileSync(file(`${name}.pub`), "utf8"))).blob
}
const readCert = (name: string): Certificate => Either.getOrThrow(decodeCertificate(readFileSync(file(name), "utf8")))

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "remoteler-sshcert-"))
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe("our certificates, read by ssh-keygen -L", () => {
  it("shows principals, key id, serial, validity, critical options and extensions", () => {
    const ca = generateKeyPairSync("ed25519")
    const user = generateKeyPairSync("ed25519")
    const after = Date.UTC(2030, 0, 2, 3, 4, 5) / 1000
    const { line } = signCertificate(
      {
        nonce: randomNonce(),
        publicKey: ed25519PublicKeyBlob(user.publicKey),
        serial: 2n ** 64n - 1n,
        type: "user",
        keyId: "alice@remoteler",
        validPrincipals: ["alice", "root", "ubuntu"],
        validAfter: BigInt(after),
        validBefore: BigInt(after + 3600),
        criticalOptions: { "source-address": "10.0.0.0/8,127.0.0.1", "force-command": "/bin/echo hi" },
        extensions: defaultUserExtensions,
        reserved: new Uint8Array(0)
      },
      ca.privateKey
    )
    writeFileSync(file("ours-cert.pub"), line + "\n")
    const out = keygen("-L", "-f", file("ours-cert.pub"))
    expect(out).toContain("Type: ssh-ed25519-cert-v01@openssh.com user certificate")
    expect(out).toContain(`Signing CA: ED25519 ${fingerprintSha256(publicKeyBlob(ca.publicKey))} (using ssh-ed25519)`)
    expect(out).toContain(`Public key: ED25519-CERT ${fingerprintSha256(ed25519PublicKeyBlob(user.publicKey))}`)
    expect(out).toContain('Key ID: "alice@remoteler"')
    expect(out).toContain("Serial: 18446744073709551615")
    expect(out).toContain("Valid: from 2030-01-02T03:04:05 to 2030-01-02T04:04:05")
    expect(out).toMatch(/Principals: *\n\s+alice\n\s+root\n\s+ubuntu\n/)
    expect(out).toMatch(/Critical Options: *\n\s+force-command \/bin\/echo hi\n\s+source-address 10\.0\.0\.0\/8,127\.0\.0\.1\n/)
    expect(out).toMatch(
      /Extensions: *\n\s+permit-X11-forwarding\n\s+permit-agent-forwarding\n\s+permit-port-forwarding\n\s+permit-pty\n\s+permit-user-rc\n/
    )
  })

  it("accepts certificates signed by ECDSA and RSA CAs, valid forever", () => {
    const user = generateKeyPairSync("ed25519")
    for (const [ca, label] of [
      [generateKeyPairSync("ec", { namedCurve: "P-256" }), "ECDSA SHA256:.* \\(using ecdsa-sha2-nistp256\\)"],
      [generateKeyPairSync("rsa", { modulusLength: 2048 }), "RSA SHA256:.* \\(using rsa-sha2-512\\)"]
    ] as const) {
      const { line } = signCertificate(
        {
          nonce: randomNonce(),
          publicKey: ed25519PublicKeyBlob(user.publicKey),
          serial: 1n,
          type: "host",
          keyId: "node-1",
          validPrincipals: ["node-1.example.com"],
          validAfter: 0n,
          validBefore: FOREVER,
          criticalOptions: {},
          extensions: {},
          reserved: new Uint8Array(0)
        },
        ca.privateKey
      )
      writeFileSync(file("host-cert.pub"), line + "\n")
      const out = keygen("-L", "-f", file("host-cert.pub"))
      expect(out).toContain("host certificate")
      expect(out).toMatch(new RegExp(`Signing CA: ${label}`))
      expect(out).toContain("Valid: forever")
    }
  })
})

describe("ssh-keygen's certificates, read by us", () => {
  it("decodes a user certificate and verifies it against the right CA only", () => {
    const caBlob = newKey("ca")
    const otherCaBlob = newKey("other-ca")
    const userBlob = newKey("user")
    keygen(
      "-q", "-s", file("ca"), "-I", "key-id-1", "-n", "alice,bob", "-V", "+1h", "-z", "42",
      "-O", "force-command=/usr/bin/true", "-O", "source-address=127.0.0.0/8", "-O", "no-x11-forwarding",
      file("user.pub")
    )
    const cert = readCert("user-cert.pub")
    expect(cert.certType).toBe("ssh-ed25519-cert-v01@openssh.com")
    expect(cert.type).toBe("user")
    expect(cert.keyId).toBe("key-id-1")
    expect(cert.serial).toBe(42n)
    expect(cert.validPrincipals).toEqual(["alice", "bob"])
    expect(cert.publicKey).toEqual(userBlob)
    expect(cert.signatureKey).toEqual(caBlob)
    expect(cert.criticalOptions).toEqual({ "force-command": "/usr/bin/true", "source-address": "127.0.0.0/8" })
    expect(cert.extensions).toEqual({
      "permit-agent-forwarding": "",
      "permit-port-forwarding": "",
      "permit-pty": "",
      "permit-user-rc": ""
    })
    const now = new Date()
    expect(Number(cert.validBefore - cert.validAfter)).toBeGreaterThanOrEqual(3600)
    const opts = { trustedCaKeys: [caBlob], now, principal: "bob", certType: "user" as const, remoteAddress: "127.0.0.1" }
    const ok = verifyCertificate(cert, opts)
    expect(Either.isRight(ok) && ok.right.forceCommand).toBe("/usr/bin/true")
    const wrongCa = verifyCertificate(cert, { ...opts, trustedCaKeys: [otherCaBlob] })
    expect(Either.isLeft(wrongCa) && wrongCa.left.reason).toBe("UntrustedCa")
    const later = verifyCertificate(cert, { ...opts, now: new Date(now.getTime() + 2 * 3600_000) })
    expect(Either.isLeft(later) && later.left.reason).toBe("Expired")
    const elsewhere = verifyCertificate(cert, { ...opts, remoteAddress: "10.0.0.1" })
    expect(Either.isLeft(elsewhere) && elsewhere.left.reason).toBe("SourceAddressNotAllowed")
  })

  it("refuses a custom critical option that OpenSSH would not understand", () => {
    const caBlob = newKey("ca2")
    newKey("user2")
    keygen("-q", "-s", file("ca2"), "-I", "id2", "-n", "alice", "-V", "+1h", "-O", "critical:made-up@example.com=1", file("user2.pub"))
    const cert = readCert("user2-cert.pub")
    expect(cert.criticalOptions).toEqual({ "made-up@example.com": "1" })
    const r = verifyCertificate(cert, { trustedCaKeys: [caBlob], now: new Date(), certType: "user" })
    expect(Either.isLeft(r) && r.left.reason).toBe("UnsupportedCriticalOption")
  })

  it("decodes host certificates (-h), including an ECDSA subject key and an RSA CA", () => {
    const rsaCa = newKey("rsa-ca", "rsa")
    const hostBlob = newKey("host", "ecdsa")
    keygen("-q", "-s", file("rsa-ca"), "-h", "-I", "host-uuid", "-n", "node1,node1.example.com", "-V", "always:forever", file("host.pub"))
    const cert = readCert("host-cert.pub")
    expect(cert.certType).toBe("ecdsa-sha2-nistp256-cert-v01@openssh.com")
    expect(cert.type).toBe("host")
    expect(cert.keyId).toBe("host-uuid")
    expect(cert.validPrincipals).toEqual(["node1", "node1.example.com"])
    expect(cert.validAfter).toBe(0n)
    expect(cert.validBefore).toBe(FOREVER)
    expect(cert.extensions).toEqual({})
    expect(cert.publicKey).toEqual(hostBlob)
    expect(cert.signatureAlgorithm).toMatch(/^rsa-sha2-(256|512)$/)
    const opts = { trustedCaKeys: [rsaCa], now: new Date(), principal: "node1.example.com", certType: "host" as const }
    expect(Either.isRight(verifyCertificate(cert, opts))).toBe(true)
    const asUser = verifyCertificate(cert, { ...opts, certType: "user" })
    expect(Either.isLeft(asUser) && asUser.left.reason).toBe("WrongCertType")
  })
})

describe("OpenSSH private keys", () => {
  it("ssh-keygen -y derives the matching public key from our private key file", () => {
    const key = generateKeyPairSync("ed25519")
    writeFileSync(file("ours"), privateKeyToOpenSsh(key.privateKey, "alice@laptop"), { mode: 0o600 })
    const printed = keygen("-y", "-f", file("ours")).trim()
    expect(printed).toBe(publicKeyLine(ed25519PublicKeyBlob(key.publicKey), "alice@laptop"))
    const back = Either.getOrThrow(parseOpenSshPrivateKey(readFileSync(file("ours"), "utf8")))
    expect(back.comment).toBe("alice@laptop")
    expect(back.privateKey.export({ format: "jwk" })).toEqual(key.privateKey.export({ format: "jwk" }))
  })

  it("reads a private key written by ssh-keygen", () => {
    const blob = newKey("theirs")
    const parsed = Either.getOrThrow(parseOpenSshPrivateKey(readFileSync(file("theirs"), "utf8")))
    expect(parsed.publicKeyBlob).toEqual(blob)
    expect(parsed.comment).toBe("theirs@test")
    expect(keygen("-l", "-f", file("theirs.pub"))).toContain(fingerprintSha256(blob))
  })

  it("refuses an encrypted key and garbage without throwing", () => {
    keygen("-q", "-t", "ed25519", "-N", "secret-pass", "-f", file("enc"))
    const enc = parseOpenSshPrivateKey(readFileSync(file("enc"), "utf8"))
    expect(Either.isLeft(enc) && enc.left.reason).toBe("Encrypted")
    expect(Either.isLeft(parseOpenSshPrivateKey("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----"))).toBe(true)
    expect(Either.isLeft(parseOpenSshPrivateKey("hello"))).toBe(true)
  })
})

describe("real sshd and ssh", () => {
  const sshd = "/usr/sbin/sshd"
  // sshd as a non-root user can only log in as itself; root here, so the principal is `root`

  // Needs root (principal root) and sshd, both of which CI has: a missing one fails, it does not skip.
  it(
    "sshd (TrustedUserCAKeys) accepts our user certificate and ssh (@cert-authority) accepts our host certificate",
    async () => {
      const { createServer } = await import("node:net")
      const { spawn } = await import("node:child_process")
      const { mkdirSync } = await import("node:fs")
      const port = await new Promise<number>((resolve) => {
        const s = createServer().listen(0, "127.0.0.1", () => {
          const p = (s.address() as { port: number }).port
          s.close(() => resolve(p))
        })
      })
      const userCa = generateKeyPairSync("ed25519")
      const hostCa = generateKeyPairSync("ed25519")
      const hostKey = generateKeyPairSync("ed25519")
      const userKey = generateKeyPairSync("ed25519")
      const now = new Date()
      const expires = new Date(now.getTime() + 3600_000)
      writeFileSync(file("sshd_host_key"), privateKeyToOpenSsh(hostKey.privateKey, "host"), { mode: 0o600 })
      writeFileSync(
        file("sshd_host_key-cert.pub"),
        signCertificate(
          hostCertFields({ publicKey: publicKeyBlob(hostKey.publicKey), hostId: "host-uuid", principals: ["127.0.0.1", "node1"], expires, now }),
          hostCa.privateKey
        ).line + "\n"
      )
      writeFileSync(file("user_ca.pub"), publicKeyLine(publicKeyBlob(userCa.publicKey), "user-ca") + "\n")
      writeFileSync(file("id_user"), privateKeyToOpenSsh(userKey.privateKey, "alice"), { mode: 0o600 })
      const userCert = (ca: KeyObject, options: Record<string, string> = {}) =>
        signCertificate(
          userCertFields({
            publicKey: publicKeyBlob(userKey.publicKey),
            username: "alice",
            logins: ["root"],
            roles: ["dev"],
            traits: { logins: ["root"] },
            routeToCluster: "main",
            expires,
            now,
            criticalOptions: options
          }),
          ca
        ).line + "\n"
      writeFileSync(
        file("known_hosts"),
        `@cert-authority [127.0.0.1]:${port} ${publicKeyLine(publicKeyBlob(hostCa.publicKey), "host-ca")}\n`
      )
      writeFileSync(
        file("sshd_config"),
        [
          `Port ${port}`,
          "ListenAddress 127.0.0.1",
          `HostKey ${file("sshd_host_key")}`,
          `HostCertificate ${file("sshd_host_key-cert.pub")}`,
          `TrustedUserCAKeys ${file("user_ca.pub")}`,
          "AuthorizedKeysFile none",
          "PasswordAuthentication no",
          "KbdInteractiveAuthentication no",
          "PermitRootLogin prohibit-password",
          "StrictModes no",
          "UsePAM no",
          "PidFile none",
          "LogLevel VERBOSE"
        ].join("\n") + "\n"
      )
      mkdirSync("/run/sshd", { recursive: true })
      const daemon = spawn(sshd, ["-D", "-e", "-f", file("sshd_config")], { stdio: ["ignore", "ignore", "pipe"] })
      let log = ""
      daemon.stderr.on("data", (d: Buffer) => (log += d.toString()))
      try {
        await new Promise<void>((resolve, reject) => {
          const t = setInterval(() => {
            if (log.includes("Server listening")) {
              clearInterval(t)
              resolve()
            }
            if (daemon.exitCode !== null) {
              clearInterval(t)
              reject(new Error(`sshd exited: ${log}`))
            }
          }, 50)
        })
        const ssh = (certText: string, command = "echo hello-from-sshd") => {
          writeFileSync(file("id_user-cert.pub"), certText)
          return execFileSync(
            "ssh",
            [
              "-F", "/dev/null",
              "-p", String(port),
              "-i", file("id_user"),
              "-o", `CertificateFile=${file("id_user-cert.pub")}`,
              "-o", "IdentitiesOnly=yes",
              "-o", "BatchMode=yes",
              "-o", "StrictHostKeyChecking=yes",
              "-o", `UserKnownHostsFile=${file("known_hosts")}`,
              "-o", "GlobalKnownHostsFile=/dev/null",
              "root@127.0.0.1",
              command
            ],
            { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 20_000 }
          )
        }
        expect(ssh(userCert(userCa.privateKey)).trim()).toBe("hello-from-sshd")
        expect(ssh(userCert(userCa.privateKey, { "force-command": "echo forced" })).trim()).toBe("forced")
        expect(() => ssh(userCert(generateKeyPairSync("ed25519").privateKey))).toThrow()
        expect(() => ssh(userCert(userCa.privateKey, { "source-address": "10.99.0.0/16" }))).toThrow()
      } finally {
        daemon.kill()
      }
    }
  )
})
