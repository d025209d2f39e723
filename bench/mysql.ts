/**
 * `npm run bench:mysql`: point selects on MariaDB 10.11, directly over TLS and through Remoteler,
 * from one run. Progress goes to stderr; the last stdout line is one JSON object with every figure.
 *
 * One MariaDB (TLS with the cluster's db CA, set up as test/e2e.mysql.test.ts does) serves both
 * paths, each over TLS:
 *
 *   direct     mysql2 → MariaDB, TLS verified against the db CA, as user `bench_direct` (password:
 *              the load is what is measured, not the login)
 *   remoteler  mysql2 → proxy MySQL listener (TLS with the `tsh db login` certificate) → reverse
 *              tunnel → db agent → MariaDB (TLS, db-CA client certificate, user `alice`
 *              REQUIRE X509), audit on: every execution is an audit event with its parameter
 *
 * Load: `--clients` connections (default 8), each a loop of server-side prepared point selects
 * `SELECT c FROM sbtest WHERE id = ?` over `--rows` rows (default 10000), for `--seconds` (default
 * 15) after a 2 s warm-up, both paths alternately (`--runs` each, default 2; the best run counts).
 * QPS = completed queries / seconds; p50/p99 are nearest-rank percentiles of every query's time.
 *
 *   --text          COM_QUERY (`query`) instead of prepared statements (`execute`)
 *   --agent-tmpfs   the db agent's data dir (its audit buffer) on /dev/shm: a diagnostic of what
 *                   the buffer's disk writes cost, not the configuration to quote
 *   --cpu-prof=DIR  the cluster, the agent and the tsh/tctl runs write `node --cpu-prof` profiles
 *                   to DIR (a diagnostic; not for the figures to quote)
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import mysql from "mysql2/promise"
import type { Cluster } from "../test/fixtures/cluster.ts"
import { startCluster, stopCluster } from "../test/fixtures/cluster.ts"
import type { MariaDb } from "../test/fixtures/mariadb.ts"
import { installMariaDb, startCertMariaDb } from "../test/fixtures/mariadb.ts"
import type { Service } from "../test/fixtures/processes.ts"
import { bin, freePort, node, startService } from "../test/fixtures/processes.ts"

const arg = (name: string, dflt: number) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`))
  const v = a === undefined ? dflt : Number(a.slice(name.length + 3))
  if (!Number.isFinite(v) || v <= 0) throw new Error(`--${name} must be a positive number`)
  return v
}
const SECONDS = arg("seconds", 15)
const CLIENTS = arg("clients", 8)
const ROWS = arg("rows", 10_000)
const RUNS = arg("runs", 2)
const TEXT = process.argv.includes("--text")
const WARMUP_MS = 2_000
const AGENT_TMPFS = process.argv.includes("--agent-tmpfs")
const CPU_PROF = process.argv.find((x) => x.startsWith("--cpu-prof="))?.slice(11)
// Children inherit the environment: set before anything is started.
if (CPU_PROF !== undefined) {
  // Node refuses --cpu-prof in NODE_OPTIONS; bench/cpuProfile.mjs profiles through the inspector instead.
  fs.mkdirSync(CPU_PROF, { recursive: true })
  process.env["REMOTELER_CPU_PROFILE_DIR"] = path.resolve(CPU_PROF)
  process.env["NODE_OPTIONS"] = `${process.env["NODE_OPTIONS"] ?? ""} --import=${path.resolve("bench/cpuProfile.mjs")}`.trim()
}
const log = (s: string) => console.error(`bench:mysql: ${s}`)

interface Result {
  readonly qps: number
  readonly p50_ms: number
  readonly p99_ms: number
  readonly queries: number
}

const percentile = (sorted: Float64Array, p: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!

/** `CLIENTS` connections running point selects for `SECONDS`; the first `WARMUP_MS` is not counted. */
const load = async (open: () => Promise<mysql.Connection>): Promise<Result> => {
  const conns = await Promise.all(Array.from({ length: CLIENTS }, open))
  const sql = "SELECT c FROM sbtest WHERE id = ?"
  const times: Array<number> = []
  const start = performance.now()
  const measureFrom = start + WARMUP_MS
  const end = measureFrom + SECONDS * 1000
  let measuredStart = 0
  await Promise.all(
    conns.map(async (conn) => {
      for (;;) {
        const t0 = performance.now()
        if (t0 >= end) return
        const id = 1 + Math.floor(Math.random() * ROWS)
        if (TEXT) await conn.query(`SELECT c FROM sbtest WHERE id = ${id}`)
        else await conn.execute(sql, [id])
        const t1 = performance.now()
        if (t0 >= measureFrom) {
          if (measuredStart === 0) measuredStart = t0
          times.push(t1 - t0)
        }
      }
    })
  )
  const elapsed = (performance.now() - measureFrom) / 1000
  await Promise.all(conns.map((c) => c.end().catch(() => c.destroy())))
  const sorted = Float64Array.from(times).sort()
  return { qps: Math.round(times.length / elapsed), p50_ms: +percentile(sorted, 0.5).toFixed(3), p99_ms: +percentile(sorted, 0.99).toFixed(3), queries: times.length }
}

