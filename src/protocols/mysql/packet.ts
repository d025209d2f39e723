/**
 * MySQL packet framing, both directions.
 *
 * Wire packet: int<3> payload length, int<1> sequence id, payload. A payload
 * of 2^24-1 bytes or more is split into wire packets of exactly 0xffffff
 * bytes with consecutive sequence ids, ended by a shorter (possibly empty)
 * one; the receiver joins them into one logical packet.
 *
 * Buffering follows pg-protocol's `mergeBuffer` (../internal/pendingBytes.ts):
 * a packet that arrives whole is cut straight out of the pushed chunk (zero
 * copy); only an unfinished tail is copied, into memory that grows
 * geometrically up to the declared length, so a 16 MiB packet arriving in
 * 1 KiB pieces costs linear time. Memory that has backed a returned payload
 * is never written again, so returned views stay valid; callers must not
 * mutate chunks they push. Only logical packets made of several wire
 * packets are copied (once, when the last piece arrives).
 */
import { EMPTY, PendingBytes, concatBytes } from "../internal/pendingBytes.ts"
import { MAX_PACKET_PAYLOAD } from "./messages.ts"

// ---------------------------------------------------------------------------
// Errors and limits
// ---------------------------------------------------------------------------

export type ProtocolErrorReason =
  /** A logical packet (all its wire packets together) above `maxPacketSize`. */
  | "packet-too-large"
  /** A continuation packet whose sequence id does not follow the previous one. */
  | "bad-sequence"
  /** A complete packet whose payload does not match its layout (lying lengths, unterminated strings, trailing bytes). */
  | "malformed-packet"
  /** A packet where none may come (after COM_QUIT, a server packet nobody asked for). */
  | "unexpected-packet"
  /** A pre-4.1 client (no CLIENT_PROTOCOL_41) or a handshake other than V10. */
  | "unsupported-protocol"

/** A protocol violation; after one, the parser accepts no more input. */
export interface ProtocolError {
  readonly kind: "error"
  readonly reason: ProtocolErrorReason
  readonly detail: string
  /** Sequence id of the offending packet, when there was one. */
  readonly sequenceId?: number
}

export const protocolError = (reason: ProtocolErrorReason, detail: string, sequenceId?: number): ProtocolError =>
  sequenceId === undefined ? { kind: "error", reason, detail } : { kind: "error", reason, detail, sequenceId }

/**
 * Default ceiling for a logical packet: 64 MiB, MySQL 8's default
 * `max_allowed_packet` (the server's own maximum is 1 GiB). It bounds what
 * one connection can make us buffer; raise it where larger rows or queries
 * must pass.
 */
export const DEFAULT_MAX_PACKET_SIZE = 64 * 1024 * 1024

export interface FramingOptions {
  /** Upper bound for a logical packet's payload, in bytes. */
  readonly maxPacketSize?: number
}

