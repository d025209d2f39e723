/**
 * Database access end to end, every part a real process: a PostgreSQL server with TLS and
 * certificate auth, `remoteler start` (auth + proxy), a db agent joined with a token that reaches
 * the proxy over the reverse tunnel, and the user's `tsh` and `psql`.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Cluster } from "./fixtures/cluster.ts"
import { startCluster, stopCluster } from "./fixtures/cluster.ts"
import type { CertPostgres } from "./fixtures/certPostgres.ts"
import { startCertPostgres } from "./fixtures/certPostgres.ts"
import type { PostgresServer } from "./fixtures/postgres.ts"
import type { Service } from "./fixtures/processes.ts"
import { bin, node, run, startService } from "./fixtures/processes.ts"

describe("PostgreSQL through the proxy and a db agent", () => {
  let c: Cluster
  let pg: PostgresServer
  let agent: Service | undefined
  let db: CertPostgres | undefined
  let home: string
  const tmp = (name: string) => path.join(c.dir, name)
  const env = () => ({ TSH_HOME: c.tshHome, HOME: home, PGSERVICEFILE: path.join(home, ".pg_service.conf") })
  const tsh = (args: ReadonlyArray<string>, input?: string) => node(bin("tsh"), [...args], { env: env(), ...(input === undefined ? {} : { input }) })
  const psql = (sql: string) => run("psql", ["service=main-pg1", "-Atc", sql], { env: env() })
  const audit = async (type: string) => {
    const r = await c.tctl("audit", "search", `--type=${type}`, "--format=json")
    return r.stdout.trim() === "" ? [] : r.stdout.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>)
  }

  const startAgent = async (extra: ReadonlyArray<string>) => {
    const s = startService(process.execPath, [
      bin("remoteler"), "start", "--roles=db", `--proxy=localhost:${c.port}`, "--data-dir", tmp("agent"),
      `--db=name=pg1,protocol=postgres,uri=localhost:${pg.port},label=env:dev,description=test database`,
      ...extra
    ])
    await s.waitFor(/db agent .* serving pg1/, 60_000)
    return s
  }

  beforeAll(async () => {
    c = await startCluster("off")
    home = fs.mkdtempSync(path.join(os.tmpdir(), "home-"))
    // The database trusts the db CA for client certificates and serves a certificate from it.
    db = await startCertPostgres(c.tctl, tmp("db"))
    pg = db.pg
    await pg.psql("CREATE ROLE alice LOGIN; CREATE TABLE notes (id int, body text); GRANT ALL ON notes TO alice")

    expect((await c.tctl("users", "add", "alice", "--roles=access", "--logins=alice", "--db-users=alice", "--db-names=postgres")).code).toBe(0)
    expect((await node(bin("tctl"), ["--data-dir", `${c.dir}/data`, "users", "set-password", "alice"], { input: "correct horse battery\n" })).code).toBe(0)
  })
  afterAll(async () => {
    await agent?.stop()
    await db?.stop()
    await stopCluster(c)
  })

  it("joins a db agent with a token and the CA pin; the database shows in tsh db ls within seconds", async () => {
    const t = await c.tctl("tokens", "add", "--type=db")
    const token = /--token=([0-9a-f]{32})/.exec(t.stdout)![1]!
    const pin = /--ca-pin=(sha256:[0-9a-f]{64})/.exec(t.stdout)![1]!

    const wrongPin = await node(bin("remoteler"), [
      "start", "--roles=db", `--proxy=localhost:${c.port}`, "--data-dir", tmp("agent-x"), `--token=${token}`, `--ca-pin=sha256:${"0".repeat(64)}`,
      `--db=name=pg1,protocol=postgres,uri=localhost:${pg.port}`
    ])
    expect(wrongPin.code).toBe(1)
    expect(wrongPin.stderr).toMatch(/does not match --ca-pin/)

    agent = await startAgent([`--token=${token}`, `--ca-pin=${pin}`])
    expect(fs.existsSync(tmp("agent/host.crt"))).toBe(true)

    const login = await tsh(["login", `--proxy=localhost:${c.port}`, "--user=alice", "--insecure"], "correct horse battery\n")
    expect(login.code).toBe(0)
    const started = Date.now()
    let listed = ""
    while (Date.now() - started < 10_000) {
      listed = (await tsh(["db", "ls"])).stdout
      if (listed.includes("pg1")) break
    }
    expect(listed).toMatch(/pg1/)
    expect(listed).toMatch(/env=dev/)
    // The inventory answers as soon as the heartbeat arrives; the appearance event is indexed just after.
    let appeared = false
    for (const until = Date.now() + 10_000; !appeared && Date.now() < until; await new Promise((r) => setTimeout(r, 300))) {
      appeared = (await audit("resource.appeared")).some((e) => e["name"] === "pg1")
    }
    expect(appeared).toBe(true)
  })

  it("runs queries through psql with the user's database certificate, and audits each", async () => {
    const l = await tsh(["db", "login", "pg1", "--db-user=alice", "--db-name=postgres"])
    expect(l.stderr).not.toMatch(/ERROR/)
    expect(l.code).toBe(0)
    expect(fs.readFileSync(path.join(home, ".pg_service.conf"), "utf8")).toMatch(/\[main-pg1\]/)

    const who = await psql("select current_user")
    expect(who.stderr).toBe("")
    expect(who.stdout.trim()).toBe("alice")
    expect((await psql("insert into notes values (1, 'hello'); select body from notes where id = 1")).stdout.trim()).toMatch(/hello/)

    const deadline = Date.now() + 15_000
    let queries: Array<Record<string, unknown>> = []
    while (Date.now() < deadline) {
      queries = await audit("db.session.query")
      if (queries.some((q) => String(q["db_query"]).includes("insert into notes"))) break
      await new Promise((r) => setTimeout(r, 500))
    }
    expect(queries.some((q) => q["db_query"] === "select current_user" && q["db_user"] === "alice" && q["code"] === "TDB02I")).toBe(true)
    expect(queries.some((q) => String(q["db_query"]).includes("insert into notes"))).toBe(true)
    const starts = await audit("db.session.start")
    expect(starts.some((s) => s["code"] === "TDB00I" && s["db_service"] === "pg1")).toBe(true)
  })

  it("refuses a database user the roles do not allow, naming the user, the database and the rule", async () => {
    expect((await tsh(["db", "login", "pg1", "--db-user=postgres", "--db-name=postgres"])).code).toBe(0)
    const r = await psql("select 1")
    expect(r.code).not.toBe(0)
    expect(r.stderr).toMatch(/postgres/)
    expect(r.stderr).toMatch(/pg1/)
    expect(r.stderr).toMatch(/not allowed|denied/)
    const deadline = Date.now() + 15_000
    let denied: Array<Record<string, unknown>> = []
    while (Date.now() < deadline && denied.length === 0) {
      denied = (await audit("db.session.start")).filter((s) => s["code"] === "TDB00W")
      if (denied.length === 0) await new Promise((res) => setTimeout(res, 500))
    }
    expect(denied[0]?.["db_user"]).toBe("postgres")
  })

  it("starts again without the token, from the identity in its data dir", async () => {
    await agent!.stop()
    agent = await startAgent([])
    expect((await tsh(["db", "login", "pg1", "--db-user=alice", "--db-name=postgres"])).code).toBe(0)
    const deadline = Date.now() + 15_000
    let out = ""
    while (Date.now() < deadline) {
      const r = await psql("select 42")
      out = r.stdout.trim()
      if (out === "42") break
      await new Promise((res) => setTimeout(res, 500))
    }
    expect(out).toBe("42")
    expect((await c.tctl("audit", "verify")).code).toBe(0)
  })
})
