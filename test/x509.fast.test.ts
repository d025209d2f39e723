/**
 * The DER-writing issuer in src/adapters/x509.ts against the @peculiar/x509 issuer it replaced,
 * kept here as the reference: same inputs give the same certificate but for the serial and the
 * signature, and openssl, @peculiar/x509 and node all accept the result.
 */
import { execFileSync } from "node:child_process"
import { X509Certificate as NodeX509, createPublicKey, generateKeyPairSync, webcrypto } from "node:crypto"
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
  type HostSignParams,
  type IssuedCertificate,
  type SignParams,
  type SubjectIdentity,
  decodeSubject,
  encodeSubject,
  generateCa,
  generateEcdsaKeyPair,
  importEcdsaPrivateKey,
  parseCertIdentity,
  pemToDer,
  signHostCert,
  signUserCert,
  toPem,
  verifyChain
} from "../src/adapters/x509.ts"

// ---------------------------------------------------------------------------------------------
// The reference: the schema-driven issuer as it was before the DER writer (same extensions, order,
// names), on WebCrypto.

const subtle = webcrypto.subtle

const referenceIssue = async (
  params: SignParams,
  usages: ReadonlyArray<string>,
  sans: ReadonlyArray<x509.JsonGeneralName>
): Promise<x509.X509Certificate> => {
  const caCert = typeof params.caCert === "string" ? new x509.X509Certificate(params.caCert) : params.caCert
  const caKey =
    typeof params.caKey === "string"
      ? await Effect.runPromise(importEcdsaPrivateKey(params.caKey))
      : params.caKey
  const publicKey = new x509.PublicKey(typeof params.publicKey === "string" ? params.publicKey : (params.publicKey as Uint8Array))
  const now = params.now ?? new Date()
  const extensions: Array<x509.Extension> = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
    new x509.ExtendedKeyUsageExtension([...usages], false),
    await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey),
    await x509.SubjectKeyIdentifierExtension.create(publicKey)
  ]
  if (sans.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension([...sans], false))
  return x509.X509CertificateGenerator.create({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(16))).toString("hex"),
    subject: encodeSubject(params.identity),
    issuer: new x509.Name(caCert.subjectName.toArrayBuffer()),
    notBefore: new Date(now.getTime() - 60_000),
    notAfter: params.notAfter,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    publicKey,
    signingKey: caKey,
    extensions
  })
}

const referenceUser = (p: SignParams) => referenceIssue(p, [x509.ExtendedKeyUsage.clientAuth], [])
const referenceHost = (p: HostSignParams) =>
  referenceIssue(
    p,
    [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
    [
      ...(p.dnsNames ?? []).map((value): x509.JsonGeneralName => ({ type: "dns", value })),
      ...(p.ipAddresses ?? []).map((value): x509.JsonGeneralName => ({ type: "ip", value }))
    ]
  )

// ---------------------------------------------------------------------------------------------

let dir: string
let ca: CertificateAuthority
let client: EcdsaKeyPair
const file = (name: string, content: string) => {
  const p = join(dir, name)
  writeFileSync(p, content)
  return p
}
const openssl = (...args: Array<string>): string =>
  execFileSync("openssl", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] })
const run = <A, E>(e: Effect.Effect<A, E>) => Effect.runPromise(e)
const failure = async (e: Effect.Effect<unknown, { readonly reason: string }>) => {
  const exit = await Effect.runPromiseExit(Effect.flip(e))
  return Exit.isSuccess(exit) ? exit.value.reason : "ok"
}
const hex = (b: ArrayBuffer | Uint8Array) => Buffer.from(b instanceof ArrayBuffer ? new Uint8Array(b) : b).toString("hex")
const der = (issued: IssuedCertificate) => Either.getOrThrow(pemToDer(issued.pem))

const alice: SubjectIdentity = {
  username: "alice",
  roles: ["dev", "admin"],
  logins: ["root", "alice"],
  routeToCluster: "main",
  traits: { logins: ["root", "alice"], db_users: ["postgres"], "名前": ["ünïcødé"] },
  routeToDatabase: new RouteToDatabase({ serviceName: "pg-prod", protocol: "postgres", username: "postgres", database: "app" })
}
const host = (() => {
  const { expires: _e, ...rest } = makeHostIdentity({
    hostId: "0b7f6a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
    nodeName: "node1",
    systemRole: "Db",
    clusterName: "main",
    expires: new Date(0)
  })
  return rest
})()
const hostSans = { dnsNames: ["node1", "node1.example.com", "*.node1.example.com"], ipAddresses: ["127.0.0.1", "::1", "fe80::1:2", "2001:db8:0:0:1:2:3:4"] }

