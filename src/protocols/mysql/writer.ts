/**
 * Growable little-endian writer for MySQL packet payloads.
 *
 * Values out of range for their wire type are programming errors and throw
 * `RangeError` instead of silently wrapping into a different, valid-looking packet.
 */

const encoder = new TextEncoder()

/** UTF-8 bytes of `s`. */
export const encodeText = (s: string): Uint8Array => encoder.encode(s)

export class Writer {
  private buf: Uint8Array
  private view: DataView
  private pos = 0

  constructor(initialSize = 128) {
    this.buf = new Uint8Array(initialSize)
    this.view = new DataView(this.buf.buffer)
  }

  get length(): number {
    return this.pos
  }

  /** Reserves `n` bytes and returns where they start; may replace `buf` and `view`, so call it before touching them. */
  private ensure(n: number): number {
    const at = this.pos
    const need = at + n
    if (need > this.buf.length) {
      let size = this.buf.length * 2
      while (size < need) size *= 2
      const next = new Uint8Array(size)
      next.set(this.buf.subarray(0, at))
      this.buf = next
      this.view = new DataView(next.buffer)
    }
    this.pos = need
    return at
  }

  uint8(v: number): this {
    checkInt(v, 0, 0xff, "int<1>")
    const at = this.ensure(1)
    this.buf[at] = v
    return this
  }

  int8(v: number): this {
    checkInt(v, -0x80, 0x7f, "signed int<1>")
    const at = this.ensure(1)
    this.view.setInt8(at, v)
    return this
  }

  uint16(v: number): this {
    checkInt(v, 0, 0xffff, "int<2>")
    const at = this.ensure(2)
    this.view.setUint16(at, v, true)
    return this
  }

  int16(v: number): this {
    checkInt(v, -0x8000, 0x7fff, "signed int<2>")
    const at = this.ensure(2)
    this.view.setInt16(at, v, true)
    return this
  }

  uint24(v: number): this {
    checkInt(v, 0, 0xffffff, "int<3>")
    const at = this.ensure(3)
    this.buf[at] = v & 0xff
    this.buf[at + 1] = (v >>> 8) & 0xff
    this.buf[at + 2] = v >>> 16
    return this
  }

  uint32(v: number): this {
    checkInt(v, 0, 0xffffffff, "int<4>")
    const at = this.ensure(4)
    this.view.setUint32(at, v, true)
    return this
  }

  int32(v: number): this {
    checkInt(v, -0x80000000, 0x7fffffff, "signed int<4>")
    const at = this.ensure(4)
    this.view.setInt32(at, v, true)
    return this
  }

  uint64(v: bigint): this {
    if (v < 0n || v > 0xffffffffffffffffn) throw new RangeError(`${v} is not a valid int<8>`)
    const at = this.ensure(8)
    this.view.setBigUint64(at, v, true)
    return this
  }

  int64(v: bigint): this {
    if (v < -0x8000000000000000n || v > 0x7fffffffffffffffn) throw new RangeError(`${v} is not a valid signed int<8>`)
    const at = this.ensure(8)
    this.view.setBigInt64(at, v, true)
    return this
  }

  float32(v: number): this {
    const at = this.ensure(4)
    this.view.setFloat32(at, v, true)
    return this
  }

  float64(v: number): this {
    const at = this.ensure(8)
    this.view.setFloat64(at, v, true)
    return this
  }

  /** int<lenenc>, always in its shortest form. */
  lenenc(v: number | bigint): this {
    const n = typeof v === "bigint" ? v : BigInt(v)
    if (typeof v === "number") checkInt(v, 0, Number.MAX_SAFE_INTEGER, "int<lenenc>")
    if (n < 0n || n > 0xffffffffffffffffn) throw new RangeError(`${v} is not a valid int<lenenc>`)
    if (n < 0xfbn) return this.uint8(Number(n))
    if (n <= 0xffffn) return this.uint8(0xfc).uint16(Number(n))
    if (n <= 0xffffffn) return this.uint8(0xfd).uint24(Number(n))
    return this.uint8(0xfe).uint64(n)
  }

  bytes(b: Uint8Array): this {
    const at = this.ensure(b.length)
    this.buf.set(b, at)
    return this
  }

  zeros(n: number): this {
    const at = this.ensure(n)
    this.buf.fill(0, at, this.pos)
    return this
  }

  lenencBytes(b: Uint8Array): this {
    return this.lenenc(b.length).bytes(b)
  }

  lenencString(s: string): this {
    return this.lenencBytes(encoder.encode(s))
  }

  /** UTF-8 bytes without terminator or length (string<EOF>, string<fix>). */
  string(s: string): this {
    return this.bytes(encoder.encode(s))
  }

  /** string<NUL>. A NUL inside would end the field early on the wire, so it is refused. */
  nulString(s: string): this {
    return this.nulBytes(encoder.encode(s))
  }

  nulBytes(b: Uint8Array): this {
    if (b.includes(0)) throw new RangeError("string<NUL> contains a NUL byte")
    return this.bytes(b).uint8(0)
  }

  /** The bytes written so far (a view; the writer must not be reused afterwards). */
  finish(): Uint8Array {
    return this.buf.subarray(0, this.pos)
  }
}

const checkInt = (v: number, min: number, max: number, what: string): void => {
  if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`${v} is not a valid ${what}`)
}
