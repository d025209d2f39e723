/**
 * The SFTP audit tap (protocols/ssh/sftpAudit.ts): SFTP packets built here independently of the
 * parser; the files it reports are the OPENs among them, in order, however the stream is split,
 * and random bytes never throw.
 */
import * as fc from "fast-check"
import { describe, expect, it } from "vitest"
import { sftpAuditor } from "../../src/protocols/ssh/sftpAudit.ts"

const u32 = (n: number) => {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(n >>> 0)
  return b
}
const str = (s: string | Buffer) => {
  const b = typeof s === "string" ? Buffer.from(s, "utf8") : s
  return Buffer.concat([u32(b.length), b])
}
const packet = (type: number, body: Buffer) => Buffer.concat([u32(body.length + 1), Buffer.from([type]), body])
/** SSH_FXP_OPEN: id, filename, pflags, ATTRS (flags 0). */
const open = (id: number, path: string, pflags: number) => packet(3, Buffer.concat([u32(id), str(path), u32(pflags), u32(0)]))
/** SSH_FXP_WRITE: id, handle, offset, data: the bulky packet the tap must skip without buffering. */
const write = (id: number, data: Buffer) => packet(6, Buffer.concat([u32(id), str("h1"), Buffer.alloc(8), str(data)]))
const init = packet(1, u32(3))

const arbPacket = fc.oneof(
  fc.record({ kind: fc.constant("open" as const), path: fc.string({ maxLength: 40 }), flags: fc.integer({ min: 0, max: 0x3f }) }),
  fc.record({ kind: fc.constant("write" as const), size: fc.integer({ min: 0, max: 70_000 }) }),
  fc.record({ kind: fc.constant("other" as const), type: fc.integer({ min: 4, max: 20 }), body: fc.uint8Array({ maxLength: 64 }) })
)

const feed = (bytes: Buffer, cuts: ReadonlyArray<number>) => {
  const seen: Array<{ path: string; action: string }> = []
  const tap = sftpAuditor((e) => seen.push(e))
  let at = 0
  for (const cut of [...cuts].sort((a, b) => a - b)) {
    tap(bytes.subarray(at, Math.max(at, cut)))
    at = Math.max(at, cut)
  }
  tap(bytes.subarray(at))
  return seen
}

describe("SFTP audit tap", () => {
  it("reports every OPEN in order, as download or upload, however the stream is cut", () => {
    fc.assert(
      fc.property(fc.array(arbPacket, { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 20 }), (packets, rawCuts) => {
        const parts = [init]
        const expected: Array<{ path: string; action: string }> = []
        packets.forEach((p, i) => {
          if (p.kind === "open") {
            parts.push(open(i, p.path, p.flags))
            expected.push({ path: p.path, action: p.flags & 2 ? "upload" : "download" })
          } else if (p.kind === "write") parts.push(write(i, Buffer.alloc(p.size, 7)))
          else parts.push(packet(p.type === 3 ? 4 : p.type, Buffer.from(p.body)))
        })
        const bytes = Buffer.concat(parts)
        const cuts = rawCuts.map((c) => (bytes.length === 0 ? 0 : c % bytes.length))
        expect(feed(bytes, cuts)).toEqual(expected)
      }),
      { numRuns: 200 }
    )
  })

  it("random bytes never throw", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), fc.array(fc.nat({ max: 2048 }), { maxLength: 8 }), (bytes, cuts) => {
        feed(Buffer.from(bytes), cuts)
      })
    )
  })
})
