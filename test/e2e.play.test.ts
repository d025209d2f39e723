/**
 * A recording made by a real node agent, played back by the user: `tsh ssh -t` through the proxy
 * (ALPN remoteler-ssh, the tunnel) to `remoteler start --roles=node`, which records the shell and
 * uploads it; then `tsh recordings ls` and `tsh play` show what was typed, and the bytes match the
 * SHA-256 in the session's session.end event.
 */
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Cluster } from "./fixtures/cluster.ts"
import { startCluster, stopCluster } from "./fixtures/cluster.ts"
import type { NodeAgentProcess } from "./fixtures/node.ts"
import { auditEvents, createLocalUser, startNodeAgent } from "./fixtures/node.ts"
import { runInTerminal } from "./fixtures/nodeTerminal.ts"
import { bin } from "./fixtures/processes.ts"
import { addUser, tshLogin } from "./fixtures/users.ts"

describe("tsh play of a node agent's recording", () => {
  let c: Cluster
  let n: NodeAgentProcess | undefined
  let local: ReturnType<typeof createLocalUser> | undefined
  let alice: Awaited<ReturnType<typeof tshLogin>>
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "remoteler-play-"))

  beforeAll(async () => {
    c = await startCluster("off")
    local = createLocalUser(dir)
    await addUser(c, "alice", "access", local.name)
    ;[n, alice] = await Promise.all([startNodeAgent(c, { name: "node-p", labels: "env=dev", dir }), tshLogin(c, "alice")])
  })
  afterAll(async () => {
    await n?.stop()
    await stopCluster(c)
    local?.remove()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it("replays the shell with what was typed and what the node printed", async () => {
    // The node appears in the inventory once its tunnel's presence has reached auth.
    for (let i = 0; i < 60; i++) {
      if ((await alice.tsh(["ls", "--format=json"])).stdout.includes("node-p")) break
      await new Promise((r) => setTimeout(r, 500))
    }
    const term = runInTerminal(["/usr/bin/env", `TSH_HOME=${alice.home}`, process.execPath, bin("tsh"), "ssh", "-t", `${local!.name}@node-p`])
    try {
      await term.waitFor(/[#$] $/m, 60_000)
      term.send("echo played-$((3*3))\r")
      await term.waitFor(/played-9/)
      term.send("exit\r")
      expect(await term.exited).toBe(0)
    } finally {
      term.kill()
    }
    // session.end carries the recording's hash; the node uploads the file beside it.
    let end: Record<string, unknown> | undefined
    for (let i = 0; i < 100 && end === undefined; i++) {
      end = (await auditEvents(c, ["session.end"])).find((e) => e["interactive"] === true && e["user"] === "alice")
      if (end === undefined) await new Promise((r) => setTimeout(r, 200))
    }
    expect(end).toMatchObject({ session_recording_sha256: expect.stringMatching(/^[0-9a-f]{64}$/) })
    const sid = String(end!["sid"])
    let listed: Record<string, unknown> | undefined
    for (let i = 0; i < 40; i++) {
      listed = (JSON.parse((await alice.tsh(["recordings", "ls", "--format=json"])).stdout) as Array<Record<string, unknown>>).find((r) => r["session_id"] === sid)
      if (listed?.["done"] === true) break
      await new Promise((r) => setTimeout(r, 500))
    }
    expect(listed).toMatchObject({ user: "alice", login: local!.name, done: true, sha256: end!["session_recording_sha256"] })

    const played = await alice.tsh(["play", sid, "--format=json"])
    expect(played.stderr).toBe("")
    const events = played.stdout.trim().split("\n").map((l) => JSON.parse(l) as [number, string, string])
    // What was typed, as the terminal echoed it (keystrokes are not kept), and what the command printed.
    expect(events.some(([, k]) => k === "i")).toBe(false)
    const output = events.filter(([, k]) => k === "o").map(([, , d]) => d).join("")
    expect(output).toContain("echo played-$((3*3))")
    expect(output).toMatch(/played-9\r\n/)
    const cast = await alice.tsh(["play", sid, "--format=cast"])
    expect(createHash("sha256").update(cast.stdout).digest("hex")).toBe(end!["session_recording_sha256"])
  })
})
