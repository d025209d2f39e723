/**
 * OpenSSH certificates (PROTOCOL.certkeys), public key lines, fingerprints and the
 * unencrypted `openssh-key-v1` private key format. Pure functions over node:crypto keys.
 *
 * Certificate layout, after the certificate key type:
 *
 *     string    nonce
 *     <key>     the subject key's fields (ed25519: string pk; ecdsa: string curve, string Q; rsa: mpint e, mpint n)
 *     uint64    serial
 *     uint32    type                 1 user, 2 host
 *     string    key id
 *     string    valid principals     (a buffer of strings)
 *     uint64    valid after          seconds since the epoch
 *     uint64    valid before         0xffffffffffffffff = forever
 *     string    critical options     (a buffer of name, data pairs; data = nested string or empty)
 *     string    extensions           (same shape)
 *     string    reserved
 *     string    signature key        (the CA's public key blob)
 *     string    signature            (over every byte before it)
 */
import { createPublicKey, randomBytes, sign, verify, createHash, type KeyObject, createPrivateKey } from "node:crypto"
import { BlockList, isIP } from "node:net"
import { Data, Either } from "effect"
import { SshReader, SshWriter, WireError, bytesEqual, compareBytes, fromBase64, toBase64, utf8Bytes } from "./wire.ts"

/** Public key algorithms this module reads and writes. */
export type KeyType = "ssh-ed25519" | "ecdsa-sha2-nistp256" | "ssh-rsa"

const CERT_SUFFIX = "-cert-v01@openssh.com"
const KEY_TYPES: ReadonlyArray<KeyType> = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"]

/** `valid_before` of a certificate that never expires. */
export const FOREVER = 0xffff_ffff_ffff_ffffn

/** The permit-* extensions `ssh-keygen` grants a user certificate by default. */
export const defaultUserExtensions: Readonly<Record<string, string>> = {
  "permit-X11-forwarding": "",
  "permit-agent-forwarding": "",
  "permit-port-forwarding": "",
  "permit-pty": "",
  "permit-user-rc": ""
}

/** Everything a CA decides when it signs. */
export interface CertificateFields {
  readonly nonce: Uint8Array
  /** The subject's plain public key blob (e.g. `string "ssh-ed25519", string pk`). */
  readonly publicKey: Uint8Array
  readonly serial: bigint
  readonly type: "user" | "host"
  readonly keyId: string
  readonly validPrincipals: ReadonlyArray<string>
  readonly validAfter: bigint
  readonly validBefore: bigint
  /** name → value; an empty value is written as empty data, any other as a nested string. */
  readonly criticalOptions: Readonly<Record<string, string>>
  readonly extensions: Readonly<Record<string, string>>
  readonly reserved: Uint8Array
}

/** A signed certificate, as decoded or as just encoded. */
export interface Certificate extends CertificateFields {
  /** e.g. `ssh-ed25519-cert-v01@openssh.com` */
  readonly certType: string
  /** The CA's public key blob. */
  readonly signatureKey: Uint8Array
  /** The signature blob: `string algorithm, string signature`. */
  readonly signature: Uint8Array
  readonly signatureAlgorithm: string
  /** The bytes the signature covers. */
  readonly signedBytes: Uint8Array
  /** The whole certificate blob. */
  readonly blob: Uint8Array
}

export class CertDecodeError extends Data.TaggedError("CertDecodeError")<{
  readonly reason:
    | "Truncated"
    | "BadUtf8"
    | "TrailingBytes"
    | "UnknownKeyType"
    | "BadKey"
    | "UnknownCertType"
    | "DuplicateOption"
    | "BadOptionValue"
    | "BadLine"
    | "BadBase64"
    | "BadPem"
    | "Encrypted"
    | "CheckMismatch"
  readonly message: string
}> {}

export class CertVerifyError extends Data.TaggedError("CertVerifyError")<{
  readonly reason:
    | "WrongCertType"
    | "UntrustedCa"
    | "UnsupportedSignatureAlgorithm"
    | "BadSignature"
    | "NotYetValid"
    | "Expired"
    | "NoPrincipals"
    | "PrincipalNotListed"
    | "UnsupportedCriticalOption"
    | "BadCriticalOption"
    | "SourceAddressNotAllowed"
  readonly message: string
}> {}

/** Signs the to-be-signed bytes of a certificate; returns an SSH signature blob. */
export interface CertSigner {
  readonly publicKeyBlob: Uint8Array
  readonly sign: (data: Uint8Array) => Uint8Array
}

// ---------------------------------------------------------------------------------------------
// Public keys

