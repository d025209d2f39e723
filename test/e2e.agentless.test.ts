/**
 * Agentless OpenSSH nodes end to end, as docs/agentless-nodes.md sets them up: a stock sshd
 * (Debian's openssh-server) trusting the user CA from `tctl auth export --type=user`, with a host
 * certificate from `tctl auth sign --host=... --format=openssh`, registered with
 * `tctl create node.yaml`, and reached through the proxy with the real `tsh ssh` (ALPN
 * remoteler-ssh) and the real OpenSSH `ssh -J` (the proxy's 3023 listener). The proxy terminates
 * the sessions, audits them and records the interactive one, which `tsh play` replays.
 */
import { execFileSync, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { call } from "../src/adapters/AuthApiHttp.ts"
import { adminSocketPath } from "../src/adapters/DataDir.ts"
import type { AuthMethod, RequestOf } from "../src/domain/AuthApi.ts"
import type { Cluster } from "./fixtures/cluster.ts"
import { request, startCluster, stopCluster } from "./fixtures/cluster.ts"
import { runInTerminal } from "./fixtures/nodeTerminal.ts"
import { bin, freePort } from "./fixtures/processes.ts"
import type { Sshd } from "./fixtures/sshd.ts"
import { startSshd } from "./fixtures/sshd.ts"
import type { UserCerts } from "./fixtures/users.ts"
import { addUser, certLogin, tshLogin } from "./fixtures/users.ts"

describe("agentless OpenSSH node through the recording proxy", () => {
  let c: Cluster
  let sshd: Sshd
  let sshPort: number
  let alice: Awaited<ReturnType<typeof tshLogin>>
  let aliceCerts: UserCerts
  let bobCerts: UserCerts
  const file = (name: string) => path.join(c.dir, name)

  /** Auth's API on its admin socket, in-process (a tctl run costs seconds on a loaded machine). */
  const admin = <M extends AuthMethod>(method: M, req: RequestOf<M>) => Effect.runPromise(call(adminSocketPath(`${c.dir}/data`), method, req))
  /** The last audit event of some types that matches, once the proxy has sent it (it audits after the session closes). */
  const lastEvent = async (types: string, where: (e: Record<string, unknown>) => boolean = () => true) => {
    for (let i = 0; ; i++) {
      const found = (await audit(types)).filter(where).at(-1)
      if (found !== undefined || i >= 50) return found
      await new Promise((r) => setTimeout(r, 200))
    }
  }
  /** Audit events of some types, oldest first. */
  const audit = async (types: string) =>
    (await admin("audit.search", { types: types.split(","), limit: 10_000 })) as ReadonlyArray<Record<string, unknown>>

  beforeAll(async () => {
    sshPort = await freePort()
    c = await startCluster("off", [`  ssh_listen_addr: 127.0.0.1:${sshPort}`])
    // The documented setup: the user CA for TrustedUserCAKeys, a host key and certificate for the node.
    const userCa = await c.tctl("auth", "export", "--type=user")
    expect(userCa.code).toBe(0)
    const signed = await c.tctl("auth", "sign", "--host=node-a,127.0.0.1", "--format=openssh", `--out=${file("node-a")}`, "--ttl=1h")
    expect(signed.stderr).toBe("")
    sshd = await startSshd({ trustedUserCaKeys: userCa.stdout, hostKey: file("node-a"), hostCertificate: file("node-a-cert.pub") })
    fs.writeFileSync(
      file("node.yaml"),
      [
        "kind: node",
        "version: v2",
        "sub_kind: openssh",
        "metadata:",
        "  name: node-a",
        "  labels: { env: dev }",
        "spec:",
        `  addr: 127.0.0.1:${sshd.port}`,
        `  host_key: ${fs.readFileSync(file("node-a-cert.pub"), "utf8").trim()}`,
        ""
      ].join("\n")
    )
    const created = await c.tctl("create", file("node.yaml"))
    expect(created.stderr).toBe("")
    expect(created.stdout).toContain('node "node-a" has been created')
    await addUser(c, "alice", "access", "root")
    aliceCerts = await certLogin(c, "alice")
    // bob may log in as root or nobody by his traits, but a role denies root on env=dev nodes (so he
    // still sees node-a, as nobody).
    fs.writeFileSync(
      file("no-dev-root.yaml"),
      ["kind: role", "version: v7", "metadata: { name: no-dev-root }", "spec:", "  deny:", "    node_labels: { env: dev }", "    logins: [root]", ""].join("\n")
    )
    expect((await c.tctl("create", file("no-dev-root.yaml"))).code).toBe(0)
    await addUser(c, "bob", "access,no-dev-root", "root,nobody")
    bobCerts = await certLogin(c, "bob")
    alice = await tshLogin(c, "alice")
  })
  afterAll(async () => {
    await sshd?.stop()
    await stopCluster(c)
  })

  it("lists the node as agentless, runs commands with their exit codes, and audits them at the proxy", async () => {
    const nodes = JSON.parse((await request(c.port, "GET", "/v1/webapi/nodes", { cert: aliceCerts.tlsCert, key: aliceCerts.tlsKey })).body) as {
      nodes: Array<Record<string, unknown>>
    }
    const node = nodes.nodes.find((n) => n["name"] === "node-a")
    expect(node).toMatchObject({ agentless: true, addr: `127.0.0.1:${sshd.port}`, labels: { env: "dev" }, logins: ["root"] })
    // The key users pin is the proxy's for this node, not the sshd's (they never talk to the sshd).
    expect(String(node?.["host_key"])).toMatch(/^ssh-ed25519 /)
    expect(fs.readFileSync(file("node-a.pub"), "utf8")).not.toContain(String(node?.["host_key"]).split(" ")[1])

    const ok = await alice.tsh(["ssh", "root@node-a", "echo out-$((6*7)); echo err >&2; exit 3"])
    expect(ok.stdout).toBe("out-42\n")
    expect(ok.stderr).toContain("err")
    expect(ok.code).toBe(3)

    const exec = await lastEvent("exec")
    expect(exec).toMatchObject({ code: "T3002I", user: "alice", login: "root", server_id: "openssh:node-a", exitCode: "3" })
    const sid = exec!["sid"]
    // session.end follows exec; the proxy sends it a moment later.
    let sessions: ReadonlyArray<Record<string, unknown>> = []
    for (let i = 0; i < 50 && sessions.length < 2; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 200))
      sessions = (await audit("session.start,session.end")).filter((e) => e["sid"] === sid)
    }
    expect(sessions.map((e) => [e["event"], e["code"]])).toEqual([["session.start", "T2000I"], ["session.end", "T2004I"]])
    // sshd saw the proxy's short certificate for root, not the user's own.
    expect(sshd.log()).toMatch(/Accepted publickey for root from 127\.0\.0\.1 .*ED25519-CERT.*ID alice/)
  })

  it("records an interactive shell that tsh play replays with what was typed", async () => {
    const term = runInTerminal(["/usr/bin/env", `TSH_HOME=${alice.home}`, process.execPath, bin("tsh"), "ssh", "-t", "root@node-a"])
    try {
      await term.waitFor(/[#$] $/m, 60_000)
      term.send("echo typed-$((7*6))\r")
      await term.waitFor(/typed-42/)
      term.send("exit\r")
      expect(await term.exited).toBe(0)
    } finally {
      term.kill()
    }
    // The session's recording is complete once session.end (with its SHA-256) is in the log.
    let end: Record<string, unknown> | undefined
    for (let i = 0; i < 100 && end === undefined; i++) {
      end = (await audit("session.end")).find((e) => e["interactive"] === true)
      if (end === undefined) await new Promise((r) => setTimeout(r, 200))
    }
    expect(end).toMatchObject({ user: "alice", login: "root", session_recording_sha256: expect.stringMatching(/^[0-9a-f]{64}$/) })
    const sid = String(end!["sid"])
    const ls = JSON.parse((await alice.tsh(["recordings", "ls", "--format=json"])).stdout) as Array<Record<string, unknown>>
    expect(ls.find((r) => r["session_id"] === sid)).toMatchObject({ user: "alice", done: true, sha256: end!["session_recording_sha256"] })

    const played = await alice.tsh(["play", sid, "--format=json"])
    expect(played.stderr).toBe("")
    const events = played.stdout.trim().split("\n").map((l) => JSON.parse(l) as [number, string, string])
    // What was typed shows as the terminal's echo; keystrokes themselves are not kept (no-echo prompts hold passwords).
    expect(events.some(([, code]) => code === "i")).toBe(false)
    const output = events.filter(([, code]) => code === "o").map(([, , d]) => d).join("")
    expect(output).toContain("echo typed-$((7*6))")
    expect(output).toMatch(/typed-42\r\n/)
    expect(events.every(([t], i) => i === 0 || t >= events[i - 1]![0])).toBe(true)
  })

  it("OpenSSH's ssh reaches the node through the 3023 listener; logins the certificate or the roles do not allow are refused and audited", async () => {
    // OpenSSH with the user's certificate, jumping through the proxy's SSH listener (what
    // ProxyJump does, spelled out so the jump hop uses the certificate too).
    const openssh = (who: string, certs: UserCerts, login: string, command: string) => {
      fs.writeFileSync(file(`${who}-key`), certs.sshKey, { mode: 0o600 })
      fs.writeFileSync(file(`${who}-key-cert.pub`), certs.sshCert + "\n")
      const common = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-i", file(`${who}-key`), "-o", `CertificateFile=${file(`${who}-key-cert.pub`)}`]
      const jump = `ssh ${common.join(" ")} -p ${sshPort} -W %h:%p ${who}@127.0.0.1`
      return spawnSync("ssh", [...common, "-o", `ProxyCommand=${jump}`, `${login}@node-a`, command], { encoding: "utf8", timeout: 60_000 })
    }
    const viaJump = openssh("alice", aliceCerts, "root", "echo via-jump; exit 5")
    expect({ stderr: viaJump.stderr, stdout: viaJump.stdout, status: viaJump.status }).toEqual({ stderr: "", stdout: "via-jump\n", status: 5 })
    expect(await lastEvent("exec", (e) => e["command"] === "echo via-jump; exit 5")).toMatchObject({ user: "alice", login: "root", exitCode: "5" })

    // A login that is not in alice's certificate: refused before auth is asked for anything.
    const notHers = await alice.tsh(["ssh", "nobody@node-a", "true"])
    expect(notHers.code).toBe(255)
    expect((await audit("auth")).at(-1)).toMatchObject({ code: "T3007W", user: "alice", success: false, error: expect.stringMatching(/node-a.*principal "nobody"/) })

    // root is in bob's certificate, but his no-dev-root role denies it on this node: deny wins.
    const bob = openssh("bob", bobCerts, "root", "echo should-not-run")
    expect(bob.status).toBe(255)
    expect(bob.stdout).toBe("")
    expect(bob.stderr).toMatch(/Permission denied/)
    // (OpenSSH then offers the plain key too, refused and audited as well.)
    expect((await audit("auth")).find((e) => e["user"] === "bob" && String(e["error"]).includes("no-dev-root"))).toMatchObject({
      code: "T3007W",
      user: "bob",
      success: false,
      error: "access to node node-a as login root denied by role no-dev-root (deny.logins)"
    })
    expect(sshd.log()).not.toMatch(/ID bob/)
  })

  it("refuses an sshd whose host key is not the pinned one, and forgets a removed node", async () => {
    const other = execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", file("other"), "-C", "other"]) && fs.readFileSync(file("other.pub"), "utf8")
    fs.writeFileSync(
      file("node-b.yaml"),
      ["kind: node", "metadata: { name: node-b }", "spec:", `  addr: 127.0.0.1:${sshd.port}`, `  host_key: ${other.trim()}`, ""].join("\n")
    )
    expect((await c.tctl("create", file("node-b.yaml"))).code).toBe(0)
    const mitm = await alice.tsh(["ssh", "root@node-b", "true"])
    expect(mitm.code).toBe(255)
    // A certificate the host CA did not sign is refused at registration.
    fs.writeFileSync(file("node-c.yaml"), ["kind: node", "metadata: { name: node-c }", "spec:", "  addr: 127.0.0.1:22", `  host_key: ${fs.readFileSync(file("node-a-cert.pub"), "utf8").trim().replace(/.{8}$/, "AAAAAAAA")}`, ""].join("\n"))
    const bad = await c.tctl("create", file("node-c.yaml"))
    expect(bad.code).toBe(1)
    expect(bad.stderr).toMatch(/host_key/)

    expect((await admin("nodes.list", {})).map((n) => n.name)).toEqual(["node-a", "node-b"])
    expect((await c.tctl("rm", "node/node-b")).stdout).toContain('node "node-b" has been deleted')
    const after = JSON.parse((await request(c.port, "GET", "/v1/webapi/nodes", { cert: aliceCerts.tlsCert, key: aliceCerts.tlsKey })).body) as { nodes: Array<{ name: string }> }
    expect(after.nodes.map((n) => n.name)).toEqual(["node-a"])
  })
})
