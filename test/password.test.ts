/** scrypt password hashes, the password policy, tokens and TOTP secrets. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import {
  PASSWORD_MAX_LENGTH,
  PASSWORD_MIN_LENGTH,
  checkPasswordPolicy,
  dummyVerify,
  generateTotpSecret,
  hashPassword,
  randomToken,
  verifyPassword
} from "../src/adapters/Password.ts"
import { base32Decode } from "../src/domain/Totp.ts"

const password = "correct horse battery staple"

describe("password hashes", () => {
  it.effect("a hash verifies its password and not another", () =>
    Effect.gen(function* () {
      const stored = yield* hashPassword(password)
      expect(stored).toMatch(/^\$scrypt\$ln=15,r=8,p=1\$[A-Za-z0-9+/]{43}\$[A-Za-z0-9+/]{86}$/)
      expect(yield* verifyPassword(password, stored)).toBe(true)
      expect(yield* verifyPassword(`${password}!`, stored)).toBe(false)
      expect(yield* verifyPassword("", stored)).toBe(false)
    })
  )

  it.effect("accepts Redacted passwords, the same as plain strings", () =>
    Effect.gen(function* () {
      const stored = yield* hashPassword(Redacted.make(password))
      expect(yield* verifyPassword(password, stored)).toBe(true)
      expect(yield* verifyPassword(Redacted.make(password), stored)).toBe(true)
    })
  )

  it.effect("normalizes Unicode: composed and decomposed accents are the same password", () =>
    Effect.gen(function* () {
      const composed = "p\u00e4sswort-lang-genug"
      const decomposed = "pa\u0308sswort-lang-genug"
      const stored = yield* hashPassword(composed)
      expect(yield* verifyPassword(decomposed, stored)).toBe(true)
    })
  )

  it.effect("two hashes of the same password differ (fresh salt)", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([hashPassword(password), hashPassword(password)], { concurrency: 2 })
      expect(a).not.toBe(b)
      expect(a.split("$")[3]).not.toBe(b.split("$")[3])
    })
  )

  it.effect("the hash string never contains the password", () =>
    Effect.gen(function* () {
      for (const pw of [password, "AAAAAAAAAAAAAAAA", "ln=15,r=8,p=1-xyz"]) {
        const stored = yield* hashPassword(pw)
        expect(stored).not.toContain(pw)
        expect(stored).not.toContain(Buffer.from(pw).toString("base64").replace(/=+$/, ""))
      }
    })
  )

  it.effect("a tampered or malformed hash string gives false, not an error", () =>
    Effect.gen(function* () {
      const stored = yield* hashPassword(password)
      const [, , params, salt, key] = stored.split("$") as [string, string, string, string, string]
      const flip = (text: string) => (text[0] === "A" ? "B" : "A") + text.slice(1)
      const variants = [
        "",
        "garbage",
        "$scrypt$",
        stored.slice(0, -5),
        stored.slice(0, -1) + (stored.endsWith("w") ? "x" : "w"),
        `$scrypt$${params}$${flip(salt)}$${key}`,
        `$scrypt$${params}$${salt}$${flip(key)}`,
        `$scrypt$ln=14,r=8,p=1$${salt}$${key}`,
        `$scrypt$ln=40,r=8,p=1$${salt}$${key}`,
        `$scrypt$ln=15,r=99,p=1$${salt}$${key}`,
        `$scrypt$ln=15,r=8$${salt}$${key}`,
        `$argon2id$${params}$${salt}$${key}`,
        `$scrypt$${params}$${salt}$${key}$extra`,
        `$scrypt$${params}$!!!!$${key}`,
        `$scrypt$${params}$${salt}$`,
        `$scrypt$${params}$c2FsdA$${key}`
      ]
      for (const variant of variants) {
        expect(yield* verifyPassword(password, variant)).toBe(false)
      }
      expect(yield* verifyPassword(password, stored)).toBe(true)
    })
  )

  it.effect("dummyVerify answers false and costs about what a real verification costs", () =>
    Effect.gen(function* () {
      const stored = yield* hashPassword(password)
      yield* dummyVerify(password) // first call makes the dummy hash
      const time = (effect: Effect.Effect<boolean>) =>
        Effect.gen(function* () {
          const start = performance.now()
          const result = yield* effect
          return { result, ms: performance.now() - start }
        })
      const real = yield* time(verifyPassword("wrong password here", stored))
      const dummy = yield* time(dummyVerify(password))
      expect(real.result).toBe(false)
      expect(dummy.result).toBe(false)
      // Loose bounds: the test machine is shared; an unknown user must not answer in ~0 ms.
      expect(dummy.ms).toBeGreaterThan(real.ms * 0.3)
      expect(dummy.ms).toBeLessThan(real.ms * 3 + 50)
    })
  )

  it.effect("hashing does not block the event loop", () =>
    Effect.gen(function* () {
      let ticks = 0
      const timer = setInterval(() => ticks++, 1)
      yield* hashPassword(password)
      clearInterval(timer)
      expect(ticks).toBeGreaterThan(0)
    })
  )
})

describe("password policy", () => {
  it("accepts 12 to 128 characters", () => {
    expect(checkPasswordPolicy("a".repeat(PASSWORD_MIN_LENGTH))).toBeUndefined()
    expect(checkPasswordPolicy("a".repeat(PASSWORD_MAX_LENGTH))).toBeUndefined()
    expect(checkPasswordPolicy(password)).toBeUndefined()
  })

  it("explains what is wrong", () => {
    expect(checkPasswordPolicy("short")).toBe("password must be at least 12 characters long (got 5)")
    expect(checkPasswordPolicy("")).toBe("password must be at least 12 characters long (got 0)")
    expect(checkPasswordPolicy("a".repeat(129))).toBe("password must be at most 128 characters long (got 129)")
    expect(checkPasswordPolicy(" ".repeat(20))).toBe("password must not be only spaces")
  })

  it("counts code points, not UTF-16 units", () => {
    // 11 emoji are 22 UTF-16 units but 11 characters: too short.
    expect(checkPasswordPolicy("\u{1F511}".repeat(11))).toMatch(/at least 12/)
    expect(checkPasswordPolicy("\u{1F511}".repeat(12))).toBeUndefined()
  })
})

describe("tokens and TOTP secrets", () => {
  it("randomToken gives hex of the asked length, different each time", () => {
    expect(randomToken()).toMatch(/^[0-9a-f]{64}$/)
    expect(randomToken(16)).toMatch(/^[0-9a-f]{32}$/)
    expect(randomToken()).not.toBe(randomToken())
  })

  it("generateTotpSecret gives 20 random bytes in base32", () => {
    const secret = generateTotpSecret()
    expect(secret).toMatch(/^[A-Z2-7]{32}$/)
    expect(base32Decode(secret)?.length).toBe(20)
    expect(generateTotpSecret()).not.toBe(secret)
  })
})