const b64url = (b: Uint8Array): string => Buffer.from(b).toString("base64url")
const fromB64url = (s: string | undefined): Uint8Array => new Uint8Array(Buffer.from(s ?? "", "base64url"))

/** The SSH public key blob of a node key (private keys give their public half). Ed25519, ECDSA P-256, RSA. */
export const publicKeyBlob = (key: KeyObject): Uint8Array => {
  const pub = key.type === "private" ? createPublicKey(key) : key
  const jwk = pub.export({ format: "jwk" })
  switch (pub.asymmetricKeyType) {
    case "ed25519":
      return new SshWriter().string("ssh-ed25519").string(fromB64url(jwk.x)).finish()
    case "ec": {
      if (jwk.crv !== "P-256") throw new Error(`unsupported EC curve ${jwk.crv}`)
      const q = new Uint8Array(65)
      q[0] = 4
      q.set(fromB64url(jwk.x), 1)
      q.set(fromB64url(jwk.y), 33)
      return new SshWriter().string("ecdsa-sha2-nistp256").string("nistp256").string(q).finish()
    }
    case "rsa":
      return new SshWriter().string("ssh-rsa").mpint(fromB64url(jwk.e)).mpint(fromB64url(jwk.n)).finish()
    default:
      throw new Error(`unsupported key type ${pub.asymmetricKeyType}`)
  }
}

/** The `ssh-ed25519` public key blob of an Ed25519 key. */
export const ed25519PublicKeyBlob = (key: KeyObject): Uint8Array => {
  const k = key.type === "private" ? createPublicKey(key) : key
  if (k.asymmetricKeyType !== "ed25519") throw new Error(`expected an Ed25519 key, got ${k.asymmetricKeyType}`)
  return publicKeyBlob(k)
}

const asDecodeError = (e: unknown): CertDecodeError =>
  e instanceof CertDecodeError
    ? e
    : e instanceof WireError
      ? new CertDecodeError({ reason: e.reason === "TooLong" ? "TrailingBytes" : e.reason, message: e.message })
      : new CertDecodeError({ reason: "BadKey", message: e instanceof Error ? e.message : String(e) })

const decoding = <A>(f: () => A): Either.Either<A, CertDecodeError> => {
  try {
    return Either.right(f())
  } catch (e) {
    return Either.left(asDecodeError(e))
  }
}

const stripMpint = (b: Uint8Array): Uint8Array => {
  let i = 0
  while (i < b.length - 1 && b[i] === 0) i++
  return b.subarray(i)
}

/**
 * Reads the key fields that follow a key type string (in a key blob or inside a certificate),
 * checking their shape, and returns them as raw bytes.
 */
const readKeyFields = (r: SshReader, keyType: KeyType): Uint8Array => {
  const start = r.offset
  switch (keyType) {
    case "ssh-ed25519": {
      const pk = r.bytesString()
      if (pk.length !== 32) throw new CertDecodeError({ reason: "BadKey", message: `ed25519 key of ${pk.length} bytes` })
      break
    }
    case "ecdsa-sha2-nistp256": {
      const curve = r.utf8String()
      const q = r.bytesString()
      if (curve !== "nistp256" || q.length !== 65 || q[0] !== 4) {
        throw new CertDecodeError({ reason: "BadKey", message: "malformed nistp256 point" })
      }
      break
    }
    case "ssh-rsa": {
      const e = r.bytesString()
      const n = r.bytesString()
      if (e.length === 0 || n.length === 0 || (e[0]! & 0x80) !== 0 || (n[0]! & 0x80) !== 0) {
        throw new CertDecodeError({ reason: "BadKey", message: "malformed RSA key" })
      }
      break
    }
  }
  return r.slice(start)
}

const asKeyType = (s: string): KeyType | undefined => KEY_TYPES.find((t) => t === s)

