/**
 * The agent's audit buffer: a written event is in the file before `write` returns (so it survives
 * the agent being killed right after), uploads read whole lines, and acknowledging everything
 * starts the file over with an offset that always fits it.
 */
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import * as AuditBuffer from "../src/adapters/AuditBuffer.ts"

const dirs: Array<string> = []
const tempDir = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "audit-buffer-"))
  dirs.push(d)
  return d
}
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

const lines = (dir: string) =>
  fs
    .readFileSync(path.join(dir, "audit-buffer.jsonl"), "utf8")
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l) as AuditBuffer.BufferedEvent)

const query = (i: number): AuditBuffer.EventDraft => ({ type: "db.session.query", code: "TDB02I", payload: { db_query: `select ${i}`, ei: i } })

describe("AuditBuffer", () => {
  it("write puts the event in the file before it returns", async () => {
    const dir = tempDir()
    const b = AuditBuffer.open(dir)
    b.write(query(1))
    // No await in between: what a session forwards next is already on file.
    expect(lines(dir).map((e) => e.payload["db_query"])).toEqual(["select 1"])
    await Effect.runPromise(b.flush)
    await Effect.runPromise(b.close)
  })

  it("events written just before the agent is killed with SIGKILL are all in the file", async () => {
    const dir = tempDir()
    const script = [
      `import * as AuditBuffer from ${JSON.stringify(path.resolve("src/adapters/AuditBuffer.ts"))}`,
      `const b = AuditBuffer.open(${JSON.stringify(dir)})`,
      `for (let i = 0; i < 2000; i++) b.write({ type: "db.session.query", code: "TDB02I", payload: { db_query: "select " + i } })`,
      `process.kill(process.pid, "SIGKILL")`
    ].join("\n")
    const file = path.join(dir, "kill.mts")
    fs.writeFileSync(file, script)
    const signal = await new Promise<NodeJS.Signals | null>((resolve) => {
      const child = spawn(process.execPath, ["--import", "tsx", file], { stdio: "ignore" })
      child.on("close", (_code, sig) => resolve(sig))
    })
    expect(signal).toBe("SIGKILL")
    const got = lines(dir).map((e) => e.payload["db_query"])
    expect(got).toEqual(Array.from({ length: 2000 }, (_, i) => `select ${i}`))
  }, 60_000)

  it("pending reads whole lines in order; acknowledging all of them starts the file over", async () => {
    const dir = tempDir()
    const b = AuditBuffer.open(dir)
    for (let i = 0; i < 5; i++) b.write(query(i))
    const first = await Effect.runPromise(b.pending(3))
    expect(first.events.map((e) => e.payload["ei"])).toEqual([0, 1, 2])
    await Effect.runPromise(b.acknowledge(first.next))
    expect(Number(fs.readFileSync(path.join(dir, "audit-buffer.offset"), "utf8"))).toBe(first.next)
    const rest = await Effect.runPromise(b.pending(100))
    expect(rest.events.map((e) => e.payload["ei"])).toEqual([3, 4])
    await Effect.runPromise(b.acknowledge(rest.next))
    expect(fs.statSync(path.join(dir, "audit-buffer.jsonl")).size).toBe(0)
    expect(fs.readFileSync(path.join(dir, "audit-buffer.offset"), "utf8")).toBe("0")
    b.write(query(5))
    expect((await Effect.runPromise(b.pending(100))).events.map((e) => e.payload["ei"])).toEqual([5])
    await Effect.runPromise(b.close)
  })

  it("an offset that does not fit the file (past its end, or inside a line) sends everything again", async () => {
    const dir = tempDir()
    const b = AuditBuffer.open(dir)
    b.write(query(1))
    b.write(query(2))
    await Effect.runPromise(b.close)
    for (const bad of ["999999", "3"]) {
      fs.writeFileSync(path.join(dir, "audit-buffer.offset"), bad)
      const again = AuditBuffer.open(dir)
      expect((await Effect.runPromise(again.pending(100))).events.map((e) => e.payload["ei"])).toEqual([1, 2])
      await Effect.runPromise(again.close)
    }
  })

  it("append and flush wait for an fsync that covers the write", async () => {
    const dir = tempDir()
    const b = AuditBuffer.open(dir)
    await Effect.runPromise(b.append(query(1)))
    b.write(query(2))
    await Effect.runPromise(b.flush)
    expect(lines(dir)).toHaveLength(2)
    await Effect.runPromise(b.close)
  })
})
