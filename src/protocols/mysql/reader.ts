/**
 * Bounds-checked little-endian reader over one MySQL packet payload (the
 * cursor is shared with PostgreSQL's reader, in ../internal/byteReader.ts).
 *
 * Every read that would run past the end throws `MalformedPacket`; the
 * parsers catch it and return a typed protocol error value, so nothing thrown
 * here escapes the public API.
 */
import { ByteReader } from "../internal/byteReader.ts"
import { decodeText } from "../internal/text.ts"

export { decodeText }

/** A payload whose fields do not fit its length. Internal to the codec. */
export class MalformedPacket extends Error {
  readonly _tag = "MalformedPacket"
}

export class Reader extends ByteReader {
  constructor(buf: Uint8Array) {
    super(buf, "payload")
  }

  protected malformed(detail: string): Error {
    return new MalformedPacket(detail)
  }

  get position(): number {
    return this.offset
  }

  /** The next byte without consuming it, or -1 at the end. */
  peek(): number {
    return this.offset < this.buf.length ? this.buf[this.offset]! : -1
  }

  uint8(what = "int<1>"): number {
    return this.buf[this.need(1, what)]!
  }

  int8(): number {
    return this.view.getInt8(this.need(1, "int<1>"))
  }

  uint16(what = "int<2>"): number {
    return this.view.getUint16(this.need(2, what), true)
  }

  int16(): number {
    return this.view.getInt16(this.need(2, "int<2>"), true)
  }

  uint24(what = "int<3>"): number {
    const at = this.need(3, what)
    return this.buf[at]! | (this.buf[at + 1]! << 8) | (this.buf[at + 2]! << 16)
  }

  uint32(what = "int<4>"): number {
    return this.view.getUint32(this.need(4, what), true)
  }

  int32(): number {
    return this.view.getInt32(this.need(4, "int<4>"), true)
  }

  uint64(): bigint {
    return this.view.getBigUint64(this.need(8, "int<8>"), true)
  }

  int64(): bigint {
    return this.view.getBigInt64(this.need(8, "int<8>"), true)
  }

  float32(): number {
    return this.view.getFloat32(this.need(4, "float"), true)
  }

  float64(): number {
    return this.view.getFloat64(this.need(8, "double"), true)
  }

  /**
   * int<lenenc> as a bigint: 0xfc/0xfd/0xfe announce 2/3/8 more bytes.
   * 0xfb (NULL in a row) and 0xff (ERR marker) are not integers here.
   */
  lenencBig(what = "int<lenenc>"): bigint {
    const first = this.uint8(what)
    if (first < 0xfb) return BigInt(first)
    switch (first) {
      case 0xfc:
        return BigInt(this.uint16(what))
      case 0xfd:
        return BigInt(this.uint24(what))
      case 0xfe:
        return this.uint64()
      default:
        throw new MalformedPacket(`${what}: 0x${first.toString(16)} does not start a length-encoded integer`)
    }
  }

  /** int<lenenc> that must fit a JS number (counts, lengths). */
  lenenc(what = "int<lenenc>"): number {
    const n = this.lenencBig(what)
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new MalformedPacket(`${what}: ${n} is out of range`)
    return Number(n)
  }

  /** string<lenenc> as bytes, zero-copy; a length past the payload end is a lie and fails. */
  lenencBytes(what = "string<lenenc>"): Uint8Array {
    const n = this.lenenc(what)
    return this.bytes(n, what)
  }

  lenencString(what = "string<lenenc>"): string {
    return decodeText(this.lenencBytes(what))
  }

  /** A zero-copy view of the next `n` bytes. */
  bytes(n: number, what = "string<fix>"): Uint8Array {
    return this.take(n, what)
  }

  restString(): string {
    return decodeText(this.rest())
  }

  /** string<NUL> as bytes; a missing NUL is a truncated field. */
  nulBytes(what = "string<NUL>"): Uint8Array {
    const b = this.untilNul()
    if (b === undefined) throw new MalformedPacket(`${what}: not NUL-terminated`)
    return b
  }

  nulString(what = "string<NUL>"): string {
    return decodeText(this.nulBytes(what))
  }

  skip(n: number, what = "filler"): void {
    this.need(n, what)
  }

  /** Fails unless the whole payload was consumed: trailing bytes mean we misread the packet. */
  end(what = "packet"): void {
    this.checkEnd(what)
  }
}
