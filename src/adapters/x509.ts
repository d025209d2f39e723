/**
 * X.509 certificates for Remoteler identities, on WebCrypto (ECDSA P-256) via @peculiar/x509.
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
import { KeyObject, webcrypto } from "node:crypto"
import { Data, Effect, Either, Schema } from "effect"
import { Identity, RouteToDatabase, SystemRole } from "../domain/Identity.ts"
import { Traits } from "../domain/Role.ts"

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

/** Encodes an identity as an X.509 subject name (see the table at the top of this file). */
export const encodeSubject = (identity: SubjectIdentity): x509.Name => {
  const rdns: Array<Record<string, Array<x509.JsonAttributeObject>>> = []
  const put = (oid: string, value: string) => {
    rdns.push({ [oid]: [{ utf8String: value }] })
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
  return new x509.Name(rdns)
}

const decodeTraits = Schema.decodeUnknownEither(Schema.parseJson(Traits))

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
export const toPem = (der: ArrayBuffer | Uint8Array, label: string): string => `${x509.PemConverter.encode(der, label)}\n`

/** The DER of the first PEM block in `pem`. */
export const pemToDer = (pem: string): Either.Either<Uint8Array, X509Error> => {
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

const toPublicKey = (key: SubjectPublicKey): Effect.Effect<x509.PublicKey, X509Error> => {
  if (key instanceof KeyObject) {
    return Effect.try({
      try: () => new x509.PublicKey(new Uint8Array(key.export({ format: "der", type: "spki" }))),
      catch: (cause) => new X509Error({ reason: "BadKey", message: "cannot export public key as SPKI", cause })
    })
  }
  if (typeof key === "string" || key instanceof Uint8Array) {
    const der = typeof key === "string" ? pemToDer(key) : Either.right(key)
    return Effect.flatMap(der, (d) =>
      Effect.try({
        try: () => new x509.PublicKey(d),
        catch: (cause) => new X509Error({ reason: "BadKey", message: "not an SPKI public key", cause })
      })
    )
  }
  return crypto("read CryptoKey", () => x509.PublicKey.create(key))
}

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
  readonly cert: x509.X509Certificate
  readonly pem: string
}

const issue = (
  params: SignParams,
  usages: ReadonlyArray<string>,
  sans: ReadonlyArray<x509.JsonGeneralName>
): Effect.Effect<IssuedCertificate, X509Error> =>
  Effect.gen(function* () {
    const caCert =
      typeof params.caCert === "string"
        ? yield* parseCertificate(params.caCert)
        : params.caCert
    const caKey = typeof params.caKey === "string" ? yield* importEcdsaPrivateKey(params.caKey) : params.caKey
    const publicKey = yield* toPublicKey(params.publicKey)
    const now = params.now ?? new Date()
    return yield* crypto("sign certificate", async () => {
      const extensions: Array<x509.Extension> = [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
        new x509.ExtendedKeyUsageExtension([...usages], false),
        await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey),
        await x509.SubjectKeyIdentifierExtension.create(publicKey)
      ]
      if (sans.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension([...sans], false))
      const cert = await x509.X509CertificateGenerator.create({
        serialNumber: randomSerial(),
        subject: encodeSubject(params.identity),
        // the issuer's exact DER, so name matching never depends on re-encoding
        issuer: new x509.Name(caCert.subjectName.toArrayBuffer()),
        notBefore: new Date(now.getTime() - MINUTE),
        notAfter: params.notAfter,
        signingAlgorithm: SIGNING,
        publicKey,
        signingKey: caKey,
        extensions
      })
      return { cert, pem: cert.toString("pem") + "\n" }
    })
  })

/** A client certificate (extKeyUsage clientAuth) for a user identity. */
export const signUserCert = (params: SignParams): Effect.Effect<IssuedCertificate, X509Error> =>
  issue(params, [x509.ExtendedKeyUsage.clientAuth], [])

/** A host certificate (serverAuth + clientAuth) with DNS and IP subject alternative names. */
export const signHostCert = (params: HostSignParams): Effect.Effect<IssuedCertificate, X509Error> =>
  issue(
    params,
    [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
    [
      ...(params.dnsNames ?? []).map((value): x509.JsonGeneralName => ({ type: "dns", value })),
      ...(params.ipAddresses ?? []).map((value): x509.JsonGeneralName => ({ type: "ip", value }))
    ]
  )

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
