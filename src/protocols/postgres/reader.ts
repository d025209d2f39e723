/**
 * Bounds-checked big-endian reader over one message body.
 *
 * Every read that would run past the end throws `MalformedMessage`; the
 * parsers catch it and turn it into a typed protocol error value, so nothing
 * thrown here escapes the public API.
 */
import { ByteReader } from "../internal/byteReader.ts"
import { decodeText } from "../internal/text.ts"

export { decodeText }

/** A body whose fields do not fit its declared length. Internal to the codec. */
export class MalformedMessage extends Error {
  readonly _tag = "MalformedMessage"
}

export class Reader extends ByteReader {
  constructor(buf: Uint8Array) {
    super(buf, "body")
  }

  protected malformed(detail: string): Error {
    return new MalformedMessage(detail)
  }

  uint8(): number {
    return this.view.getUint8(this.need(1))
  }

  int16(): number {
    return this.view.getInt16(this.need(2))
  }

  /** An int16 count that must not be negative. */
  count16(): number {
    const n = this.int16()
    if (n < 0) throw new MalformedMessage(`negative count ${n}`)
    return n
  }

  int32(): number {
    return this.view.getInt32(this.need(4))
  }

  uint32(): number {
    return this.view.getUint32(this.need(4))
  }

  /** A zero-copy view of the next `n` bytes. */
  bytes(n: number): Uint8Array {
    return this.take(n)
  }

  /** int32 length, -1 meaning NULL, then that many bytes (Bind values, DataRow columns). */
  nullableBytes(): Uint8Array | null {
    const len = this.int32()
    if (len === -1) return null
    return this.bytes(len)
  }

  /** A NUL-terminated UTF-8 string. */
  cstring(): string {
    const b = this.untilNul()
    if (b === undefined) throw new MalformedMessage(`unterminated string at offset ${this.offset}`)
    return decodeText(b)
  }

  /** Fails unless the whole body was consumed: trailing bytes mean we misread the message. */
  end(): void {
    this.checkEnd()
  }
}
