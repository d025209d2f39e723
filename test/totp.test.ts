/** TOTP and base32: RFC 6238 Appendix B vectors, the acceptance window, otpauth URIs. */
import * as fc from "fast-check"
import { describe, expect, it } from "vitest"
import { base32Decode, base32Encode, otpauthUri, totpCode, totpCounter, verifyTotp } from "../src/domain/Totp.ts"

// RFC 6238 Appendix B: the SHA1 seed is the ASCII string "12345678901234567890".
const rfcSecret = base32Encode(Buffer.from("12345678901234567890", "ascii"))
const rfcVectors: ReadonlyArray<readonly [number, string]> = [
  [59, "94287082"],
  [1111111109, "07081804"],
  [1111111111, "14050471"],
  [1234567890, "89005924"],
  [2000000000, "69279037"],
  [20000000000, "65353130"]
]

describe("base32 (RFC 4648)", () => {
  it("matches the RFC 4648 section 10 vectors (unpadded)", () => {
    const vectors: ReadonlyArray<readonly [string, string]> = [
      ["", ""],
      ["f", "MY"],
      ["fo", "MZXQ"],
      ["foo", "MZXW6"],
      ["foob", "MZXW6YQ"],
      ["fooba", "MZXW6YTB"],
      ["foobar", "MZXW6YTBOI"]
    ]
    for (const [plain, encoded] of vectors) {
      expect(base32Encode(Buffer.from(plain))).toBe(encoded)
      expect(Buffer.from(base32Decode(encoded)!).toString()).toBe(plain)
    }
  })

  it("decodes padded, lower-case and grouped input", () => {
    expect(Buffer.from(base32Decode("mzxw6ytb oi======")!).toString()).toBe("foobar")
    expect(Buffer.from(base32Decode("MZXW-6YTB-OI")!).toString()).toBe("foobar")
  })

  it("refuses characters outside the alphabet", () => {
    expect(base32Decode("MZXW1")).toBeUndefined()
    expect(base32Decode("MZXW8")).toBeUndefined()
  })

  it("round trips any bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        const encoded = base32Encode(bytes)
        expect(encoded).toMatch(/^[A-Z2-7]*$/)
        expect(Buffer.from(base32Decode(encoded)!)).toEqual(Buffer.from(bytes))
      })
    )
  })
})

describe("TOTP (RFC 6238)", () => {
  it("reproduces the Appendix B SHA1 vectors (8 digits)", () => {
    for (const [seconds, code] of rfcVectors) {
      expect(totpCode(rfcSecret, seconds * 1000, 30, 8)).toBe(code)
    }
  })

  it("gives 6-digit codes by default (the last 6 digits of the 8-digit ones)", () => {
    for (const [seconds, code] of rfcVectors) {
      expect(totpCode(rfcSecret, seconds * 1000)).toBe(code.slice(2))
    }
  })

  it("verifies the RFC vectors and returns the step counter", () => {
    for (const [seconds, code] of rfcVectors) {
      expect(verifyTotp(rfcSecret, code, seconds * 1000, { digits: 8 })).toBe(Math.floor(seconds / 30))
    }
  })

  const now = 1_700_000_015_000
  const at = (steps: number) => now + steps * 30_000

  it("accepts the codes of the neighbouring steps (window 1) and reports which one", () => {
    const counter = totpCounter(now)
    for (const steps of [-1, 0, 1]) {
      expect(verifyTotp(rfcSecret, totpCode(rfcSecret, at(steps)), now, { window: 1 })).toBe(counter + steps)
    }
  })

  it("refuses codes two steps away, and wrong or malformed codes", () => {
    for (const steps of [-2, 2]) {
      expect(verifyTotp(rfcSecret, totpCode(rfcSecret, at(steps)), now, { window: 1 })).toBeUndefined()
    }
    const good = totpCode(rfcSecret, now)
    const wrong = String((Number(good) + 1) % 1_000_000).padStart(6, "0")
    expect(verifyTotp(rfcSecret, wrong, now)).toBeUndefined()
    expect(verifyTotp(rfcSecret, "", now)).toBeUndefined()
    expect(verifyTotp(rfcSecret, good.slice(1), now)).toBeUndefined()
    expect(verifyTotp(rfcSecret, `${good}0`, now)).toBeUndefined()
    expect(verifyTotp(rfcSecret, "abcdef", now)).toBeUndefined()
    expect(verifyTotp("not base32!", good, now)).toBeUndefined()
  })

  it("window 0 accepts only the current step", () => {
    expect(verifyTotp(rfcSecret, totpCode(rfcSecret, now), now, { window: 0 })).toBe(totpCounter(now))
    expect(verifyTotp(rfcSecret, totpCode(rfcSecret, at(1)), now, { window: 0 })).toBeUndefined()
  })

  it("tolerates spaces in a typed code", () => {
    const code = totpCode(rfcSecret, now)
    expect(verifyTotp(rfcSecret, `${code.slice(0, 3)} ${code.slice(3)}`, now)).toBe(totpCounter(now))
  })
})

describe("otpauth URI", () => {
  it("has the Key Uri Format shape", () => {
    const uri = otpauthUri({ secret: "JBSWY3DPEHPK3PXP", account: "alice", issuer: "Remoteler" })
    expect(uri).toBe(
      "otpauth://totp/Remoteler:alice?secret=JBSWY3DPEHPK3PXP&issuer=Remoteler&algorithm=SHA1&digits=6&period=30"
    )
    const parsed = new URL(uri)
    expect(parsed.protocol).toBe("otpauth:")
    expect(parsed.searchParams.get("secret")).toBe("JBSWY3DPEHPK3PXP")
  })

  it("percent-encodes the label and issuer", () => {
    const uri = otpauthUri({ secret: "JBSWY3DPEHPK3PXP", account: "a b@x", issuer: "My Co&" })
    expect(uri.startsWith("otpauth://totp/My%20Co%26:a%20b%40x?")).toBe(true)
    expect(new URL(uri).searchParams.get("issuer")).toBe("My Co&")
  })
})
