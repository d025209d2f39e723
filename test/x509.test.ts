/** X.509 identities: our certificates checked by `openssl`, subject round trips, chain verification. */
import { execFileSync } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect, Either, Exit } from "effect"
import * as fc from "fast-check"
import * as x509 from "@peculiar/x509"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Identity, RouteToDatabase, makeHostIdentity } from "../src/domain/Identity.ts"
import {
  type CertificateAuthority,
  type EcdsaKeyPair,
  type SubjectIdentity,
  decodeSubject,
  encodeSubject,
  generateCa,
  generateEcdsaKeyPair,
  parseCertIdentity,
  signHostCert,
  signUserCert,
  verifyChain
} from "../src/adapters/x509.ts"

let dir: string
let ca: CertificateAuthority
let otherCa: CertificateAuthority
let sameNameCa: CertificateAuthority
let client: EcdsaKeyPair
const file = (name: string, content?: string) => {
  const p = join(dir, name)
  if (content !== undefined) writeFileSync(p, content)
  return p
}
const openssl = (...args: Array<string>): string =>
  execFileSync("openssl", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] })
const run = <A, E>(e: Effect.Effect<A, E>) => Effect.runPromise(e)
const chainReason = async (e: Effect.Effect<unknown, { readonly reason: string }>) => {
  const exit = await Effect.runPromiseExit(Effect.flip(e))
  return Exit.isSuccess(exit) ? exit.value.reason : "ok"
}

const alice = new Identity({
  username: "alice",
  roles: ["dev", "admin"],
  logins: ["root", "alice"],
  routeToCluster: "main",
  traits: { logins: ["root", "alice"], db_users: ["postgres"] },
  routeToDatabase: new RouteToDatabase({ serviceName: "pg-prod", protocol: "postgres", username: "postgres", database: "app" }),
  expires: new Date(Date.now() + 3600_000)
})

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "remoteler-x509-"))
  ca = await run(generateCa("main", "main", 365))
  otherCa = await run(generateCa("other", "other", 365))
  sameNameCa = await run(generateCa("main", "main", 365))
  client = await run(generateEcdsaKeyPair())
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe("user certificates", () => {
  it("openssl verify accepts our user certificate and openssl reads our key", async () => {
    const { pem } = await run(signUserCert({ caCert: ca.certPem, caKey: ca.keyPem, publicKey: client.publicKeyPem, identity: alice, notAfter: alice.expires }))
    const caFile = file("ca.pem", ca.certPem)
    const userFile = file("user.pem", pem)
    expect(openssl("verify", "-CAfile", caFile, "-purpose", "sslclient", userFile).trim()).toBe(`${userFile}: OK`)
    // the PKCS#8 key is readable by openssl and matches the certificate's public key
    const keyFile = file("user.key", client.privateKeyPem)
    expect(openssl("pkey", "-in", keyFile, "-pubout")).toBe(openssl("x509", "-in", userFile, "-pubkey", "-noout"))
    expect(openssl("pkey", "-in", file("ca.key", ca.keyPem), "-noout", "-check")).toContain("Key is valid")
  })

  it("openssl x509 -text shows the identity in the subject", async () => {
    const now = new Date()
    const { pem, cert } = await run(
      signUserCert({ caCert: ca.cert, caKey: ca.privateKey, publicKey: client.publicKey, identity: alice, notAfter: alice.expires, now })
    )
    const text = openssl("x509", "-text", "-noout", "-nameopt", "multiline,-esc_msb,utf8", "-in", file("user2.pem", pem))
    for (const line of [
      "commonName                = alice",
      "organizationName          = dev",
      "organizationName          = admin",
      "localityName              = root",
      "localityName              = alice",
      "streetAddress             = main",
      `postalCode                = ${JSON.stringify(alice.traits)}`,
      "1.3.9999.2.1 = pg-prod",
      "1.3.9999.2.2 = postgres",
      "1.3.9999.2.3 = postgres",
      "1.3.9999.2.4 = app"
    ]) {
      const [name = "", value = ""] = line.split(/\s+= /)
      expect(text).toMatch(new RegExp(`^\\s+${name.replace(/\./g, "\\.")}\\s+= ${value.replace(/[[\]{}.]/g, "\\$&")}$`, "m"))
    }
    expect(text).toContain("TLS Web Client Authentication")
    expect(text).not.toContain("TLS Web Server Authentication")
    expect(text).toMatch(/CA:FALSE/)
    // NotBefore one minute in the past; serial 128 random bits, positive
    expect(now.getTime() - cert.notBefore.getTime()).toBeGreaterThanOrEqual(59_000)
    expect(now.getTime() - cert.notBefore.getTime()).toBeLessThanOrEqual(61_000)
    expect(cert.serialNumber.replace(/^00/, "").length).toBeGreaterThanOrEqual(30)
    expect(cert.serialNumber.length).toBeLessThanOrEqual(34)
    const serialLine = openssl("x509", "-noout", "-serial", "-in", file("user2.pem")).trim()
    expect(serialLine).toMatch(/^serial=[0-9A-F]+$/)
    // and the default one-line form carries the same fields
    const oneLine = openssl("x509", "-noout", "-subject", "-in", file("user2.pem"))
    expect(oneLine).toContain("CN = alice, O = dev, O = admin, L = root, L = alice, street = main")
  })

  it("parseCertIdentity gives back the identity, with NotAfter as expiry", async () => {
    const { pem } = await run(signUserCert({ caCert: ca.certPem, caKey: ca.keyPem, publicKey: client.publicKeyPem, identity: alice, notAfter: alice.expires }))
    const id = Either.getOrThrow(parseCertIdentity(pem))
    expect({ ...id, expires: undefined }).toEqual({ ...alice, expires: undefined })
    expect(Math.abs(id.expires.getTime() - alice.expires.getTime())).toBeLessThan(1000)
    expect(id).toBeInstanceOf(Identity)
  })
})

