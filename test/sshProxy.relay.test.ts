/**
 * The proxy's SSH fronts and tsh's SSH client against OpenSSH's own sshd, which checks the user
 * certificate exactly as OpenSSH does (TrustedUserCAKeys from `tctl auth export --type=user`).
 *
 * Between the proxy and sshd sits a named test double of the node agent: a real tunnel agent
 * (joined with a node token, AgentIdentity + TunnelAgent) that advertises a node whose host key is
 * sshd's and relays each dialed stream to sshd's port, byte for byte. The real node agent (an ssh2
 * server) is tested in e2e.ssh.test.ts; this suite pins interoperability with OpenSSH's server:
 * tsh's certificate authentication (the ssh2 patch in adapters/SshClient.ts), host key pinning,
 * SFTP, and the 3023 front refusing a certificate from another CA.
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Fiber } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as AgentIdentity from "../src/adapters/AgentIdentity.ts"
import * as TunnelAgent from "../src/actors/TunnelAgent.ts"
import { NodeResource, Resources } from "../src/protocols/tunnel/wire.ts"
import type { Cluster } from "./fixtures/cluster.ts"
import { startCluster, stopCluster } from "./fixtures/cluster.ts"
import { bin, freePort, node, run } from "./fixtures/processes.ts"
import type { Sshd } from "./fixtures/sshd.ts"
import { PASSWORD, addUser } from "./fixtures/users.ts"
import { startSshd } from "./fixtures/sshd.ts"

/** Test double of a node agent: a tunnel agent that relays dialed SSH streams to a stock sshd. */
const startRelayNode = async (c: Cluster, name: string, labels: Record<string, string>, sshdPort: number, hostKeyLine: string, dataDir: string) => {
  const t = await c.tctl("tokens", "add", "--type=node")
  const token = /--token=([0-9a-f]{32})/.exec(t.stdout)![1]!
  const caPin = /--ca-pin=(sha256:[0-9a-f]{64})/.exec(t.stdout)![1]!
  fs.mkdirSync(dataDir, { recursive: true })
  const identity = await Effect.runPromise(
    AgentIdentity.loadOrJoin({ dataDir, proxy: `localhost:${c.port}`, role: "node", nodeName: name, token, caPin })
  )
  const fiber = Effect.runFork(
    Effect.scoped(
      Effect.gen(function* () {
        yield* TunnelAgent.make({
          host: "localhost",
          port: c.port,
          cert: identity.certPem,
          key: identity.keyPem,
          ca: identity.caPems,
          resources: new Resources({ databases: [], node: new NodeResource({ name, labels, host_key: hostKeyLine }) }),
          onDial: ({ stream }) =>
            Effect.async<void>((resume) => {
              const s = net.connect(sshdPort, "127.0.0.1")
              stream.pipe(s).pipe(stream)
              const done = () => {
                stream.destroy()
                s.destroy()
                resume(Effect.void)
              }
              s.on("close", done)
              s.on("error", done)
              stream.on("close", done)
            })
        })
        return yield* Effect.never
      })
    )
  )
  return { stop: () => Effect.runPromise(Fiber.interrupt(fiber)) }
}