/** Parses a plain public key blob into its type and a node KeyObject. */
export const parsePublicKeyBlob = (
  blob: Uint8Array
): Either.Either<{ readonly keyType: KeyType; readonly key: KeyObject }, CertDecodeError> =>
  decoding(() => {
    const r = new SshReader(blob)
    const name = r.utf8String()
    const keyType = asKeyType(name)
    if (keyType === undefined) throw new CertDecodeError({ reason: "UnknownKeyType", message: `unknown key type ${name}` })
    const fields = new SshReader(readKeyFields(r, keyType))
    if (r.remaining !== 0) throw new CertDecodeError({ reason: "TrailingBytes", message: "trailing bytes after key" })
    switch (keyType) {
      case "ssh-ed25519":
        return {
          keyType,
          key: createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: b64url(fields.bytesString()) }, format: "jwk" })
        }
      case "ecdsa-sha2-nistp256": {
        fields.bytesString()
        const q = fields.bytesString()
        const jwk = { kty: "EC", crv: "P-256", x: b64url(q.subarray(1, 33)), y: b64url(q.subarray(33, 65)) }
        return { keyType, key: createPublicKey({ key: jwk, format: "jwk" }) }
      }
      case "ssh-rsa": {
        const e = stripMpint(fields.bytesString())
        const n = stripMpint(fields.bytesString())
        return { keyType, key: createPublicKey({ key: { kty: "RSA", e: b64url(e), n: b64url(n) }, format: "jwk" }) }
      }
    }
  })

const blobKeyType = (blob: Uint8Array): string | undefined => {
  try {
    return new SshReader(blob).utf8String()
  } catch {
    return undefined
  }
}

/** `ssh-ed25519 AAAA... comment`, as in `authorized_keys` and `*.pub` files. */
export const publicKeyLine = (blob: Uint8Array, comment?: string): string => {
  const type = blobKeyType(blob) ?? "unknown"
  return comment === undefined || comment === "" ? `${type} ${toBase64(blob)}` : `${type} ${toBase64(blob)} ${comment}`
}

/** Parses `type base64 [comment]`; the type must match the one inside the blob. */
export const parsePublicKeyLine = (
  line: string
): Either.Either<{ readonly keyType: string; readonly blob: Uint8Array; readonly comment: string }, CertDecodeError> => {
  const m = /^\s*(\S+)\s+(\S+)(?:\s+(.*?))?\s*$/.exec(line)
  if (m === null) return Either.left(new CertDecodeError({ reason: "BadLine", message: "expected `type base64 [comment]`" }))
  const blob = fromBase64(m[2]!)
  if (blob === undefined) return Either.left(new CertDecodeError({ reason: "BadBase64", message: "key is not base64" }))
  const inner = blobKeyType(blob)
  if (inner !== m[1]) {
    return Either.left(new CertDecodeError({ reason: "BadLine", message: `line says ${m[1]}, blob says ${inner}` }))
  }
  return Either.right({ keyType: m[1]!, blob, comment: m[3] ?? "" })
}

/** `SHA256:<base64 without padding>`, as `ssh-keygen -l` prints. */
export const fingerprintSha256 = (blob: Uint8Array): string =>
  `SHA256:${createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")}`

// ---------------------------------------------------------------------------------------------
// Signatures

/** A `CertSigner` for a node private key: Ed25519, ECDSA P-256 (SHA-256) or RSA (rsa-sha2-512). */
export const keySigner = (privateKey: KeyObject, publicKey?: KeyObject | Uint8Array): CertSigner => {
  const pubBlob =
    publicKey === undefined ? publicKeyBlob(privateKey) : publicKey instanceof Uint8Array ? publicKey : publicKeyBlob(publicKey)
  switch (privateKey.asymmetricKeyType) {
    case "ed25519":
      return {
        publicKeyBlob: pubBlob,
        sign: (data) => new SshWriter().string("ssh-ed25519").string(sign(null, data, privateKey)).finish()
      }
    case "ec":
      return {
        publicKeyBlob: pubBlob,
        sign: (data) => {
          const rs = sign("sha256", data, { key: privateKey, dsaEncoding: "ieee-p1363" })
          const inner = new SshWriter().mpint(rs.subarray(0, 32)).mpint(rs.subarray(32, 64)).finish()
          return new SshWriter().string("ecdsa-sha2-nistp256").string(inner).finish()
        }
      }
    case "rsa":
      return {
        publicKeyBlob: pubBlob,
        sign: (data) => new SshWriter().string("rsa-sha2-512").string(sign("sha512", data, privateKey)).finish()
      }
    default:
      throw new Error(`unsupported CA key type ${privateKey.asymmetricKeyType}`)
  }
}

const leftPad = (b: Uint8Array, n: number): Uint8Array | undefined => {
  const m = stripMpint(b)
  if (m.length > n) return undefined
  const out = new Uint8Array(n)
  out.set(m, n - m.length)
  return out
}

/**
 * Checks an SSH signature blob (`string alg, string sig`) over `data` with a public key blob (a CA
 * key, or a user key proving possession during publickey auth). `ssh-rsa` (SHA-1) signatures are
 * refused, as OpenSSH ≥ 8.2 refuses them for certificates.
 */
