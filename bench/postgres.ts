/**
 * `npm run bench:postgres`: PostgreSQL through Remoteler against the same server reached directly
 * and through PgBouncer, from one run, with the real `pgbench`, `psql` and `pgbouncer`. The last
 * stdout line is one JSON object with every figure; progress goes to stderr.
 *
 * One PostgreSQL 15 server (TLS, `hostssl ... cert` exactly as test/e2e.postgres.test.ts sets it
 * up: server certificate and client CA from the cluster's db CA) serves three paths, all as the
 * database user `alice`, all over TLS:
 *
 *   direct     pgbench → PostgreSQL, sslmode=require, client certificate for `alice` from the db CA
 *              (the one the db agent itself uses upstream: asked of the proxy with the agent's
 *              host identity, /v1/webapi/agent/db-client-cert), so pg_hba `cert` auth, no password.
 *   pgbouncer  pgbench → PgBouncer (session pooling) → PostgreSQL. Client side: TLS with the db
 *              server certificate (db.crt/db.key from `tctl auth sign --format=db`, same CA) and
 *              auth_type=cert with alice's certificate; server side: server_tls_sslmode=require
 *              presenting alice's certificate, so PostgreSQL's `cert` rule applies there too.
 *              PgBouncer refuses root, so it runs as the `postgres` OS user (spawned with its uid).
 *   remoteler  pgbench → proxy (web port, TLS) → reverse tunnel → db agent → PostgreSQL, audit on
 *              (every query is an audit event), exactly like the e2e test: `tsh login`,
 *              `tsh db login pg1`, then libpq's service file (PGSERVICEFILE + PGSERVICE=main-pg1).
 *
 * pgbench: `-S -c 8 -j 2 -T <seconds> -n`, protocol simple and prepared, on a `pgbench -i` database
 * (scale 10 by default). TPS is pgbench's own figure (without initial connection time). Average and
 * p99 latency come from pgbench's per-transaction log (`-l`, every transaction's elapsed µs),
 * sorted: p99 is the nearest-rank 99th percentile. Every path pays the same logging cost.
 *
 * COPY: `\copy (SELECT repeat('x', 1023) FROM (SELECT generate_series(1, N)) g) TO '/dev/null'`
 * through psql, N rows of exactly 1 KiB of COPY text each, directly and through Remoteler; the
 * time is psql's `\timing` of the `\copy` alone (no connection setup), MB/s = bytes / 1e6 / s.
 *
 *   --seconds=N   pgbench duration per run (default 20)
 *   --copy-mb=N   COPY volume in MiB (default 1024)
 *   --copy-runs=N COPY runs per path, alternating; the best counts (default 2)
 *   --scale=N     pgbench -i scale (default 10)
 *   --clients=N   pgbench -c (default 8), --threads=N pgbench -j (default 2)
 *   --agent-tmpfs put the db agent's data dir (its fsynced audit buffer) on /dev/shm: a diagnostic
 *                 of what the per-event fsync costs, not the configuration to quote
 *
 * Diagnostics (not for the figures to quote):
 *   --paths=a,b   only these of direct,pgbouncer,remoteler (ratios need all three)
 *   --no-copy     skip the COPY runs
 *   --cpu-prof=DIR  the proxy and the db agent run with a CPU profiler (bench/cpuProfile.mjs), one
 *                 profile per process written to DIR when it stops (Chrome's DevTools, speedscope)
 */
import "reflect-metadata"
import { execFileSync, spawn } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as https from "node:https"
import * as os from "node:os"
import * as path from "node:path"
import { Effect } from "effect"
import * as X509 from "../src/adapters/x509.ts"
import type { Cluster } from "../test/fixtures/cluster.ts"
import { startCluster, stopCluster } from "../test/fixtures/cluster.ts"
import type { PostgresServer } from "../test/fixtures/postgres.ts"
import { startPostgresAsync } from "../test/fixtures/postgres.ts"
import type { Service } from "../test/fixtures/processes.ts"
import { bin, freePort, node, startService } from "../test/fixtures/processes.ts"

