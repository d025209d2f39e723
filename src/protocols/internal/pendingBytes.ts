/**
 * The unfinished tail an incremental parser keeps between pushes; the
 * buffering scheme of pg-protocol's `mergeBuffer`, shared by the PostgreSQL,
 * MySQL and RESP parsers.
 *
 * When nothing is pending, the pushed chunk itself is scanned (zero copy).
 * Otherwise the chunk is appended to memory we own, which grows
 * geometrically (bounded by the frame's declared end when known), so a large
 * frame arriving in small pieces costs linear time, not quadratic. Memory
 * that has backed a returned view is never written again, so views handed
 * out stay valid; callers must not mutate chunks they push.
 */

export const EMPTY = new Uint8Array(0)

export class PendingBytes {
  private store: Uint8Array = EMPTY
  private filled = 0
  private scanningStore = false

  /** `minTail`: the smallest store allocated for a leftover tail (each codec picks its own, by typical frame size). */
  constructor(private readonly minTail: number) {}

  /** Bytes kept from earlier pushes. */
  get size(): number {
    return this.filled
  }

  /**
   * The bytes to scan: the chunk itself if nothing is pending, else pending + chunk.
   * `expected` is the declared end of the frame being awaited, 0 when unknown.
   */
  begin(chunk: Uint8Array, expected: number): Uint8Array {
    if (this.filled === 0) {
      this.scanningStore = false
      return chunk
    }
    const need = this.filled + chunk.length
    if (need > this.store.length) {
      // Geometric growth, but never past the frame's declared end when known,
      // so a lying length cannot make us allocate ahead of the bytes received.
      let cap = Math.max(need, this.store.length * 2)
      if (expected > 0) cap = Math.max(need, Math.min(cap, expected))
      const next = new Uint8Array(cap)
      next.set(this.store.subarray(0, this.filled))
      this.store = next
    }
    this.store.set(chunk, this.filled)
    this.filled = need
    this.scanningStore = true
    return this.store.subarray(0, need)
  }

  /** Keeps `data[offset..]` (where `data` came from `begin`) for the next push. */
  end(data: Uint8Array, offset: number, expected: number): void {
    const rest = data.length - offset
    if (rest === 0) {
      this.clear()
      return
    }
    // Nothing consumed from our own store: nothing of it was handed out, keep it.
    if (this.scanningStore && offset === 0) return
    // Views returned this push may point into `data`, so the tail moves to fresh memory.
    let cap = Math.max(rest * 2, this.minTail)
    if (expected > 0) cap = Math.max(rest, Math.min(cap, expected))
    const next = new Uint8Array(cap)
    next.set(data.subarray(offset))
    this.store = next
    this.filled = rest
  }

  clear(): void {
    this.store = EMPTY
    this.filled = 0
  }
}

/** One fresh array holding `parts` back to back; `size` is their total length. */
export const concatBytes = (parts: ReadonlyArray<Uint8Array>, size: number): Uint8Array => {
  const out = new Uint8Array(size)
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}