export const verifySignature = (
  caKeyBlob: Uint8Array,
  signatureBlob: Uint8Array,
  data: Uint8Array
): Either.Either<void, CertVerifyError> => {
  const bad = (message: string) => Either.left(new CertVerifyError({ reason: "BadSignature", message }))
  const key = parsePublicKeyBlob(caKeyBlob)
  if (Either.isLeft(key)) return bad(`CA key: ${key.left.message}`)
  let alg: string
  let sig: Uint8Array
  try {
    const r = new SshReader(signatureBlob)
    alg = r.utf8String()
    sig = r.bytesString()
    if (r.remaining !== 0) return bad("trailing bytes after signature")
  } catch {
    return bad("malformed signature blob")
  }
  const { keyType, key: pub } = key.right
  const ok = (() => {
    try {
      if (keyType === "ssh-ed25519" && alg === "ssh-ed25519") return verify(null, data, pub, sig)
      if (keyType === "ecdsa-sha2-nistp256" && alg === "ecdsa-sha2-nistp256") {
        const r = new SshReader(sig)
        const rr = leftPad(r.bytesString(), 32)
        const ss = leftPad(r.bytesString(), 32)
        if (rr === undefined || ss === undefined || r.remaining !== 0) return false
        const p1363 = new Uint8Array(64)
        p1363.set(rr, 0)
        p1363.set(ss, 32)
        return verify("sha256", data, { key: pub, dsaEncoding: "ieee-p1363" }, p1363)
      }
      if (keyType === "ssh-rsa" && (alg === "rsa-sha2-256" || alg === "rsa-sha2-512")) {
        return verify(alg === "rsa-sha2-256" ? "sha256" : "sha512", data, pub, sig)
      }
      return undefined
    } catch {
      return false
    }
  })()
  if (ok === undefined) {
    return Either.left(
      new CertVerifyError({
        reason: "UnsupportedSignatureAlgorithm",
        message: `signature algorithm ${alg} with a ${keyType} CA key is not accepted`
      })
    )
  }
  return ok ? Either.void : bad("signature does not verify")
}

// ---------------------------------------------------------------------------------------------
// Certificates

/** 32 random bytes, as `ssh-keygen` uses for a certificate nonce. */
export const randomNonce = (): Uint8Array => new Uint8Array(randomBytes(32))

const sortedEntries = (rec: Readonly<Record<string, string>>): Array<[Uint8Array, string]> =>
  Object.entries(rec)
    .map(([k, v]): [Uint8Array, string] => [utf8Bytes(k), v])
    .sort((a, b) => compareBytes(a[0], b[0]))

const encodeOptions = (rec: Readonly<Record<string, string>>): Uint8Array => {
  const w = new SshWriter()
  for (const [name, value] of sortedEntries(rec)) {
    w.string(name)
    w.string(value === "" ? new Uint8Array(0) : new SshWriter().string(value).finish())
  }
  return w.finish()
}

const decodeOptions = (bytes: Uint8Array, what: string): Record<string, string> => {
  const r = new SshReader(bytes)
  const out: Array<[string, string]> = []
  const seen = new Set<string>()
  while (r.remaining > 0) {
    const name = r.utf8String()
    if (seen.has(name)) throw new CertDecodeError({ reason: "DuplicateOption", message: `duplicate ${what} ${name}` })
    seen.add(name)
    const data = r.bytesString()
    if (data.length === 0) {
      out.push([name, ""])
    } else {
      try {
        const inner = new SshReader(data)
        const value = inner.utf8String()
        if (inner.remaining !== 0) throw new Error("trailing bytes")
        out.push([name, value])
      } catch {
        throw new CertDecodeError({ reason: "BadOptionValue", message: `${what} ${name}: value is not one string` })
      }
    }
  }
  return Object.fromEntries(out)
}

const encodeBody = (fields: CertificateFields, signatureKey: Uint8Array): Uint8Array => {
  const kr = new SshReader(fields.publicKey)
  const keyTypeName = kr.utf8String()
  const keyType = asKeyType(keyTypeName)
  if (keyType === undefined) throw new Error(`unsupported subject key type ${keyTypeName}`)
  const keyFields = readKeyFields(kr, keyType)
  const principals = new SshWriter()
  for (const p of fields.validPrincipals) principals.string(p)
  return new SshWriter()
    .string(keyType + CERT_SUFFIX)
    .string(fields.nonce)
    .raw(keyFields)
    .uint64(fields.serial)
    .uint32(fields.type === "user" ? 1 : 2)
    .string(fields.keyId)
    .string(principals.finish())
    .uint64(fields.validAfter)
    .uint64(fields.validBefore)
    .string(encodeOptions(fields.criticalOptions))
    .string(encodeOptions(fields.extensions))
    .string(fields.reserved)
    .string(signatureKey)
    .finish()
}

