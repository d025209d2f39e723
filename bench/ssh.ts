/**
 * `npm run bench:ssh`: SSH through Remoteler against the same machine's stock OpenSSH sshd reached
 * directly, from one run. The last stdout line is one JSON object with every figure; progress goes
 * to stderr.
 *
 * Two paths, the same local account (a throwaway user), the same certificate-bearing user:
 *
 *   direct     OpenSSH `ssh`/`scp` → sshd (TrustedUserCAKeys from `tctl auth export --type=user`),
 *              with the user's certificate from `tsh login`.
 *   remoteler  `tsh ssh` / `tsh scp` → proxy (web port, ALPN remoteler-ssh, TLS) → reverse tunnel
 *              (HTTP/2) → node agent (ssh2 server, audit and recording on) → the command.
 *
 * Figures:
 *   stream   N bytes of zeros piped into `... 'cat > /dev/null'` (wall time of the client process,
 *            session set-up included; at 1 GiB that is noise), MB/s = bytes / 1e6 / s. A third
 *            path, OpenSSH's `ssh` with the `tsh config` block (ProxyCommand `tsh proxy ssh`),
 *            tells the cost of tsh's ssh2 client apart from the proxy, tunnel and node agent.
 *   scp      an N-byte file (in /dev/shm, so the disk is not measured) copied to the node's
 *            /dev/null with `scp` (SFTP, OpenSSH ≥ 9) and `tsh scp` (SFTP).
 *   setup    M sequential `ssh host true` / `tsh ssh node true`, each a new process: p50 and p99
 *            (nearest rank) of the wall time. tsh's figure includes starting Node and tsx.
 * Ratios are remoteler / direct for throughput (aim: ≥ 0.9) and direct / remoteler for set-up.
 *
 *   --mb=N        stream and scp volume in MiB (default 1024)
 *   --sessions=N  set-up samples per path (default 100)
 *   --runs=N      throughput runs per path, alternating; the best counts (default 1)
 */
import "reflect-metadata"
import { execFileSync, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import type { Cluster } from "../test/fixtures/cluster.ts"
import { startCluster, stopCluster } from "../test/fixtures/cluster.ts"
import type { NodeAgentProcess } from "../test/fixtures/node.ts"
import { createLocalUser, startNodeAgent } from "../test/fixtures/node.ts"
import { bin, freePort } from "../test/fixtures/processes.ts"
import type { Sshd } from "../test/fixtures/sshd.ts"
import { startSshd } from "../test/fixtures/sshd.ts"
import { addUser, tshLogin } from "../test/fixtures/users.ts"

const arg = (name: string, dflt: number) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`))
  const v = a === undefined ? dflt : Number(a.slice(name.length + 3))
  if (!Number.isFinite(v) || v <= 0) throw new Error(`--${name} must be a positive number`)
  return v
}
const MIB = arg("mb", 1024)
const SESSIONS = arg("sessions", 100)
const RUNS = arg("runs", 1)
const BYTES = MIB * 1024 * 1024

const log = (s: string) => process.stderr.write(`${s}\n`)

/** Runs a shell pipeline; resolves with its wall time in ms, or fails with its output. */
const timed = (script: string, env: NodeJS.ProcessEnv = {}): Promise<number> =>
  new Promise((resolve, reject) => {
    const started = process.hrtime.bigint()
    const child = spawn("sh", ["-c", script], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    child.stdout.on("data", (d: Buffer) => (out += d.toString()))
    child.stderr.on("data", (d: Buffer) => (out += d.toString()))
    child.on("close", (code) => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6
      if (code === 0) resolve(ms)
      else reject(new Error(`${script} exited ${code}: ${out.slice(0, 2000)}`))
    })
  })

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`
const percentile = (xs: ReadonlyArray<number>, p: number) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!
}
const mbps = (ms: number) => BYTES / 1e6 / (ms / 1000)
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d

