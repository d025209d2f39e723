/**
 * The DER writer and reader in src/adapters/internal/der.ts, against byte fixtures written out by
 * hand and a BigInt reference for INTEGER; the reader never throws anything but DerError.
 */
import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import * as Der from "../../src/adapters/internal/der.ts"

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex")

/** Two's-complement minimal big-endian bytes of a non-negative BigInt, the X.690 way. */
const referenceInteger = (n: bigint): string => {
  let h = n.toString(16)
  if (h.length % 2 === 1) h = `0${h}`
  if (parseInt(h.slice(0, 2), 16) >= 0x80) h = `00${h}`
  const len = h.length / 2
  const lenHex = len < 0x80 ? len.toString(16).padStart(2, "0") : `81${len.toString(16).padStart(2, "0")}`
  return `02${lenHex}${h}`
}

describe("DER writer", () => {
  it("fixtures", () => {
    expect(hex(Der.oid("1.2.840.10045.4.3.2"))).toBe("06082a8648ce3d040302")
    expect(hex(Der.oid("2.5.29.19"))).toBe("0603551d13")
    expect(hex(Der.oid("1.3.9999.2.1"))).toBe("06052bce0f0201")
    expect(hex(Der.oid("1.3.9999.42.1"))).toBe("06052bce0f2a01")
    expect(hex(Der.oid("2.999.3"))).toBe("0603883703")
    expect(hex(Der.namedBits([0, 2]))).toBe("030205a0")
    expect(hex(Der.namedBits([0, 5, 6]))).toBe("03020186")
    expect(hex(Der.namedBits([8]))).toBe("0303070080")
    expect(hex(Der.sequence())).toBe("3000")
    expect(hex(Der.explicit(0, Der.smallInteger(2)))).toBe("a003020102")
    expect(hex(Der.boolean(true))).toBe("0101ff")
    expect(hex(Der.utf8String("é"))).toBe("0c02c3a9")
    expect(Buffer.from(Der.time(new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 678)))).toString("latin1")).toBe("\x17\x0d260102030405Z")
    expect(Buffer.from(Der.time(new Date(Date.UTC(2050, 0, 1)))).toString("latin1")).toBe("\x18\x0f20500101000000Z")
    expect(Buffer.from(Der.time(new Date(Date.UTC(1949, 11, 31, 23, 59, 59)))).toString("latin1")).toBe("\x18\x0f19491231235959Z")
    expect(Buffer.from(Der.time(new Date(Date.UTC(1950, 0, 1)))).toString("latin1")).toBe("\x17\x0d500101000000Z")
    expect(() => Der.oid("1.40.1")).toThrow(Der.DerError)
    expect(() => Der.oid("1")).toThrow(Der.DerError)
    expect(() => Der.ia5String("é")).toThrow(Der.DerError)
    expect(() => Der.time(new Date(NaN))).toThrow(Der.DerError)
  })

  it.prop("INTEGER from a magnitude matches a BigInt reference", [fc.uint8Array({ minLength: 0, maxLength: 40 })], ([bytes]) => {
    const n = bytes.length === 0 ? 0n : BigInt(`0x${hex(bytes)}`)
    expect(hex(Der.unsignedInteger(bytes))).toBe(referenceInteger(n))
  }, { fastCheck: { numRuns: 2_000 } })

  it.prop("a value reads back: tag, header length, contents", [
    fc.constantFrom(0x04, 0x0c, 0x30, 0x31, 0x80, 0xa3),
    fc.oneof(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 65_000, max: 70_000 }))
  ], ([tag, length]) => {
    const contents = new Uint8Array(length).map((_, i) => i & 0xff)
    const enc = Der.tlv(tag, contents.subarray(0, length >> 1), contents.subarray(length >> 1))
    const t = Der.readTlv(enc, 0)
    const header = length < 0x80 ? 2 : length < 0x100 ? 3 : length < 0x10000 ? 4 : 5
    expect({ tag: t.tag, start: t.start, end: t.end }).toEqual({ tag, start: header, end: enc.length })
    expect(hex(enc.subarray(t.start, t.end))).toBe(hex(contents))
    // a truncated encoding is refused, at every cut
    for (const cut of [0, 1, header - 1, enc.length - 1].filter((c) => c >= 0 && c < enc.length)) {
      expect(() => Der.readTlv(enc.subarray(0, cut), 0)).toThrow(Der.DerError)
    }
  })

  it.prop("random bytes: the reader throws only DerError and stays inside the limit", [fc.uint8Array({ maxLength: 64 }), fc.nat(8)], ([bytes, offset]) => {
    try {
      const t = Der.readTlv(bytes, offset)
      expect(t.end).toBeLessThanOrEqual(bytes.length)
      expect(t.start).toBeGreaterThan(offset)
    } catch (e) {
      expect(e).toBeInstanceOf(Der.DerError)
    }
  }, { fastCheck: { numRuns: 5_000 } })

  it("refuses lengths that are not DER", () => {
    expect(() => Der.readTlv(Uint8Array.of(0x04, 0x80, 0, 0), 0)).toThrow(/indefinite/)
    expect(() => Der.readTlv(Uint8Array.of(0x04, 0x81, 0x05, 1, 2, 3, 4, 5), 0)).toThrow(/minimal/)
    expect(() => Der.readTlv(Uint8Array.of(0x04, 0x82, 0x00, 0x90, ...new Uint8Array(0x90)), 0)).toThrow(/minimal/)
    expect(() => Der.expectTlv(Uint8Array.of(0x04, 0x00), 0, 0x30)).toThrow(Der.DerError)
  })
})