/** Encodes and signs a certificate; returns the certificate blob. */
export const encodeCertificate = (fields: CertificateFields, signer: CertSigner): Uint8Array => {
  const body = encodeBody(fields, signer.publicKeyBlob)
  return new SshWriter().raw(body).string(signer.sign(body)).finish()
}

/** Signs a certificate with a CA key; returns the blob, the `*-cert.pub` line and the decoded certificate. */
export const signCertificate = (
  fields: CertificateFields,
  caPrivateKey: KeyObject,
  caPublicKey?: KeyObject | Uint8Array,
  comment: string = fields.keyId
): { readonly blob: Uint8Array; readonly line: string; readonly certificate: Certificate } => {
  const blob = encodeCertificate(fields, keySigner(caPrivateKey, caPublicKey))
  const certificate = Either.getOrThrow(decodeCertificate(blob))
  return { blob, line: publicKeyLine(blob, comment.replace(/\s+/g, "_")), certificate }
}

const copy = (b: Uint8Array): Uint8Array => new Uint8Array(b)

/** Decodes a certificate blob or a `*-cert-v01@openssh.com AAAA... comment` line. Never throws. */
export const decodeCertificate = (input: Uint8Array | string): Either.Either<Certificate, CertDecodeError> => {
  if (typeof input === "string") {
    return Either.flatMap(parsePublicKeyLine(input), ({ blob }) => decodeCertificate(blob))
  }
  return decoding(() => {
    const r = new SshReader(input)
    const certType = r.utf8String()
    const keyType = certType.endsWith(CERT_SUFFIX) ? asKeyType(certType.slice(0, -CERT_SUFFIX.length)) : undefined
    if (keyType === undefined) {
      throw new CertDecodeError({ reason: "UnknownKeyType", message: `unknown certificate type ${certType}` })
    }
    const nonce = copy(r.bytesString())
    const keyFields = readKeyFields(r, keyType)
    const publicKey = new SshWriter().string(keyType).raw(keyFields).finish()
    const serial = r.uint64()
    const typeNum = r.uint32()
    if (typeNum !== 1 && typeNum !== 2) {
      throw new CertDecodeError({ reason: "UnknownCertType", message: `certificate type ${typeNum}` })
    }
    const keyId = r.utf8String()
    const pr = new SshReader(r.bytesString())
    const validPrincipals: Array<string> = []
    while (pr.remaining > 0) validPrincipals.push(pr.utf8String())
    const validAfter = r.uint64()
    const validBefore = r.uint64()
    const criticalOptions = decodeOptions(r.bytesString(), "critical option")
    const extensions = decodeOptions(r.bytesString(), "extension")
    const reserved = copy(r.bytesString())
    const signatureKey = copy(r.bytesString())
    const caKeyType = blobKeyType(signatureKey)
    if (caKeyType === undefined || Either.isLeft(parsePublicKeyBlob(signatureKey))) {
      throw new CertDecodeError({ reason: "BadKey", message: `unsupported signature key ${caKeyType ?? "(malformed)"}` })
    }
    const signedBytes = copy(r.slice(0))
    const signature = copy(r.bytesString())
    if (r.remaining !== 0) throw new CertDecodeError({ reason: "TrailingBytes", message: "trailing bytes after signature" })
    const sr = new SshReader(signature)
    const signatureAlgorithm = sr.utf8String()
    sr.bytesString()
    if (sr.remaining !== 0) throw new CertDecodeError({ reason: "TrailingBytes", message: "trailing bytes in signature" })
    return {
      certType,
      nonce,
      publicKey,
      serial,
      type: typeNum === 1 ? "user" : "host",
      keyId,
      validPrincipals,
      validAfter,
      validBefore,
      criticalOptions,
      extensions,
      reserved,
      signatureKey,
      signature,
      signatureAlgorithm,
      signedBytes,
      blob: copy(input)
    } satisfies Certificate
  })
}

export interface VerifyOptions {
  /** CA public key blobs the caller trusts. */
  readonly trustedCaKeys: ReadonlyArray<Uint8Array>
  readonly now: Date
  /** The login (user certs) or host name (host certs) that must be listed. */
  readonly principal?: string
  readonly certType: "user" | "host"
  /** The client's address; when given, a `source-address` option is enforced against it. */
  readonly remoteAddress?: string
}