/** The same certificate from both issuers: same key, identity, validity. */
const pair = async (kind: "user" | "host", overrides: Partial<HostSignParams> = {}) => {
  const now = new Date(Math.floor(Date.now() / 1000) * 1000)
  const params: HostSignParams = {
    caCert: ca.certPem,
    caKey: ca.keyPem,
    publicKey: client.publicKeyPem,
    identity: kind === "user" ? alice : host,
    notAfter: new Date(now.getTime() + 3600_000),
    now,
    ...(kind === "host" ? hostSans : {}),
    ...overrides
  }
  const fast = await run(kind === "user" ? signUserCert(params) : signHostCert(params))
  const reference = await (kind === "user" ? referenceUser(params) : referenceHost(params))
  return { fast, reference, params }
}

/** `openssl x509 -text` without the lines that must differ (serial, signature). */
const textWithoutRandom = (pem: string, name: string) =>
  openssl("x509", "-text", "-noout", "-nameopt", "multiline,-esc_msb,utf8", "-in", file(name, pem))
    .replace(/Serial Number:\n?[^\n]*\n/, "")
    .replace(/Signature Value:[\s\S]*$/, "")

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "remoteler-x509-fast-"))
  ca = await run(generateCa("main", "main", 365))
  client = await run(generateEcdsaKeyPair())
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe("certificates from the DER writer", () => {
  for (const kind of ["user", "host"] as const) {
    it(`${kind}: every field but serial and signature matches the @peculiar/x509 issuer`, async () => {
      const { fast, reference } = await pair(kind)
      const a = fast.cert
      const b = reference
      expect(hex(a.subjectName.toArrayBuffer())).toBe(hex(b.subjectName.toArrayBuffer()))
      expect(hex(a.issuerName.toArrayBuffer())).toBe(hex(b.issuerName.toArrayBuffer()))
      expect(hex(a.publicKey.rawData)).toBe(hex(b.publicKey.rawData))
      expect(a.notBefore.getTime()).toBe(b.notBefore.getTime())
      expect(a.notAfter.getTime()).toBe(b.notAfter.getTime())
      expect(a.signatureAlgorithm).toEqual(b.signatureAlgorithm)
      // the extensions, byte for byte and in the same order
      expect(a.extensions.map((e) => hex(e.rawData))).toEqual(b.extensions.map((e) => hex(e.rawData)))
      expect(a.extensions.map((e) => e.type)).toEqual(
        ["2.5.29.19", "2.5.29.15", "2.5.29.37", "2.5.29.35", "2.5.29.14", ...(kind === "host" ? ["2.5.29.17"] : [])]
      )
      // and openssl prints the same certificate
      expect(textWithoutRandom(fast.pem, `${kind}-fast.pem`)).toBe(textWithoutRandom(reference.toString("pem"), `${kind}-ref.pem`))
    })

    it(`${kind}: openssl verify, @peculiar/x509 verify and node verify accept it`, async () => {
      const { fast } = await pair(kind)
      const path = file(`${kind}.pem`, fast.pem)
      const purpose = kind === "user" ? "sslclient" : "sslserver"
      expect(openssl("verify", "-CAfile", file("ca.pem", ca.certPem), "-purpose", purpose, path).trim()).toBe(`${path}: OK`)
      expect(await fast.cert.verify({ publicKey: ca.cert.publicKey, signatureOnly: true })).toBe(true)
      expect(new NodeX509(fast.pem).verify(createPublicKey(ca.cert.publicKey.toString("pem")))).toBe(true)
      expect(new NodeX509(fast.pem).checkIssued(new NodeX509(ca.certPem))).toBe(true)
      expect(await Effect.runPromise(Effect.either(verifyChain(fast.pem, [ca.certPem])))).toSatisfy(Either.isRight)
      // the PEM is the DER, as @peculiar/x509 writes it
      expect(fast.pem).toBe(`${fast.cert.toString("pem")}\n`)
    })
  }

  it("openssl reads the host SANs, IPv4, IPv6 and v4-in-v6 (which @peculiar/x509 could not parse)", async () => {
    const { fast } = await pair("host")
    const text = openssl("x509", "-text", "-noout", "-in", file("host-san.pem", fast.pem))
    expect(text).toContain(
      "DNS:node1, DNS:node1.example.com, DNS:*.node1.example.com, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, IP Address:FE80:0:0:0:0:0:1:2, IP Address:2001:DB8:0:0:1:2:3:4"
    )
    const mapped = await run(signHostCert({ caCert: ca.cert, caKey: ca.privateKey, publicKey: client.publicKeyPem, identity: host, notAfter: new Date(Date.now() + 60_000), ipAddresses: ["::ffff:10.0.0.1", "2001:db8::"] }))
    expect(openssl("x509", "-text", "-noout", "-in", file("host-mapped.pem", mapped.pem))).toContain("IP Address:0:0:0:0:0:FFFF:A00:1, IP Address:2001:DB8:0:0:0:0:0:0")
    expect(text).toContain("TLS Web Server Authentication, TLS Web Client Authentication")
  })

  it("decodeSubject and parseCertIdentity give the identity back", async () => {
    for (const kind of ["user", "host"] as const) {
      const { fast, params } = await pair(kind)
      expect({ ...Either.getOrThrow(decodeSubject(fast.cert.subjectName)) }).toEqual({ ...params.identity })
      const id = Either.getOrThrow(parseCertIdentity(fast.pem))
      expect(id).toBeInstanceOf(Identity)
      expect({ ...id, expires: undefined }).toEqual({ ...params.identity, expires: undefined })
      expect(id.expires.getTime()).toBe(params.notAfter.getTime())
    }
  })

  it("the subject DER equals encodeSubject's for any identity", async () => {
    const text = fc.string({ unit: "grapheme", minLength: 1, maxLength: 12 })
    const maybeEmpty = fc.string({ unit: "grapheme", maxLength: 12 })
    const identity: fc.Arbitrary<SubjectIdentity> = fc.record(
      {
        username: text,
        roles: fc.array(text, { maxLength: 4 }),
        logins: fc.array(text, { maxLength: 4 }),
        routeToCluster: maybeEmpty,
        traits: fc.dictionary(maybeEmpty, fc.array(maybeEmpty, { maxLength: 3 }), { maxKeys: 3, noNullPrototype: true }),
        routeToDatabase: fc
          .record({ serviceName: text, protocol: maybeEmpty, username: maybeEmpty, database: maybeEmpty })
          .map((r) => new RouteToDatabase(r))
      },
      { requiredKeys: ["username", "roles", "logins", "routeToCluster", "traits"] }
    )
    await fc.assert(
      fc.asyncProperty(identity, async (id) => {
        const issued = await run(signUserCert({ caCert: ca.cert, caKey: ca.privateKey, publicKey: client.publicKeyPem, identity: id, notAfter: new Date(Date.now() + 60_000) }))
        expect(hex(issued.cert.subjectName.toArrayBuffer())).toBe(hex(encodeSubject(id).toArrayBuffer()))
        // decodeSubject drops a trait named __proto__ (Schema's record decoding), on either issuer's DER
        if (!Object.keys(id.traits).includes("__proto__")) {
          expect({ ...Either.getOrThrow(decodeSubject(issued.cert.subjectName)) }).toEqual({ ...id })
        }
      }),
      { numRuns: 200 }
    )
  })

  it("NotBefore is a minute before now; dates from 2050 on are GeneralizedTime, as before", async () => {
    const notAfter = new Date(Date.UTC(2051, 5, 7, 8, 9, 10, 999))
    const { fast, reference } = await pair("user", { notAfter })
    expect(fast.cert.notAfter.toISOString()).toBe("2051-06-07T08:09:10.000Z")
    expect(textWithoutRandom(fast.pem, "2051-fast.pem")).toBe(textWithoutRandom(reference.toString("pem"), "2051-ref.pem"))
    expect(openssl("x509", "-noout", "-enddate", "-in", file("2051.pem", fast.pem)).trim()).toBe("notAfter=Jun  7 08:09:10 2051 GMT")
    const now = new Date()
    const issued = await run(signUserCert({ caCert: ca.cert, caKey: ca.privateKey, publicKey: client.publicKeyPem, identity: alice, notAfter, now }))
    expect(issued.cert.notBefore.getTime()).toBe(Math.floor((now.getTime() - 60_000) / 1000) * 1000)
  })

  it("serials are 128 random bits, positive, minimal DER", async () => {
    const serials = new Set<string>()
    for (let i = 0; i < 600; i++) {
      const issued = await run(signUserCert({ caCert: ca.cert, caKey: ca.privateKey, publicKey: client.publicKeyPem, identity: alice, notAfter: new Date(Date.now() + 60_000) }))
      const bytes = Buffer.from(new NodeX509(issued.pem).serialNumber, "hex")
      // node prints the INTEGER's value; DER adds 0x00 only before a set top bit
      expect(bytes.length).toBeLessThanOrEqual(16)
      expect(bytes.length).toBeGreaterThanOrEqual(13)
      serials.add(bytes.toString("hex"))
    }
    expect(serials.size).toBe(600)
  })

  it("takes the CA as PEM or parsed, and the subject key as PEM, DER, KeyObject or CryptoKey", async () => {
    const spki = Either.getOrThrow(pemToDer(client.publicKeyPem))
    const keys = [client.publicKeyPem, spki, createPublicKey(client.publicKeyPem), client.publicKey, client.privateKey]
    const cas = [
      { caCert: ca.certPem, caKey: ca.keyPem },
      { caCert: ca.cert, caKey: ca.privateKey }
    ]
    for (const c of cas) {
      for (const publicKey of keys) {
        const issued = await run(signUserCert({ ...c, publicKey, identity: alice, notAfter: new Date(Date.now() + 60_000) }))
        expect(hex(issued.cert.publicKey.rawData)).toBe(hex(spki))
        expect(new NodeX509(issued.pem).verify(createPublicKey(ca.cert.publicKey.toString("pem")))).toBe(true)
      }
    }
  })

  it("refuses bad inputs with a tagged reason, never a throw", async () => {
    const base: HostSignParams = { caCert: ca.certPem, caKey: ca.keyPem, publicKey: client.publicKeyPem, identity: host, notAfter: new Date(Date.now() + 60_000) }
    expect(await failure(signUserCert({ ...base, publicKey: new Uint8Array([0x30, 0x03, 1, 2, 3]) }))).toBe("BadKey")
    expect(await failure(signUserCert({ ...base, publicKey: "not pem" }))).toBe("BadPem")
    expect(await failure(signUserCert({ ...base, caCert: "garbage" }))).toBe("BadPem")
    expect(await failure(signUserCert({ ...base, caCert: toPem(new Uint8Array([0x30, 0x00]), "CERTIFICATE") }))).toBe("BadPem")
    const ed = generateKeyPairSync("ed25519").privateKey.export({ format: "pem", type: "pkcs8" }) as string
    expect(await failure(signUserCert({ ...base, caKey: ed }))).toBe("BadPem")
    const p384 = generateKeyPairSync("ec", { namedCurve: "P-384" }).privateKey.export({ format: "pem", type: "pkcs8" }) as string
    expect(await failure(signUserCert({ ...base, caKey: p384 }))).toBe("BadPem")
    expect(await failure(signHostCert({ ...base, ipAddresses: ["300.1.1.1"] }))).toBe("BadSubject")
    expect(await failure(signHostCert({ ...base, dnsNames: ["bücher.example"] }))).toBe("BadSubject")
  })
})

