/**
 * `npm run bench:redis`: Redis through Remoteler against the same Redis reached directly, with the
 * real `redis-benchmark`. The last stdout line is one JSON object with every figure; progress goes
 * to stderr.
 *
 * One Redis 7 (TLS only, `tls-auth-clients yes`, ACL user `alice` with `nopass`, exactly as
 * test/e2e.redis.test.ts sets it up) serves two paths, both over TLS:
 *
 *   direct     redis-benchmark → Redis, with the db-CA certificate from `tctl auth sign
 *              --format=db` as its client certificate, and `--user alice`.
 *   remoteler  redis-benchmark → proxy (web port, TLS, routed by the certificate) → reverse tunnel
 *              → db agent → Redis, every command audited, with the files of `tsh db login cache1`.
 *
 * Each path runs `redis-benchmark -t get,set -P 1` and `-P 16` (`-c` clients, `-n` requests each
 * run, `-d 16` byte values); throughput (requests/s) and p99 latency (ms) are redis-benchmark's
 * own CSV figures. Ratios are remoteler/direct: for throughput the share of direct kept (the aim
 * is at least 0.8 pipelined), for p99 how many times longer the slowest 1% take.
 *
 *   --clients=N      redis-benchmark -c (default 16)
 *   --requests=N     redis-benchmark -n for -P 1 (default 50000); -P 16 runs 8 times as many
 *   --agent-tmpfs    the db agent's data dir (its fsynced audit buffer) on /dev/shm (diagnostic)
 *   --cpu-prof=DIR   the db agent runs with `node --cpu-prof`, its profile written to DIR when it stops
 */
import "reflect-metadata"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import type { Cluster } from "../test/fixtures/cluster.ts"
import { startCluster, stopCluster } from "../test/fixtures/cluster.ts"
import type { Service } from "../test/fixtures/processes.ts"
import { bin, node, startService } from "../test/fixtures/processes.ts"
import type { RedisServer } from "../test/fixtures/redis.ts"
import { startRedis } from "../test/fixtures/redis.ts"