/** A certificate that passed every check, with the restrictions the caller must still apply. */
export interface VerifiedCertificate {
  readonly certificate: Certificate
  /** `force-command`: the only command the session may run. */
  readonly forceCommand?: string
  /** `source-address` CIDR list; already enforced when `remoteAddress` was given. */
  readonly sourceAddresses?: ReadonlyArray<string>
  /** `verify-required`: only meaningful for FIDO keys, which this module does not issue. */
  readonly verifyRequired: boolean
}

const USER_CRITICAL_OPTIONS = new Set(["force-command", "source-address", "verify-required"])

const parseSourceAddress = (value: string): BlockList | undefined => {
  const list = new BlockList()
  for (const entry of value.split(",")) {
    const [addr = "", prefix, extra] = entry.trim().split("/")
    const family = isIP(addr)
    if (family === 0 || extra !== undefined) return undefined
    const max = family === 4 ? 32 : 128
    const bits = prefix === undefined ? max : /^\d{1,3}$/.test(prefix) ? Number(prefix) : -1
    if (bits < 0 || bits > max) return undefined
    list.addSubnet(addr, bits, family === 4 ? "ipv4" : "ipv6")
  }
  return list
}

const addressAllowed = (list: BlockList, remote: string): boolean => {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(remote)
  const addr = mapped?.[1] ?? remote
  const family = isIP(addr)
  if (family === 0) return false
  return list.check(addr, family === 4 ? "ipv4" : "ipv6")
}

/**
 * Checks a certificate as sshd (user) or ssh (host) would: type, trusted CA, signature, validity
 * window (`valid_after <= now < valid_before`), principal, critical options.
 */
export const verifyCertificate = (
  cert: Certificate,
  opts: VerifyOptions
): Either.Either<VerifiedCertificate, CertVerifyError> => {
  const fail = (reason: CertVerifyError["reason"], message: string) => Either.left(new CertVerifyError({ reason, message }))
  if (cert.type !== opts.certType) return fail("WrongCertType", `expected a ${opts.certType} certificate, got ${cert.type}`)
  if (!opts.trustedCaKeys.some((k) => bytesEqual(k, cert.signatureKey))) {
    return fail("UntrustedCa", `certificate signed by untrusted CA ${fingerprintSha256(cert.signatureKey)}`)
  }
  const sig = verifySignature(cert.signatureKey, cert.signature, cert.signedBytes)
  if (Either.isLeft(sig)) return Either.left(sig.left)
  const now = BigInt(Math.floor(opts.now.getTime() / 1000))
  if (now < cert.validAfter) return fail("NotYetValid", "certificate is not yet valid")
  if (now >= cert.validBefore) return fail("Expired", "certificate has expired")
  if (opts.principal !== undefined) {
    if (cert.validPrincipals.length === 0) return fail("NoPrincipals", "certificate lacks a principal list")
    if (!cert.validPrincipals.includes(opts.principal)) {
      return fail("PrincipalNotListed", `principal ${JSON.stringify(opts.principal)} is not in the certificate`)
    }
  }
  const options = Object.entries(cert.criticalOptions)
  if (cert.type === "host" && options.length > 0) {
    return fail("UnsupportedCriticalOption", `host certificate carries critical options ${options.map(([k]) => k).join(", ")}`)
  }
  for (const [name] of options) {
    if (!USER_CRITICAL_OPTIONS.has(name)) return fail("UnsupportedCriticalOption", `unsupported critical option ${name}`)
  }
  const sourceAddress = cert.criticalOptions["source-address"]
  let sourceAddresses: Array<string> | undefined
  if (sourceAddress !== undefined) {
    const list = parseSourceAddress(sourceAddress)
    if (list === undefined) return fail("BadCriticalOption", `malformed source-address ${JSON.stringify(sourceAddress)}`)
    if (opts.remoteAddress !== undefined && !addressAllowed(list, opts.remoteAddress)) {
      return fail("SourceAddressNotAllowed", `source address ${opts.remoteAddress} is not allowed by the certificate`)
    }
    sourceAddresses = sourceAddress.split(",").map((s) => s.trim())
  }
  const forceCommand = cert.criticalOptions["force-command"]
  return Either.right({
    certificate: cert,
    verifyRequired: Object.hasOwn(cert.criticalOptions, "verify-required"),
    ...(forceCommand !== undefined ? { forceCommand } : {}),
    ...(sourceAddresses !== undefined ? { sourceAddresses } : {})
  })
}

