import { generateKeyPairSync, type KeyObject } from "node:crypto"
import { Either } from "effect"
import * as fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  FOREVER,
  IDENTITY_EXTENSIONS,
  certIdentityExtensions,
  decodeCertificate,
  defaultUserExtensions,
  encodeCertificate,
  keySigner,
  publicKeyBlob,
  publicKeyLine,
  randomNonce,
  signCertificate,
  userCertFields,
  verifyCertificate,
  type CertificateFields
} from "../../src/protocols/ssh/cert.ts"
import { SshWriter } from "../../src/protocols/ssh/wire.ts"

const cas: ReadonlyArray<{ readonly name: string; readonly privateKey: KeyObject; readonly blob: Uint8Array }> = [
  generateKeyPairSync("ed25519"),
  generateKeyPairSync("ec", { namedCurve: "P-256" }),
  generateKeyPairSync("rsa", { modulusLength: 2048 })
].map((k) => ({ name: k.privateKey.asymmetricKeyType ?? "?", privateKey: k.privateKey, blob: publicKeyBlob(k.publicKey) }))
const ed25519Ca = cas[0]!
const otherCa = generateKeyPairSync("ed25519")

const text = fc.string({ unit: "grapheme", maxLength: 24 })
const options = fc.dictionary(text, text, { maxKeys: 6, noNullPrototype: true })
const u64 = fc.oneof(fc.bigInt({ min: 0n, max: FOREVER }), fc.constantFrom(0n, 1n, 2n ** 63n, FOREVER))

const subjectKey = fc.oneof(
  fc.uint8Array({ minLength: 32, maxLength: 32 }).map((pk) => new SshWriter().string("ssh-ed25519").string(pk).finish()),
  fc
    .uint8Array({ minLength: 64, maxLength: 64 })
    .map((xy) => new SshWriter().string("ecdsa-sha2-nistp256").string("nistp256").string(Uint8Array.of(4, ...xy)).finish()),
  fc
    .tuple(fc.uint8Array({ minLength: 1, maxLength: 4 }), fc.uint8Array({ minLength: 1, maxLength: 64 }))
    .map(([e, n]) => new SshWriter().string("ssh-rsa").mpint(Uint8Array.of(1, ...e)).mpint(Uint8Array.of(1, ...n)).finish())
)

const fieldsArb: fc.Arbitrary<CertificateFields> = fc.record({
  nonce: fc.uint8Array({ maxLength: 40 }),
  publicKey: subjectKey,
  serial: u64,
  type: fc.constantFrom("user" as const, "host" as const),
  keyId: text,
  validPrincipals: fc.array(text, { maxLength: 6 }),
  validAfter: u64,
  validBefore: u64,
  criticalOptions: options,
  extensions: fc.oneof(options, fc.constant(defaultUserExtensions)),
  reserved: fc.uint8Array({ maxLength: 8 })
})

const fieldsOf = (c: CertificateFields): CertificateFields => ({
  nonce: c.nonce,
  publicKey: c.publicKey,
  serial: c.serial,
  type: c.type,
  keyId: c.keyId,
  validPrincipals: c.validPrincipals,
  validAfter: c.validAfter,
  validBefore: c.validBefore,
  criticalOptions: c.criticalOptions,
  extensions: c.extensions,
  reserved: c.reserved
})

const userFields = (over: Partial<CertificateFields> = {}): CertificateFields => ({
  nonce: randomNonce(),
  publicKey: publicKeyBlob(generateKeyPairSync("ed25519").publicKey),
  serial: 7n,
  type: "user",
  keyId: "alice",
  validPrincipals: ["alice", "root"],
  validAfter: 1_000n,
  validBefore: 2_000n,
  criticalOptions: {},
  extensions: defaultUserExtensions,
  reserved: new Uint8Array(0),
  ...over
})

const at = (seconds: number) => new Date(seconds * 1000)

