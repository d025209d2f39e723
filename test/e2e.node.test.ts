/**
 * The SSH node agent end to end with the real OpenSSH client: `remoteler start` (auth + proxy), a
 * node agent joined with a token as its own process and listening on a free port, user
 * certificates from `tctl auth sign --format=openssh`, and `ssh`, `scp`, `sftp` driven directly at
 * the node with a known_hosts file that pins its host key. Sessions run as real local accounts
 * (a throwaway one created here, and root).
 */
import { execFileSync, spawn } from "node:child_process"
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Cluster } from "./fixtures/cluster.ts"
import { startCluster, stopCluster } from "./fixtures/cluster.ts"
import type { NodeAgentProcess } from "./fixtures/node.ts"
import { adminRpc, auditEvents, createLocalUser, signUser, signUserDirect, ssh, sshArgs, startNodeAgent } from "./fixtures/node.ts"
import { runInTerminal } from "./fixtures/nodeTerminal.ts"
import { freePort, run } from "./fixtures/processes.ts"

type Creds = { readonly key: string; readonly cert: string }

describe("SSH node agent with OpenSSH", () => {
  let c: Cluster
  let n: NodeAgentProcess
  let dir: string
  let local: ReturnType<typeof createLocalUser>
  let alice: Creds
  let proxySshPort: number
  /** Waits until an audit event of `type` matching `pred` has reached auth (agents upload in the background). */
  const awaitEvent = async (type: string, pred: (e: Record<string, unknown>) => boolean, ms = 15_000) => {
    const deadline = Date.now() + ms
    for (;;) {
      // The newest match: several tests may leave events that look alike.
      const found = (await auditEvents(c, [type])).findLast(pred)
      if (found !== undefined) return found
      if (Date.now() > deadline) throw new Error(`no ${type} event matching ${pred.toString()}; node output:\n${n.service.output().slice(-3000)}`)
      await new Promise((r) => setTimeout(r, 300))
    }
  }
  const nodeStillServes = async () => {
    const r = await ssh(n, alice, local.name, "echo still-serving")
    expect(r.stdout.trim()).toBe("still-serving")
  }

  beforeAll(async () => {
    proxySshPort = await freePort()
    c = await startCluster("off", [`  ssh_listen_addr: 127.0.0.1:${proxySshPort}`])
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "node-e2e-"))
    fs.chmodSync(dir, 0o755)
    local = createLocalUser(dir)
    const role = (name: string, spec: unknown) =>
      adminRpc(c, "roles.upsert", { role: { kind: "role", version: "v7", metadata: { name }, spec }, force: false })
    await role("node-dev", {
      allow: { logins: ["{{internal.logins}}"], node_labels: { env: "dev" } },
      deny: { logins: ["nobody"], node_labels: { "*": "*" } }
    })
    await role("node-prod", { allow: { logins: ["root"], node_labels: { env: "prod" } } })
    // alice: a throwaway account, root, nobody (denied by a deny rule) and one that no host has.
    await adminRpc(c, "users.create", { name: "alice", roles: ["node-dev"], traits: { logins: [local.name, "root", "nobody", "ghost-login"] } })
    await adminRpc(c, "users.create", { name: "bob", roles: ["node-prod"], traits: { logins: ["root"] } })
    await adminRpc(c, "users.create", { name: "audrey", roles: ["auditor"], traits: {} })
    // The real `tctl auth sign --format=openssh` while the node agent starts.
    ;[n, alice] = await Promise.all([startNodeAgent(c, { name: "node-a", labels: "env=dev,team=a", dir }), signUser(c, "alice", path.join(dir, "alice"))])
  }, 120_000)

  afterAll(async () => {
    await n?.stop()
    await stopCluster(c)
    local?.remove()
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  it("runs commands as the login with their exit codes, stdin, stdout and stderr", async () => {
    expect(n.hostKey).toMatch(/^ssh-ed25519 AAAA/)
    const id = await ssh(n, alice, local.name, "id -un; echo $HOME; pwd")
    expect(id.stderr).toBe("")
    expect(id.stdout.trim().split("\n")).toEqual([local.name, local.home, local.home])
    expect((await ssh(n, alice, local.name, "exit 3")).code).toBe(3)
    expect((await ssh(n, alice, "root", "id -u")).stdout.trim()).toBe("0")
    // A command killed by a signal: OpenSSH reports exit-signal as 255, the audit names the signal.
    expect((await ssh(n, alice, local.name, "kill -TERM $$")).code).toBe(255)
    // stdin reaches the command, stdout and stderr stay apart.
    const cat = await ssh(n, alice, local.name, "tr a-z A-Z; echo err >&2", [], { input: "hello\n" })
    expect(cat.stdout).toBe("HELLO\n")
    expect(cat.stderr).toBe("err\n")
    const exec = await awaitEvent("exec", (e) => e["command"] === "exit 3")
    expect(exec["code"]).toBe("T3002E")
    expect(exec["exitCode"]).toBe("3")
    expect(exec["user"]).toBe("alice")
    expect(exec["login"]).toBe(local.name)
    expect((await awaitEvent("exec", (e) => e["command"] === "kill -TERM $$"))["exitError"]).toBe("signal: TERM")
    const ok = await awaitEvent("exec", (e) => e["command"] === "id -u")
    expect(ok["code"]).toBe("T3002I")
    const start = await awaitEvent("session.start", (e) => e["sid"] === exec["sid"])
    expect(start["code"]).toBe("T2000I")
    expect(start["server_labels"]).toEqual({ env: "dev", team: "a" })
    expect((await awaitEvent("session.end", (e) => e["sid"] === exec["sid"]))["code"]).toBe("T2004I")
  })

  it("passes the client's environment", async () => {
    const r = await ssh(n, alice, local.name, "echo $GREETING-$LC_TEST", ["-o", "SetEnv=GREETING=hello LC_TEST=x"])
    expect(r.stdout.trim()).toBe("hello-x")
    // A client cannot override who the session runs as.
    const home = await ssh(n, alice, local.name, "echo $HOME", ["-o", "SetEnv=HOME=/tmp"])
    expect(home.stdout.trim()).toBe(local.home)
  })

  it("runs a shell in a PTY, driven through ssh -tt, and records it", async () => {
    const r = await ssh(n, alice, local.name, undefined, ["-tt"], { input: "tty; echo pty-$((6*7)); exit 5\n" })
    expect(r.stdout).toMatch(/\/dev\/pts\/\d+/)
    expect(r.stdout).toMatch(/pty-42/)
    expect(r.code).toBe(5)
    const start = await awaitEvent("session.start", (e) => e["interactive"] === true)
    const end = await awaitEvent("session.end", (e) => e["sid"] === start["sid"])
    expect(end["session_recording_sha256"]).toMatch(/^[0-9a-f]{64}$/)
  })

  it("forwards a local port (-L) to a TCP echo server", async () => {
    const echo = net.createServer((s) => s.pipe(s))
    await new Promise<void>((r) => echo.listen(0, "127.0.0.1", r))
    const echoPort = (echo.address() as net.AddressInfo).port
    const localPort = await new Promise<number>((r) => {
      const s = net.createServer().listen(0, "127.0.0.1", () => {
        const p = (s.address() as net.AddressInfo).port
        s.close(() => r(p))
      })
    })
    const fwd = spawn("ssh", [...sshArgs(n, alice), "-N", "-L", `${localPort}:127.0.0.1:${echoPort}`, "-o", "ExitOnForwardFailure=yes", "-p", String(n.port), `${local.name}@127.0.0.1`], {
      stdio: "ignore"
    })
    const fwdClosed = new Promise((r) => fwd.once("close", r))
    try {
      let reply = ""
      const deadline = Date.now() + 10_000
      while (reply === "" && Date.now() < deadline) {
        reply = await new Promise<string>((resolve) => {
          const s = net.connect(localPort, "127.0.0.1")
          let got = ""
          s.on("error", () => resolve(""))
          s.on("connect", () => s.write("ping through the tunnel"))
          s.on("data", (d) => {
            got += d.toString()
            if (got.length >= "ping through the tunnel".length) {
              s.end()
              resolve(got)
            }
          })
        })
        if (reply === "") await new Promise((r) => setTimeout(r, 200))
      }
      expect(reply).toBe("ping through the tunnel")
      const port = await awaitEvent("port", (e) => e["addr"] === `127.0.0.1:${echoPort}`)
      expect(port["code"]).toBe("T3003I")
    } finally {
      echo.close()
      fwd.kill()
      await fwdClosed
    }
  })

  it("copies files both ways with scp (SFTP) and lists them with sftp, as the login, and audits each file", async () => {
    const src = path.join(dir, "upload.bin")
    const data = Buffer.alloc(300_000)
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff
    fs.writeFileSync(src, data)
    fs.chmodSync(src, 0o644)
    const base = [...sshArgs(n, alice), "-P", String(n.port)]
    const up = await run("scp", [...base, src, `${local.name}@127.0.0.1:uploaded.bin`])
    expect(up.stderr).toBe("")
    expect(up.code).toBe(0)
    const remote = path.join(local.home, "uploaded.bin")
    expect(fs.readFileSync(remote).equals(data)).toBe(true)
    expect(fs.statSync(remote).uid).toBe(Number(execFileSync("id", ["-u", local.name], { encoding: "utf8" }).trim()))
    const back = path.join(dir, "downloaded.bin")
    const down = await run("scp", [...base, `${local.name}@127.0.0.1:uploaded.bin`, back])
    expect(down.code).toBe(0)
    expect(fs.readFileSync(back).equals(data)).toBe(true)
    // Legacy scp (-O): the scp protocol over an exec of `scp -t`.
    const legacy = await run("scp", ["-O", ...base, src, `${local.name}@127.0.0.1:legacy.bin`])
    expect(legacy.code).toBe(0)
    expect(fs.readFileSync(path.join(local.home, "legacy.bin")).equals(data)).toBe(true)
    const ls = await run("sftp", [...sshArgs(n, alice), "-P", String(n.port), "-b", "-", `${local.name}@127.0.0.1`], { input: "ls -1\n" })
    expect(ls.code).toBe(0)
    expect(ls.stdout).toMatch(/uploaded\.bin/)
    const upload = await awaitEvent("scp", (e) => e["action"] === "upload" && String(e["path"]).endsWith("uploaded.bin"))
    expect(upload["code"]).toBe("T3005I")
    const download = await awaitEvent("scp", (e) => e["action"] === "download" && String(e["path"]).endsWith("uploaded.bin"))
    expect(download["code"]).toBe("T3004I")
    const legacyEvent = await awaitEvent("scp", (e) => e["path"] === "legacy.bin")
    expect(legacyEvent).toMatchObject({ action: "upload", code: "T3005I" })
  })

  it("resizes the PTY on a window change, and uploads the recording of the session to auth", async () => {
    const t = runInTerminal(["ssh", ...sshArgs(n, alice), "-p", String(n.port), `${local.name}@127.0.0.1`], 80, 24)
    try {
      t.send("stty size; echo sid=$REMOTELER_SESSION_ID\r")
      await t.waitFor(/^24 80\r?$/m)
      await t.waitFor(/^sid=[0-9a-f-]{36}\r?$/m)
      t.resize(132, 43)
      // The window change travels beside the typed bytes: ask again until the shell sees it.
      const deadline = Date.now() + 15_000
      while (!/^43 132\r?$/m.test(t.output()) && Date.now() < deadline) {
        t.send("stty size\r")
        await t.waitFor(/^43 132\r?$/m, 1_000).catch(() => undefined)
      }
      t.send("echo typed-$((2+3))\r")
      await t.waitFor(/^43 132\r?$/m, 1)
      await t.waitFor(/typed-5/)
      t.send("exit\r")
      expect(await t.exited).toBe(0)
    } finally {
      t.kill()
    }
    const sid = /^sid=([0-9a-f-]{36})\r?$/m.exec(t.output())![1]
    const start = await awaitEvent("session.start", (e) => e["sid"] === sid)
    expect(start).toMatchObject({ interactive: true, size: "80:24", login: local.name, session_recording: "node" })
    const end = await awaitEvent("session.end", (e) => e["sid"] === start["sid"])
    // The node uploads the recording and deletes its copy once auth holds all of it.
    const cast = path.join(n.dataDir, "recordings", `${String(start["sid"])}.cast`)
    const deadline = Date.now() + 20_000
    while (fs.existsSync(cast) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250))
    expect(fs.existsSync(cast)).toBe(false)
    const got = (await adminRpc(c, "web.recording_get", { user: "audrey", session_id: start["sid"] })) as { data: string }
    const bytes = /^\{"version"/.test(got.data) ? Buffer.from(got.data, "utf8") : Buffer.from(got.data, "base64")
    const text = bytes.toString("utf8")
    const lines = text.trim().split("\n")
    expect(JSON.parse(lines[0]!)).toMatchObject({ version: 2, width: 80, height: 24 })
    const events = lines.slice(1).map((l) => JSON.parse(l) as [number, string, string])
    expect(events.some(([, k, d]) => k === "r" && d === "132x43")).toBe(true)
    expect(events.filter(([, k]) => k === "o").map(([, , d]) => d).join("")).toMatch(/typed-5/)
    // What was typed shows as the terminal's echo; keystrokes themselves are not kept (no-echo prompts hold passwords).
    expect(events.filter(([, k]) => k === "o").map(([, , d]) => d).join("")).toContain("echo typed-$((2+3))")
    expect(events.some(([, k]) => k === "i")).toBe(false)
    expect(createHash("sha256").update(bytes).digest("hex")).toBe(end["session_recording_sha256"])
  })

  it("closes the connection of a client that floods window changes, audits it, and keeps serving", async () => {
    const t = runInTerminal(["ssh", ...sshArgs(n, alice), "-p", String(n.port), `${local.name}@127.0.0.1`], 80, 24)
    try {
      t.send("echo ready-$((1+1))\r")
      await t.waitFor(/ready-2/)
      t.storm(3000)
      expect(await t.exited).toBe(255)
    } finally {
      t.kill()
    }
    const e = await awaitEvent("client.disconnect", (x) => /window-change storm/.test(String(x["reason"])))
    expect(e["code"]).toBe("T3006I")
    expect(e["user"]).toBe("alice")
    await nodeStillServes()
  })

  const refused = async (r: { code: number | null; stderr: string }, reason: RegExp) => {
    expect(r.code).toBe(255)
    expect(r.stderr).toMatch(/Permission denied/)
    await awaitEvent("auth", (e) => reason.test(String(e["error"])))
  }

  it("refuses a login the certificate does not carry, one a deny rule names, one the host lacks, and a node outside the role's labels", async () => {
    await refused(await ssh(n, alice, "daemon", "true"), /principal "daemon" is not in the certificate/)
    await refused(await ssh(n, alice, "nobody", "true"), /denied by role node-dev \(deny\.logins\)/)
    await refused(await ssh(n, alice, "ghost-login", "true"), /login "ghost-login" does not exist on node node-a/)
    const bob = await signUserDirect(c, "bob", path.join(dir, "bob"))
    await refused(await ssh(n, bob, "root", "true"), /access to node node-a as login root/)
    const e = await awaitEvent("auth", (x) => /ghost-login/.test(String(x["error"])))
    expect(e["code"]).toBe("T3007W")
    expect(e["user"]).toBe("alice")
    await nodeStillServes()
  })

  it("refuses an expired certificate and one from another CA", async () => {
    const expired = await signUserDirect(c, "alice", path.join(dir, "alice-short"), 1)
    await new Promise((r) => setTimeout(r, 2_000))
    await refused(await ssh(n, expired, local.name, "true"), /certificate has expired/)

    const ca = path.join(dir, "other-ca")
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", ca])
    const key = path.join(dir, "mallory")
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key])
    execFileSync("ssh-keygen", ["-q", "-s", ca, "-I", "alice", "-n", `${local.name},root`, "-V", "+1h", `${key}.pub`])
    await refused(await ssh(n, { key, cert: `${key}-cert.pub` }, local.name, "true"), /untrusted CA/)

    // A plain key, with no certificate at all.
    const plain = await run("ssh", [...sshArgs(n, { key, cert: "/dev/null" }), "-p", String(n.port), `${local.name}@127.0.0.1`, "true"])
    expect(plain.code).toBe(255)
    await nodeStillServes()
  })

  it("closes a connection that sends garbage instead of an SSH banner, audits it, and keeps serving", async () => {
    const answer = await new Promise<string>((resolve) => {
      const s = net.connect(n.port, "127.0.0.1")
      let got = ""
      s.on("data", (d) => (got += d.toString("latin1")))
      s.on("connect", () => s.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
      s.on("close", () => resolve(got))
      s.on("error", () => resolve(got))
    })
    expect(answer).toMatch(/^SSH-2\.0-Remoteler/)
    await awaitEvent("auth", (e) => /not an SSH client/.test(String(e["error"])))
    await nodeStillServes()
  })
  it("serves the same session through the proxy: OpenSSH's ssh -J over the proxy's SSH port and the node's reverse tunnel", async () => {
    // The node shows in the inventory once the proxy has reported its tunnel.
    const deadline = Date.now() + 30_000
    for (;;) {
      const listed = (await adminRpc(c, "web.nodes", { user: "alice" })) as { nodes: Array<{ name: string; host_key?: string }> }
      const found = listed.nodes.find((x) => x.name === "node-a")
      if (found !== undefined) {
        expect(found.host_key).toBe(n.hostKey)
        break
      }
      if (Date.now() > deadline) throw new Error(`node-a never appeared in the inventory: ${JSON.stringify(listed)}`)
      await new Promise((r) => setTimeout(r, 300))
    }
    const config = path.join(dir, "jump_config")
    fs.writeFileSync(
      config,
      [
        "Host jump",
        "  HostName 127.0.0.1",
        `  Port ${proxySshPort}`,
        `  UserKnownHostsFile ${path.join(dir, "jump_known_hosts")}`,
        "  StrictHostKeyChecking accept-new",
        "Host *",
        `  IdentityFile ${alice.key}`,
        `  CertificateFile ${alice.cert}`,
        "  IdentitiesOnly yes",
        "  BatchMode yes",
        "Host node-a.main",
        `  UserKnownHostsFile ${path.join(dir, "node_known_hosts")}`,
        "  StrictHostKeyChecking yes",
        ""
      ].join("\n")
    )
    fs.writeFileSync(path.join(dir, "node_known_hosts"), `node-a.main ${n.hostKey}\n`)
    const r = await run("ssh", ["-F", config, "-J", "alice@jump", "-l", local.name, "node-a.main", "echo via-tunnel; exit 4"], { timeoutMs: 60_000 })
    expect(r.stdout).toBe("via-tunnel\n")
    expect(r.code).toBe(4)
    // The node saw the user's address as the proxy reported it, not the tunnel's.
    const exec = await awaitEvent("exec", (e) => e["command"] === "echo via-tunnel; exit 4")
    expect(exec["addr.remote"]).toBe("127.0.0.1")
  })

  it("follows a rotation of the user CA: the new key works at once, the old one stops when it is retired", async () => {
    const old = alice
    await adminRpc(c, "ca.rotate", { type: "user", phase: "init" })
    await adminRpc(c, "ca.rotate", { type: "user", phase: "update_clients" })
    const renewed = await signUserDirect(c, "alice", path.join(dir, "alice-rotated"))
    expect(fs.readFileSync(renewed.cert, "utf8")).not.toBe(fs.readFileSync(old.cert, "utf8"))
    // Signed by a CA key the node has not seen: it asks auth again and admits the user.
    expect((await ssh(n, renewed, local.name, "echo new-ca")).stdout.trim()).toBe("new-ca")
    expect((await ssh(n, old, local.name, "echo old-ca")).stdout.trim()).toBe("old-ca")
    await adminRpc(c, "ca.rotate", { type: "user", phase: "update_servers" })
    const deadline = Date.now() + 30_000
    let r = await ssh(n, old, local.name, "true")
    while (r.code === 0 && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 1_000))
      r = await ssh(n, old, local.name, "true")
    }
    await refused(r, /untrusted CA/)
    await adminRpc(c, "ca.rotate", { type: "user", phase: "standby" })
    alice = renewed
    await nodeStillServes()
  })

  it("keeps its identity and host key across a restart: no token needed, clients' pinned key still matches", async () => {
    const before = n.hostKey
    const hostId = /node agent (\S+)/.exec(n.service.output())?.[1]
    expect(hostId).toMatch(/^[0-9a-f-]{36}$/)
    n = await n.restart()
    expect(n.hostKey).toBe(before)
    expect(/node agent (\S+)/.exec(n.service.output())?.[1]).toBe(hostId)
    await nodeStillServes()
  })
})
