/**
 * Bounds-checked big-endian reader over one message body.
 *
 * Every read that would run past the end throws `MalformedMessage`; the
 * parsers catch it and turn it into a typed protocol error value, so nothing
 * thrown here escapes the public API.
 */

/** A body whose fields do not fit its declared length. Internal to the codec. */
export class MalformedMessage extends Error {
  readonly _tag = "MalformedMessage"
}

const decoder = new TextDecoder("utf-8")

/** UTF-8 decode; invalid sequences become U+FFFD rather than throwing. */
export const decodeText = (bytes: Uint8Array): string => decoder.decode(bytes)

export class Reader {
  private offset = 0
  private readonly view: DataView

  constructor(private readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  }

  get remaining(): number {
    return this.buf.length - this.offset
  }

  private need(n: number): number {
    const at = this.offset
    if (n < 0 || at + n > this.buf.length) {
      throw new MalformedMessage(`needs ${n} bytes at offset ${at}, body is ${this.buf.length}`)
    }
    this.offset = at + n
    return at
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
    const at = this.need(n)
    return this.buf.subarray(at, at + n)
  }

  /** Everything up to the end of the body, zero-copy. */
  rest(): Uint8Array {
    return this.bytes(this.remaining)
  }

  /** int32 length, -1 meaning NULL, then that many bytes (Bind values, DataRow columns). */
  nullableBytes(): Uint8Array | null {
    const len = this.int32()
    if (len === -1) return null
    return this.bytes(len)
  }

  /** A NUL-terminated UTF-8 string. */
  cstring(): string {
    const start = this.offset
    const end = this.buf.indexOf(0, start)
    if (end === -1) throw new MalformedMessage(`unterminated string at offset ${start}`)
    this.offset = end + 1
    return decodeText(this.buf.subarray(start, end))
  }

  /** Fails unless the whole body was consumed: trailing bytes mean we misread the message. */
  end(): void {
    if (this.offset !== this.buf.length) {
      throw new MalformedMessage(`${this.buf.length - this.offset} trailing bytes`)
    }
  }
}
