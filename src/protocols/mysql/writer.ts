/**
 * Growable little-endian writer for MySQL packet payloads (the buffer and the
 * integer types MySQL shares with PostgreSQL live in ../internal/byteWriter.ts;
 * int<3>, int<8>, floats and int<lenenc> are MySQL's alone).
 *
 * Values out of range for their wire type are programming errors and throw
 * `RangeError` instead of silently wrapping into a different, valid-looking packet.
 */
import { ByteWriter, checkInt } from "../internal/byteWriter.ts"
import { encodeText } from "../internal/text.ts"

export { encodeText }

const NAMES = { uint8: "int<1>", int16: "signed int<2>", int32: "signed int<4>", uint32: "int<4>" } as const

export class Writer extends ByteWriter {
  constructor(initialSize = 128) {
    super(initialSize, true, NAMES)
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

  uint24(v: number): this {
    checkInt(v, 0, 0xffffff, "int<3>")
    const at = this.ensure(3)
    this.buf[at] = v & 0xff
    this.buf[at + 1] = (v >>> 8) & 0xff
    this.buf[at + 2] = v >>> 16
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

  zeros(n: number): this {
    const at = this.ensure(n)
    this.buf.fill(0, at, this.pos)
    return this
  }

  lenencBytes(b: Uint8Array): this {
    return this.lenenc(b.length).bytes(b)
  }

  lenencString(s: string): this {
    return this.lenencBytes(encodeText(s))
  }

  /** string<NUL>. A NUL inside would end the field early on the wire, so it is refused. */
  nulString(s: string): this {
    return this.nulBytes(encodeText(s))
  }

  nulBytes(b: Uint8Array): this {
    return this.nulTerminated(b, "string<NUL>")
  }
}