describe("verifyChain", () => {
  const sign = (over: { notAfter?: Date; now?: Date; by?: CertificateAuthority } = {}) =>
    run(
      signUserCert({
        caCert: (over.by ?? ca).cert,
        caKey: (over.by ?? ca).privateKey,
        publicKey: client.publicKeyPem,
        identity: alice,
        notAfter: over.notAfter ?? new Date(Date.now() + 3600_000),
        ...(over.now ? { now: over.now } : {})
      })
    )

  it("accepts a certificate from a trusted CA", async () => {
    const { pem } = await sign()
    expect(await chainReason(verifyChain(pem, [otherCa.certPem, ca.certPem], new Date()))).toBe("ok")
    expect(await chainReason(verifyChain(pem, [otherCa.certPem + ca.certPem], new Date()))).toBe("ok")
  })

  it("refuses a certificate from another CA", async () => {
    const { pem } = await sign({ by: otherCa })
    expect(await chainReason(verifyChain(pem, [ca.certPem], new Date()))).toBe("UnknownAuthority")
    const forged = await sign({ by: sameNameCa })
    expect(await chainReason(verifyChain(forged.pem, [ca.certPem], new Date()))).toBe("BadSignature")
    expect(() => openssl("verify", "-CAfile", file("ca3.pem", ca.certPem), file("forged.pem", forged.pem))).toThrow()
  })

  it("refuses an expired certificate and one not yet valid", async () => {
    const past = new Date(Date.now() - 10 * 86_400_000)
    const { pem } = await sign({ now: past, notAfter: new Date(past.getTime() + 3600_000) })
    expect(await chainReason(verifyChain(pem, [ca.certPem], new Date()))).toBe("Expired")
    const fresh = await sign()
    expect(await chainReason(verifyChain(fresh.pem, [ca.certPem], new Date(Date.now() + 2 * 3600_000)))).toBe("Expired")
    expect(await chainReason(verifyChain(fresh.pem, [ca.certPem], new Date(Date.now() - 5 * 60_000)))).toBe("NotYetValid")
    expect(await chainReason(verifyChain("garbage", [ca.certPem], new Date()))).toBe("Malformed")
  })
})