// ---------------------------------------------------------------------------------------------
// openssh-key-v1 private keys (unencrypted Ed25519)

const MAGIC = utf8Bytes("openssh-key-v1\0")
const PEM_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
const PEM_END = "-----END OPENSSH PRIVATE KEY-----"

/**
 * Writes an Ed25519 private key in OpenSSH's own format, unencrypted, so `ssh -i` and
 * `ssh-keygen -y` accept it (node exports Ed25519 only as PKCS#8).
 *
 *     "openssh-key-v1\0" string "none" string "none" string "" uint32 1 string pubblob
 *     string { uint32 check, uint32 check, string "ssh-ed25519", string pk, string seed||pk, string comment, pad 1,2,3.. to 8 }
 */
export const privateKeyToOpenSsh = (privateKey: KeyObject, comment = ""): string => {
  if (privateKey.type !== "private" || privateKey.asymmetricKeyType !== "ed25519") {
    throw new Error("privateKeyToOpenSsh: expected an Ed25519 private key")
  }
  const jwk = privateKey.export({ format: "jwk" })
  const seed = fromB64url(jwk.d)
  const pk = fromB64url(jwk.x)
  const pubBlob = new SshWriter().string("ssh-ed25519").string(pk).finish()
  const check = randomBytes(4).readUInt32BE(0)
  const secret = new Uint8Array(64)
  secret.set(seed, 0)
  secret.set(pk, 32)
  const inner = new SshWriter().uint32(check).uint32(check).string("ssh-ed25519").string(pk).string(secret).string(comment)
  const unpadded = inner.finish()
  const pad = (8 - (unpadded.length % 8)) % 8
  const padding = Uint8Array.from({ length: pad }, (_, i) => i + 1)
  const body = new SshWriter()
    .raw(MAGIC)
    .string("none")
    .string("none")
    .string("")
    .uint32(1)
    .string(pubBlob)
    .string(new SshWriter().raw(unpadded).raw(padding).finish())
    .finish()
  const b64 = toBase64(body).replace(/.{1,70}/g, "$&\n")
  return `${PEM_BEGIN}\n${b64}${PEM_END}\n`
}

/** Reads an unencrypted `openssh-key-v1` Ed25519 private key. Never throws. */
export const parseOpenSshPrivateKey = (
  pem: string
): Either.Either<
  { readonly privateKey: KeyObject; readonly publicKey: KeyObject; readonly publicKeyBlob: Uint8Array; readonly comment: string },
  CertDecodeError
> => {
  const m = new RegExp(`${PEM_BEGIN}([\\s\\S]*?)${PEM_END}`).exec(pem)
  const body = m === null ? undefined : fromBase64(m[1]!.replace(/\s+/g, ""))
  if (body === undefined) return Either.left(new CertDecodeError({ reason: "BadPem", message: "not an OpenSSH private key" }))
  return decoding(() => {
    const r = new SshReader(body)
    if (!bytesEqual(r.raw(MAGIC.length), MAGIC)) throw new CertDecodeError({ reason: "BadPem", message: "bad magic" })
    const cipher = r.utf8String()
    const kdf = r.utf8String()
    r.bytesString()
    if (cipher !== "none" || kdf !== "none") {
      throw new CertDecodeError({ reason: "Encrypted", message: `encrypted key (${cipher}/${kdf}) is not supported` })
    }
    if (r.uint32() !== 1) throw new CertDecodeError({ reason: "BadKey", message: "expected exactly one key" })
    const pubBlob = copy(r.bytesString())
    const s = new SshReader(r.bytesString())
    if (r.remaining !== 0) throw new CertDecodeError({ reason: "TrailingBytes", message: "trailing bytes" })
    if (s.uint32() !== s.uint32()) throw new CertDecodeError({ reason: "CheckMismatch", message: "check bytes differ" })
    const type = s.utf8String()
    if (type !== "ssh-ed25519") throw new CertDecodeError({ reason: "UnknownKeyType", message: `key type ${type}` })
    const pk = s.bytesString()
    const secret = s.bytesString()
    const comment = s.utf8String()
    const pad = s.raw(s.remaining)
    if (pad.length >= 8 || pad.some((b, i) => b !== i + 1)) {
      throw new CertDecodeError({ reason: "BadPem", message: "bad padding" })
    }
    if (pk.length !== 32 || secret.length !== 64 || !bytesEqual(secret.subarray(32), pk)) {
      throw new CertDecodeError({ reason: "BadKey", message: "malformed Ed25519 key" })
    }
    if (!bytesEqual(new SshWriter().string("ssh-ed25519").string(pk).finish(), pubBlob)) {
      throw new CertDecodeError({ reason: "BadKey", message: "public key does not match private key" })
    }
    const privateKey = createPrivateKey({
      key: { kty: "OKP", crv: "Ed25519", d: b64url(secret.subarray(0, 32)), x: b64url(pk) },
      format: "jwk"
    })
    const publicKey = createPublicKey(privateKey)
    if (!bytesEqual(publicKeyBlob(publicKey), pubBlob)) {
      throw new CertDecodeError({ reason: "BadKey", message: "seed does not produce the stored public key" })
    }
    return { privateKey, publicKey, publicKeyBlob: pubBlob, comment }
  })
}

