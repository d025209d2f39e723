/**
 * Database access under load and failure, every part a real process: pgbench through the proxy,
 * a cancelled statement, COPY both ways, a killed agent, a restarted auth+proxy, and bad input on
 * the proxy's one port. The setup is the one of e2e.postgres.test.ts, shared here as `setup`.
 */
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as tls from "node:tls"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Effect } from "effect"
import * as X509 from "../src/adapters/x509.ts"
import { RouteToDatabase } from "../src/domain/Identity.ts"
import type { Cluster } from "./fixtures/cluster.ts"
import { startCluster } from "./fixtures/cluster.ts"
import { startCertPostgres } from "./fixtures/certPostgres.ts"
import type { PostgresServer } from "./fixtures/postgres.ts"
import type { RunResult, Service } from "./fixtures/processes.ts"
import { bin, node, run, startService } from "./fixtures/processes.ts"

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Polls `f` until `ok` holds or the deadline passes; returns the last value. */
const poll = async <A>(f: () => Promise<A>, ok: (a: A) => boolean, timeoutMs: number, everyMs = 500): Promise<A> => {
  const deadline = Date.now() + timeoutMs
  let last = await f()
  while (!ok(last) && Date.now() < deadline) {
    await sleep(everyMs)
    last = await f()
  }
  return last
}

type AuditEvent = Record<string, unknown>

/**
 * A cluster (auth + proxy) whose server process can be restarted on the same port and data dir,
 * a PostgreSQL with TLS and certificate auth trusting the db CA, a joined db agent serving it as
 * pg1, and alice logged in with `tsh db login pg1`.
 */
const setup = async () => {
  const c: Cluster = await startCluster("off")
  let server: Service = c.server
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "home-"))
  const tmp = (name: string) => path.join(c.dir, name)
  const env = () => ({ TSH_HOME: c.tshHome, HOME: home, PGSERVICEFILE: path.join(home, ".pg_service.conf") })
  const tsh = (args: ReadonlyArray<string>, input?: string) => node(bin("tsh"), [...args], { env: env(), ...(input === undefined ? {} : { input }) })
  const psql = (sql: string, options: { input?: string; timeoutMs?: number } = {}) =>
    run("psql", ["service=main-pg1", "-v", "ON_ERROR_STOP=1", "-Atc", sql], { env: env(), ...options })
  const audit = async (type: string): Promise<Array<AuditEvent>> => {
    const r = await c.tctl("audit", "search", `--type=${type}`, "--format=json", "--limit=100000")
    return r.stdout.trim() === "" ? [] : r.stdout.trim().split("\n").map((l) => JSON.parse(l) as AuditEvent)
  }

  const db = await startCertPostgres(c.tctl, tmp("db"))
  const pg: PostgresServer = db.pg
  // pgbench -i creates its tables in public, which PostgreSQL 15 no longer opens to everyone.
  await pg.psql("CREATE ROLE alice LOGIN; CREATE TABLE notes (id int, body text); GRANT ALL ON notes TO alice; GRANT CREATE ON SCHEMA public TO alice")
  expect((await c.tctl("users", "add", "alice", "--roles=access", "--logins=alice", "--db-users=alice", "--db-names=postgres")).code).toBe(0)
  expect((await node(bin("tctl"), ["--data-dir", `${c.dir}/data`, "users", "set-password", "alice"], { input: "correct horse battery\n" })).code).toBe(0)

  let agent: Service | undefined
  const startAgent = async (extra: ReadonlyArray<string> = []) => {
    const s = startService(process.execPath, [
      bin("remoteler"), "start", "--roles=db", `--proxy=localhost:${c.port}`, "--data-dir", tmp("agent"),
      `--db=name=pg1,protocol=postgres,uri=localhost:${pg.port},label=env:dev`,
      ...extra
    ])
    await s.waitFor(/db agent .* serving pg1/, 60_000)
    agent = s
    return s
  }
  const t = await c.tctl("tokens", "add", "--type=db")
  const token = /--token=([0-9a-f]{32})/.exec(t.stdout)![1]!
  const pin = /--ca-pin=(sha256:[0-9a-f]{64})/.exec(t.stdout)![1]!
  await startAgent([`--token=${token}`, `--ca-pin=${pin}`])

  expect((await tsh(["login", `--proxy=localhost:${c.port}`, "--user=alice", "--insecure"], "correct horse battery\n")).code).toBe(0)
  const listed = await poll(() => tsh(["db", "ls"]), (r) => r.stdout.includes("pg1"), 30_000)
  expect(listed.stdout).toMatch(/pg1/)
  expect((await tsh(["db", "login", "pg1", "--db-user=alice", "--db-name=postgres"])).code).toBe(0)

  /** Stops the auth+proxy process and starts it again on the same port, config and data dir. */
  const restartServer = async () => {
    await server.stop()
    server = startService(process.execPath, [bin("remoteler"), "start", "-c", path.join(c.dir, "remoteler.yaml")])
    await server.waitFor(/proxy running/, 90_000)
  }
  const stopServer = () => server.stop()
  const startServer = async () => {
    server = startService(process.execPath, [bin("remoteler"), "start", "-c", path.join(c.dir, "remoteler.yaml")])
    await server.waitFor(/proxy running/, 90_000)
  }

  const teardown = async () => {
    await agent?.stop()
    await db.stop()
    await server.stop()
    fs.rmSync(c.dir, { recursive: true, force: true })
    fs.rmSync(home, { recursive: true, force: true })
  }

  return {
    c, pg, home, env, tsh, psql, audit, tmp, startAgent, restartServer, stopServer, startServer, teardown,
    agent: () => agent!,
    server: () => server
  }
}