describe("host certificates", () => {
  it("carry DNS and IP SANs, serverAuth, and the host identity", async () => {
    const host = makeHostIdentity({
      hostId: "0b7f6a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
      nodeName: "node1",
      systemRole: "Db",
      clusterName: "main",
      expires: new Date(Date.now() + 86_400_000)
    })
    const { pem } = await run(
      signHostCert({
        caCert: ca.certPem,
        caKey: ca.keyPem,
        publicKey: client.publicKeyPem,
        identity: host,
        notAfter: host.expires,
        dnsNames: ["node1", "node1.example.com"],
        ipAddresses: ["127.0.0.1", "::1"]
      })
    )
    const hostFile = file("host.pem", pem)
    const text = openssl("x509", "-text", "-noout", "-in", hostFile)
    expect(text).toContain("IP Address:127.0.0.1")
    expect(text).toContain("IP Address:0:0:0:0:0:0:0:1")
    expect(text).toContain("DNS:node1.example.com")
    expect(text).toContain("TLS Web Server Authentication, TLS Web Client Authentication")
    expect(text).toContain(`CN = ${host.hostId}, O = Db`)
    expect(openssl("verify", "-CAfile", file("ca.pem", ca.certPem), "-purpose", "sslserver", hostFile).trim()).toBe(`${hostFile}: OK`)
    const back = Either.getOrThrow(parseCertIdentity(pem))
    expect(back.systemRole).toBe("Db")
    expect(back.nodeName).toBe("node1")
    expect(back.hostId).toBe(host.hostId)
    expect({ ...back, expires: undefined }).toEqual({ ...host, expires: undefined })
  })
})

describe("subject encoding", () => {
  const text = fc.string({ unit: "grapheme", minLength: 1, maxLength: 20 })
  const maybeEmpty = fc.string({ unit: "grapheme", maxLength: 20 })
  const userIdentity: fc.Arbitrary<SubjectIdentity> = fc.record(
    {
      username: text,
      roles: fc.array(text, { maxLength: 5 }),
      logins: fc.array(text, { maxLength: 5 }),
      routeToCluster: maybeEmpty,
      traits: fc.dictionary(maybeEmpty, fc.array(maybeEmpty, { maxLength: 3 }), { maxKeys: 4, noNullPrototype: true }),
      routeToDatabase: fc
        .record({ serviceName: text, protocol: maybeEmpty, username: maybeEmpty, database: maybeEmpty })
        .map((r) => new RouteToDatabase(r))
    },
    { requiredKeys: ["username", "roles", "logins", "routeToCluster", "traits"] }
  )
  const hostIdentity: fc.Arbitrary<SubjectIdentity> = fc
    .record({
      hostId: fc.uuid(),
      nodeName: text,
      systemRole: fc.constantFrom("Node" as const, "Db" as const, "Proxy" as const, "Auth" as const),
      clusterName: maybeEmpty,
      principals: fc.array(text, { maxLength: 3 })
    })
    .map((h) => {
      const { expires: _expires, ...rest } = makeHostIdentity({ ...h, expires: new Date(0) })
      return rest
    })

  it("decodeSubject(encodeSubject(id)) = id, through DER", () => {
    fc.assert(
      fc.property(fc.oneof(userIdentity, hostIdentity), (id) => {
        const der = new Uint8Array(encodeSubject(id).toArrayBuffer())
        const back = Either.getOrThrow(decodeSubject(der))
        expect({ ...back }).toEqual({ ...id })
      }),
      { numRuns: 300 }
    )
  })

  it("keeps a trait named __proto__ (fast-check found it dropped)", () => {
    const traits = JSON.parse('{"__proto__":["x"],"logins":["a"]}') as Record<string, Array<string>>
    const id = { username: "u", roles: [], logins: [], routeToCluster: "main", traits }
    const back = Either.getOrThrow(decodeSubject(new Uint8Array(encodeSubject(id).toArrayBuffer())))
    expect(Object.keys(back.traits).sort()).toEqual(["__proto__", "logins"])
    expect(Object.getOwnPropertyDescriptor(back.traits, "__proto__")?.value).toEqual(["x"])
  })

  it("rejects subjects that are not identities, without throwing", () => {
    expect(Either.isLeft(decodeSubject(new Uint8Array([1, 2, 3])))).toBe(true)
    const noCn = new x509.Name([{ "2.5.4.10": [{ utf8String: "dev" }] }])
    expect(Either.isLeft(decodeSubject(noCn))).toBe(true)
    const badTraits = new x509.Name([{ "2.5.4.3": [{ utf8String: "a" }] }, { "2.5.4.17": [{ utf8String: "{not json" }] }])
    expect(Either.isLeft(decodeSubject(badTraits))).toBe(true)
    const badRole = new x509.Name([{ "2.5.4.3": [{ utf8String: "h" }] }, { "1.3.9999.42.1": [{ utf8String: "n" }] }])
    expect(Either.isLeft(decodeSubject(badRole))).toBe(true)
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        decodeSubject(bytes)
      })
    )
  })
})
