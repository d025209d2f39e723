/**
 * The `remoteler-ssh` routing preamble (src/protocols/ssh/route.ts): a target line and a reply
 * parse back to what was encoded, followed by whatever SSH bytes came with them; a line that
 * arrives in pieces parses the same once whole; random bytes never throw; and the known_hosts file
 * tsh writes from the inventory (src/adapters/KnownHosts.ts).
 */
import { generateKeyPairSync } from "node:crypto"
import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import * as KnownHosts from "../../src/adapters/KnownHosts.ts"
import { publicKeyBlob, publicKeyLine } from "../../src/protocols/ssh/cert.ts"
import * as Route from "../../src/protocols/ssh/route.ts"

const hostArb = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,40}$/)
const targetArb = fc.record({ host: hostArb, port: fc.integer({ min: 0, max: 65535 }) })
const restArb = fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b))

describe("ssh routing preamble", () => {
  it("a target line parses back, with the bytes after it kept", () => {
    fc.assert(
      fc.property(targetArb, restArb, (t, rest) => {
        const parsed = Route.parseTargetLine(Buffer.concat([Route.encodeTarget(t), rest]))
        expect(parsed._tag).toBe("Line")
        if (parsed._tag === "Line") {
          expect(parsed.value).toEqual(t)
          expect(Buffer.compare(parsed.rest, rest)).toBe(0)
        }
      })
    )
  })

  it("a line split anywhere is Pending until its newline arrives", () => {
    fc.assert(
      fc.property(targetArb, (t) => {
        const bytes = Route.encodeTarget(t)
        for (let i = 0; i < bytes.length - 1; i++) expect(Route.parseTargetLine(bytes.subarray(0, i))._tag).toBe("Pending")
        expect(Route.parseTargetLine(bytes)._tag).toBe("Line")
      })
    )
  })

  it("replies parse back: OK, or ERR with its message", () => {
    fc.assert(
      fc.property(fc.option(fc.string({ maxLength: 200 }), { nil: undefined }), restArb, (message, rest) => {
        const reply = message === undefined ? Route.OK : Route.encodeError(message)
        const parsed = Route.parseReply(Buffer.concat([reply, rest]))
        expect(parsed._tag).toBe("Line")
        if (parsed._tag === "Line") {
          expect(parsed.value).toBe(message === undefined ? undefined : message.replace(/[\r\n]+/g, " ").slice(0, Route.MAX_LINE - 8))
          expect(Buffer.compare(parsed.rest, rest)).toBe(0)
        }
      })
    )
  })

  it("random bytes never throw, and an over-long line is Invalid", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 1024 }), (b) => {
        const buf = Buffer.from(b)
        const t = Route.parseTargetLine(buf)
        const r = Route.parseReply(buf)
        if (buf.indexOf(0x0a) < 0 && buf.length >= Route.MAX_LINE) {
          expect(t._tag).toBe("Invalid")
          expect(r._tag).toBe("Invalid")
        }
      })
    )
  })

  it("refuses names and ports that are not a node's", () => {
    for (const bad of ["a b:1", "node:70000", ":22", "node:22:33", "x\u0000:1", "../etc:1"]) {
      expect(Route.parseTarget(bad), bad).toBeUndefined()
    }
    expect(Route.parseTarget("node-a.main")).toEqual({ host: "node-a.main", port: 0 })
  })
})

describe("tsh's known_hosts", () => {
  it("pins each node under both names, skips nodes without a valid key, and is stable", () => {
    const key = publicKeyLine(publicKeyBlob(generateKeyPairSync("ed25519").publicKey), "comment dropped")
    const text = KnownHosts.render(
      [
        { name: "b", host_key: key },
        { name: "a", host_key: key },
        { name: "none" },
        { name: "bad", host_key: "ssh-ed25519 AAAA" }
      ],
      "main"
    )
    const bare = key.split(" ").slice(0, 2).join(" ")
    expect(text).toBe(`a.main,a ${bare}\nb.main,b ${bare}\n`)
    expect(Buffer.from(KnownHosts.hostKeyBlob(key)!).toString("base64")).toBe(key.split(" ")[1])
  })
})