const main = async () => {
  let c: Cluster | undefined
  let sshd: Sshd | undefined
  let nodeA: NodeAgentProcess | undefined
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-ssh-"))
  fs.chmodSync(dir, 0o755)
  const account = createLocalUser(dir)
  // useradd leaves the password field "!", which sshd (UsePAM no) reads as a locked account.
  execFileSync("usermod", ["-p", "*", account.name])
  const payload = path.join("/dev/shm", `bench-ssh-${process.pid}.bin`)
  try {
    log("starting the cluster, a node agent and a stock sshd")
    c = await startCluster("off", [`  ssh_listen_addr: 127.0.0.1:${await freePort()}`])
    sshd = await startSshd({ trustedUserCaKeys: (await c.tctl("auth", "export", "--type=user")).stdout })
    nodeA = await startNodeAgent(c, { name: "node-a", dir })
    await addUser(c, "alice", "access", account.name)
    const alice = await tshLogin(c, "alice")
    const keys = path.join(alice.home, "keys", "localhost")
    const tshEnv = { TSH_HOME: alice.home }
    const tsh = `${q(process.execPath)} ${q(bin("tsh"))}`
    const sshOpts = [
      "-o BatchMode=yes",
      "-o StrictHostKeyChecking=no",
      `-o UserKnownHostsFile=${q(path.join(dir, "known_hosts"))}`,
      "-o IdentitiesOnly=yes",
      `-i ${q(path.join(keys, "alice.ssh"))}`,
      `-o CertificateFile=${q(path.join(keys, "alice-ssh", "main-cert.pub"))}`
    ].join(" ")
    const direct = `ssh ${sshOpts} -p ${sshd.port} ${account.name}@127.0.0.1`
    const viaTsh = `${tsh} ssh ${account.name}@node-a`
    // Wait for the inventory to list the node, and check both paths work before timing them.
    const started = Date.now()
    for (;;) {
      try {
        await timed(`${viaTsh} true`, tshEnv)
        break
      } catch (e) {
        if (Date.now() - started > 60_000) throw e
        await new Promise((r) => setTimeout(r, 1000))
      }
    }
    await timed(`${direct} true`)

    const cfg = path.join(dir, "ssh_config")
    fs.writeFileSync(cfg, (await alice.tsh(["config"])).stdout)
    const viaOpenSsh = `ssh -F ${q(cfg)} -o BatchMode=yes -l ${account.name} node-a.main`
    await timed(`${viaOpenSsh} true`, { HOME: dir })
    const best = {
      stream: { direct: Infinity, remoteler: Infinity, openssh_via_proxy: Infinity },
      scp: { direct: Infinity, remoteler: Infinity }
    }
    fs.writeFileSync(payload, Buffer.alloc(0))
    {
      const fd = fs.openSync(payload, "w")
      const chunk = Buffer.alloc(16 * 1024 * 1024, 0x5a)
      for (let n = 0; n < BYTES; n += chunk.length) fs.writeSync(fd, chunk, 0, Math.min(chunk.length, BYTES - n))
      fs.closeSync(fd)
    }
    for (let run = 1; run <= RUNS; run++) {
      log(`stream run ${run}/${RUNS}: ${MIB} MiB through 'cat > /dev/null'`)
      const d = await timed(`head -c ${BYTES} /dev/zero | ${direct} 'cat > /dev/null'`)
      const r = await timed(`head -c ${BYTES} /dev/zero | ${viaTsh} 'cat > /dev/null'`, tshEnv)
      const o = await timed(`head -c ${BYTES} /dev/zero | ${viaOpenSsh} 'cat > /dev/null'`, { HOME: dir })
      log(`  direct ${round(mbps(d))} MB/s, remoteler ${round(mbps(r))} MB/s, openssh through the proxy ${round(mbps(o))} MB/s`)
      best.stream.direct = Math.min(best.stream.direct, d)
      best.stream.remoteler = Math.min(best.stream.remoteler, r)
      best.stream.openssh_via_proxy = Math.min(best.stream.openssh_via_proxy, o)
      log(`scp run ${run}/${RUNS}: a ${MIB} MiB file to /dev/null`)
      const sd = await timed(`scp -q ${sshOpts} -P ${sshd.port} ${q(payload)} ${account.name}@127.0.0.1:/dev/null`)
      const sr = await timed(`${tsh} scp ${q(payload)} ${account.name}@node-a:/dev/null`, tshEnv)
      log(`  direct ${round(mbps(sd))} MB/s, remoteler ${round(mbps(sr))} MB/s`)
      best.scp.direct = Math.min(best.scp.direct, sd)
      best.scp.remoteler = Math.min(best.scp.remoteler, sr)
    }

    log(`session set-up: ${SESSIONS} sequential sessions per path`)
    const setup = { direct: [] as Array<number>, remoteler: [] as Array<number> }
    for (let i = 0; i < SESSIONS; i++) {
      setup.direct.push(await timed(`${direct} true`))
      setup.remoteler.push(await timed(`${viaTsh} true`, tshEnv))
      if ((i + 1) % 10 === 0) log(`  ${i + 1}/${SESSIONS}`)
    }
    const result = {
      bench: "ssh",
      mib: MIB,
      runs: RUNS,
      load_average_1m: round(os.loadavg()[0]!, 2),
      stream_mb_s: {
        direct: round(mbps(best.stream.direct)),
        remoteler: round(mbps(best.stream.remoteler)),
        openssh_via_proxy: round(mbps(best.stream.openssh_via_proxy))
      },
      stream_ratio: round(best.stream.direct / best.stream.remoteler, 3),
      scp_mb_s: { direct: round(mbps(best.scp.direct)), remoteler: round(mbps(best.scp.remoteler)) },
      scp_ratio: round(best.scp.direct / best.scp.remoteler, 3),
      setup_ms: {
        sessions: SESSIONS,
        direct: { p50: round(percentile(setup.direct, 50)), p99: round(percentile(setup.direct, 99)) },
        remoteler: { p50: round(percentile(setup.remoteler, 50)), p99: round(percentile(setup.remoteler, 99)) }
      }
    }
    process.stdout.write(`${JSON.stringify(result)}\n`)
  } finally {
    fs.rmSync(payload, { force: true })
    await nodeA?.stop()
    await sshd?.stop()
    await stopCluster(c)
    account.remove()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench:ssh failed: ${e instanceof Error ? e.message : String(e)}\n`)
  process.exitCode = 1
})
