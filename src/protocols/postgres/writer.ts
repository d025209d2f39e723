/**
 * Growable big-endian writer used by the serializers.
 *
 * Values out of range for their wire type are programming errors and throw
 * `RangeError` instead of silently wrapping into a different, valid-looking frame.
 */

const encoder = new TextEncoder()

export class Writer {
  private buf: Uint8Array
  private view: DataView
  private pos = 0

  constructor(initialSize = 256) {
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
    checkInt(v, 0, 0xff, "uint8")
    const at = this.ensure(1)
    this.view.setUint8(at, v)
    return this
  }

  int16(v: number): this {
    checkInt(v, -0x8000, 0x7fff, "int16")
    const at = this.ensure(2)
    this.view.setInt16(at, v)
    return this
  }

  int32(v: number): this {
    checkInt(v, -0x80000000, 0x7fffffff, "int32")
    const at = this.ensure(4)
    this.view.setInt32(at, v)
    return this
  }

  uint32(v: number): this {
    checkInt(v, 0, 0xffffffff, "uint32")
    const at = this.ensure(4)
    this.view.setUint32(at, v)
    return this
  }

  bytes(b: Uint8Array): this {
    const at = this.ensure(b.length)
    this.buf.set(b, at)
    return this
  }

  /** int32 length (-1 for NULL) followed by the bytes. */
  nullableBytes(b: Uint8Array | null): this {
    if (b === null) return this.int32(-1)
    return this.int32(b.length).bytes(b)
  }

  /** UTF-8 bytes without a terminator. */
  string(s: string): this {
    return this.bytes(encoder.encode(s))
  }

  /** UTF-8 bytes and a NUL. A NUL inside `s` would end the field early on the wire, so it is refused. */
  cstring(s: string): this {
    const b = encoder.encode(s)
    if (b.includes(0)) throw new RangeError("cstring contains a NUL byte")
    return this.bytes(b).uint8(0)
  }

  /** Overwrites an int32 written earlier (used to back-patch message lengths). */
  patchInt32(at: number, v: number): this {
    checkInt(v, -0x80000000, 0x7fffffff, "int32")
    this.view.setInt32(at, v)
    return this
  }

  /** The bytes written so far (a view; the writer must not be reused afterwards). */
  finish(): Uint8Array {
    return this.buf.subarray(0, this.pos)
  }
}

const checkInt = (v: number, min: number, max: number, what: string): void => {
  if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`${v} is not a valid ${what}`)
}