/** One logical packet. `sequenceId` is that of its first wire packet, `lastSequenceId` of its last. */
export interface LogicalPacket {
  readonly sequenceId: number
  readonly lastSequenceId: number
  readonly payload: Uint8Array
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/** Number of wire packets needed for a payload (an exact multiple of 0xffffff needs an empty trailer). */
export const wirePacketCount = (payloadLength: number): number => Math.floor(payloadLength / MAX_PACKET_PAYLOAD) + 1

/**
 * Frames a logical payload as wire packets starting at `sequenceId`; the next
 * packet in the exchange uses `(sequenceId + wirePacketCount(len)) & 0xff`.
 */
export const framePacket = (payload: Uint8Array, sequenceId: number): Uint8Array => {
  if (!Number.isInteger(sequenceId) || sequenceId < 0 || sequenceId > 0xff) {
    throw new RangeError(`${sequenceId} is not a valid sequence id`)
  }
  const count = wirePacketCount(payload.length)
  const out = new Uint8Array(payload.length + 4 * count)
  let at = 0
  let from = 0
  for (let i = 0; i < count; i++) {
    const len = Math.min(MAX_PACKET_PAYLOAD, payload.length - from)
    out[at] = len & 0xff
    out[at + 1] = (len >>> 8) & 0xff
    out[at + 2] = len >>> 16
    out[at + 3] = (sequenceId + i) & 0xff
    out.set(payload.subarray(from, from + len), at + 4)
    at += 4 + len
    from += len
  }
  return out
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/** Smallest store allocated for a leftover tail (as in the PostgreSQL parser). */
const MIN_TAIL = 8 * 1024

/**
 * Shared push loop: frames wire packets, joins split payloads, hands each
 * logical packet to `onPacket`. After a failure the parser refuses all
 * further input, returning the same error again. While `paused` (after an
 * SSLRequest) bytes are kept unparsed for `drain()`.
 *
 * Only the buffer is shared with the PostgreSQL and RESP parsers: this loop
 * also joins 0xffffff-byte continuation packets and checks sequence ids,
 * which their frames do not have, so it stays MySQL's own.
 */
export abstract class PacketFramer<T> {
  private readonly tail = new PendingBytes(MIN_TAIL)
  private failure: ProtocolError | undefined
  private expected = 0
  private parts: Array<Uint8Array> = []
  private partsSize = 0
  private firstSeq = 0
  private lastSeq = 0
  protected paused = false
  protected readonly maxPacketSize: number

  protected constructor(options?: FramingOptions) {
    this.maxPacketSize = options?.maxPacketSize ?? DEFAULT_MAX_PACKET_SIZE
  }

  /** The error that stopped this parser, if any. */
  get error(): ProtocolError | undefined {
    return this.failure
  }

  /** Bytes received but not yet part of a complete logical packet. */
  get pendingBytes(): number {
    return this.tail.size + this.partsSize
  }

  push(chunk: Uint8Array): Array<T | ProtocolError> {
    if (this.failure !== undefined) return [this.failure]
    const out: Array<T | ProtocolError> = []
    const data = this.tail.begin(chunk, this.expected)
    let off = 0
    this.expected = 0
    while (!this.paused && data.length - off >= 4) {
      const len = data[off]! | (data[off + 1]! << 8) | (data[off + 2]! << 16)
      const seq = data[off + 3]!
      const joining = this.parts.length > 0
      if (joining && seq !== ((this.lastSeq + 1) & 0xff)) {
        this.fail(out, protocolError("bad-sequence", `continuation packet has sequence id ${seq}, expected ${(this.lastSeq + 1) & 0xff}`, seq))
        break
      }
      // Checked on the header, so a lying length fails before its bytes are awaited.
      if (this.partsSize + len > this.maxPacketSize) {
        this.fail(out, protocolError("packet-too-large", `packet of at least ${this.partsSize + len} bytes exceeds ${this.maxPacketSize}`, joining ? this.firstSeq : seq))
        break
      }
      if (data.length - off < 4 + len) {
        this.expected = 4 + len
        break
      }
      const payload = data.subarray(off + 4, off + 4 + len)
      off += 4 + len
      if (!joining) this.firstSeq = seq
      this.lastSeq = seq
      if (len === MAX_PACKET_PAYLOAD) {
        this.parts.push(payload)
        this.partsSize += len
        continue
      }
      let whole = payload
      if (joining) {
        this.parts.push(payload)
        whole = concatBytes(this.parts, this.partsSize + len)
        this.parts = []
        this.partsSize = 0
      }
      this.onPacket({ sequenceId: this.firstSeq, lastSequenceId: seq, payload: whole }, out)
      if (this.failure !== undefined) break
    }
    if (this.failure !== undefined) {
      this.tail.clear()
      this.parts = []
      this.partsSize = 0
      return out
    }
    this.tail.end(data, off, this.expected)
    return out
  }

  /** Takes the bytes kept unparsed since the parser paused. */
  protected drain(): Uint8Array {
    const chunk = this.tail.begin(EMPTY, 0)
    const copy = chunk.slice()
    this.tail.clear()
    return copy
  }

  protected fail(out: Array<T | ProtocolError>, e: ProtocolError): void {
    this.failure = e
    out.push(e)
  }

  protected abstract onPacket(packet: LogicalPacket, out: Array<T | ProtocolError>): void
}

/** Splits a byte stream into logical packets without decoding them: the relay fast path. */
export class PacketSplitter extends PacketFramer<LogicalPacket> {
  constructor(options?: FramingOptions) {
    super(options)
  }

  protected onPacket(packet: LogicalPacket, out: Array<LogicalPacket | ProtocolError>): void {
    out.push(packet)
  }
}