describe("ssh certificate codec", () => {
  it("decode(encode(c)) = c for every CA key type", () => {
    fc.assert(
      fc.property(fieldsArb, fc.constantFrom(...cas), (fields, ca) => {
        const blob = encodeCertificate(fields, keySigner(ca.privateKey))
        const decoded = Either.getOrThrow(decodeCertificate(blob))
        expect(fieldsOf(decoded)).toEqual(fieldsOf(fields))
        expect(decoded.signatureKey).toEqual(ca.blob)
        expect(decoded.blob).toEqual(blob)
        // the line form decodes to the same certificate
        expect(Either.getOrThrow(decodeCertificate(publicKeyLine(blob, "c")))).toEqual(decoded)
        // re-encoding the decoded fields gives the same bytes up to the (randomized) signature
        const again = encodeCertificate(decoded, { publicKeyBlob: ca.blob, sign: () => decoded.signature })
        expect(again).toEqual(blob)
      }),
      { numRuns: 150 }
    )
  })

  it("options and extensions are written sorted by name", () => {
    const { certificate } = signCertificate(
      userFields({ extensions: { b: "", a: "x", "permit-pty": "" }, criticalOptions: { "source-address": "::1", "force-command": "id" } }),
      ed25519Ca.privateKey
    )
    expect(Object.keys(certificate.extensions)).toEqual(["a", "b", "permit-pty"])
    expect(Object.keys(certificate.criticalOptions)).toEqual(["force-command", "source-address"])
  })

  it("random bytes and random lines never throw", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        expect(Either.isLeft(decodeCertificate(bytes))).toBe(true)
      }),
      { numRuns: 500 }
    )
    fc.assert(
      fc.property(fc.string(), (s) => {
        decodeCertificate(s)
      })
    )
  })

  it("random bytes behind a valid type prefix never throw", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), (tail) => {
        const bytes = new SshWriter().string("ssh-ed25519-cert-v01@openssh.com").raw(tail).finish()
        expect(Either.isLeft(decodeCertificate(bytes))).toBe(true)
      }),
      { numRuns: 500 }
    )
  })

  it("every truncation of a valid certificate fails to decode", () => {
    fc.assert(
      fc.property(fieldsArb, (fields) => {
        const blob = encodeCertificate(fields, keySigner(ed25519Ca.privateKey))
        for (let n = 0; n < blob.length; n++) {
          expect(Either.isLeft(decodeCertificate(blob.subarray(0, n)))).toBe(true)
        }
        const longer = new Uint8Array(blob.length + 1)
        longer.set(blob)
        expect(Either.isLeft(decodeCertificate(longer))).toBe(true)
      }),
      { numRuns: 20 }
    )
  })

  it("flipping any byte of a signed certificate makes decoding or verification fail", () => {
    const { blob } = signCertificate(
      userFields({ criticalOptions: { "force-command": "id" }, validAfter: 0n, validBefore: FOREVER }),
      ed25519Ca.privateKey
    )
    const opts = { trustedCaKeys: [ed25519Ca.blob], now: new Date(), certType: "user" as const, principal: "alice" }
    expect(Either.isRight(verifyCertificate(Either.getOrThrow(decodeCertificate(blob)), opts))).toBe(true)
    fc.assert(
      fc.property(fc.nat({ max: blob.length - 1 }), fc.integer({ min: 1, max: 255 }), (i, x) => {
        const mutated = new Uint8Array(blob)
        mutated[i] = mutated[i]! ^ x
        const decoded = decodeCertificate(mutated)
        if (Either.isRight(decoded)) expect(Either.isLeft(verifyCertificate(decoded.right, opts))).toBe(true)
      }),
      { numRuns: 2000 }
    )
    // and exhaustively, one flip pattern per byte
    for (let i = 0; i < blob.length; i++) {
      const mutated = new Uint8Array(blob)
      mutated[i] = mutated[i]! ^ 0x01
      const decoded = decodeCertificate(mutated)
      if (Either.isRight(decoded)) expect(Either.isLeft(verifyCertificate(decoded.right, opts))).toBe(true)
    }
  })
})

