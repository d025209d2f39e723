/**
 * The bounds-checked cursor under the PostgreSQL and MySQL readers.
 *
 * Only the cursor is shared. The typed reads stay in each codec's reader:
 * PostgreSQL integers are big-endian, MySQL's little-endian, and each codec
 * throws its own tagged error (`MalformedMessage`, `MalformedPacket`) with
 * its own wording, which its parsers catch and turn into a protocol error
 * value.
 */

export abstract class ByteReader {
  protected offset = 0
  protected readonly view: DataView

  /** `unit` is what an error calls the buffer ("body", "payload"). */
  protected constructor(
    protected readonly buf: Uint8Array,
    private readonly unit: string
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  }

  get remaining(): number {
    return this.buf.length - this.offset
  }

  /** The codec's tagged error for a buffer that does not match its layout. */
  protected abstract malformed(detail: string): Error

  /** Consumes `n` bytes and returns where they start; `what`, when given, prefixes the error. */
  protected need(n: number, what?: string): number {
    const at = this.offset
    if (n < 0 || at + n > this.buf.length) {
      const detail = `needs ${n} bytes at offset ${at}, ${this.unit} is ${this.buf.length}`
      throw this.malformed(what === undefined ? detail : `${what}: ${detail}`)
    }
    this.offset = at + n
    return at
  }

  /** A zero-copy view of the next `n` bytes. */
  protected take(n: number, what?: string): Uint8Array {
    const at = this.need(n, what)
    return this.buf.subarray(at, at + n)
  }

  /** Everything up to the end, zero-copy. */
  rest(): Uint8Array {
    return this.take(this.remaining)
  }

  /** The bytes before the next NUL, consuming the NUL too; undefined (nothing consumed) if there is none. */
  protected untilNul(): Uint8Array | undefined {
    const start = this.offset
    const end = this.buf.indexOf(0, start)
    if (end === -1) return undefined
    this.offset = end + 1
    return this.buf.subarray(start, end)
  }

  /** Fails unless the whole buffer was consumed: trailing bytes mean we misread it. */
  protected checkEnd(what?: string): void {
    if (this.offset !== this.buf.length) {
      const detail = `${this.buf.length - this.offset} trailing bytes`
      throw this.malformed(what === undefined ? detail : `${what}: ${detail}`)
    }
  }
}
