/**
 * The embedded default with a database: one `remoteler start --roles=auth,proxy,db` process runs
 * auth, the proxy and a db agent that joins the local auth and dials the local proxy over the same
 * reverse tunnel a remote agent uses. psql reaches PostgreSQL through it, and a restart keeps the
 * agent's identity.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { CertPostgres } from "./fixtures/certPostgres.ts"
import { startCertPostgres } from "./fixtures/certPostgres.ts"
import type { Service } from "./fixtures/processes.ts"
import { bin, freePort, node, run, startService } from "./fixtures/processes.ts"

describe("auth, proxy and a db agent in one process", () => {
  let dir: string
  let home: string
  let port: number
  let server: Service | undefined
  let db: CertPostgres | undefined
  const env = () => ({ TSH_HOME: path.join(home, ".tsh"), HOME: home, PGSERVICEFILE: path.join(home, ".pg_service.conf") })
  const tctl = (...args: Array<string>) => node(bin("tctl"), ["--data-dir", path.join(dir, "data"), ...args], { input: "correct horse battery\n" })
  const tsh = (args: ReadonlyArray<string>, input?: string) => node(bin("tsh"), [...args], { env: env(), ...(input === undefined ? {} : { input }) })
  const start = async (pgPort: number) => {
    const s = startService(process.execPath, [
      bin("remoteler"), "start", "--roles=auth,proxy,db", "-c", path.join(dir, "remoteler.yaml"), `--db=name=pg1,protocol=postgres,uri=localhost:${pgPort}`
    ])
    await s.waitFor(/db agent .* serving pg1 in this process/, 90_000)
    return s
  }

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "remoteler-embedded-"))
    home = fs.mkdtempSync(path.join(os.tmpdir(), "home-"))
    port = await freePort()
    fs.writeFileSync(
      path.join(dir, "remoteler.yaml"),
      [
        "remoteler:",
        `  data_dir: ${dir}/data`,
        "auth_service:",
        "  authentication: { second_factor: \"off\" }",
        "proxy_service:",
        `  web_listen_addr: 127.0.0.1:${port}`,
        `  public_addr: localhost:${port}`,
        ""
      ].join("\n")
    )
    // The database must trust this cluster's db CA, which exists once auth has run: start, sign, restart.
    const first = startService(process.execPath, [bin("remoteler"), "start", "-c", path.join(dir, "remoteler.yaml")])
    await first.waitFor(/proxy running/, 90_000)
    db = await startCertPostgres(tctl, path.join(dir, "db"))
    await db.pg.psql("CREATE ROLE alice LOGIN")
    expect((await tctl("users", "add", "alice", "--roles=access", "--db-users=alice", "--db-names=postgres")).code).toBe(0)
    expect((await tctl("users", "set-password", "alice")).code).toBe(0)
    await first.stop()
    server = await start(db.pg.port)
  })
  afterAll(async () => {
    await server?.stop()
    await db?.stop()
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  it("serves psql through the in-process agent, audits the query, and keeps the agent's identity across a restart", async () => {
    expect((await tsh(["login", `--proxy=localhost:${port}`, "--user=alice", "--insecure"], "correct horse battery\n")).code).toBe(0)
    expect((await tsh(["db", "login", "pg1", "--db-user=alice", "--db-name=postgres"])).code).toBe(0)
    const q = await run("psql", ["service=main-pg1", "-Atc", "SELECT 'embedded ok'"], { env: env() })
    expect(q.code, q.stderr).toBe(0)
    expect(q.stdout.trim()).toBe("embedded ok")

    const joins = (await tctl("audit", "search", "--type=instance.join", "--format=json")).stdout.trim().split("\n").filter((l) => l !== "")
    expect(joins).toHaveLength(1)
    const hostId = JSON.parse(fs.readFileSync(path.join(dir, "data", "db-agent", "host.json"), "utf8")).host_id as string
    expect(JSON.parse(joins[0]!).host_id).toBe(hostId)

    await server!.stop()
    server = await start(db!.pg.port)
    const again = await run("psql", ["service=main-pg1", "-Atc", "SELECT 'still ok'"], { env: env() })
    expect(again.code, again.stderr).toBe(0)
    // Same identity: no second join.
    expect((await tctl("audit", "search", "--type=instance.join", "--format=json")).stdout.trim().split("\n").filter((l) => l !== "")).toHaveLength(1)
    const queries = (await tctl("audit", "search", "--type=db.session.query", "--format=json")).stdout
    expect(queries).toContain("embedded ok")
  })
})
