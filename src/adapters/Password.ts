/**
 * Local-user secrets: scrypt password hashes, the password policy, random tokens and TOTP secrets.
 *
 * Hashes are self-describing PHC-style strings, so the cost can be raised later and old hashes still
 * verify with the parameters they were made with:
 *
 *     $scrypt$ln=15,r=8,p=1$<salt, base64 without padding>$<key, base64 without padding>
 *
 * ln is log2(N). N=2^15, r=8 needs 128·N·r = 32 MiB per hash; p=1. Salt 32 bytes, key 64 bytes.
 * The async `crypto.scrypt` runs on libuv's thread pool, so a login never blocks the event loop.
 */
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from "node:crypto"
import { Effect, Redacted } from "effect"
import { base32Encode } from "../domain/Totp.ts"

const LOG_N = 15
const BLOCK_SIZE = 8
const PARALLELISM = 1
const SALT_BYTES = 32
const KEY_BYTES = 64

/** Password length bounds, in Unicode code points. Teleport's minimum is 12. */
export const PASSWORD_MIN_LENGTH = 12
export const PASSWORD_MAX_LENGTH = 128

type Password = string | Redacted.Redacted<string>

// NFKC so the same password typed on different systems (composed or decomposed accents) hashes the
// same (NIST SP 800-63B 5.1.1.2).
const passwordBytes = (password: Password): Buffer =>
  Buffer.from((Redacted.isRedacted(password) ? Redacted.value(password) : password).normalize("NFKC"), "utf8")

interface ScryptParams {
  readonly ln: number
  readonly r: number
  readonly p: number
}

// OpenSSL counts 128·N·r·p plus working space against maxmem; twice the block memory is ample and
// bounds what a crafted stored hash can make us allocate (the parser caps ln, r and p too).
const scryptOptions = ({ ln, r, p }: ScryptParams): ScryptOptions => ({
  N: 2 ** ln,
  r,
  p,
  maxmem: 2 * 128 * 2 ** ln * r * p + 1024 * 1024
})

const derive = (password: Buffer, salt: Buffer, params: ScryptParams, keyLength: number): Effect.Effect<Buffer> =>
  Effect.async<Buffer>((resume) => {
    scrypt(password, salt, keyLength, scryptOptions(params), (error, key) =>
      resume(error === null ? Effect.succeed(key) : Effect.die(error))
    )
  })

const b64 = (bytes: Buffer) => bytes.toString("base64").replace(/=+$/, "")

const B64_PATTERN = /^[A-Za-z0-9+/]+$/

interface ParsedHash extends ScryptParams {
  readonly salt: Buffer
  readonly key: Buffer
}

/** Parses a stored hash; undefined for anything malformed or with parameters outside sane bounds. */
const parseHash = (stored: string): ParsedHash | undefined => {
  const parts = stored.split("$")
  if (parts.length !== 5 || parts[0] !== "" || parts[1] !== "scrypt") return undefined
  const match = /^ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})$/.exec(parts[2] ?? "")
  if (match === null) return undefined
  const ln = Number(match[1])
  const r = Number(match[2])
  const p = Number(match[3])
  if (ln < 10 || ln > 20 || r < 1 || r > 32 || p < 1 || p > 16) return undefined
  const [saltText, keyText] = [parts[3] ?? "", parts[4] ?? ""]
  if (!B64_PATTERN.test(saltText) || !B64_PATTERN.test(keyText)) return undefined
  const salt = Buffer.from(saltText, "base64")
  const key = Buffer.from(keyText, "base64")
  // Exact lengths: scrypt's output is a PBKDF2 stream, so a shortened key would still verify
  // against its prefix. Canonical base64 only, so one hash has one spelling.
  if (salt.length !== SALT_BYTES || key.length !== KEY_BYTES) return undefined
  if (b64(salt) !== saltText || b64(key) !== keyText) return undefined
  return { ln, r, p, salt, key }
}

const DEFAULT_PARAMS: ScryptParams = { ln: LOG_N, r: BLOCK_SIZE, p: PARALLELISM }

/** Hashes a password with a fresh random salt into the `$scrypt$...` string to store. */
export const hashPassword = (password: Password): Effect.Effect<string> =>
  Effect.suspend(() => {
    const salt = randomBytes(SALT_BYTES)
    return derive(passwordBytes(password), salt, DEFAULT_PARAMS, KEY_BYTES).pipe(
      Effect.map((key) => `$scrypt$ln=${LOG_N},r=${BLOCK_SIZE},p=${PARALLELISM}$${b64(salt)}$${b64(key)}`)
    )
  })

/**
 * True when `password` matches the stored hash. A malformed or tampered hash string gives false,
 * never an error. The key comparison is constant-time.
 */
export const verifyPassword = (password: Password, stored: string): Effect.Effect<boolean> =>
  Effect.suspend(() => {
    const parsed = parseHash(stored)
    if (parsed === undefined) return Effect.succeed(false)
    return derive(passwordBytes(password), parsed.salt, parsed, parsed.key.length).pipe(
      Effect.map((key) => timingSafeEqual(key, parsed.key))
    )
  })

// A real hash of a password nobody knows, made once: verifying against it costs what a real
// verification costs.
let dummyHash: Promise<string> | undefined
const getDummyHash = (): Effect.Effect<string> =>
  Effect.promise(() => (dummyHash ??= Effect.runPromise(hashPassword(randomBytes(32).toString("hex")))))

/**
 * Spends the same time as `verifyPassword` against a real hash and answers false. Call it for an
 * unknown user (or one without a password) so the response time does not tell which user names
 * exist.
 */
export const dummyVerify = (password: Password = ""): Effect.Effect<false> =>
  getDummyHash().pipe(
    Effect.flatMap((stored) => verifyPassword(password, stored)),
    Effect.as(false as const)
  )

/**
 * The password policy: undefined when acceptable, else a message to show the user as is.
 * Lengths count Unicode code points, so an accented or non-Latin password is not penalized.
 */
export const checkPasswordPolicy = (password: string): string | undefined => {
  const length = [...password.normalize("NFKC")].length
  if (length < PASSWORD_MIN_LENGTH) {
    return `password must be at least ${PASSWORD_MIN_LENGTH} characters long (got ${length})`
  }
  if (length > PASSWORD_MAX_LENGTH) {
    return `password must be at most ${PASSWORD_MAX_LENGTH} characters long (got ${length})`
  }
  if (password.trim().length === 0) return "password must not be only spaces"
  return undefined
}

/** A random token as lower-case hex (`bytes` random bytes, 32 by default: 256 bits). */
export const randomToken = (bytes = 32): string => randomBytes(bytes).toString("hex")

/** A fresh TOTP secret: 20 random bytes (160 bits, RFC 4226's recommendation) in base32. */
export const generateTotpSecret = (): string => base32Encode(randomBytes(20))
