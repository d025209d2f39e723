/**
 * Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP) as authenticator apps implement
 * them: HMAC-SHA1, 6 digits, 30-second steps, a base32 (RFC 4648) shared secret.
 *
 * Pure: the time is an argument and the secret comes from the caller (`generateTotpSecret` in
 * `src/adapters/Password.ts` draws it). HMAC is computation, not I/O, like `Chain.ts`'s SHA-256.
 */
import { createHmac, timingSafeEqual } from "node:crypto"

const BASE32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

/** RFC 4648 base32 with `=` padding omitted (authenticator apps and otpauth URIs leave it off). */
export const base32Encode = (bytes: Uint8Array): string => {
  let out = ""
  let buffer = 0
  let bits = 0
  for (const byte of bytes) {
    buffer = (buffer << 8) | byte
    bits += 8
    while (bits >= 5) {
      bits -= 5
      out += BASE32_ALPHABET[(buffer >>> bits) & 31]
    }
    buffer &= (1 << bits) - 1
  }
  if (bits > 0) out += BASE32_ALPHABET[(buffer << (5 - bits)) & 31]
  return out
}

/**
 * Decodes RFC 4648 base32, case-insensitive, ignoring `=` padding, spaces and dashes (people type
 * secrets in groups). Returns undefined for any other character.
 */
export const base32Decode = (text: string): Uint8Array | undefined => {
  const clean = text.replace(/[\s=-]/g, "").toUpperCase()
  const out = new Uint8Array(Math.floor((clean.length * 5) / 8))
  let buffer = 0
  let bits = 0
  let index = 0
  for (const char of clean) {
    const value = BASE32_ALPHABET.indexOf(char)
    if (value < 0) return undefined
    buffer = (buffer << 5) | value
    bits += 5
    if (bits >= 8) {
      bits -= 8
      out[index++] = (buffer >>> bits) & 0xff
    }
    buffer &= (1 << bits) - 1
  }
  return out
}

/** RFC 4226 HOTP: HMAC-SHA1 over the 8-byte big-endian counter, dynamic truncation, `digits` digits. */
export const hotp = (key: Uint8Array, counter: number, digits = 6): string => {
  const message = Buffer.alloc(8)
  message.writeBigUInt64BE(BigInt(counter))
  const mac = createHmac("sha1", key).update(message).digest()
  const offset = mac[mac.length - 1]! & 0x0f
  const binary = mac.readUInt32BE(offset) & 0x7fffffff
  return String(binary % 10 ** digits).padStart(digits, "0")
}

/** The RFC 6238 time-step counter for a Unix time in milliseconds. */
export const totpCounter = (timeMs: number, step = 30): number => Math.floor(timeMs / 1000 / step)

export interface TotpOptions {
  /** Seconds per step; 30 unless the URI said otherwise. */
  readonly step?: number
  /** Code length; 6 for authenticator apps, 8 in RFC 6238's test vectors. */
  readonly digits?: number
}

/**
 * The code for `timeMs`. Throws on a secret that is not base32: secrets come from
 * `generateTotpSecret`, so a bad one is a programming error, not user input.
 */
export const totpCode = (secretBase32: string, timeMs: number, step = 30, digits = 6): string => {
  const key = base32Decode(secretBase32)
  if (key === undefined) throw new Error("TOTP secret is not base32")
  return hotp(key, totpCounter(timeMs, step), digits)
}

export interface VerifyTotpOptions extends TotpOptions {
  /** Steps accepted either side of the current one, for clock skew and typing time. */
  readonly window?: number
}

/**
 * Checks `code` against the steps `counter(timeMs) ± window` and returns the counter of the step it
 * matched, or undefined. Every candidate is compared in constant time and all are tried, so the
 * answer's timing does not say which step (or which digit) matched.
 *
 * A code stays valid for the whole window, so the caller must refuse replays: store the returned
 * counter with the user (e.g. `last_totp_counter`) and reject any later match whose counter is not
 * strictly greater.
 */
export const verifyTotp = (
  secretBase32: string,
  code: string,
  timeMs: number,
  options: VerifyTotpOptions = {}
): number | undefined => {
  const { window = 1, step = 30, digits = 6 } = options
  const key = base32Decode(secretBase32)
  const given = code.replace(/\s/g, "")
  if (key === undefined || key.length === 0 || !/^\d+$/.test(given) || given.length !== digits) return undefined
  const givenBytes = Buffer.from(given)
  const now = totpCounter(timeMs, step)
  let matched: number | undefined
  for (let counter = now - window; counter <= now + window; counter++) {
    if (counter < 0) continue
    const expected = Buffer.from(hotp(key, counter, digits))
    if (timingSafeEqual(expected, givenBytes) && matched === undefined) matched = counter
  }
  return matched
}

/**
 * The `otpauth://` URI that authenticator apps read from the QR code (Google Authenticator's
 * Key Uri Format): label `ISSUER:ACCOUNT`, and the issuer repeated as a parameter.
 */
export const otpauthUri = (options: { readonly secret: string; readonly account: string; readonly issuer: string }): string => {
  const label = `${encodeURIComponent(options.issuer)}:${encodeURIComponent(options.account)}`
  const params = [
    `secret=${encodeURIComponent(options.secret)}`,
    `issuer=${encodeURIComponent(options.issuer)}`,
    "algorithm=SHA1",
    "digits=6",
    "period=30"
  ].join("&")
  return `otpauth://totp/${label}?${params}`
}