const main = async () => {
  let c: Cluster | undefined
  let db: MariaDb | undefined
  let agent: Service | undefined
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "bench-mysql-home-"))
  let stopAll = async () => {
    await agent?.stop().catch(() => undefined)
    await db?.stop().catch(() => undefined)
    await stopCluster(c).catch(() => undefined)
    fs.rmSync(home, { recursive: true, force: true })
  }
  for (const sig of ["SIGINT", "SIGTERM"] as const) process.once(sig, () => void stopAll().finally(() => process.exit(130)))
  // `stopAll` may grow (the agent's tmpfs dir); signals call the latest.
  try {
    const mysqlPort = await freePort()
    log("starting the cluster and MariaDB")
    const [cluster, installed] = await Promise.all([startCluster("off", [`  mysql_listen_addr: 127.0.0.1:${mysqlPort}`]), installMariaDb()])
    c = cluster
    const tmp = (n: string) => path.join(cluster.dir, n)
    db = await startCertMariaDb(cluster.tctl, tmp("db"), installed)
    await db.sql(
      [
        "CREATE DATABASE app",
        "CREATE TABLE app.sbtest (id INT PRIMARY KEY, k INT NOT NULL, c CHAR(120) NOT NULL, pad CHAR(60) NOT NULL)",
        "USE app",
        `INSERT INTO app.sbtest SELECT seq, seq % 1000, REPEAT(CHAR(97 + seq % 26), 120), REPEAT('p', 60) FROM seq_1_to_${ROWS}`,
        "CREATE USER alice@'%' REQUIRE X509",
        "GRANT SELECT ON app.* TO alice@'%'",
        "CREATE USER bench_direct@'%' IDENTIFIED BY 'bench' REQUIRE SSL",
        "GRANT SELECT ON app.* TO bench_direct@'%'"
      ].join("; ")
    )
    const check = async (what: string, p: Promise<{ code: number | null; stdout: string; stderr: string }>) => {
      const r = await p
      if (r.code !== 0) throw new Error(`${what} failed: ${r.stderr}`)
      return r
    }
    await check("tctl users add", cluster.tctl("users", "add", "alice", "--roles=access", "--db-users=alice", "--db-names=app"))
    await check("tctl users set-password", node(bin("tctl"), ["--data-dir", `${cluster.dir}/data`, "users", "set-password", "alice"], { input: "correct horse battery\n" }))
    const t = await check("tctl tokens add", cluster.tctl("tokens", "add", "--type=db"))
    const token = /--token=([0-9a-f]{32})/.exec(t.stdout)![1]!
    const pin = /--ca-pin=(sha256:[0-9a-f]{64})/.exec(t.stdout)![1]!
    const agentDir = AGENT_TMPFS ? fs.mkdtempSync("/dev/shm/bench-mysql-agent-") : tmp("agent")
    if (AGENT_TMPFS) {
      const shm = agentDir
      const prev = stopAll
      stopAll = async () => {
        await prev()
        fs.rmSync(shm, { recursive: true, force: true })
      }
    }
    agent = startService(process.execPath, [
      bin("remoteler"), "start", "--roles=db", `--proxy=localhost:${cluster.port}`, "--data-dir", agentDir, `--token=${token}`, `--ca-pin=${pin}`,
      `--db=name=maria1,protocol=mysql,uri=localhost:${db.port}`
    ])
    await agent.waitFor(/db agent .* serving maria1/, 60_000)
    const env = { TSH_HOME: cluster.tshHome, HOME: home }
    await check("tsh login", node(bin("tsh"), ["login", `--proxy=localhost:${cluster.port}`, "--user=alice", "--insecure"], { env, input: "correct horse battery\n" }))
    const deadline = Date.now() + 20_000
    for (;;) {
      const r = await node(bin("tsh"), ["db", "login", "maria1", "--db-user=alice", "--db-name=app"], { env })
      if (r.code === 0) break
      if (Date.now() > deadline) throw new Error(`tsh db login failed: ${r.stderr}`)
      await new Promise((res) => setTimeout(res, 500))
    }
    const certDir = path.join(cluster.tshHome, "keys", "localhost", "alice-db", "main")
    const ssl = {
      ca: fs.readFileSync(path.join(certDir, "maria1-ca.pem"), "utf8"),
      cert: fs.readFileSync(path.join(certDir, "maria1.crt"), "utf8"),
      key: fs.readFileSync(path.join(certDir, "maria1.key"), "utf8")
    }
    const dbCa = fs.readFileSync(db.caFile, "utf8")
    const paths: Record<string, () => Promise<mysql.Connection>> = {
      direct: () => mysql.createConnection({ host: "localhost", port: db!.port, user: "bench_direct", password: "bench", database: "app", ssl: { ca: dbCa } }),
      remoteler: () => mysql.createConnection({ host: "localhost", port: mysqlPort, user: "alice", database: "app", ssl })
    }
    const best: Record<string, Result> = {}
    for (let run = 1; run <= RUNS; run++) {
      for (const name of ["direct", "remoteler"]) {
        log(`run ${run}/${RUNS}: ${name}, ${CLIENTS} clients, ${SECONDS} s, ${TEXT ? "COM_QUERY" : "prepared"} point selects`)
        const r = await load(paths[name]!)
        log(`  ${name}: ${r.qps} q/s, p50 ${r.p50_ms} ms, p99 ${r.p99_ms} ms`)
        if (best[name] === undefined || r.qps > best[name].qps) best[name] = r
      }
    }
    const d = best["direct"]!
    const rm = best["remoteler"]!
    const summary = {
      bench: "mysql",
      mode: TEXT ? "text" : "prepared",
      server: db.serverVersion,
      clients: CLIENTS,
      seconds: SECONDS,
      rows: ROWS,
      cpus: os.cpus().length,
      direct: d,
      remoteler: rm,
      ratio_qps: +(rm.qps / d.qps).toFixed(3),
      ratio_p99: +(d.p99_ms / rm.p99_ms).toFixed(3)
    }
    console.log(`direct     ${d.qps} q/s  p50 ${d.p50_ms} ms  p99 ${d.p99_ms} ms`)
    console.log(`remoteler  ${rm.qps} q/s  p50 ${rm.p50_ms} ms  p99 ${rm.p99_ms} ms  (${summary.ratio_qps} of direct)`)
    console.log(JSON.stringify(summary))
  } finally {
    await stopAll()
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`bench:mysql failed: ${(e as Error).stack ?? String(e)}`)
    process.exit(1)
  }
)
