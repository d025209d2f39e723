/**
 * The growable buffer under the PostgreSQL and MySQL writers.
 *
 * Endianness is a parameter, not a choice made here: PostgreSQL puts integers
 * on the wire big-endian, MySQL little-endian. The names a range error gives a
 * value's wire type are parameters too, so each codec keeps its own vocabulary
 * (`int16` there, `signed int<2>` here). Wire types only one codec has
 * (MySQL's int<3>, int<8>, length-encoded integers) stay in that codec's writer.
 *
 * Values out of range for their wire type are programming errors and throw
 * `RangeError` instead of silently wrapping into a different, valid-looking frame.
 */
import { encodeText } from "./text.ts"

/** What a range error calls each integer type. */
export interface IntNames {
  readonly uint8: string
  readonly int16: string
  readonly int32: string
  readonly uint32: string
}

export const checkInt = (v: number, min: number, max: number, what: string): void => {
  if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`${v} is not a valid ${what}`)
}

export abstract class ByteWriter {
  protected buf: Uint8Array
  protected view: DataView
  protected pos = 0

  protected constructor(
    initialSize: number,
    protected readonly littleEndian: boolean,
    private readonly names: IntNames
  ) {
    this.buf = new Uint8Array(initialSize)
    this.view = new DataView(this.buf.buffer)
  }

  get length(): number {
    return this.pos
  }

  /** Reserves `n` bytes and returns where they start; may replace `buf` and `view`, so call it before touching them. */
  protected ensure(n: number): number {
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
    checkInt(v, 0, 0xff, this.names.uint8)
    const at = this.ensure(1)
    this.buf[at] = v
    return this
  }

  int16(v: number): this {
    checkInt(v, -0x8000, 0x7fff, this.names.int16)
    const at = this.ensure(2)
    this.view.setInt16(at, v, this.littleEndian)
    return this
  }

  int32(v: number): this {
    checkInt(v, -0x80000000, 0x7fffffff, this.names.int32)
    const at = this.ensure(4)
    this.view.setInt32(at, v, this.littleEndian)
    return this
  }

  uint32(v: number): this {
    checkInt(v, 0, 0xffffffff, this.names.uint32)
    const at = this.ensure(4)
    this.view.setUint32(at, v, this.littleEndian)
    return this
  }

  bytes(b: Uint8Array): this {
    const at = this.ensure(b.length)
    this.buf.set(b, at)
    return this
  }

  /** UTF-8 bytes without terminator or length. */
  string(s: string): this {
    return this.bytes(encodeText(s))
  }

  /** `b` and a NUL. A NUL inside `b` would end the field early on the wire, so it is refused (`what` names the field type). */
  protected nulTerminated(b: Uint8Array, what: string): this {
    if (b.includes(0)) throw new RangeError(`${what} contains a NUL byte`)
    return this.bytes(b).uint8(0)
  }

  /** The bytes written so far (a view; the writer must not be reused afterwards). */
  finish(): Uint8Array {
    return this.buf.subarray(0, this.pos)
  }
}