/** Runs `psql` in the background; resolves with its result. */
const spawnPsql = (env: NodeJS.ProcessEnv, ...commands: Array<string>) => {
  const child = spawn("psql", ["service=main-pg1", "-At", ...commands.flatMap((c) => ["-c", c])], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] })
  let stdout = ""
  let stderr = ""
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()))
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()))
  const started = Date.now()
  const done = new Promise<RunResult & { ms: number }>((resolve) =>
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr, ms: Date.now() - started }))
  )
  return { child, done }
}

describe("PostgreSQL access under load and failure", () => {
  let s: Awaited<ReturnType<typeof setup>>

  beforeAll(async () => {
    s = await setup()
  }, 240_000)
  afterAll(async () => {
    await s?.teardown()
  }, 60_000)

  /** Waits until a statement whose text contains `needle` is running in PostgreSQL. */
  const waitActive = (needle: string, timeoutMs = 30_000) =>
    poll(
      () => s.pg.psql(`select count(*) from pg_stat_activity where state = 'active' and query like '%${needle}%' and pid <> pg_backend_pid()`),
      (out) => Number(out.trim()) > 0,
      timeoutMs,
      200
    )

  /** True once the agent's audit buffer holds nothing unacknowledged. */
  const waitDrained = async (timeoutMs: number) => {
    const pendingBytes = () => {
      const file = s.tmp("agent/audit-buffer.jsonl")
      const size = fs.existsSync(file) ? fs.statSync(file).size : 0
      const off = s.tmp("agent/audit-buffer.offset")
      return size - (fs.existsSync(off) ? Number(fs.readFileSync(off, "utf8")) || 0 : 0)
    }
    return (await poll(() => Promise.resolve(pendingBytes()), (n) => n === 0, timeoutMs, 250)) === 0
  }

  /** Every db.session.query whose text contains `needle`, once the expected count is there. */
  const queriesLike = async (needle: string, count: number, timeoutMs = 30_000) => {
    const all = await poll(
      () => s.audit("db.session.query"),
      (qs) => qs.filter((q) => String(q["db_query"]).includes(needle)).length >= count,
      timeoutMs
    )
    return all.filter((q) => String(q["db_query"]).includes(needle))
  }

  it("pgbench -i and -M prepared run through the proxy without failures; prepared queries are audited with their parameters", async () => {
    // pgbench fills in dbname from PGDATABASE/PGUSER/the login name unless given a connection string.
    const env = s.env()
    const init = await run("pgbench", ["-i", "-s", "1", "service=main-pg1"], { env, timeoutMs: 150_000 })
    expect(init.stderr).toMatch(/done/)
    expect(init.code).toBe(0)
    const bench = await run("pgbench", ["-M", "prepared", "-c", "2", "-j", "1", "-T", "5", "service=main-pg1"], { env, timeoutMs: 120_000 })
    expect(bench.code).toBe(0)
    const processed = /number of transactions actually processed: (\d+)/.exec(bench.stdout)
    expect(Number(processed?.[1])).toBeGreaterThan(0)
    const failed = /number of failed transactions: (\d+)/.exec(bench.stdout)
    if (failed !== null) expect(Number(failed[1])).toBe(0)

    // Every transaction's UPDATE reaches the audit log once the agent's buffer has drained.
    const drainStarted = Date.now()
    expect(await waitDrained(240_000)).toBe(true)
    console.log(`audit buffer drained ${Date.now() - drainStarted} ms after pgbench (${processed?.[1]} transactions)`)
    const updates = await queriesLike("UPDATE pgbench_accounts", Number(processed?.[1]), 60_000)
    expect(updates.length).toBeGreaterThanOrEqual(Number(processed?.[1]))
    const withParams = updates.find((q) => Array.isArray(q["db_query_parameters"]))
    expect(withParams).toBeDefined()
    expect((withParams!["db_query_parameters"] as Array<unknown>).length).toBe(2)
  }, 300_000)

  it("a CancelRequest from psql (SIGINT) reaches the database through the proxy and the agent", async () => {
    const p = spawnPsql(s.env(), "select pg_sleep(30)")
    await waitActive("pg_sleep(30)")
    await sleep(300)
    p.child.kill("SIGINT")
    const r = await p.done
    expect(r.stderr).toMatch(/canceling statement due to user request/)
    expect(r.ms).toBeLessThan(20_000)
    // The session survives its cancelled statement.
    expect((await s.psql("select 'still here'")).stdout.trim()).toBe("still here")
  }, 120_000)

  it("\\copy passes every row in and out", async () => {
    const rows = Array.from({ length: 2000 }, (_, i) => `${1000 + i}\tline ${i} with \\\\ and tab-free text`)
    const input = rows.join("\n") + "\n\\.\n"
    const into = await s.psql("\\copy notes (id, body) from STDIN", { input })
    expect(into.stderr).toBe("")
    expect(into.code).toBe(0)
    expect((await s.psql("select count(*) from notes where id >= 1000 and id < 3000")).stdout.trim()).toBe("2000")
    const out = await s.psql("\\copy (select id, body from notes where id >= 1000 and id < 3000 order by id) to STDOUT")
    expect(out.code).toBe(0)
    expect(out.stdout.trimEnd().split("\n")).toEqual(rows)
  }, 120_000)

  it("a query longer than the proxy's web API body limit is audited, and does not hold back later events", async () => {
    const long = `select length('${"x".repeat(200 * 1024)}') as long_query_${Date.now()}`
    const r = await run("psql", ["service=main-pg1", "-At"], { env: s.env(), input: `${long};\n` })
    expect(r.stdout.trim()).toBe(String(200 * 1024))
    const after = `select 'after the long query ${Date.now()}'`
    expect((await s.psql(after)).code).toBe(0)
    expect((await queriesLike(after, 1, 60_000)).length).toBe(1)
    const logged = await queriesLike(long.slice(-40), 1, 10_000)
    expect(logged.length).toBe(1)
    expect(String(logged[0]!["db_query"]).length).toBeGreaterThan(200 * 1024)
  }, 120_000)

  describe("bad input on the proxy port closes only that connection", () => {
    let dbCert: { cert: string; key: string }
    beforeAll(() => {
      // The files `tsh db login` wrote into psql's service section.
      const conf = fs.readFileSync(path.join(s.home, ".pg_service.conf"), "utf8")
      const entry = (k: string) => new RegExp(`^${k}=(.*)$`, "m").exec(conf)![1]!.trim()
      dbCert = { cert: fs.readFileSync(entry("sslcert"), "utf8"), key: fs.readFileSync(entry("sslkey"), "utf8") }
    })

    /** SSLRequest, `S`, then TLS with the given certificate. */
    const pgTls = (cert?: { cert: string; key: string }) =>
      new Promise<tls.TLSSocket>((resolve, reject) => {
        const raw = net.connect(s.c.port, "127.0.0.1")
        raw.once("error", reject)
        raw.once("connect", () => raw.write(Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])))
        raw.once("data", (d: Buffer) => {
          if (d.toString() !== "S") return reject(new Error(`proxy answered ${d.toString("hex")}`))
          const t = tls.connect({ socket: raw, rejectUnauthorized: false, servername: "localhost", ...(cert ?? {}) })
          t.once("secureConnect", () => resolve(t))
          t.once("error", reject)
        })
      })
    /** Everything the server sends until it closes (or the deadline passes: then `timedOut`). */
    const readAll = (sock: net.Socket, timeoutMs = 15_000) =>
      new Promise<{ data: Buffer; timedOut: boolean }>((resolve) => {
        const chunks: Array<Buffer> = []
        const timer = setTimeout(() => resolve({ data: Buffer.concat(chunks), timedOut: true }), timeoutMs)
        sock.on("data", (d: Buffer) => chunks.push(d))
        sock.on("error", () => undefined)
        sock.once("close", () => {
          clearTimeout(timer)
          resolve({ data: Buffer.concat(chunks), timedOut: false })
        })
      })

    it("a startup packet over 10 KiB with a valid db certificate gets an ErrorResponse and is closed", async () => {
      const session = spawnPsql(s.env(), "select pg_sleep(4)", "select 'survived'")
      await waitActive("pg_sleep(4)")
      const sock = await pgTls(dbCert)
      const len = 11 * 1024
      const packet = Buffer.alloc(len)
      packet.writeUInt32BE(len, 0)
      packet.writeUInt32BE(196608, 4)
      packet.write("user\0alice\0", 8)
      sock.write(packet)
      const got = await readAll(sock)
      expect(got.timedOut).toBe(false)
      expect(String.fromCharCode(got.data[0] ?? 0)).toBe("E")
      expect(got.data.toString()).toMatch(/startup packet/)
      const r = await session.done
      expect(r.stdout).toMatch(/survived/)
    }, 120_000)

    it("random garbage instead of TLS is closed", async () => {
      const session = spawnPsql(s.env(), "select pg_sleep(3)", "select 'survived'")
      await waitActive("pg_sleep(3)")
      for (const junk of [Buffer.from("GET / HTTP/1.0 garbage\r\n\r\n"), Buffer.from([0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8]), Buffer.alloc(64, 0xab)]) {
        const sock = net.connect(s.c.port, "127.0.0.1")
        await new Promise((r) => sock.once("connect", r))
        sock.write(junk)
        const got = await readAll(sock)
        expect(got.timedOut).toBe(false)
      }
      // A plaintext StartupMessage (sslmode=disable): an ErrorResponse says TLS is required.
      const plain = await run("psql", ["service=main-pg1 sslmode=disable", "-Atc", "select 1"], { env: s.env() })
      expect(plain.code).not.toBe(0)
      expect(plain.stderr).toMatch(/only TLS/)
      // Garbage after a PostgreSQL SSLRequest: TLS fails, only that socket closes.
      const raw = net.connect(s.c.port, "127.0.0.1")
      await new Promise((r) => raw.once("connect", r))
      raw.write(Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]))
      await new Promise((r) => raw.once("data", r))
      raw.write(Buffer.alloc(200, 0x41))
      expect((await readAll(raw)).timedOut).toBe(false)
      const r = await session.done
      expect(r.stdout).toMatch(/survived/)
    }, 120_000)

    it("a client certificate from another CA gets an ErrorResponse naming the refusal", async () => {
      const session = spawnPsql(s.env(), "select pg_sleep(3)", "select 'survived'")
      await waitActive("pg_sleep(3)")
      const sock = await pgTls(await foreignDbCert())
      const got = await readAll(sock)
      expect(got.timedOut).toBe(false)
      expect(String.fromCharCode(got.data[0] ?? 0)).toBe("E")
      expect(got.data.toString()).toMatch(/refused/)
      const r = await session.done
      expect(r.stdout).toMatch(/survived/)
    }, 120_000)
  })

  it("a killed agent fails its session promptly, leaves tsh db ls, and serves again after a restart", async () => {
    const p = spawnPsql(s.env(), "select pg_sleep(10)")
    await waitActive("pg_sleep(10)")
    await s.agent().kill()
    const r = await p.done
    expect(r.code).not.toBe(0)
    // The client is told, well before the statement would have finished.
    expect(r.ms).toBeLessThan(9_000)

    const gone = await poll(() => s.tsh(["db", "ls"]), (x) => x.code === 0 && !x.stdout.includes("pg1"), 30_000, 1_000)
    expect(gone.stdout).not.toMatch(/pg1/)

    await s.startAgent([])
    const started = Date.now()
    const ok = await poll(() => s.psql("select 42"), (x) => x.stdout.trim() === "42", 10_000, 300)
    expect(ok.stdout.trim()).toBe("42")
    expect(Date.now() - started).toBeLessThan(10_000)
    const back = await poll(() => s.tsh(["db", "ls"]), (x) => x.stdout.includes("pg1"), 30_000, 1_000)
    expect(back.stdout).toMatch(/pg1/)
  }, 180_000)

  it("a restarted auth+proxy: the agent reconnects by itself, and every query is audited exactly once", async () => {
    const before = `select 'before restart ${Date.now()}'`
    expect((await s.psql(before)).code).toBe(0)
    await queriesLike(before, 1)
    const agentPid = s.agent().child.pid
    await s.restartServer()
    const after = `select 'after restart ${Date.now()}'`
    const r = await poll(() => s.psql(after), (x) => x.code === 0, 60_000, 500)
    expect(r.stderr).toBe("")
    expect(r.code).toBe(0)
    // The same agent process, reconnected on its own.
    expect(s.agent().child.pid).toBe(agentPid)
    expect(s.agent().child.exitCode).toBeNull()
    expect((await queriesLike(before, 1)).length).toBe(1)
    await queriesLike(after, 1)
    await sleep(1_500)
    expect((await queriesLike(before, 1)).length).toBe(1)
    expect((await queriesLike(after, 1)).length).toBe(1)
    expect((await s.c.tctl("audit", "verify")).code).toBe(0)
  }, 240_000)

  it("a session that outlives an auth+proxy outage: its start, queries and end each land once", async () => {
    const tag = `outage ${Date.now()}`
    const p = spawnPsql(s.env(), `select '${tag} 1'`, `select '${tag} 2'`, "select pg_sleep(6)", `select '${tag} 3'`)
    await waitActive("pg_sleep(6)")
    // The client's connection goes through the proxy, so it dies with it; the agent's buffer keeps the events.
    await s.stopServer()
    const r = await p.done
    expect(r.stdout, r.stderr).toMatch(new RegExp(`${tag} 2`))
    await s.startServer()
    const q1 = await queriesLike(`${tag} 1`, 1, 60_000)
    const q2 = await queriesLike(`${tag} 2`, 1, 60_000)
    const sleeps = await queriesLike("pg_sleep(6)", 1, 60_000)
    // On failure, show where the events stopped: the agent's log and what its buffer still holds.
    const buffered = (f: string) => (fs.existsSync(s.tmp(`agent/${f}`)) ? fs.readFileSync(s.tmp(`agent/${f}`), "utf8") : "(none)")
    const why = () => `agent:\n${s.agent().output().slice(-3000)}\nbuffer (offset ${buffered("audit-buffer.offset")}):\n${buffered("audit-buffer.jsonl").slice(-2000)}`
    expect(q1.length, why()).toBe(1)
    expect(q2.length, why()).toBe(1)
    expect(sleeps.length, why()).toBe(1)
    const sid = q1[0]!["sid"]
    const ends = await poll(
      () => s.audit("db.session.end"),
      (es) => es.some((e) => e["sid"] === sid),
      60_000
    )
    expect(ends.filter((e) => e["sid"] === sid).length).toBe(1)
    const starts = await s.audit("db.session.start")
    expect(starts.filter((e) => e["sid"] === sid).length).toBe(1)
    // A new session works once the agent is back.
    const ok = await poll(() => s.psql("select 7"), (x) => x.stdout.trim() === "7", 60_000, 500)
    expect(ok.stdout.trim()).toBe("7")
    expect((await s.c.tctl("audit", "verify")).code).toBe(0)
  }, 240_000)
})

/** A CA of our own and a certificate for alice, routed to pg1, that the proxy must refuse. */
const foreignDbCert = () =>
  Effect.runPromise(
    Effect.gen(function* () {
      const ca = yield* X509.generateCa("evil", "main", 1)
      const leaf = yield* X509.generateEcdsaKeyPair()
      const issued = yield* X509.signUserCert({
        caCert: ca.certPem,
        caKey: ca.keyPem,
        publicKey: leaf.publicKeyPem,
        identity: {
          username: "alice",
          roles: ["access"],
          logins: ["alice"],
          routeToCluster: "main",
          traits: {},
          routeToDatabase: new RouteToDatabase({ serviceName: "pg1", protocol: "postgres", username: "alice", database: "postgres" })
        },
        notAfter: new Date(Date.now() + 3600_000)
      })
      return { cert: issued.pem, key: leaf.privateKeyPem }
    })
  )
