/**
 * SSH wire primitives (RFC 4251 §5): uint32, uint64, string, mpint, name-list.
 * `SshWriter` builds a buffer; `SshReader` reads one and fails with a typed `WireError`
 * (caught at the codec boundary, so decoders return values and never throw on garbage).
 */

const utf8 = new TextEncoder()
const utf8Strict = new TextDecoder("utf-8", { fatal: true })

/** Raised by `SshReader` on short or malformed input; codecs turn it into a value. */
export class WireError extends Error {
  constructor(
    readonly reason: "Truncated" | "BadUtf8" | "TooLong",
    readonly offset: number,
    message: string
  ) {
    super(message)
    this.name = "WireError"
  }
}

/** Accumulates SSH wire values; `finish()` returns the concatenation. */
export class SshWriter {
  private readonly parts: Array<Uint8Array> = []
  private length = 0

  raw(bytes: Uint8Array): this {
    this.parts.push(bytes)
    this.length += bytes.length
    return this
  }

  uint32(n: number): this {
    const b = new Uint8Array(4)
    new DataView(b.buffer).setUint32(0, n >>> 0)
    return this.raw(b)
  }

  uint64(n: bigint): this {
    const b = new Uint8Array(8)
    new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, n))
    return this.raw(b)
  }

  /** `string`: uint32 length, then the bytes. A JS string is written as UTF-8. */
  string(s: Uint8Array | string): this {
    const bytes = typeof s === "string" ? utf8.encode(s) : s
    return this.uint32(bytes.length).raw(bytes)
  }

  /** `mpint` from a non-negative big-endian magnitude: minimal, with a 0x00 when the top bit is set. */
  mpint(magnitude: Uint8Array): this {
    let i = 0
    while (i < magnitude.length && magnitude[i] === 0) i++
    const m = magnitude.subarray(i)
    if (m.length > 0 && (m[0]! & 0x80) !== 0) {
      const padded = new Uint8Array(m.length + 1)
      padded.set(m, 1)
      return this.string(padded)
    }
    return this.string(m)
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.length)
    let off = 0
    for (const p of this.parts) {
      out.set(p, off)
      off += p.length
    }
    return out
  }
}

/** Reads SSH wire values from a byte array; throws `WireError` on short input. */
export class SshReader {
  offset = 0
  constructor(readonly bytes: Uint8Array) {}

  get remaining(): number {
    return this.bytes.length - this.offset
  }

  raw(n: number): Uint8Array {
    if (n < 0 || n > this.remaining) {
      throw new WireError("Truncated", this.offset, `need ${n} bytes at offset ${this.offset}, have ${this.remaining}`)
    }
    const out = this.bytes.subarray(this.offset, this.offset + n)
    this.offset += n
    return out
  }

  uint32(): number {
    const b = this.raw(4)
    return new DataView(b.buffer, b.byteOffset, 4).getUint32(0)
  }

  uint64(): bigint {
    const b = this.raw(8)
    return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0)
  }

  /** A `string` as bytes (a view into the input, not a copy). */
  bytesString(): Uint8Array {
    return this.raw(this.uint32())
  }

  /** A `string` that must be valid UTF-8. */
  utf8String(): string {
    const at = this.offset
    const b = this.bytesString()
    try {
      return utf8Strict.decode(b)
    } catch {
      throw new WireError("BadUtf8", at, `invalid UTF-8 in string at offset ${at}`)
    }
  }

  /** A `string` holding exactly one nested `string` (as certificate option values do). */
  nestedUtf8String(): string {
    const at = this.offset
    const inner = new SshReader(this.bytesString())
    const value = inner.utf8String()
    if (inner.remaining !== 0) throw new WireError("TooLong", at, `trailing bytes in nested string at offset ${at}`)
    return value
  }

  /** Position of the cursor in the input, for slicing signed regions. */
  slice(from: number, to: number = this.offset): Uint8Array {
    return this.bytes.subarray(from, to)
  }
}

/** Base64 without line breaks, as OpenSSH writes key and certificate lines. */
export const toBase64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString("base64")

/** Strict base64 decode: returns undefined when the text is not canonical base64. */
export const fromBase64 = (text: string): Uint8Array | undefined => {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) return undefined
  return new Uint8Array(Buffer.from(text, "base64"))
}

/** Byte-wise lexicographic comparison (the order OpenSSH requires for options and extensions). */
export const compareBytes = (a: Uint8Array, b: Uint8Array): number => {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const d = a[i]! - b[i]!
    if (d !== 0) return d
  }
  return a.length - b.length
}

export const utf8Bytes = (s: string): Uint8Array => utf8.encode(s)

export const bytesEqual = (a: Uint8Array, b: Uint8Array): boolean => a.length === b.length && compareBytes(a, b) === 0