describe("verifyCertificate", () => {
  const sign = (over: Partial<CertificateFields>) => signCertificate(userFields(over), ed25519Ca.privateKey).certificate
  const base = { trustedCaKeys: [ed25519Ca.blob], now: at(1_500), certType: "user" as const }
  const reason = (r: ReturnType<typeof verifyCertificate>) => (Either.isLeft(r) ? r.left.reason : "ok")

  it("accepts inside the window and checks its edges as OpenSSH does", () => {
    const c = sign({})
    expect(reason(verifyCertificate(c, { ...base, principal: "alice" }))).toBe("ok")
    expect(reason(verifyCertificate(c, { ...base, now: at(1_000) }))).toBe("ok")
    expect(reason(verifyCertificate(c, { ...base, now: at(999) }))).toBe("NotYetValid")
    expect(reason(verifyCertificate(c, { ...base, now: at(2_000) }))).toBe("Expired")
    expect(reason(verifyCertificate(sign({ validBefore: FOREVER }), { ...base, now: at(4e9) }))).toBe("ok")
  })

  it("names the reason for each refusal", () => {
    const c = sign({})
    expect(reason(verifyCertificate(c, { ...base, principal: "mallory" }))).toBe("PrincipalNotListed")
    expect(reason(verifyCertificate(sign({ validPrincipals: [] }), { ...base, principal: "alice" }))).toBe("NoPrincipals")
    expect(reason(verifyCertificate(c, { ...base, trustedCaKeys: [publicKeyBlob(otherCa.publicKey)] }))).toBe("UntrustedCa")
    expect(reason(verifyCertificate(c, { ...base, certType: "host" }))).toBe("WrongCertType")
    expect(reason(verifyCertificate(sign({ criticalOptions: { "no-such-option": "" } }), base))).toBe(
      "UnsupportedCriticalOption"
    )
    const host = signCertificate(userFields({ type: "host", criticalOptions: { "force-command": "id" } }), ed25519Ca.privateKey)
    expect(reason(verifyCertificate(host.certificate, { ...base, certType: "host" }))).toBe("UnsupportedCriticalOption")
    const forged = { ...c, signatureKey: publicKeyBlob(otherCa.publicKey) }
    expect(reason(verifyCertificate(forged, { ...base, trustedCaKeys: [forged.signatureKey] }))).toBe("BadSignature")
  })

  it("surfaces force-command and enforces source-address", () => {
    const c = sign({ criticalOptions: { "force-command": "echo hi", "source-address": "10.0.0.0/8,2001:db8::/32" } })
    const ok = verifyCertificate(c, { ...base, remoteAddress: "10.9.8.7" })
    expect(Either.isRight(ok) && ok.right.forceCommand).toBe("echo hi")
    expect(Either.isRight(ok) && ok.right.sourceAddresses).toEqual(["10.0.0.0/8", "2001:db8::/32"])
    expect(reason(verifyCertificate(c, { ...base, remoteAddress: "::ffff:10.1.1.1" }))).toBe("ok")
    expect(reason(verifyCertificate(c, { ...base, remoteAddress: "2001:db8::5" }))).toBe("ok")
    expect(reason(verifyCertificate(c, { ...base, remoteAddress: "192.168.1.1" }))).toBe("SourceAddressNotAllowed")
    expect(reason(verifyCertificate(sign({ criticalOptions: { "source-address": "nonsense" } }), base))).toBe(
      "BadCriticalOption"
    )
  })
})

describe("identity certificates", () => {
  it("userCertFields carries logins as principals and the identity as extensions", () => {
    fc.assert(
      fc.property(
        fc.array(text, { maxLength: 4 }),
        fc.array(text, { maxLength: 4 }),
        fc.dictionary(text, fc.array(text, { maxLength: 3 }), { maxKeys: 3, noNullPrototype: true }),
        text,
        (logins, roles, traits, cluster) => {
          const now = new Date(1_700_000_000_000)
          const fields = userCertFields({
            publicKey: ed25519Ca.blob,
            username: "alice",
            logins,
            roles,
            traits,
            routeToCluster: cluster,
            expires: new Date(now.getTime() + 3600_000),
            now
          })
          const cert = signCertificate(fields, ed25519Ca.privateKey).certificate
          expect(cert.validPrincipals).toEqual(logins)
          expect(cert.validAfter).toBe(1_700_000_000n - 60n)
          expect(cert.validBefore).toBe(1_700_003_600n)
          expect(certIdentityExtensions(cert)).toEqual({ roles, traits, routeToCluster: cluster })
          for (const name of Object.keys(defaultUserExtensions)) expect(cert.extensions).toHaveProperty([name], "")
        }
      ),
      { numRuns: 50 }
    )
  })

  it("malformed identity extensions read as empty", () => {
    const cert = signCertificate(
      userFields({ extensions: { [IDENTITY_EXTENSIONS.roles]: "{", [IDENTITY_EXTENSIONS.traits]: "[1]" } }),
      ed25519Ca.privateKey
    ).certificate
    expect(certIdentityExtensions(cert)).toEqual({ roles: [], traits: {}, routeToCluster: "" })
  })
})
