/**
 * X.509 certificates for Remoteler identities (ECDSA P-256). CAs are created and certificates read
 * with @peculiar/x509 on WebCrypto; leaf certificates, which every login signs, are written as DER
 * directly (./internal/der.ts) and signed with node:crypto, an order of magnitude faster than the
 * schema-driven path.
 *
 * Subject encoding (Teleport's `tlsca.Identity.Subject`), one attribute per RDN so repeated values
 * keep their order, every value a UTF8String:
 *
 *     CN          2.5.4.3        user name                  (host: host id)
 *     O           2.5.4.10       roles, repeated            (host: system role)
 *     L           2.5.4.7        logins, repeated           (host: principals)
 *     STREET      2.5.4.9        route-to cluster           (omitted when empty)
 *     postalCode  2.5.4.17       traits as JSON             (omitted when there are none)
 *     1.3.9999.2.1..4            database route: service name, protocol, db user, db name
 *     1.3.9999.42.1              Remoteler: node name; its presence marks a host identity
 */
import "reflect-metadata"
import * as x509 from "@peculiar/x509"
import { KeyObject, createHash, createPrivateKey, createPublicKey, randomFillSync, sign, webcrypto } from "node:crypto"
import { isIPv4, isIPv6 } from "node:net"
import { Data, Effect, Either, Schema } from "effect"
import * as Der from "./internal/der.ts"
import { Identity, RouteToDatabase, SystemRole } from "../domain/Identity.ts"
import type { Traits } from "../domain/Role.ts"

// No DOM lib here: node's WebCrypto types stand in for the global ones @peculiar/x509 names.
type CryptoKey = webcrypto.CryptoKey
type CryptoKeyPair = webcrypto.CryptoKeyPair
x509.cryptoProvider.set(webcrypto)
const subtle = webcrypto.subtle

export const OID = {
  commonName: "2.5.4.3",
  organization: "2.5.4.10",
  locality: "2.5.4.7",
  streetAddress: "2.5.4.9",
  postalCode: "2.5.4.17",
  dbServiceName: "1.3.9999.2.1",
  dbProtocol: "1.3.9999.2.2",
  dbUser: "1.3.9999.2.3",
  dbName: "1.3.9999.2.4",
  nodeName: "1.3.9999.42.1"
} as const

const EC_P256 = { name: "ECDSA", namedCurve: "P-256" } as const
const SIGNING = { name: "ECDSA", hash: "SHA-256" } as const

export class X509Error extends Data.TaggedError("X509Error")<{
  readonly reason: "Crypto" | "BadPem" | "BadSubject" | "BadKey"
  readonly message: string
  readonly cause?: unknown
}> {}

export class ChainError extends Data.TaggedError("ChainError")<{
  readonly reason: "Malformed" | "UnknownAuthority" | "BadSignature" | "NotYetValid" | "Expired" | "NotCa"
  readonly message: string
}> {}

/** The identity fields a subject carries (expiry lives in NotAfter, not in the subject). */
export type SubjectIdentity = Omit<ConstructorParameters<typeof Identity>[0], "expires">

// ---------------------------------------------------------------------------------------------
// Subject

/** The subject's attributes in order, one RDN each (see the table at the top of this file). */
const subjectAttributes = (identity: SubjectIdentity): Array<readonly [oid: string, value: string]> => {
  const rdns: Array<readonly [string, string]> = []
  const put = (oid: string, value: string) => {
    rdns.push([oid, value])
  }
  const host = identity.systemRole !== undefined && identity.nodeName !== undefined
  put(OID.commonName, host ? (identity.hostId ?? identity.username) : identity.username)
  for (const role of host ? [identity.systemRole!] : identity.roles) put(OID.organization, role)
  for (const login of identity.logins) put(OID.locality, login)
  if (identity.routeToCluster !== "") put(OID.streetAddress, identity.routeToCluster)
  if (Object.keys(identity.traits).length > 0) put(OID.postalCode, JSON.stringify(identity.traits))
  const db = identity.routeToDatabase
  if (db !== undefined) {
    put(OID.dbServiceName, db.serviceName)
    if (db.protocol !== "") put(OID.dbProtocol, db.protocol)
    if (db.username !== "") put(OID.dbUser, db.username)
    if (db.database !== "") put(OID.dbName, db.database)
  }
  if (host) put(OID.nodeName, identity.nodeName!)
  return rdns
}