// ---------------------------------------------------------------------------------------------
// Certificates for identities

/** Extensions that carry the Remoteler identity in an SSH user certificate (sshd ignores them). */
export const IDENTITY_EXTENSIONS = {
  roles: "remoteler-roles@remoteler.dev",
  traits: "remoteler-traits@remoteler.dev",
  routeToCluster: "remoteler-route-to-cluster@remoteler.dev"
} as const

/** A random non-zero uint64 serial. */
export const randomSerial = (): bigint => randomBytes(8).readBigUInt64BE(0) || 1n

const toSeconds = (d: Date): bigint => BigInt(Math.floor(d.getTime() / 1000))

/**
 * Fields of a user certificate: key id = user name, principals = logins, valid from a minute
 * before `now` until `expires`, the permit-* extensions plus the identity extensions.
 */
export const userCertFields = (p: {
  readonly publicKey: Uint8Array
  readonly username: string
  readonly logins: ReadonlyArray<string>
  readonly roles: ReadonlyArray<string>
  readonly traits: Readonly<Record<string, ReadonlyArray<string>>>
  readonly routeToCluster: string
  readonly expires: Date
  readonly now?: Date
  readonly criticalOptions?: Readonly<Record<string, string>>
}): CertificateFields => ({
  nonce: randomNonce(),
  publicKey: p.publicKey,
  serial: randomSerial(),
  type: "user",
  keyId: p.username,
  validPrincipals: [...p.logins],
  validAfter: toSeconds(new Date((p.now ?? new Date()).getTime() - 60_000)),
  validBefore: toSeconds(p.expires),
  criticalOptions: p.criticalOptions ?? {},
  extensions: {
    ...defaultUserExtensions,
    [IDENTITY_EXTENSIONS.roles]: JSON.stringify(p.roles),
    [IDENTITY_EXTENSIONS.traits]: JSON.stringify(p.traits),
    [IDENTITY_EXTENSIONS.routeToCluster]: p.routeToCluster
  },
  reserved: new Uint8Array(0)
})

/** Fields of a host certificate: key id = host id, principals = host id and names. */
export const hostCertFields = (p: {
  readonly publicKey: Uint8Array
  readonly hostId: string
  readonly principals: ReadonlyArray<string>
  readonly expires: Date
  readonly now?: Date
}): CertificateFields => ({
  nonce: randomNonce(),
  publicKey: p.publicKey,
  serial: randomSerial(),
  type: "host",
  keyId: p.hostId,
  validPrincipals: [...new Set([p.hostId, ...p.principals])],
  validAfter: toSeconds(new Date((p.now ?? new Date()).getTime() - 60_000)),
  validBefore: toSeconds(p.expires),
  criticalOptions: {},
  extensions: {},
  reserved: new Uint8Array(0)
})

/** Reads back the identity extensions of a user certificate (missing or malformed ones come back empty). */
export const certIdentityExtensions = (
  cert: Certificate
): { readonly roles: ReadonlyArray<string>; readonly traits: Record<string, ReadonlyArray<string>>; readonly routeToCluster: string } => {
  const json = (name: string): unknown => {
    try {
      return JSON.parse(cert.extensions[name] ?? "null")
    } catch {
      return null
    }
  }
  const strings = (v: unknown): v is Array<string> => Array.isArray(v) && v.every((s) => typeof s === "string")
  const roles = json(IDENTITY_EXTENSIONS.roles)
  const traits = json(IDENTITY_EXTENSIONS.traits)
  const traitsOk =
    typeof traits === "object" && traits !== null && !Array.isArray(traits) && Object.values(traits).every(strings)
  return {
    roles: strings(roles) ? roles : [],
    traits: traitsOk ? (traits as Record<string, Array<string>>) : {},
    routeToCluster: cert.extensions[IDENTITY_EXTENSIONS.routeToCluster] ?? ""
  }
}
