/**
 * SSH access end to end, as a user does it: a cluster, two real node agents (`remoteler start
 * --roles=node`, joined by token) behind the tunnel, a real `tsh login`, then `tsh ls`, `tsh ssh`
 * (exit codes, stdin, -L), `tsh scp`, OpenSSH's `ssh` with the `tsh config` block (ProxyCommand
 * `tsh proxy ssh`) and with `-J` through the proxy's SSH port, and the refusals: a login the
 * certificate lacks, a node the user's roles do not reach, an expired certificate, and garbage on
 * both proxy entrances, each closing only its own connection.
 */
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as tls from "node:tls"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Cluster } from "./fixtures/cluster.ts"
import { request, startCluster, stopCluster } from "./fixtures/cluster.ts"
import type { NodeAgentProcess } from "./fixtures/node.ts"
import { adminRpc, auditEvents, createLocalUser, signUserDirect, startNodeAgent } from "./fixtures/node.ts"
import { bin, freePort, run, startService } from "./fixtures/processes.ts"
import { PASSWORD, tshLogin } from "./fixtures/users.ts"

describe("SSH through the proxy to node agents", () => {
  let c: Cluster
  let dir: string
  let sshPort: number
  let nodeA: NodeAgentProcess
  let nodeB: NodeAgentProcess
  let account: ReturnType<typeof createLocalUser>
  let alice: Awaited<ReturnType<typeof tshLogin>>
  let bob: Awaited<ReturnType<typeof tshLogin>>
  const keysOf = (home: string) => path.join(home, "keys", "localhost")

  /** `tctl users add` and the invite, through auth's admin socket and the proxy's API (no process start). */
  const addUserDirect = async (name: string, roles: string) => {
    const r = (await adminRpc(c, "users.create", { name, roles: [roles], traits: { logins: [account.name] } })) as { invite: { url: string } }
    const token = /\/web\/invite\/([^\s/]+)/.exec(r.invite.url)![1]!
    const done = await request(c.port, "POST", `/v1/webapi/invite/${token}`, { body: { password: PASSWORD } })
    expect(done.status).toBe(200)
  }

  /** Audit events of `type` that pass `pick`, waiting for the node's upload (it is asynchronous). */
  const eventually = async (type: string, pick: (e: Record<string, unknown>) => boolean) => {
    const started = Date.now()
    for (;;) {
      const found = (await auditEvents(c, [type])).filter(pick)
      if (found.length > 0 || Date.now() - started > 30_000) return found
      await new Promise((r) => setTimeout(r, 500))
    }
  }

  /** Closes with whatever the server sent, or fails if the connection stays open. */
  const closed = (sock: net.Socket, send: () => void) =>
    new Promise<string>((resolve, reject) => {
      let got = ""
      const guard = setTimeout(() => reject(new Error(`still open; got ${JSON.stringify(got)}`)), 20_000)
      sock.on("data", (d: Buffer) => (got += d.toString()))
      sock.on("error", () => undefined)
      sock.on("close", () => {
        clearTimeout(guard)
        resolve(got)
      })
      send()
    })

  beforeAll(async () => {
    sshPort = await freePort()
    c = await startCluster("off", [`  ssh_listen_addr: 127.0.0.1:${sshPort}`])
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "e2e-ssh-"))
    // the test account's home is inside: it must be able to reach it
    fs.chmodSync(dir, 0o755)
    account = createLocalUser(dir)
    const role = path.join(dir, "dev-only.yaml")
    fs.writeFileSync(
      role,
      ["kind: role", "version: v7", "metadata:", "  name: dev-only", "spec:", "  allow:", "    logins: ['{{internal.logins}}']", "    node_labels: {env: dev}", ""].join("\n")
    )
    // Nodes one after the other (each tctl run is a process start; on a loaded machine parallel
    // ones time out), users beside them over auth's admin socket.
    const nodes = (async () => {
      nodeA = await startNodeAgent(c, { name: "node-a", labels: "env=dev,team=x", dir })
      nodeB = await startNodeAgent(c, { name: "node-b", labels: "env=prod", dir })
    })()
    const users = (async () => {
      expect((await c.tctl("create", role)).code).toBe(0)
      await Promise.all([addUserDirect("alice", "access"), addUserDirect("bob", "dev-only")])
      ;[alice, bob] = await Promise.all([tshLogin(c, "alice"), tshLogin(c, "bob")])
    })()
    await Promise.all([nodes, users])
    // The inventory learns of the nodes from the proxy's heartbeats.
    const keys = keysOf(alice.home)
    const cert = { cert: fs.readFileSync(path.join(keys, "alice.crt"), "utf8"), key: fs.readFileSync(path.join(keys, "alice.key"), "utf8") }
    const started = Date.now()
    while (Date.now() - started < 30_000) {
      const r = await request(c.port, "GET", "/v1/webapi/nodes", cert)
      if (r.body.includes("node-a") && r.body.includes("node-b")) break
      await new Promise((res) => setTimeout(res, 500))
    }
  }, 300_000)

  afterAll(async () => {
    await Promise.all([nodeA?.stop(), nodeB?.stop()])
    await stopCluster(c)
    account?.remove()
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  it("tsh ls lists the nodes with labels (text, json, label filter) and pins their host keys", async () => {
    const [text, json, dev] = await Promise.all([alice.tsh(["ls"]), alice.tsh(["ls", "--format=json"]), alice.tsh(["ls", "env=dev", "--format=json"])])
    expect(text.code).toBe(0)
    expect(text.stdout).toMatch(/^Node Name\s+Address\s+Labels\n/)
    expect(text.stdout).toMatch(/node-a\s+⟵ Tunnel\s+env=dev,team=x/)
    expect(text.stdout).toMatch(/node-b\s+⟵ Tunnel\s+env=prod/)
    const nodes = JSON.parse(json.stdout) as Array<{ name: string; labels: Record<string, string>; host_key: string; logins: Array<string> }>
    expect(nodes.map((n) => n.name)).toEqual(["node-a", "node-b"])
    expect(nodes[0]!.host_key).toBe(nodeA.hostKey.split(" ").slice(0, 2).join(" "))
    expect(nodes[0]!.logins).toEqual([account.name])
    expect((JSON.parse(dev.stdout) as Array<{ name: string }>).map((n) => n.name)).toEqual(["node-a"])
    const known = fs.readFileSync(path.join(keysOf(alice.home), "known_hosts"), "utf8")
    const key = (k: string) => k.split(" ").slice(0, 2).join(" ")
    expect(known).toBe(`node-a.main,node-a ${key(nodeA.hostKey)}\nnode-b.main,node-b ${key(nodeB.hostKey)}\n`)
  })

  it("tsh ssh returns the remote exit code, carries stdin, and allocates a PTY with -t", async () => {
    const login = account.name
    const [t, f, cat, who, pty] = await Promise.all([
      alice.tsh(["ssh", `${login}@node-a`, "true"]),
      alice.tsh(["ssh", "-l", login, "node-a", "false"]),
      alice.tsh(["ssh", `${login}@node-a.main`, "cat"], "through the tunnel\n"),
      alice.tsh(["ssh", `${login}@node-b`, "id", "-un", ";", "exit", "7"]),
      alice.tsh(["ssh", "-t", `${login}@node-a`, "tty"])
    ])
    expect(t.stderr).toBe("")
    expect(t.code).toBe(0)
    expect(f.code).toBe(1)
    expect(cat.stdout).toBe("through the tunnel\n")
    expect(cat.code).toBe(0)
    expect(who.stdout).toBe(`${login}\n`)
    expect(who.code).toBe(7)
    // -t: the command runs on a pseudo-terminal
    expect(pty.stdout).toMatch(/^\/dev\/pts\/\d+\r?\n$/)
    expect(pty.code).toBe(0)
  })

  it("tsh ssh -L forwards a local port to an address the node reaches", async () => {
    const echo = net.createServer((s) => s.pipe(s))
    await new Promise<void>((r) => echo.listen(0, "127.0.0.1", r))
    const target = (echo.address() as net.AddressInfo).port
    const local = await freePort()
    const fwd = startService(process.execPath, [bin("tsh"), "ssh", "-N", "-L", `127.0.0.1:${local}:127.0.0.1:${target}`, `${account.name}@node-a`], { TSH_HOME: alice.home })
    try {
      const started = Date.now()
      let answer = ""
      while (Date.now() - started < 60_000 && answer === "") {
        answer = await new Promise<string>((resolve) => {
          const s = net.connect(local, "127.0.0.1")
          s.on("connect", () => s.write("ping through -L"))
          s.on("data", (d: Buffer) => {
            resolve(d.toString())
            s.destroy()
          })
          s.on("error", () => setTimeout(() => resolve(""), 500))
        })
      }
      expect(answer).toBe("ping through -L")
      const port = await eventually("port", (e) => e["user"] === "alice" && e["code"] === "T3003I")
      expect(port.length).toBeGreaterThan(0)
    } finally {
      await fwd.stop()
      echo.close()
    }
  })

  it("tsh scp copies files both ways", async () => {
    const src = path.join(dir, "up.bin")
    fs.writeFileSync(src, Buffer.from(Array.from({ length: 2 * 1024 * 1024 + 5 }, (_, i) => (i * 31) % 251)))
    const remote = path.join(account.home, "up.bin")
    const up = await alice.tsh(["scp", src, `${account.name}@node-a:${remote}`])
    expect(up.stderr).toBe("")
    expect(up.code).toBe(0)
    expect(fs.readFileSync(remote).equals(fs.readFileSync(src))).toBe(true)
    const down = path.join(dir, "down.bin")
    const d = await alice.tsh(["scp", `${account.name}@node-a:up.bin`, down])
    expect(d.stderr).toBe("")
    expect(fs.readFileSync(down).equals(fs.readFileSync(src))).toBe(true)
  })

  it("OpenSSH's ssh works with the tsh config block, and with -J through the proxy's SSH port", async () => {
    const cfg = await alice.tsh(["config"])
    expect(cfg.code).toBe(0)
    expect(cfg.stdout).toMatch(/^Host \*\.main$/m)
    expect(cfg.stdout).toMatch(/ProxyCommand .* proxy ssh %r@%h:%p/)
    const file = path.join(dir, "ssh_config")
    const keys = keysOf(alice.home)
    fs.writeFileSync(
      file,
      [
        cfg.stdout,
        "Host jump",
        "  HostName 127.0.0.1",
        `  Port ${sshPort}`,
        `  UserKnownHostsFile ${path.join(dir, "jump_known_hosts")}`,
        "  StrictHostKeyChecking accept-new",
        `  IdentityFile ${path.join(keys, "alice.ssh")}`,
        `  CertificateFile ${path.join(keys, "alice-ssh", "main-cert.pub")}`,
        "  IdentitiesOnly yes",
        ""
      ].join("\n")
    )
    const env = { HOME: dir }
    const [viaConfig, viaJump] = await Promise.all([
      run("ssh", ["-F", file, "-o", "BatchMode=yes", "-l", account.name, "node-a.main", "uname"], { env, timeoutMs: 90_000 }),
      run("ssh", ["-F", file, "-o", "BatchMode=yes", "-J", "alice@jump", "-l", account.name, "node-b.main", "echo", "jumped"], { env, timeoutMs: 90_000 })
    ])
    expect(viaConfig.stderr).not.toMatch(/WARNING|verification failed/)
    expect(viaConfig.stdout).toBe("Linux\n")
    expect(viaConfig.code).toBe(0)
    expect(viaJump.stdout).toBe("jumped\n")
    expect(viaJump.code).toBe(0)
  })

  it("refuses a login the certificate lacks and a node the roles do not reach", async () => {
    const [login, label, bobLs] = await Promise.all([
      alice.tsh(["ssh", "daemon@node-a", "true"]),
      bob.tsh(["ssh", `${account.name}@node-b`, "true"]),
      bob.tsh(["ls", "--format=json"])
    ])
    expect(login.code).toBe(255)
    expect(login.stderr).toMatch(/access denied to daemon on node node-a \(your roles allow these logins there: rmt/)
    expect(label.code).toBe(255)
    expect(label.stderr).toMatch(/no node named node-b that bob may reach/)
    expect((JSON.parse(bobLs.stdout) as Array<{ name: string }>).map((n) => n.name)).toEqual(["node-a"])
    const refused = await eventually("auth", (e) => e["user"] === "alice" && /daemon/.test(String(e["error"])))
    expect(refused.length).toBeGreaterThan(0)
    expect(refused[0]!["code"]).toBe("T3007W")
  })

  it("refuses an expired certificate at the node (tsh) and at the proxy's SSH port (ssh -J), audited", async () => {
    // alice's profile with an SSH certificate that expires in a second
    const home = path.join(dir, "tsh-expired")
    fs.cpSync(alice.home, home, { recursive: true })
    const keys = keysOf(home)
    const short = await signUserDirect(c, "alice", path.join(dir, "short"), 1)
    fs.copyFileSync(short.key, path.join(keys, "alice.ssh"))
    fs.copyFileSync(short.cert, path.join(keys, "alice-ssh", "main-cert.pub"))
    await new Promise((r) => setTimeout(r, 2_500))
    const [viaTsh, viaJump] = await Promise.all([
      run(process.execPath, [bin("tsh"), "ssh", `${account.name}@node-a`, "true"], { env: { TSH_HOME: home }, timeoutMs: 90_000 }),
      run(
        "ssh",
        ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-i", short.key,
          "-o", `CertificateFile=${short.cert}`, "-p", String(sshPort), "alice@127.0.0.1", "-W", "node-a:3022"],
        { timeoutMs: 60_000 }
      )
    ])
    expect(viaTsh.code).toBe(255)
    expect(viaTsh.stderr).toMatch(/access denied/)
    expect(viaJump.code).toBe(255)
    expect(viaJump.stderr).toMatch(/Permission denied/)
    expect((await eventually("auth", (e) => /ssh proxy: certificate refused: certificate has expired/.test(String(e["error"])))).length).toBeGreaterThan(0)
    expect((await eventually("auth", (e) => e["user"] === "alice" && /expired/.test(String(e["error"])) && !/ssh proxy/.test(String(e["error"])))).length).toBeGreaterThan(0)
  })

  it("garbage on the ALPN and on the SSH port closes only that connection", async () => {
    const g = net.connect(sshPort, "127.0.0.1")
    expect(await closed(g, () => g.on("connect", () => g.write("GET / HTTP/1.1\r\n\r\n" + "x".repeat(100_000))))).toMatch(/^SSH-2.0-/)
    const keys = keysOf(alice.home)
    const t = tls.connect({
      host: "127.0.0.1",
      port: c.port,
      ALPNProtocols: ["remoteler-ssh"],
      rejectUnauthorized: false,
      cert: fs.readFileSync(path.join(keys, "alice.crt")),
      key: fs.readFileSync(path.join(keys, "alice.key"))
    })
    expect(await closed(t, () => t.on("secureConnect", () => t.write("\x00\x01garbage\n")))).toMatch(/^ERR the routing line is not HOST:PORT/)
    const n = tls.connect({ host: "127.0.0.1", port: c.port, ALPNProtocols: ["remoteler-ssh"], rejectUnauthorized: false })
    expect(await closed(n, () => n.on("secureConnect", () => n.write("node-a:0\n")))).toMatch(/^ERR a client certificate is required/)
    const after = await alice.tsh(["ssh", `${account.name}@node-a`, "echo", "still serving"])
    expect(after.stdout).toBe("still serving\n")
  })
})