/** Encodes an identity as an X.509 subject name (see the table at the top of this file). */
export const encodeSubject = (identity: SubjectIdentity): x509.Name =>
  new x509.Name(subjectAttributes(identity).map(([oid, value]) => ({ [oid]: [{ utf8String: value }] })))

/** The same subject as DER: SEQUENCE OF SET { SEQUENCE { OID, UTF8String } }, one attribute per SET. */
const subjectDer = (identity: SubjectIdentity): Uint8Array =>
  Der.sequence(...subjectAttributes(identity).map(([oid, value]) => Der.set(Der.sequence(Der.oid(oid), Der.utf8String(value)))))

const decodeTraitValues = Schema.decodeUnknownEither(Schema.Array(Schema.String))
/**
 * Traits from their JSON. Rebuilt with `Object.fromEntries`, which defines every key as an own
 * property: a decoder that assigns keys one by one turns a trait named `__proto__` into the
 * object's prototype and the trait silently disappears.
 */
const decodeTraits = (text: string): Either.Either<Traits, unknown> => {
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (e) {
    return Either.left(e)
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return Either.left("not an object")
  for (const value of Object.values(parsed)) if (Either.isLeft(decodeTraitValues(value))) return Either.left("a trait is not a list of strings")
  return Either.right(Object.fromEntries(Object.entries(parsed as Record<string, unknown>)) as Traits)
}

/** Reads an identity back from a subject name (an `x509.Name` or its DER). Never throws. */
export const decodeSubject = (name: x509.Name | Uint8Array): Either.Either<SubjectIdentity, X509Error> => {
  const bad = (message: string) => Either.left(new X509Error({ reason: "BadSubject", message }))
  let n: x509.Name
  try {
    n = name instanceof x509.Name ? name : new x509.Name(name)
  } catch (cause) {
    return Either.left(new X509Error({ reason: "BadSubject", message: "subject is not a DER Name", cause }))
  }
  const field = (oid: string) => n.getField(oid)
  const one = (oid: string, what: string): Either.Either<string | undefined, X509Error> => {
    const values = field(oid)
    return values.length > 1 ? bad(`more than one ${what}`) : Either.right(values[0])
  }
  return Either.gen(function* () {
    const cn = yield* one(OID.commonName, "common name")
    if (cn === undefined || cn === "") return yield* bad("subject has no common name")
    const street = yield* one(OID.streetAddress, "street address")
    const postal = yield* one(OID.postalCode, "postal code")
    const traits =
      postal === undefined
        ? {}
        : yield* Either.mapLeft(decodeTraits(postal), () => new X509Error({ reason: "BadSubject", message: "traits are not JSON of string lists" }))
    const service = yield* one(OID.dbServiceName, "database service name")
    const protocol = yield* one(OID.dbProtocol, "database protocol")
    const dbUser = yield* one(OID.dbUser, "database user")
    const dbName = yield* one(OID.dbName, "database name")
    const nodeName = yield* one(OID.nodeName, "node name")
    const roles = field(OID.organization)
    const base = {
      username: cn,
      roles,
      logins: field(OID.locality),
      routeToCluster: street ?? "",
      traits: traits as Traits,
      ...(service !== undefined
        ? {
            routeToDatabase: new RouteToDatabase({
              serviceName: service,
              protocol: protocol ?? "",
              username: dbUser ?? "",
              database: dbName ?? ""
            })
          }
        : {})
    }
    if (nodeName === undefined) return base
    const role = roles.length === 1 ? Schema.decodeUnknownOption(SystemRole)(roles[0]) : undefined
    if (role === undefined || role._tag === "None") return yield* bad(`host subject needs one system role in O, got ${roles.join(",")}`)
    return { ...base, hostId: cn, nodeName, systemRole: role.value }
  })
}

// ---------------------------------------------------------------------------------------------
// PEM and keys

/** PEM text with the given label (`CERTIFICATE`, `PRIVATE KEY`, `PUBLIC KEY`). */
export const toPem = (der: ArrayBuffer | Uint8Array, label: string): string => {
  const b64 = Buffer.from(der instanceof ArrayBuffer ? new Uint8Array(der) : der).toString("base64")
  let body = ""
  for (let i = 0; i < b64.length; i += 64) body += `${b64.slice(i, i + 64)}\n`
  return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([A-Za-z0-9+/=\s]*?)-----END \1-----/

/** The DER of the first PEM block in `pem`. */
export const pemToDer = (pem: string): Either.Either<Uint8Array, X509Error> => {
  // the common case (no PEM headers), without the general decoder's base64 validation passes
  const m = PEM_BLOCK.exec(pem)
  if (m !== null) {
    const b64 = m[2]!.replace(/\s+/g, "")
    if (b64.length % 4 === 0 && /^[A-Za-z0-9+/]*={0,2}$/.test(b64)) return Either.right(new Uint8Array(Buffer.from(b64, "base64")))
  }
  try {
    return Either.right(new Uint8Array(x509.PemConverter.decodeFirst(pem)))
  } catch (cause) {
    return Either.left(new X509Error({ reason: "BadPem", message: "not PEM", cause }))
  }
}

/** Parses a PEM (or DER) certificate. */
export const parseCertificate = (pemOrDer: string | Uint8Array): Either.Either<x509.X509Certificate, X509Error> => {
  try {
    return Either.right(new x509.X509Certificate(pemOrDer))
  } catch (cause) {
    return Either.left(new X509Error({ reason: "BadPem", message: "not an X.509 certificate", cause }))
  }
}

/** Every certificate in a PEM bundle. */
export const parseCertificates = (pem: string): Either.Either<ReadonlyArray<x509.X509Certificate>, X509Error> => {
  try {
    return Either.right(x509.PemConverter.decode(pem).map((der) => new x509.X509Certificate(der)))
  } catch (cause) {
    return Either.left(new X509Error({ reason: "BadPem", message: "not a PEM certificate bundle", cause }))
  }
}

const crypto = <A>(message: string, f: () => Promise<A>): Effect.Effect<A, X509Error> =>
  Effect.tryPromise({ try: f, catch: (cause) => new X509Error({ reason: "Crypto", message, cause }) })

export interface EcdsaKeyPair {
  readonly privateKey: CryptoKey
  readonly publicKey: CryptoKey
  /** PKCS#8 `-----BEGIN PRIVATE KEY-----`, as openssl and PostgreSQL read it. */
  readonly privateKeyPem: string
  /** SPKI `-----BEGIN PUBLIC KEY-----`. */
  readonly publicKeyPem: string
}

/** A fresh ECDSA P-256 key pair, exportable. */
export const generateEcdsaKeyPair = (): Effect.Effect<EcdsaKeyPair, X509Error> =>
  crypto("generate ECDSA P-256 key", async () => {
    const keys = (await subtle.generateKey(EC_P256, true, ["sign", "verify"])) as CryptoKeyPair
    const pkcs8 = await subtle.exportKey("pkcs8", keys.privateKey)
    const spki = await subtle.exportKey("spki", keys.publicKey)
    return {
      privateKey: keys.privateKey,
      publicKey: keys.publicKey,
      privateKeyPem: toPem(pkcs8, "PRIVATE KEY"),
      publicKeyPem: toPem(spki, "PUBLIC KEY")
    }
  })

/** Imports an ECDSA P-256 private key from PKCS#8 PEM, for signing. */
export const importEcdsaPrivateKey = (pem: string): Effect.Effect<CryptoKey, X509Error> =>
  Effect.flatMap(pemToDer(pem), (der) => crypto("import PKCS#8 key", () => subtle.importKey("pkcs8", der, EC_P256, true, ["sign"])))

/** A subject public key from SPKI PEM, SPKI DER, a node KeyObject or a CryptoKey. */
export type SubjectPublicKey = string | Uint8Array | KeyObject | CryptoKey

// ---------------------------------------------------------------------------------------------
// Issuing

export interface CertificateAuthority {
  readonly cert: x509.X509Certificate
  readonly certPem: string
  readonly privateKey: CryptoKey
  /** PKCS#8 PEM; goes to the secrets table, never into an event. */
  readonly keyPem: string
}

const MINUTE = 60_000

/** 128 random bits; @peculiar/x509 adds the 0x00 that keeps the DER INTEGER positive. */
const randomSerial = (): string => Buffer.from(webcrypto.getRandomValues(new Uint8Array(16))).toString("hex")

/** A self-signed ECDSA P-256 CA (CN = commonName, O = clusterName), valid from a minute ago. */
export const generateCa = (
  commonName: string,
  clusterName: string,
  ttlDays: number,
  now: Date = new Date()
): Effect.Effect<CertificateAuthority, X509Error> =>
  Effect.flatMap(generateEcdsaKeyPair(), (keys) =>
    crypto("create CA certificate", async () => {
      const name = new x509.Name([
        { [OID.commonName]: [{ utf8String: commonName }] },
        { [OID.organization]: [{ utf8String: clusterName }] }
      ])
      const cert = await x509.X509CertificateGenerator.create({
        serialNumber: randomSerial(),
        subject: name,
        issuer: name,
        notBefore: new Date(now.getTime() - MINUTE),
        notAfter: new Date(now.getTime() + ttlDays * 86_400_000),
        signingAlgorithm: SIGNING,
        publicKey: keys.publicKey,
        signingKey: keys.privateKey,
        extensions: [
          new x509.BasicConstraintsExtension(true, undefined, true),
          new x509.KeyUsagesExtension(
            x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
            true
          ),
          await x509.SubjectKeyIdentifierExtension.create(keys.publicKey)
        ]
      })
      return { cert, certPem: cert.toString("pem") + "\n", privateKey: keys.privateKey, keyPem: keys.privateKeyPem }
    })
  )

export interface SignParams {
  /** The CA certificate (PEM or parsed). */
  readonly caCert: string | x509.X509Certificate
  /** The CA private key (PKCS#8 PEM or CryptoKey). */
  readonly caKey: string | CryptoKey
  /** The subject's public key. */
  readonly publicKey: SubjectPublicKey
  readonly identity: SubjectIdentity
  readonly notAfter: Date
  /** Defaults to now; NotBefore is one minute before it. */
  readonly now?: Date
}

export interface HostSignParams extends SignParams {
  readonly dnsNames?: ReadonlyArray<string>
  readonly ipAddresses?: ReadonlyArray<string>
}

export interface IssuedCertificate {
  /** Parsed on first use: issuing only needs the PEM. */
  readonly cert: x509.X509Certificate
  readonly pem: string
}

const fail = (reason: X509Error["reason"], message: string) => (cause: unknown) => new X509Error({ reason, message, cause })

const attempt = <A>(f: () => A, onError: (cause: unknown) => X509Error): Either.Either<A, X509Error> => {
  try {
    return Either.right(f())
  } catch (cause) {
    return Either.left(onError(cause))
  }
}

// Per-CA state is derived once and kept: a CA signs many certificates with the same key and name.
const CACHE_LIMIT = 64
const remember = <K, V>(cache: Map<K, V>, key: K, value: V): V => {
  if (cache.size >= CACHE_LIMIT) cache.delete(cache.keys().next().value!)
  cache.set(key, value)
  return value
}

/** What a leaf certificate copies from its CA: the subject name's exact DER and the key identifier. */
interface Issuer {
  readonly name: Uint8Array
  readonly keyId: Uint8Array
}
const issuersByCert = new WeakMap<x509.X509Certificate, Issuer>()
const issuersByPem = new Map<string, Issuer>()
const signingKeysByCryptoKey = new WeakMap<CryptoKey, KeyObject>()
const signingKeysByPem = new Map<string, KeyObject>()

/**
 * RFC 5280 4.2.1.2 method 1, as @peculiar/x509 and OpenSSL compute it: SHA-1 of the
 * subjectPublicKey BIT STRING's bits (after its unused-bits byte).
 *
 *     SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
 */
const keyIdentifier = (spki: Uint8Array): Uint8Array => {
  const outer = Der.expectTlv(spki, 0, Der.Tag.sequence)
  if (outer.end !== spki.length) throw new Der.DerError("trailing bytes after SubjectPublicKeyInfo")
  const algorithm = Der.expectTlv(spki, outer.start, Der.Tag.sequence, outer.end)
  const bits = Der.expectTlv(spki, algorithm.end, Der.Tag.bitString, outer.end)
  if (bits.end !== outer.end || bits.end - bits.start < 2 || spki[bits.start] !== 0) throw new Der.DerError("malformed subjectPublicKey")
  return createHash("sha1").update(spki.subarray(bits.start + 1, bits.end)).digest()
}

/**
 *     Certificate    ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
 *     TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, validity,
 *                                   subject, subjectPublicKeyInfo, ... }
 */
const readIssuer = (der: Uint8Array): Issuer => {
  const cert = Der.expectTlv(der, 0, Der.Tag.sequence)
  const tbs = Der.expectTlv(der, cert.start, Der.Tag.sequence, cert.end)
  let at = tbs.start
  if (Der.readTlv(der, at, tbs.end).tag === (Der.Tag.contextConstructed | 0)) at = Der.readTlv(der, at, tbs.end).end
  at = Der.expectTlv(der, at, Der.Tag.integer, tbs.end).end
  at = Der.expectTlv(der, at, Der.Tag.sequence, tbs.end).end
  at = Der.expectTlv(der, at, Der.Tag.sequence, tbs.end).end
  at = Der.expectTlv(der, at, Der.Tag.sequence, tbs.end).end
  const subject = Der.expectTlv(der, at, Der.Tag.sequence, tbs.end)
  const spki = Der.expectTlv(der, subject.end, Der.Tag.sequence, tbs.end)
  return { name: der.slice(subject.offset, subject.end), keyId: keyIdentifier(der.subarray(spki.offset, spki.end)) }
}

const issuerOf = (caCert: string | x509.X509Certificate): Either.Either<Issuer, X509Error> => {
  const cached = typeof caCert === "string" ? issuersByPem.get(caCert) : issuersByCert.get(caCert)
  if (cached !== undefined) return Either.right(cached)
  const der = typeof caCert === "string" ? pemToDer(caCert) : Either.right(new Uint8Array(caCert.rawData))
  return Either.flatMap(der, (d) =>
    Either.map(attempt(() => readIssuer(d), fail("BadPem", "not an X.509 CA certificate")), (issuer) => {
      if (typeof caCert === "string") remember(issuersByPem, caCert, issuer)
      else issuersByCert.set(caCert, issuer)
      return issuer
    })
  )
}

const p256SigningKey = (key: KeyObject): KeyObject => {
  if (key.type !== "private" || key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw new Error(`expected an ECDSA P-256 private key, got a ${key.type} ${key.asymmetricKeyType} key`)
  }
  return key
}

/** The CA key as a node KeyObject (PKCS#8 PEM or a WebCrypto key), converted once per key. */
const signingKeyOf = (caKey: string | CryptoKey): Either.Either<KeyObject, X509Error> => {
  if (typeof caKey === "string") {
    const cached = signingKeysByPem.get(caKey)
    if (cached !== undefined) return Either.right(cached)
    return Either.map(
      attempt(() => p256SigningKey(createPrivateKey(caKey)), fail("BadPem", "not an ECDSA P-256 private key in PEM")),
      (key) => remember(signingKeysByPem, caKey, key)
    )
  }
  const cached = signingKeysByCryptoKey.get(caKey)
  if (cached !== undefined) return Either.right(cached)
  return Either.map(attempt(() => p256SigningKey(KeyObject.from(caKey)), fail("BadKey", "CA key is not an ECDSA P-256 private key")), (key) => {
    signingKeysByCryptoKey.set(caKey, key)
    return key
  })
}

/** A subject key as it goes into the certificate: SPKI DER, copied verbatim, and its key identifier. */
interface SubjectKey {
  readonly spki: Uint8Array
  readonly keyId: Uint8Array
}

/**
 * Reads the subject's SubjectPublicKeyInfo. Like the schema path before it, this checks the DER
 * structure only: loading the key (createPublicKey) validates the curve point but costs several
 * times the signature, and a bad point only hurts whoever holds the certificate.
 */
const subjectKeyOf = (key: SubjectPublicKey): Either.Either<SubjectKey, X509Error> => {
  const spki =
    typeof key === "string"
      ? pemToDer(key)
      : key instanceof Uint8Array
        ? Either.right(key)
        : attempt(() => {
            const k = key instanceof KeyObject ? key : KeyObject.from(key)
            return new Uint8Array((k.type === "public" ? k : createPublicKey(k)).export({ format: "der", type: "spki" }))
          }, fail("BadKey", "cannot export public key as SPKI"))
  return Either.flatMap(spki, (d) => attempt(() => ({ spki: d, keyId: keyIdentifier(d) }), fail("BadKey", "not an SPKI public key")))
}

const OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
const OID_EXT = {
  basicConstraints: "2.5.29.19",
  keyUsage: "2.5.29.15",
  extKeyUsage: "2.5.29.37",
  authorityKeyIdentifier: "2.5.29.35",
  subjectKeyIdentifier: "2.5.29.14",
  subjectAltName: "2.5.29.17"
} as const
const OID_KP = { serverAuth: "1.3.6.1.5.5.7.3.1", clientAuth: "1.3.6.1.5.5.7.3.2" } as const

/** Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING } */
const extension = (oid: string, critical: boolean, value: Uint8Array): Uint8Array =>
  critical
    ? Der.sequence(Der.oid(oid), Der.boolean(true), Der.octetString(value))
    : Der.sequence(Der.oid(oid), Der.octetString(value))

const V3 = Der.explicit(0, Der.smallInteger(2))
/** AlgorithmIdentifier for ecdsa-with-SHA256: parameters absent (RFC 5758 3.2). */
const ECDSA_SHA256 = Der.sequence(Der.oid(OID_ECDSA_SHA256))
/** critical; cA FALSE is the DEFAULT, so DER leaves it out: an empty SEQUENCE. */
const LEAF_BASIC_CONSTRAINTS = extension(OID_EXT.basicConstraints, true, Der.sequence())
/** critical; digitalSignature (bit 0) and keyEncipherment (bit 2). */
const LEAF_KEY_USAGE = extension(OID_EXT.keyUsage, true, Der.namedBits([0, 2]))
const extKeyUsage = (purposes: ReadonlyArray<string>) =>
  extension(OID_EXT.extKeyUsage, false, Der.sequence(...purposes.map(Der.oid)))
const CLIENT_AUTH = extKeyUsage([OID_KP.clientAuth])
const SERVER_AND_CLIENT_AUTH = extKeyUsage([OID_KP.serverAuth, OID_KP.clientAuth])

/** iPAddress: 4 bytes for IPv4, 16 for IPv6 (dotted-quad tails allowed). */
const ipBytes = (ip: string): Uint8Array => {
  if (isIPv4(ip)) return Uint8Array.from(ip.split(".").map(Number))
  if (!isIPv6(ip)) throw new Error(`not an IP address: ${ip}`)
  let text = ip
  const tail = /(\d+\.\d+\.\d+\.\d+)$/.exec(ip)
  if (tail !== null) {
    const [a, b, c, d] = tail[1]!.split(".").map(Number) as [number, number, number, number]
    text = `${ip.slice(0, tail.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const [left = "", right] = text.split("::")
  const groups = (s: string) => (s === "" ? [] : s.split(":"))
  const head = groups(left)
  const rest = right === undefined ? [] : groups(right)
  const all = right === undefined ? head : [...head, ...Array<string>(8 - head.length - rest.length).fill("0"), ...rest]
  const out = new Uint8Array(16)
  all.forEach((g, i) => {
    const v = parseInt(g, 16)
    out[2 * i] = v >> 8
    out[2 * i + 1] = v & 0xff
  })
  return out
}

/** GeneralNames: dNSName [2] IA5String, iPAddress [7] OCTET STRING, both IMPLICIT. */
const subjectAltName = (dnsNames: ReadonlyArray<string>, ipAddresses: ReadonlyArray<string>): Uint8Array =>
  extension(
    OID_EXT.subjectAltName,
    false,
    Der.sequence(
      ...dnsNames.map((name) => Der.tlv(Der.Tag.context | 2, Der.ia5String(name).subarray(2))),
      ...ipAddresses.map((ip) => Der.tlv(Der.Tag.context | 7, ipBytes(ip)))
    )
  )

// randomBytes costs a syscall-sized fixed price per call; serials come from a refilled pool instead.
const SERIAL_BYTES = 16
const serialPool = Buffer.alloc(SERIAL_BYTES * 256)
let serialOffset = serialPool.length

/** 128 random bits for a serial number (read as a positive INTEGER); each taken once. */
const randomSerialBytes = (): Uint8Array => {
  if (serialOffset === serialPool.length) {
    randomFillSync(serialPool)
    serialOffset = 0
  }
  const out = new Uint8Array(serialPool.subarray(serialOffset, serialOffset + SERIAL_BYTES))
  serialOffset += SERIAL_BYTES
  return out
}

interface LeafRequest {
  readonly issuer: Issuer
  readonly signingKey: KeyObject
  readonly subjectKey: SubjectKey
  readonly identity: SubjectIdentity
  readonly notBefore: Date
  readonly notAfter: Date
  readonly extKeyUsage: Uint8Array
  readonly subjectAltName: Uint8Array | undefined
}

/**
 * The certificate's DER. Extensions, in the order they have always been written: basicConstraints,
 * keyUsage, extKeyUsage, authorityKeyIdentifier, subjectKeyIdentifier, subjectAltName (hosts).
 */
const leafCertificate = (r: LeafRequest): Uint8Array => {
  const extensions = [
    LEAF_BASIC_CONSTRAINTS,
    LEAF_KEY_USAGE,
    r.extKeyUsage,
    // AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING }
    extension(OID_EXT.authorityKeyIdentifier, false, Der.sequence(Der.tlv(Der.Tag.context | 0, r.issuer.keyId))),
    extension(OID_EXT.subjectKeyIdentifier, false, Der.octetString(r.subjectKey.keyId))
  ]
  if (r.subjectAltName !== undefined) extensions.push(r.subjectAltName)
  const tbs = Der.sequence(
    V3,
    Der.unsignedInteger(randomSerialBytes()),
    ECDSA_SHA256,
    r.issuer.name,
    Der.sequence(Der.time(r.notBefore), Der.time(r.notAfter)),
    subjectDer(r.identity),
    r.subjectKey.spki,
    Der.explicit(3, Der.sequence(...extensions))
  )
  // ECDSA-Sig-Value DER, as X.509 carries it inside the BIT STRING
  const signature = sign("sha256", tbs, { key: r.signingKey, dsaEncoding: "der" })
  return Der.sequence(tbs, ECDSA_SHA256, Der.bitString(signature))
}

const issued = (der: Uint8Array): IssuedCertificate => {
  let cert: x509.X509Certificate | undefined
  return {
    pem: toPem(der, "CERTIFICATE"),
    get cert() {
      return (cert ??= new x509.X509Certificate(der))
    }
  }
}

const issue = (
  params: SignParams,
  extKeyUsage: Uint8Array,
  dnsNames: ReadonlyArray<string> = [],
  ipAddresses: ReadonlyArray<string> = []
): Effect.Effect<IssuedCertificate, X509Error> =>
  Effect.suspend(() =>
    Either.gen(function* () {
      const issuer = yield* issuerOf(params.caCert)
      const signingKey = yield* signingKeyOf(params.caKey)
      const subjectKey = yield* subjectKeyOf(params.publicKey)
      const sans =
        dnsNames.length + ipAddresses.length === 0
          ? undefined
          : yield* attempt(() => subjectAltName(dnsNames, ipAddresses), fail("BadSubject", "bad subject alternative name"))
      const now = params.now ?? new Date()
      const der = yield* attempt(
        () =>
          leafCertificate({
            issuer,
            signingKey,
            subjectKey,
            identity: params.identity,
            notBefore: new Date(now.getTime() - MINUTE),
            notAfter: params.notAfter,
            extKeyUsage,
            subjectAltName: sans
          }),
        fail("Crypto", "sign certificate")
      )
      return issued(der)
    })
  )

/** A client certificate (extKeyUsage clientAuth) for a user identity. */
export const signUserCert = (params: SignParams): Effect.Effect<IssuedCertificate, X509Error> => issue(params, CLIENT_AUTH)

/** A host certificate (serverAuth + clientAuth) with DNS and IP subject alternative names. */
export const signHostCert = (params: HostSignParams): Effect.Effect<IssuedCertificate, X509Error> =>
  issue(params, SERVER_AND_CLIENT_AUTH, params.dnsNames, params.ipAddresses)

// ---------------------------------------------------------------------------------------------
// Reading and verifying

/** The identity a certificate carries; `expires` is its NotAfter. Never throws. */
export const parseCertIdentity = (pem: string | x509.X509Certificate): Either.Either<Identity, X509Error> =>
  Either.flatMap(typeof pem === "string" ? parseCertificate(pem) : Either.right(pem), (cert) =>
    Either.map(decodeSubject(cert.subjectName), (fields) => new Identity({ ...fields, expires: cert.notAfter }))
  )

const sameDer = (a: ArrayBuffer, b: ArrayBuffer): boolean => Buffer.from(a).equals(Buffer.from(b))

/**
 * Checks that `certPem` was signed by one of `caPems` and is valid at `now`: the issuer name must
 * match a CA's subject, the signature must verify with that CA's key, and both the CA and the
 * certificate must be inside their validity windows.
 */
export const verifyChain = (
  certPem: string | x509.X509Certificate,
  caPems: ReadonlyArray<string | x509.X509Certificate>,
  now: Date = new Date()
): Effect.Effect<x509.X509Certificate, ChainError> =>
  Effect.gen(function* () {
    const malformed = (e: X509Error) => new ChainError({ reason: "Malformed", message: e.message })
    const cert = typeof certPem === "string" ? yield* Effect.mapError(parseCertificate(certPem), malformed) : certPem
    const cas: Array<x509.X509Certificate> = []
    for (const ca of caPems) {
      if (typeof ca !== "string") cas.push(ca)
      else cas.push(...(yield* Effect.mapError(parseCertificates(ca), malformed)))
    }
    const issuerDer = cert.issuerName.toArrayBuffer()
    const candidates = cas.filter((ca) => sameDer(ca.subjectName.toArrayBuffer(), issuerDer))
    if (candidates.length === 0) {
      return yield* new ChainError({ reason: "UnknownAuthority", message: `no trusted CA named ${cert.issuer}` })
    }
    let issuer: x509.X509Certificate | undefined
    for (const ca of candidates) {
      const ok = yield* Effect.promise(() =>
        cert.verify({ publicKey: ca.publicKey, signatureOnly: true }).catch(() => false)
      )
      if (ok) {
        issuer = ca
        break
      }
    }
    if (issuer === undefined) {
      return yield* new ChainError({ reason: "BadSignature", message: `signature does not verify with any CA named ${cert.issuer}` })
    }
    const basic = issuer.getExtension(x509.BasicConstraintsExtension)
    if (basic === null || !basic.ca) {
      return yield* new ChainError({ reason: "NotCa", message: `issuer ${issuer.subject} is not a CA` })
    }
    for (const [c, what] of [[issuer, "CA certificate"], [cert, "certificate"]] as const) {
      if (now < c.notBefore) {
        return yield* new ChainError({ reason: "NotYetValid", message: `${what} is not valid before ${c.notBefore.toISOString()}` })
      }
      if (now > c.notAfter) {
        return yield* new ChainError({ reason: "Expired", message: `${what} expired at ${c.notAfter.toISOString()}` })
      }
    }
    return cert
  })
