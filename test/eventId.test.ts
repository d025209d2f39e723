import { describe, expect, it } from "@effect/vitest"
import { eventId } from "../src/adapters/internal/eventStoreCommon.ts"

describe("event ids the store assigns", () => {
  it("are UUIDv7: version 7, the RFC variant, the current millisecond first, all distinct", () => {
    const before = Date.now()
    const ids = Array.from({ length: 2000 }, eventId)
    const after = Date.now()
    for (const id of ids) {
      expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
      const ms = parseInt(id.slice(0, 8) + id.slice(9, 13), 16)
      expect(ms).toBeGreaterThanOrEqual(before)
      expect(ms).toBeLessThanOrEqual(after)
    }
    expect(new Set(ids).size).toBe(ids.length)
  })
})