describe("PEM", () => {
  it("toPem and pemToDer agree with @peculiar/x509's PEM converter", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.constantFrom("CERTIFICATE", "PUBLIC KEY", "PRIVATE KEY"), (bytes, label) => {
        const pem = toPem(bytes, label)
        expect(pem).toBe(`${x509.PemConverter.encode(bytes, label)}\n`)
        expect(hex(Either.getOrThrow(pemToDer(pem)))).toBe(hex(bytes))
        expect(hex(Either.getOrThrow(pemToDer(`junk before\r\n${pem.replace(/\n/g, "\r\n")}junk after`)))).toBe(hex(bytes))
      })
    )
  })

  it("pemToDer takes the first block and refuses text that is not PEM", () => {
    const two = toPem(new Uint8Array([1, 2, 3]), "CERTIFICATE") + toPem(new Uint8Array([4, 5]), "CERTIFICATE")
    expect(hex(Either.getOrThrow(pemToDer(two)))).toBe("010203")
    expect(Either.isLeft(pemToDer("hello"))).toBe(true)
    expect(Either.isLeft(pemToDer("-----BEGIN CERTIFICATE-----\nAB!C\n-----END CERTIFICATE-----\n"))).toBe(true)
  })
})

it("a WebCrypto key pair from elsewhere signs through the same path", async () => {
  const keys = (await subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"])) as webcrypto.CryptoKeyPair
  const issued = await run(signUserCert({ caCert: ca.cert, caKey: ca.privateKey, publicKey: keys.publicKey, identity: alice, notAfter: new Date(Date.now() + 60_000) }))
  expect(await issued.cert.verify({ publicKey: ca.cert.publicKey, signatureOnly: true })).toBe(true)
  expect(der(issued).length).toBeGreaterThan(300)
})