describe("SSH through the proxy to OpenSSH's sshd", () => {
  let c: Cluster
  let sshd: Sshd
  let relay: { stop: () => Promise<unknown> } | undefined
  let home: string
  let sshPort: number
  const me = os.userInfo().username
  const tsh = (args: ReadonlyArray<string>, input?: string) =>
    node(bin("tsh"), args, { env: { TSH_HOME: path.join(home, "tsh"), HOME: home }, ...(input === undefined ? {} : { input }), timeoutMs: 60_000 })

  beforeAll(async () => {
    sshPort = await freePort()
    c = await startCluster("off", [`  ssh_listen_addr: 127.0.0.1:${sshPort}`])
    home = fs.mkdtempSync(path.join(os.tmpdir(), "ssh-home-"))
    const userCa = (await c.tctl("auth", "export", "--type=user")).stdout
    expect(userCa).toMatch(/ssh-ed25519/)
    sshd = await startSshd({ trustedUserCaKeys: userCa })
    const hostKey = fs.readFileSync(path.join(sshd.dir, "host_key.pub"), "utf8").trim()
    relay = await startRelayNode(c, "relay-a", { env: "dev" }, sshd.port, hostKey, path.join(home, "node"))
    await addUser(c, "alice", "access", `${me},nobody`)
    const login = await tsh(["login", `--proxy=localhost:${c.port}`, "--user=alice", "--insecure"], `${PASSWORD}\n`)
    expect(login.stderr).not.toMatch(/ERROR/)
    expect(login.code).toBe(0)
    const started = Date.now()
    while (Date.now() - started < 15_000) {
      if ((await tsh(["ls"])).stdout.includes("relay-a")) break
    }
  }, 120_000)
  afterAll(async () => {
    await relay?.stop()
    await sshd?.stop()
    await stopCluster(c)
    if (home !== undefined) fs.rmSync(home, { recursive: true, force: true })
  })

  it("lists the node with its labels and pins its host key in tsh's known_hosts", async () => {
    const ls = await tsh(["ls"])
    expect(ls.code).toBe(0)
    expect(ls.stdout).toMatch(/Node Name\s+Address\s+Labels/)
    expect(ls.stdout).toMatch(/relay-a\s+⟵ Tunnel\s+env=dev/)
    const json = JSON.parse((await tsh(["ls", "--format=json", "env=dev"])).stdout) as Array<{ name: string }>
    expect(json.map((n) => n.name)).toEqual(["relay-a"])
    expect(JSON.parse((await tsh(["ls", "--format=json", "env=prod"])).stdout)).toEqual([])
    const known = fs.readFileSync(path.join(home, "tsh", "keys", "localhost", "known_hosts"), "utf8")
    expect(known).toBe(`relay-a.main,relay-a ${fs.readFileSync(path.join(sshd.dir, "host_key.pub"), "utf8").trim().split(" ").slice(0, 2).join(" ")}\n`)
  })

  it("runs commands on sshd with the user certificate and returns their exit codes", async () => {
    const ok = await tsh(["ssh", `${me}@relay-a`, "echo", "hello", "$((6*7))"])
    expect(ok.stderr).toBe("")
    expect(ok.stdout).toBe("hello 42\n")
    expect(ok.code).toBe(0)
    expect((await tsh(["ssh", "-l", me, "relay-a", "exit 3"])).code).toBe(3)
    const cat = await tsh(["ssh", `${me}@relay-a.main`, "cat"], "piped through\n")
    expect(cat.stdout).toBe("piped through\n")
  })

  it("refuses a login the certificate does not carry, with a message and exit code 255", async () => {
    const r = await tsh(["ssh", "daemon@relay-a", "true"])
    expect(r.code).toBe(255)
    expect(r.stderr).toMatch(/access denied to daemon on node relay-a/)
  })

  it("copies files both ways with tsh scp (SFTP)", async () => {
    const src = path.join(home, "up.bin")
    fs.writeFileSync(src, Buffer.alloc(3 * 1024 * 1024 + 17, 7))
    const remote = path.join(sshd.dir, "up-remote.bin")
    const up = await tsh(["scp", src, `${me}@relay-a:${remote}`])
    expect(up.stderr).toBe("")
    expect(up.code).toBe(0)
    expect(fs.readFileSync(remote).equals(fs.readFileSync(src))).toBe(true)
    const down = path.join(home, "down.bin")
    expect((await tsh(["scp", `${me}@relay-a:${remote}`, down])).code).toBe(0)
    expect(fs.readFileSync(down).equals(fs.readFileSync(src))).toBe(true)
  })

  it("refuses a certificate from another CA at port 3023 and audits it", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "rogue-"))
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path.join(dir, "ca")])
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path.join(dir, "user")])
    execFileSync("ssh-keygen", ["-q", "-s", path.join(dir, "ca"), "-I", "mallory", "-n", me, path.join(dir, "user.pub")])
    const r = await run(
      "ssh",
      ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-i", path.join(dir, "user"),
        "-o", `CertificateFile=${path.join(dir, "user-cert.pub")}`, "-p", String(sshPort), "mallory@127.0.0.1", "-W", "relay-a:22"],
      { timeoutMs: 30_000 }
    )
    expect(r.code).toBe(255)
    expect(r.stderr).toMatch(/Permission denied/)
    const events = (await c.tctl("audit", "search", "--type=auth", "--format=json")).stdout
    expect(events).toMatch(/mallory/)
    expect(events).toMatch(/untrusted CA/)
    fs.rmSync(dir, { recursive: true, force: true })
  })
})
