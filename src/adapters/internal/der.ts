/**
 * A small DER (X.690) writer and TLV reader: just what issuing X.509 certificates needs, without a
 * schema layer. Writers return the complete encoding of one value (tag, length, contents); nest
 * them by passing encodings as contents.
 *
 *     identifier   one byte: class (2 bits) | constructed (1 bit) | tag number (5 bits, < 31 here)
 *     length       < 0x80: one byte; else 0x80 | n, then n big-endian bytes (minimal)
 *     contents     `length` bytes
 */

export class DerError extends Error {
  override readonly name = "DerError"
}

/** Universal tags, and the context-specific classes, as identifier bytes. */
export const Tag = {
  boolean: 0x01,
  integer: 0x02,
  bitString: 0x03,
  octetString: 0x04,
  null: 0x05,
  oid: 0x06,
  utf8String: 0x0c,
  printableString: 0x13,
  ia5String: 0x16,
  utcTime: 0x17,
  generalizedTime: 0x18,
  sequence: 0x30,
  set: 0x31,
  /** `[n]` primitive, IMPLICIT: `Tag.context | n` */
  context: 0x80,
  /** `[n]` constructed (EXPLICIT, or IMPLICIT over a constructed type): `Tag.contextConstructed | n` */
  contextConstructed: 0xa0
} as const

const headerLength = (length: number): number => (length < 0x80 ? 2 : length < 0x100 ? 3 : length < 0x10000 ? 4 : length < 0x1000000 ? 5 : 6)

const writeHeader = (out: Uint8Array, tag: number, length: number): number => {
  out[0] = tag
  if (length < 0x80) {
    out[1] = length
    return 2
  }
  const n = headerLength(length) - 2
  out[1] = 0x80 | n
  for (let i = n; i >= 1; i--) {
    out[1 + i] = length & 0xff
    length = Math.floor(length / 256)
  }
  return 2 + n
}

/** One value: `tag`, then the concatenation of `contents` as its contents. */
export const tlv = (tag: number, ...contents: ReadonlyArray<Uint8Array>): Uint8Array => {
  let length = 0
  for (const c of contents) length += c.length
  const out = new Uint8Array(headerLength(length) + length)
  let at = writeHeader(out, tag, length)
  for (const c of contents) {
    out.set(c, at)
    at += c.length
  }
  return out
}

export const sequence = (...items: ReadonlyArray<Uint8Array>): Uint8Array => tlv(Tag.sequence, ...items)
/** A SET of already-sorted items (every SET here holds one item, so order never arises). */
export const set = (...items: ReadonlyArray<Uint8Array>): Uint8Array => tlv(Tag.set, ...items)
/** `[n] EXPLICIT` around an encoded value. */
export const explicit = (n: number, inner: Uint8Array): Uint8Array => tlv(Tag.contextConstructed | n, inner)

const TRUE = Uint8Array.of(Tag.boolean, 1, 0xff)
const FALSE = Uint8Array.of(Tag.boolean, 1, 0x00)
/** DER writes TRUE as 0xff. */
export const boolean = (b: boolean): Uint8Array => (b ? TRUE : FALSE)

export const NULL = Uint8Array.of(Tag.null, 0)

/**
 * A non-negative INTEGER from its big-endian magnitude: leading zero bytes dropped, and one 0x00
 * put back when the top bit is set, so the value reads as positive (X.690 8.3.2: minimal).
 */
export const unsignedInteger = (magnitude: Uint8Array): Uint8Array => {
  let i = 0
  while (i < magnitude.length - 1 && magnitude[i] === 0) i++
  const m = magnitude.subarray(i)
  if (m.length === 0) return Uint8Array.of(Tag.integer, 1, 0)
  return (m[0]! & 0x80) !== 0 ? tlv(Tag.integer, Uint8Array.of(0), m) : tlv(Tag.integer, m)
}

/** A small non-negative INTEGER (version numbers, path lengths). */
export const smallInteger = (n: number): Uint8Array => {
  if (!Number.isSafeInteger(n) || n < 0) throw new DerError(`not a small non-negative integer: ${n}`)
  const bytes: Array<number> = []
  do {
    bytes.unshift(n % 256)
    n = Math.floor(n / 256)
  } while (n > 0)
  return unsignedInteger(Uint8Array.from(bytes))
}

const oidCache = new Map<string, Uint8Array>()

/** An OBJECT IDENTIFIER from dotted form; encodings are cached, OIDs here are a fixed few. */
export const oid = (dotted: string): Uint8Array => {
  const cached = oidCache.get(dotted)
  if (cached !== undefined) return cached
  const arcs = dotted.split(".").map((a) => (/^\d+$/.test(a) ? Number(a) : NaN))
  if (arcs.length < 2 || arcs.some((a) => !Number.isSafeInteger(a)) || arcs[0]! > 2 || (arcs[0]! < 2 && arcs[1]! > 39)) {
    throw new DerError(`not an OID: ${dotted}`)
  }
  const body: Array<number> = []
  const base128 = (v: number) => {
    const digits = [v % 128]
    for (v = Math.floor(v / 128); v > 0; v = Math.floor(v / 128)) digits.unshift(0x80 | v % 128)
    body.push(...digits)
  }
  base128(arcs[0]! * 40 + arcs[1]!)
  for (const a of arcs.slice(2)) base128(a)
  const out = tlv(Tag.oid, Uint8Array.from(body))
  if (oidCache.size < 256) oidCache.set(dotted, out)
  return out
}