const arg = (name: string, dflt: number) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`))
  const v = a === undefined ? dflt : Number(a.slice(name.length + 3))
  if (!Number.isFinite(v) || v <= 0) throw new Error(`--${name} must be a positive number`)
  return v
}
const SECONDS = arg("seconds", 20)
const COPY_MIB = arg("copy-mb", 1024)
const COPY_RUNS = arg("copy-runs", 2)
const SCALE = arg("scale", 10)
const CLIENTS = arg("clients", 8)
const THREADS = arg("threads", 2)
const ROW_BYTES = 1024
const AGENT_TMPFS = process.argv.includes("--agent-tmpfs")
const NO_COPY = process.argv.includes("--no-copy")
const PATHS = (process.argv.find((x) => x.startsWith("--paths="))?.slice(8) ?? "direct,pgbouncer,remoteler").split(",")
const CPU_PROF = process.argv.find((x) => x.startsWith("--cpu-prof="))?.slice(11)
/** Environment for the proxy and agent processes: a CPU profiler (bench/cpuProfile.mjs) when asked for. */
const profiledEnv = (): NodeJS.ProcessEnv =>
  CPU_PROF === undefined
    ? {}
    : {
        NODE_OPTIONS: `${process.env["NODE_OPTIONS"] ?? ""} --import ${path.join(import.meta.dirname, "cpuProfile.mjs")}`.trim(),
        REMOTELER_CPU_PROFILE_DIR: path.resolve(CPU_PROF)
      }
const log = (s: string) => console.error(`bench:postgres: ${s}`)

// ---------------------------------------------------------------------------------------------
// Cleanup: everything started registers how to undo it; it runs in reverse on success, failure
// and SIGINT/SIGTERM alike.

const cleanups: Array<{ what: string; run: () => Promise<unknown> | void }> = []
const onCleanup = (what: string, run: () => Promise<unknown> | void) => cleanups.push({ what, run })
const running = new Set<ChildProcess>()
let cleaning: Promise<void> | undefined
const cleanupAll = () =>
  (cleaning ??= (async () => {
    for (const c of running) c.kill("SIGKILL")
    for (const c of cleanups.reverse()) {
      try {
        await c.run()
      } catch (e) {
        log(`cleanup of ${c.what} failed: ${(e as Error).message}`)
      }
    }
  })())
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.once(sig, () => {
    log(`${sig}: cleaning up`)
    void cleanupAll().finally(() => process.exit(130))
  })
}

const tempDir = (prefix: string) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  onCleanup(d, () => fs.rmSync(d, { recursive: true, force: true }))
  return d
}

interface Exec {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}
/** Runs a command to completion; stderr lines matching `echo` are forwarded as progress. */
const exec = (
  file: string,
  args: ReadonlyArray<string>,
  options: { env?: NodeJS.ProcessEnv; echo?: RegExp; prefix?: string; timeoutMs?: number } = {}
): Promise<Exec> =>
  new Promise((resolve, reject) => {
    const child = spawn(file, [...args], { env: { ...process.env, ...options.env }, stdio: ["ignore", "pipe", "pipe"] })
    running.add(child)
    let stdout = ""
    let stderr = ""
    let partial = ""
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()))
    child.stderr.on("data", (d: Buffer) => {
      const text = d.toString()
      stderr += text
      if (options.echo === undefined) return
      const lines = (partial + text).split("\n")
      partial = lines.pop() ?? ""
      for (const l of lines) if (options.echo.test(l)) log(`${options.prefix ?? ""}${l}`)
    })
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 600_000)
    child.once("error", (e) => {
      clearTimeout(timer)
      running.delete(child)
      reject(e)
    })
    child.once("close", (code) => {
      clearTimeout(timer)
      running.delete(child)
      resolve({ code, stdout, stderr })
    })
  })
const mustExec = async (file: string, args: ReadonlyArray<string>, options?: Parameters<typeof exec>[2]) => {
  const r = await exec(file, args, options)
  if (r.code !== 0) throw new Error(`${file} ${args.join(" ")} exited with ${r.code}:\n${r.stderr}${r.stdout}`)
  return r
}

const postgresIds = () => ({
  uid: Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim()),
  gid: Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim())
})

// ---------------------------------------------------------------------------------------------
// Setup

interface Setup {
  readonly c: Cluster
  readonly pg: PostgresServer
  /** db.crt / db.key / db.cas (server side) and alice.crt / alice.key (client, owned by root). */
  readonly keyDir: string
  readonly directConninfo: string
  readonly remotelerEnv: NodeJS.ProcessEnv
  /** The db agent's data dir, where its audit buffer is. */
  readonly agentDir: string
}

const agentPost = (port: number, agentDir: string, urlPath: string, body: unknown) =>
  new Promise<unknown>((resolve, reject) => {
    const payload = JSON.stringify(body)
    const req = https.request(
      {
        host: "127.0.0.1",
        port,
        method: "POST",
        path: urlPath,
        servername: "localhost",
        ca: fs.readFileSync(path.join(agentDir, "host-ca.pem")),
        cert: fs.readFileSync(path.join(agentDir, "host.crt")),
        key: fs.readFileSync(path.join(agentDir, "host.key")),
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) }
      },
      (res) => {
        let text = ""
        res.on("data", (d: Buffer) => (text += d.toString()))
        res.on("end", () =>
          res.statusCode === 200 ? resolve(JSON.parse(text)) : reject(new Error(`POST ${urlPath}: ${res.statusCode} ${text}`))
        )
      }
    )
    req.on("error", reject)
    req.end(payload)
  })

const setup = async (): Promise<Setup> => {
  log("starting remoteler (auth + proxy)")
  // startCluster passes our environment on: the profiling options go to the server through it.
  const savedNodeOptions = process.env["NODE_OPTIONS"]
  Object.assign(process.env, profiledEnv())
  const c = await startCluster("off").finally(() => {
    if (savedNodeOptions === undefined) delete process.env["NODE_OPTIONS"]
    else process.env["NODE_OPTIONS"] = savedNodeOptions
  })
  onCleanup("cluster", () => stopCluster(c))
  const tmp = (name: string) => path.join(c.dir, name)
  const home = tempDir("bench-pg-home-")

  log("signing the database server certificate (db CA) and starting PostgreSQL with TLS + cert auth")
  const signed = await c.tctl("auth", "sign", "--host=localhost,127.0.0.1", "--format=db", `--out=${tmp("db")}`, "--ttl=24h")
  if (signed.code !== 0) throw new Error(`tctl auth sign: ${signed.stderr}`)
  const keyDir = tempDir("bench-pg-keys-")
  const { uid, gid } = postgresIds()
  const pgKeys = path.join(keyDir, "server")
  fs.mkdirSync(pgKeys)
  for (const f of ["db.crt", "db.key", "db.cas"]) fs.copyFileSync(tmp(f), path.join(pgKeys, f))
  fs.writeFileSync(path.join(pgKeys, "pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 cert\nhostssl all all ::1/128 cert\n")
  for (const f of fs.readdirSync(pgKeys)) fs.chownSync(path.join(pgKeys, f), uid, gid)
  fs.chownSync(pgKeys, uid, gid)
  fs.chmodSync(keyDir, 0o755)
  fs.chmodSync(pgKeys, 0o755)
  fs.chmodSync(path.join(pgKeys, "db.key"), 0o600)
  const pg = await startPostgresAsync({
    settings: {
      ssl: "on",
      ssl_cert_file: path.join(pgKeys, "db.crt"),
      ssl_key_file: path.join(pgKeys, "db.key"),
      ssl_ca_file: path.join(pgKeys, "db.cas"),
      hba_file: path.join(pgKeys, "pg_hba.conf")
    }
  })
  onCleanup("postgres", () => pg.stop())
  await pg.psql("CREATE ROLE alice LOGIN")

  log(`pgbench -i -s ${SCALE} (over the unix socket, as postgres)`)
  await mustExec("pgbench", ["-i", "-q", "-s", String(SCALE), "-h", pg.socketDir, "-p", String(pg.port), "-U", "postgres", "postgres"])
  await pg.psql("GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO alice")

  log("adding user alice, joining a db agent with a token")
  const mustTctl = async (...a: Array<string>) => {
    const r = await c.tctl(...a)
    if (r.code !== 0) throw new Error(`tctl ${a.join(" ")}: ${r.stderr}`)
    return r
  }
  await mustTctl("users", "add", "alice", "--roles=access", "--logins=alice", "--db-users=alice", "--db-names=postgres")
  const pw = await node(bin("tctl"), ["--data-dir", `${c.dir}/data`, "users", "set-password", "alice"], { input: "correct horse battery\n" })
  if (pw.code !== 0) throw new Error(`tctl users set-password: ${pw.stderr}`)
  const t = await mustTctl("tokens", "add", "--type=db")
  const token = /--token=([0-9a-f]{32})/.exec(t.stdout)?.[1]
  const pin = /--ca-pin=(sha256:[0-9a-f]{64})/.exec(t.stdout)?.[1]
  if (token === undefined || pin === undefined) throw new Error(`no token in: ${t.stdout}`)
  const agentDir = AGENT_TMPFS ? path.join(fs.mkdtempSync("/dev/shm/bench-pg-agent-"), "agent") : tmp("agent")
  if (AGENT_TMPFS) onCleanup("agent dir on /dev/shm", () => fs.rmSync(path.dirname(agentDir), { recursive: true, force: true }))
  const agent: Service = startService(process.execPath, [
    bin("remoteler"), "start", "--roles=db", `--proxy=localhost:${c.port}`, "--data-dir", agentDir,
    `--db=name=pg1,protocol=postgres,uri=localhost:${pg.port},label=env:bench`, `--token=${token}`, `--ca-pin=${pin}`
  ], profiledEnv())
  onCleanup("db agent", () => agent.stop())
  await agent.waitFor(/db agent .* serving pg1/, 60_000)

  log("tsh login, tsh db login pg1")
  const tshEnv = { TSH_HOME: c.tshHome, HOME: home, PGSERVICEFILE: path.join(home, ".pg_service.conf") }
  const tsh = async (args: ReadonlyArray<string>, input?: string) => {
    const r = await node(bin("tsh"), [...args], { env: tshEnv, ...(input === undefined ? {} : { input }) })
    if (r.code !== 0) throw new Error(`tsh ${args.join(" ")}: ${r.stderr}`)
    return r
  }
  await tsh(["login", `--proxy=localhost:${c.port}`, "--user=alice", "--insecure"], "correct horse battery\n")
  const deadline = Date.now() + 15_000
  while (!(await tsh(["db", "ls"])).stdout.includes("pg1")) {
    if (Date.now() > deadline) throw new Error("pg1 never showed in tsh db ls")
    await new Promise((r) => setTimeout(r, 300))
  }
  await tsh(["db", "login", "pg1", "--db-user=alice", "--db-name=postgres"])
  const remotelerEnv = { ...tshEnv, PGSERVICE: "main-pg1", PGGSSENCMODE: "disable" }

  log("asking the proxy for alice's db client certificate with the agent's identity (for direct and PgBouncer)")
  const keys = await Effect.runPromise(X509.generateEcdsaKeyPair())
  const issued = (await agentPost(c.port, agentDir, "/v1/webapi/agent/db-client-cert", { db_user: "alice", tls_pub_key: keys.publicKeyPem })) as {
    tls_cert: string
  }
  fs.writeFileSync(path.join(keyDir, "alice.crt"), issued.tls_cert, { mode: 0o644 })
  fs.writeFileSync(path.join(keyDir, "alice.key"), keys.privateKeyPem, { mode: 0o600 })
  const directConninfo = [
    "host=127.0.0.1", `port=${pg.port}`, "dbname=postgres", "user=alice", "sslmode=require", "gssencmode=disable",
    `sslcert=${path.join(keyDir, "alice.crt")}`, `sslkey=${path.join(keyDir, "alice.key")}`
  ].join(" ")
  return { c, pg, keyDir, directConninfo, remotelerEnv, agentDir }
}

/** PgBouncer in session mode with TLS on both sides, as the postgres OS user; returns its conninfo. */
const startPgBouncer = async (s: Setup): Promise<string> => {
  const { uid, gid } = postgresIds()
  const dir = tempDir("bench-pgbouncer-")
  const port = await freePort()
  for (const f of ["db.crt", "db.key", "db.cas"]) fs.copyFileSync(path.join(s.keyDir, "server", f), path.join(dir, f))
  for (const f of ["alice.crt", "alice.key"]) fs.copyFileSync(path.join(s.keyDir, f), path.join(dir, f))
  fs.writeFileSync(path.join(dir, "userlist.txt"), `"alice" ""\n`)
  fs.writeFileSync(
    path.join(dir, "pgbouncer.ini"),
    [
      "[databases]",
      `postgres = host=127.0.0.1 port=${s.pg.port} dbname=postgres`,
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "unix_socket_dir =",
      `pidfile = ${path.join(dir, "pgbouncer.pid")}`,
      "pool_mode = session",
      "max_client_conn = 100",
      "default_pool_size = 20",
      "auth_type = cert",
      `auth_file = ${path.join(dir, "userlist.txt")}`,
      "client_tls_sslmode = verify-full",
      `client_tls_cert_file = ${path.join(dir, "db.crt")}`,
      `client_tls_key_file = ${path.join(dir, "db.key")}`,
      `client_tls_ca_file = ${path.join(dir, "db.cas")}`,
      "server_tls_sslmode = require",
      `server_tls_cert_file = ${path.join(dir, "alice.crt")}`,
      `server_tls_key_file = ${path.join(dir, "alice.key")}`,
      "ignore_startup_parameters = extra_float_digits",
      ""
    ].join("\n")
  )
  fs.chownSync(dir, uid, gid)
  for (const f of fs.readdirSync(dir)) fs.chownSync(path.join(dir, f), uid, gid)
  fs.chmodSync(path.join(dir, "db.key"), 0o600)
  fs.chmodSync(path.join(dir, "alice.key"), 0o600)
  log(`starting PgBouncer on 127.0.0.1:${port} as the postgres user`)
  const child = spawn("/usr/sbin/pgbouncer", [path.join(dir, "pgbouncer.ini")], { uid, gid, cwd: dir, stdio: ["ignore", "pipe", "pipe"] })
  let out = ""
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  onCleanup("pgbouncer", async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM")
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000)
      await exited
      clearTimeout(timer)
    }
  })
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`PgBouncer did not start:\n${out}`)), 20_000)
    const onData = (d: Buffer) => {
      out += d.toString()
      if (/listening on 127\.0\.0\.1/.test(out)) {
        clearTimeout(timer)
        resolve()
      }
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.once("exit", (code) => {
      clearTimeout(timer)
      reject(new Error(`PgBouncer exited (${code}):\n${out}`))
    })
  })
  child.stdout.removeAllListeners("data").resume()
  child.stderr.removeAllListeners("data").resume()
  return [
    "host=127.0.0.1", `port=${port}`, "dbname=postgres", "user=alice", "sslmode=require", "gssencmode=disable",
    `sslcert=${path.join(s.keyDir, "alice.crt")}`, `sslkey=${path.join(s.keyDir, "alice.key")}`
  ].join(" ")
}

// ---------------------------------------------------------------------------------------------
// Measurements

interface PgbenchResult {
  readonly tps: number
  readonly avg_ms: number
  readonly p99_ms: number
  readonly transactions: number
  readonly pgbench_latency_avg_ms: number
}

/** Elapsed µs of every transaction in pgbench's per-transaction logs `<prefix>.<pid>[.<thread>]`. */
const readLatencies = (dir: string, prefix: string): Float64Array => {
  const values: Array<number> = []
  let failed = 0
  for (const f of fs.readdirSync(dir).filter((n) => n.startsWith(`${prefix}.`))) {
    for (const line of fs.readFileSync(path.join(dir, f), "utf8").split("\n")) {
      if (line === "") continue
      const us = Number(line.split(" ")[2])
      if (Number.isFinite(us)) values.push(us)
      else failed++
    }
  }
  if (failed > 0) throw new Error(`${failed} transactions failed or were skipped in ${prefix}`)
  return Float64Array.from(values).sort()
}

const pgbench = async (label: string, mode: "simple" | "prepared", conninfo: string, env: NodeJS.ProcessEnv = {}): Promise<PgbenchResult> => {
  const logDir = tempDir("bench-pgbench-log-")
  const prefix = `${label}-${mode}`
  log(`${label}, -M ${mode}: pgbench -S -c ${CLIENTS} -j ${THREADS} -T ${SECONDS}`)
  const r = await mustExec(
    "pgbench",
    [
      "-n", "-S", "-M", mode, "-c", String(CLIENTS), "-j", String(THREADS), "-T", String(SECONDS),
      `--progress=${Math.max(1, Math.min(5, Math.floor(SECONDS / 4)))}`, "-l", `--log-prefix=${path.join(logDir, prefix)}`, conninfo
    ],
    { env: { PGGSSENCMODE: "disable", ...env }, echo: /^progress:/, prefix: `  ${label} ${mode} `, timeoutMs: (SECONDS + 120) * 1000 }
  )
  const num = (re: RegExp) => {
    const m = re.exec(r.stdout)
    if (m === null) throw new Error(`pgbench output lacks ${re}:\n${r.stdout}`)
    return Number(m[1])
  }
  const tps = num(/tps = ([\d.]+) \(without initial connection time\)/)
  const processed = num(/number of transactions actually processed: (\d+)/)
  const failedM = /number of failed transactions: (\d+)/.exec(r.stdout)
  if (failedM !== null && Number(failedM[1]) > 0) throw new Error(`${label} ${mode}: ${failedM[1]} failed transactions`)
  const lat = readLatencies(logDir, prefix)
  fs.rmSync(logDir, { recursive: true, force: true })
  if (lat.length !== processed) log(`  note: ${lat.length} logged transactions, pgbench counted ${processed}`)
  let sum = 0
  for (const v of lat) sum += v
  const p99 = lat[Math.max(0, Math.ceil(lat.length * 0.99) - 1)] ?? NaN
  const out: PgbenchResult = {
    tps: round(tps, 1),
    avg_ms: round(sum / lat.length / 1000, 3),
    p99_ms: round(p99 / 1000, 3),
    transactions: processed,
    pgbench_latency_avg_ms: num(/latency average = ([\d.]+) ms/)
  }
  log(`  ${label} ${mode}: ${out.tps} tps, avg ${out.avg_ms} ms, p99 ${out.p99_ms} ms (${out.transactions} transactions)`)
  return out
}

/** One COPY out of `COPY_MIB` MiB through psql into /dev/null; MB/s from psql's \timing of the \copy. */
const copyOut = async (label: string, conninfo: string, env: NodeJS.ProcessEnv = {}): Promise<number> => {
  const rows = COPY_MIB * 1024 * 1024 / ROW_BYTES
  const sql = `\\copy (SELECT repeat('x', ${ROW_BYTES - 1}) FROM (SELECT generate_series(1, ${rows})) g) TO '/dev/null'`
  const r = await mustExec("psql", [conninfo, "-X", "-v", "ON_ERROR_STOP=1", "-c", "\\timing on", "-c", sql], {
    env: { PGGSSENCMODE: "disable", ...env },
    timeoutMs: 900_000
  })
  const copied = /COPY (\d+)/.exec(r.stdout)
  const ms = /Time: ([\d.]+) ms/.exec(r.stdout)
  if (copied === null || Number(copied[1]) !== rows || ms === null) throw new Error(`${label} COPY: unexpected psql output:\n${r.stdout}${r.stderr}`)
  const rate = (rows * ROW_BYTES) / 1e6 / (Number(ms[1]) / 1000)
  log(`  ${label} COPY ${COPY_MIB} MiB: ${rate.toFixed(0)} MB/s (${(Number(ms[1]) / 1000).toFixed(2)} s)`)
  return rate
}

const round = (x: number, digits: number) => Number(x.toFixed(digits))

const main = async () => {
  if (CPU_PROF !== undefined) fs.mkdirSync(path.resolve(CPU_PROF), { recursive: true })
  const loadStart = os.loadavg()
  log(`${os.cpus().length} CPUs, load average ${loadStart.map((l) => l.toFixed(2)).join(" ")}`)
  const s = await setup()
  const bouncer = await startPgBouncer(s)
  // The same query once on each path first, so a broken path fails before the long runs.
  for (const [label, conninfo, env] of [
    ["direct", s.directConninfo, {}],
    ["pgbouncer", bouncer, {}],
    ["remoteler", "service=main-pg1", s.remotelerEnv]
  ] as const) {
    const r = await mustExec("psql", [conninfo, "-X", "-Atc", "select current_user || ' ' || ssl from pg_stat_ssl where pid = pg_backend_pid()"], {
      env: { PGGSSENCMODE: "disable", ...env }
    })
    log(`${label}: connected as ${r.stdout.trim().replace(" t", ", upstream TLS on")}`)
  }

  const paths = {
    direct: (mode: "simple" | "prepared") => pgbench("direct", mode, s.directConninfo),
    pgbouncer: (mode: "simple" | "prepared") => pgbench("pgbouncer", mode, bouncer),
    // pgbench takes a conninfo as its dbname: the service name, as with psql "service=main-pg1".
    remoteler: (mode: "simple" | "prepared") => pgbench("remoteler", mode, "service=main-pg1", s.remotelerEnv)
  }
  const results: Record<string, Record<string, PgbenchResult>> = { direct: {}, pgbouncer: {}, remoteler: {} }
  for (const mode of ["simple", "prepared"] as const) {
    for (const p of ["direct", "pgbouncer", "remoteler"] as const) if (PATHS.includes(p)) results[p]![mode] = await paths[p](mode)
  }

  log(`COPY out, ${COPY_MIB} MiB, ${COPY_RUNS} run(s) per path, alternating`)
  const copies: { direct: Array<number>; remoteler: Array<number> } = { direct: [], remoteler: [] }
  for (let i = 0; i < (NO_COPY ? 0 : COPY_RUNS); i++) {
    copies.direct.push(await copyOut("direct", s.directConninfo))
    copies.remoteler.push(await copyOut("remoteler", "service=main-pg1", s.remotelerEnv))
  }

  const sessions = await s.c.tctl("audit", "search", "--type=db.session.start", "--limit=100000", "--format=json")
  const auditedSessions = sessions.stdout.split("\n").filter((l) => l.includes('"pg1"')).length
  // Audit events the agent has fsynced but auth has not yet acknowledged, right after the last run.
  const bufferFile = path.join(s.agentDir, "audit-buffer.jsonl")
  const offsetFile = path.join(s.agentDir, "audit-buffer.offset")
  const auditBacklogBytes = fs.existsSync(bufferFile)
    ? fs.statSync(bufferFile).size - (fs.existsSync(offsetFile) ? Number(fs.readFileSync(offsetFile, "utf8")) || 0 : 0)
    : 0
  log(`audit: ${auditedSessions} pg1 session starts stored by auth, ${(auditBacklogBytes / 1e6).toFixed(1)} MB still in the agent's buffer`)
  const loadEnd = os.loadavg()

  const ratio = (a: number, b: number) => round(a / b, 3)
  const tpsOf = (p: string, m: string) => results[p]?.[m]?.tps ?? NaN
  const ratios = Object.fromEntries(
    (["simple", "prepared"] as const).map((m) => [
      m,
      {
        remoteler_vs_pgbouncer_tps: ratio(tpsOf("remoteler", m), tpsOf("pgbouncer", m)),
        remoteler_vs_direct_tps: ratio(tpsOf("remoteler", m), tpsOf("direct", m))
      }
    ])
  ) as Record<"simple" | "prepared", { remoteler_vs_pgbouncer_tps: number; remoteler_vs_direct_tps: number }>
  const copyDirect = Math.max(...copies.direct)
  const copyRemoteler = Math.max(...copies.remoteler)

  console.log(`pgbench -S -c ${CLIENTS} -j ${THREADS} -T ${SECONDS}, scale ${SCALE}; latency from per-transaction logs`)
  console.log(`${"path".padEnd(10)} ${"mode".padEnd(9)} ${"tps".padStart(9)} ${"avg ms".padStart(8)} ${"p99 ms".padStart(8)}`)
  for (const mode of ["simple", "prepared"] as const) {
    for (const p of ["direct", "pgbouncer", "remoteler"] as const) {
      const r = results[p]![mode]
      if (r === undefined) continue
      console.log(`${p.padEnd(10)} ${mode.padEnd(9)} ${r.tps.toFixed(1).padStart(9)} ${r.avg_ms.toFixed(3).padStart(8)} ${r.p99_ms.toFixed(3).padStart(8)}`)
    }
    console.log(
      `  ${mode}: remoteler/pgbouncer ${ratios[mode].remoteler_vs_pgbouncer_tps.toFixed(2)} (aim: >= 0.8), remoteler/direct ${ratios[mode].remoteler_vs_direct_tps.toFixed(2)}`
    )
  }
  console.log(
    `COPY out ${COPY_MIB} MiB: direct ${copyDirect.toFixed(0)} MB/s, remoteler ${copyRemoteler.toFixed(0)} MB/s, ratio ${(copyRemoteler / copyDirect).toFixed(2)} (aim: >= 0.9)`
  )
  console.log(`load average: ${loadStart.map((l) => l.toFixed(2)).join(" ")} at start, ${loadEnd.map((l) => l.toFixed(2)).join(" ")} at end, ${os.cpus().length} CPUs`)
  console.log(
    JSON.stringify({
      pgbench: results,
      ratios,
      copy: {
        direct_mb_per_s: round(copyDirect, 1),
        remoteler_mb_per_s: round(copyRemoteler, 1),
        ratio: ratio(copyRemoteler, copyDirect),
        direct_runs_mb_per_s: copies.direct.map((x) => round(x, 1)),
        remoteler_runs_mb_per_s: copies.remoteler.map((x) => round(x, 1))
      },
      audited_db_sessions: auditedSessions,
      remoteler_db_sessions: 1 + 2 * CLIENTS + 2 * COPY_RUNS,
      audit_backlog_bytes: auditBacklogBytes,
      agent_data_dir_on_tmpfs: AGENT_TMPFS,
      seconds: SECONDS,
      clients: CLIENTS,
      threads: THREADS,
      scale: SCALE,
      copy_mib: COPY_MIB,
      cpus: os.cpus().length,
      load_average_start: loadStart.map((l) => round(l, 2)),
      load_average_end: loadEnd.map((l) => round(l, 2))
    })
  )
}

try {
  await main()
} catch (e) {
  log(`failed: ${(e as Error).stack ?? String(e)}`)
  process.exitCode = 1
} finally {
  log("cleaning up")
  await cleanupAll()
}