const flag = (name: string, dflt: number): number => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`))
  return a === undefined ? dflt : Number(a.slice(name.length + 3))
}
const clients = flag("clients", 16)
const requests = flag("requests", 50_000)
const agentTmpfs = process.argv.includes("--agent-tmpfs")
const cpuProf = process.argv.find((x) => x.startsWith("--cpu-prof="))?.slice("--cpu-prof=".length)
const log = (s: string) => process.stderr.write(`${s}\n`)

interface Figures {
  readonly rps: number
  readonly p99_ms: number
  readonly avg_ms: number
}

/** Runs redis-benchmark and reads its CSV: `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`. */
const benchmark = (args: ReadonlyArray<string>, pipeline: number): Promise<Record<string, Figures>> =>
  new Promise((resolve, reject) => {
    const all = [...args, "-t", "get,set", "-P", String(pipeline), "-c", String(clients), "-n", String(pipeline === 1 ? requests : requests * 8), "-d", "16", "--csv"]
    const child = spawn("redis-benchmark", all, { stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    child.stdout.on("data", (d: Buffer) => (out += d.toString()))
    child.stderr.on("data", (d: Buffer) => (err += d.toString()))
    child.on("error", reject)
    child.on("close", (code) => {
      if (code !== 0) return reject(new Error(`redis-benchmark exited ${code}: ${err}${out}`))
      const rows: Record<string, Figures> = {}
      for (const line of out.split("\n")) {
        const cells = line.split(",").map((c) => c.replace(/"/g, ""))
        if (cells.length < 8 || cells[0] === "test") continue
        rows[cells[0]!.toLowerCase()] = { rps: Number(cells[1]), avg_ms: Number(cells[2]), p99_ms: Number(cells[6]) }
      }
      if (rows["get"] === undefined || rows["set"] === undefined) return reject(new Error(`no GET/SET figures in redis-benchmark output: ${out}${err}`))
      resolve(rows)
    })
  })

const main = async () => {
  let c: Cluster | undefined
  let redis: RedisServer | undefined
  let agent: Service | undefined
  const loadStart = os.loadavg()
  try {
    log("starting the cluster, Redis and a db agent...")
    c = await startCluster("off")
    const home = fs.mkdtempSync(path.join(os.tmpdir(), "bench-home-"))
    redis = await startRedis(c.tctl, path.join(c.dir, "redis"))
    const check = async (r: Promise<{ code: number | null; stderr: string; stdout: string }>, what: string) => {
      const x = await r
      if (x.code !== 0) throw new Error(`${what} failed: ${x.stderr}${x.stdout}`)
      return x
    }
    await check(c.tctl("users", "add", "alice", "--roles=access", "--logins=alice", "--db-users=alice"), "tctl users add")
    await check(node(bin("tctl"), ["--data-dir", `${c.dir}/data`, "users", "set-password", "alice"], { input: "correct horse battery\n" }), "set-password")
    const t = await check(c.tctl("tokens", "add", "--type=db"), "tctl tokens add")
    const token = /--token=([0-9a-f]{32})/.exec(t.stdout)![1]!
    const pin = /--ca-pin=(sha256:[0-9a-f]{64})/.exec(t.stdout)![1]!
    const agentDir = agentTmpfs ? fs.mkdtempSync("/dev/shm/bench-agent-") : path.join(c.dir, "agent")
    agent = startService(process.execPath, [
      ...(cpuProf === undefined ? [] : ["--cpu-prof", "--cpu-prof-dir", cpuProf]),
      bin("remoteler"), "start", "--roles=db", `--proxy=localhost:${c.port}`, "--data-dir", agentDir, `--token=${token}`, `--ca-pin=${pin}`,
      `--db=name=cache1,protocol=redis,uri=localhost:${redis.port}`
    ])
    await agent.waitFor(/db agent .* serving cache1/, 60_000)
    const env = { TSH_HOME: path.join(c.dir, "tsh"), HOME: home }
    await check(node(bin("tsh"), ["login", `--proxy=localhost:${c.port}`, "--user=alice", "--insecure"], { env, input: "correct horse battery\n" }), "tsh login")
    const deadline = Date.now() + 20_000
    for (;;) {
      const l = await node(bin("tsh"), ["db", "login", "cache1", "--db-user=alice"], { env })
      if (l.code === 0) break
      if (Date.now() > deadline) throw new Error(`tsh db login failed: ${l.stderr}`)
      await new Promise((r) => setTimeout(r, 500))
    }
    const cmd = (await check(node(bin("tsh"), ["db", "config", "--format=cmd", "cache1"], { env }), "tsh db config")).stdout.trim()
    const viaRemoteler = cmd.split(" ").slice(1)
    const direct = ["--tls", "--cert", redis.files.cert, "--key", redis.files.key, "--cacert", redis.files.ca, "-h", "127.0.0.1", "-p", String(redis.port), "--user", "alice", "-a", "x"]

    const results: Record<string, Record<string, Record<string, Figures>>> = { direct: {}, remoteler: {} }
    for (const pipeline of [1, 16]) {
      for (const [name, args] of [["direct", direct], ["remoteler", viaRemoteler]] as const) {
        log(`redis-benchmark ${name} -P ${pipeline}...`)
        results[name]![`P${pipeline}`] = await benchmark(args, pipeline)
      }
    }
    const ratios: Record<string, number> = {}
    const round = (x: number) => Math.round(x * 1000) / 1000
    for (const p of ["P1", "P16"]) {
      for (const op of ["get", "set"]) {
        const d = results["direct"]![p]![op]!
        const r = results["remoteler"]![p]![op]!
        ratios[`${op}_${p}_throughput`] = round(r.rps / d.rps)
        ratios[`${op}_${p}_p99`] = round(r.p99_ms / d.p99_ms)
        console.log(
          `${op.toUpperCase()} -${p.replace("P", "P ")}: direct ${d.rps.toFixed(0)} req/s p99 ${d.p99_ms} ms | remoteler ${r.rps.toFixed(0)} req/s p99 ${r.p99_ms} ms | throughput ratio ${ratios[`${op}_${p}_throughput`]}, p99 ratio ${ratios[`${op}_${p}_p99`]}`
        )
      }
    }
    const loadEnd = os.loadavg()
    console.log(`load average: ${loadStart.map((l) => l.toFixed(2)).join(" ")} at start, ${loadEnd.map((l) => l.toFixed(2)).join(" ")} at end, ${os.cpus().length} CPUs`)
    console.log(JSON.stringify({ bench: "redis", clients, requests, agent_tmpfs: agentTmpfs, results, ratios, load: { start: loadStart, end: loadEnd, cpus: os.cpus().length } }))
  } finally {
    await agent?.stop()
    await redis?.stop()
    await stopCluster(c)
  }
}

main().catch((e: unknown) => {
  log(`bench:redis failed: ${e instanceof Error ? e.message : String(e)}`)
  process.exitCode = 1
})
