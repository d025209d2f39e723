/**
 * Growable big-endian writer used by the serializers (the buffer and the
 * integer types PostgreSQL shares with MySQL live in ../internal/byteWriter.ts).
 *
 * Values out of range for their wire type are programming errors and throw
 * `RangeError` instead of silently wrapping into a different, valid-looking frame.
 */
import { ByteWriter, checkInt } from "../internal/byteWriter.ts"
import { encodeText } from "../internal/text.ts"

const NAMES = { uint8: "uint8", int16: "int16", int32: "int32", uint32: "uint32" } as const

export class Writer extends ByteWriter {
  constructor(initialSize = 256) {
    super(initialSize, false, NAMES)
  }

  /** int32 length (-1 for NULL) followed by the bytes. */
  nullableBytes(b: Uint8Array | null): this {
    if (b === null) return this.int32(-1)
    return this.int32(b.length).bytes(b)
  }

  /** UTF-8 bytes and a NUL. A NUL inside `s` would end the field early on the wire, so it is refused. */
  cstring(s: string): this {
    return this.nulTerminated(encodeText(s), "cstring")
  }

  /** Overwrites an int32 written earlier (used to back-patch message lengths). */
  patchInt32(at: number, v: number): this {
    checkInt(v, -0x80000000, 0x7fffffff, "int32")
    this.view.setInt32(at, v)
    return this
  }
}