const utf8 = new TextEncoder()
export const utf8String = (s: string): Uint8Array => tlv(Tag.utf8String, utf8.encode(s))

/** IA5String (7-bit ASCII): dNSName and rfc822Name. */
export const ia5String = (s: string): Uint8Array => {
  // eslint-disable-next-line no-control-regex
  if (!/^[\x00-\x7f]*$/.test(s)) throw new DerError(`not an IA5String (ASCII only): ${JSON.stringify(s)}`)
  return tlv(Tag.ia5String, Buffer.from(s, "latin1"))
}

export const octetString = (bytes: Uint8Array): Uint8Array => tlv(Tag.octetString, bytes)

/** A BIT STRING whose bits fill whole bytes (keys, signatures): unused-bits count 0. */
export const bitString = (bytes: Uint8Array): Uint8Array => tlv(Tag.bitString, Uint8Array.of(0), bytes)

/**
 * A named-bit BIT STRING (KeyUsage) from bit numbers, bit 0 being the top bit of the first byte.
 * DER drops trailing zero bits (X.690 11.2.2), so the unused count is that of the last set bit.
 */
export const namedBits = (bits: ReadonlyArray<number>): Uint8Array => {
  if (bits.length === 0) return Uint8Array.of(Tag.bitString, 1, 0)
  const last = Math.max(...bits)
  const bytes = new Uint8Array(Math.floor(last / 8) + 1)
  for (const b of bits) bytes[b >> 3] = bytes[b >> 3]! | (0x80 >> (b & 7))
  return tlv(Tag.bitString, Uint8Array.of(7 - (last & 7)), bytes)
}

const pad = (n: number, width: number) => String(n).padStart(width, "0")

/**
 * X.509 Time (RFC 5280 4.1.2.5): UTCTime `YYMMDDHHMMSSZ` for 1950 through 2049, else
 * GeneralizedTime `YYYYMMDDHHMMSSZ`; whole seconds, UTC.
 */
export const time = (d: Date): Uint8Array => {
  const year = d.getUTCFullYear()
  if (!Number.isFinite(d.getTime()) || year < 0 || year > 9999) throw new DerError(`date out of range: ${String(d)}`)
  const rest = `${pad(d.getUTCMonth() + 1, 2)}${pad(d.getUTCDate(), 2)}${pad(d.getUTCHours(), 2)}${pad(d.getUTCMinutes(), 2)}${pad(d.getUTCSeconds(), 2)}Z`
  return year >= 1950 && year <= 2049
    ? tlv(Tag.utcTime, Buffer.from(`${pad(year % 100, 2)}${rest}`, "latin1"))
    : tlv(Tag.generalizedTime, Buffer.from(`${pad(year, 4)}${rest}`, "latin1"))
}

// ---------------------------------------------------------------------------------------------
// Reading

/** One value found by `readTlv`: its tag, where its contents start and where the value ends. */
export interface Tlv {
  readonly tag: number
  /** Offset of the identifier byte. */
  readonly offset: number
  /** Offset of the first contents byte. */
  readonly start: number
  /** Offset just past the contents. */
  readonly end: number
}

/**
 * Reads the value at `offset` of `der`, which must end by `limit`. Only low tag numbers and
 * definite, minimal lengths (DER); anything else throws `DerError`.
 */
export const readTlv = (der: Uint8Array, offset: number, limit: number = der.length): Tlv => {
  if (offset + 2 > limit) throw new DerError("truncated header")
  const tag = der[offset]!
  if ((tag & 0x1f) === 0x1f) throw new DerError("high tag numbers are not supported")
  const first = der[offset + 1]!
  let length: number
  let start: number
  if (first < 0x80) {
    length = first
    start = offset + 2
  } else {
    const n = first & 0x7f
    if (n === 0) throw new DerError("indefinite length is not DER")
    if (n > 4) throw new DerError("length too large")
    if (offset + 2 + n > limit) throw new DerError("truncated length")
    length = 0
    for (let i = 0; i < n; i++) length = length * 256 + der[offset + 2 + i]!
    if (length < 0x80 || der[offset + 2] === 0) throw new DerError("length is not minimal")
    start = offset + 2 + n
  }
  const end = start + length
  if (end > limit) throw new DerError("contents run past the end")
  return { tag, offset, start, end }
}

/** Reads a value and checks its tag. */
export const expectTlv = (der: Uint8Array, offset: number, tag: number, limit: number = der.length): Tlv => {
  const t = readTlv(der, offset, limit)
  if (t.tag !== tag) throw new DerError(`expected tag 0x${tag.toString(16)} at ${offset}, found 0x${t.tag.toString(16)}`)
  return t
}
