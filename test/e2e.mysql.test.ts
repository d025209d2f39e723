/**
 * MySQL access end to end, every part a real process: MariaDB 10.11 with TLS whose users log in
 * with a db-CA certificate (REQUIRE X509), `remoteler start` (auth + proxy with a MySQL listener),
 * a db agent reaching the proxy over the reverse tunnel, `tsh`, the real `mysql` client and mysql2.
 */
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as tls from "node:tls"
import mysql from "mysql2/promise"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Cluster } from "./fixtures/cluster.ts"
import { request, startCluster, stopCluster } from "./fixtures/cluster.ts"
import type { MariaDb } from "./fixtures/mariadb.ts"
import { installMariaDb, startCertMariaDb } from "./fixtures/mariadb.ts"
import type { Service } from "./fixtures/processes.ts"
import { bin, freePort, node, run, startService } from "./fixtures/processes.ts"

type AuditRow = Record<string, unknown>

const DB_TYPES = [
  "db.session.start",
  "db.session.end",
  "db.session.query",
  "db.session.mysql.statements.prepare",
  "db.session.mysql.statements.close",
  "db.session.mysql.init_db"
]

describe("MySQL through the proxy and a db agent", () => {
  let c: Cluster
  let db: MariaDb
  let agent: Service | undefined
  let home: string
  let mysqlPort: number
  const tmp = (name: string) => path.join(c.dir, name)
  const env = () => ({ TSH_HOME: c.tshHome, HOME: home })
  const tsh = (args: ReadonlyArray<string>, input?: string) => node(bin("tsh"), [...args], { env: env(), ...(input === undefined ? {} : { input }) })
  /** The real client, configured only by the group `tsh db login` wrote. */
  const mysqlCli = (args: ReadonlyArray<string>, input?: string) =>
    run("mysql", ["--defaults-group-suffix=_main-maria1", "-N", "-B", ...args], { env: env(), ...(input === undefined ? {} : { input }) })
  /** Every database session event in the log, as `tctl audit search` prints them. */
  const auditRows = async (): Promise<Array<AuditRow>> => {
    const r = await c.tctl("audit", "search", `--type=${DB_TYPES.join(",")}`, "--format=json", "--limit=100000")
    return r.stdout.trim() === "" ? [] : r.stdout.trim().split("\n").map((l) => JSON.parse(l) as AuditRow)
  }
  /**
   * What the tests expect in the audit log. Checked together (each `tctl` run costs a process
   * start), by the last test and by `settle` where a test needs the rows themselves.
   */
  const expected: Array<{ readonly what: string; readonly type: string; readonly pred: (e: AuditRow) => boolean }> = []
  const expectAudit = (what: string, type: string, pred: (e: AuditRow) => boolean) => expected.push({ what, type, pred })
  /** Polls until every expectation holds (agents upload every 500 ms); returns the rows. */
  const settle = async (timeoutMs = 30_000): Promise<Array<AuditRow>> => {
    const deadline = Date.now() + timeoutMs
    let rows: Array<AuditRow> = []
    let missing = expected
    while (Date.now() < deadline) {
      rows = await auditRows()
      missing = expected.filter((x) => !rows.some((e) => e["event"] === x.type && x.pred(e)))
      if (missing.length === 0) return rows
      await new Promise((r) => setTimeout(r, 500))
    }
    throw new Error(`not in the audit log: ${missing.map((m) => m.what).join("; ")}\nlast events: ${JSON.stringify(rows.slice(-5))}`)
  }
  const certFiles = () => {
    const dir = path.join(c.tshHome, "keys", "localhost", "alice-db", "main")
    return {
      ca: fs.readFileSync(path.join(dir, "maria1-ca.pem"), "utf8"),
      cert: fs.readFileSync(path.join(dir, "maria1.crt"), "utf8"),
      key: fs.readFileSync(path.join(dir, "maria1.key"), "utf8")
    }
  }
  const connect2 = (database = "app") =>
    mysql.createConnection({ host: "localhost", port: mysqlPort, user: "alice", database, ssl: certFiles() })

  /** A certificate for `dbUser` on maria1, asked of the proxy as tsh db login does (alice's login certificate, mTLS), as HOME/<dbUser>.crt/.key. */
  const dbCertFor = async (dbUser: string) => {
    const keys = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" })
    const userDir = path.join(c.tshHome, "keys", "localhost")
    const res = await request(c.port, "POST", "/v1/webapi/db/certs", {
      body: { service_name: "maria1", db_user: dbUser, db_name: "app", tls_pub_key: keys.publicKey.export({ type: "spki", format: "pem" }) },
      cert: fs.readFileSync(path.join(userDir, "alice.crt"), "utf8"),
      key: fs.readFileSync(path.join(userDir, "alice.key"), "utf8")
    })
    expect(res.status).toBe(200)
    fs.writeFileSync(path.join(home, `${dbUser}.crt`), (JSON.parse(res.body) as { tls_cert: string }).tls_cert)
    fs.writeFileSync(path.join(home, `${dbUser}.key`), keys.privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 })
  }

  const startAgent = async (extra: ReadonlyArray<string>) => {
    const s = startService(process.execPath, [
      bin("remoteler"), "start", "--roles=db", `--proxy=localhost:${c.port}`, "--data-dir", tmp("agent"),
      `--db=name=maria1,protocol=mysql,uri=localhost:${db.port},label=env:dev`,
      ...extra
    ])
    await s.waitFor(/db agent .* serving maria1/, 60_000)
    return s
  }

  beforeAll(async () => {
    mysqlPort = await freePort()
    const [cluster, installed] = await Promise.all([startCluster("off", [`  mysql_listen_addr: 127.0.0.1:${mysqlPort}`]), installMariaDb()])
    c = cluster
    home = fs.mkdtempSync(path.join(os.tmpdir(), "home-"))
    db = await startCertMariaDb(c.tctl, tmp("db"), installed)
    await db.sql(
      [
        "CREATE DATABASE app",
        "CREATE DATABASE other",
        "CREATE TABLE app.notes (id INT PRIMARY KEY, body TEXT)",
        "CREATE USER alice@'%' REQUIRE X509",
        "GRANT ALL ON app.* TO alice@'%'",
        "GRANT ALL ON other.* TO alice@'%'",
        // The agent's certificate for carol has the subject CN=carol, STREET=<cluster> (see src/adapters/x509.ts).
        "CREATE USER carol@'%' REQUIRE SUBJECT '/CN=carol/street=main'",
        "GRANT SELECT ON app.* TO carol@'%'",
        "CREATE USER bob@'%' REQUIRE X509",
        "GRANT ALL ON *.* TO bob@'%'"
      ].join("; ")
    )
    expect((await c.tctl("users", "add", "alice", "--roles=access", "--logins=alice", "--db-users=alice,carol", "--db-names=app")).code).toBe(0)
    expect((await node(bin("tctl"), ["--data-dir", `${c.dir}/data`, "users", "set-password", "alice"], { input: "correct horse battery\n" })).code).toBe(0)
    const t = await c.tctl("tokens", "add", "--type=db")
    const token = /--token=([0-9a-f]{32})/.exec(t.stdout)![1]!
    const pin = /--ca-pin=(sha256:[0-9a-f]{64})/.exec(t.stdout)![1]!
    agent = await startAgent([`--token=${token}`, `--ca-pin=${pin}`])
    expect((await tsh(["login", `--proxy=localhost:${c.port}`, "--user=alice", "--insecure"], "correct horse battery\n")).code).toBe(0)
    const started = Date.now()
    while (Date.now() - started < 15_000 && !(await tsh(["db", "ls"])).stdout.includes("maria1")) await new Promise((r) => setTimeout(r, 300))
  }, 170_000)
  afterAll(async () => {
    await agent?.stop()
    await db?.stop()
    await stopCluster(c)
    if (home !== undefined) fs.rmSync(home, { recursive: true, force: true })
  })

  it("tsh db login writes a my.cnf group the real mysql client connects with; the greeting carries MariaDB's own version", async () => {
    const l = await tsh(["db", "login", "maria1", "--db-user=alice", "--db-name=app"])
    expect(l.stderr).toBe("")
    expect(l.code).toBe(0)
    const cnf = fs.readFileSync(path.join(home, ".my.cnf"), "utf8")
    expect(cnf).toMatch(/^\[client_main-maria1\]$/m)
    expect(cnf).toMatch(new RegExp(`^port=${mysqlPort}$`, "m"))
    expect(cnf).toMatch(/^ssl-cert=.*maria1\.crt$/m)

    const who = await mysqlCli(["-e", "SELECT CURRENT_USER(), DATABASE(), VARIABLE_VALUE <> '' FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'"])
    expect(who.stderr).toBe("")
    expect(who.stdout.trim().split("\t")).toEqual(["alice@%", "app", "1"])
    // `status` prints the version from the proxy's greeting (mysql_get_server_info), not from a query.
    const status = await mysqlCli(["-e", "status"])
    expect(status.stdout).toContain(`Server version:\t\t${db.serverVersion}`)
    expect((await mysqlCli(["-e", "INSERT INTO notes VALUES (1, 'hello'); SELECT body FROM notes WHERE id = 1"])).stdout.trim()).toBe("hello")

    expectAudit("the mysql client's query", "db.session.query", (q) =>
      q["db_query"] === "SELECT CURRENT_USER(), DATABASE(), VARIABLE_VALUE <> '' FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'" && q["code"] === "TDB02I" && q["db_user"] === "alice" && q["db_service"] === "maria1" && q["db_name"] === "app"
    )
    // The client splits its -e text at the semicolons: two queries.
    expectAudit("the insert", "db.session.query", (q) => q["db_query"] === "INSERT INTO notes VALUES (1, 'hello')")
    expectAudit("the select after it", "db.session.query", (q) => q["db_query"] === "SELECT body FROM notes WHERE id = 1")
    const rows = await settle()
    const start = rows.find((s) => s["event"] === "db.session.start" && s["code"] === "TDB00I" && s["db_protocol"] === "mysql")!
    expect(start["db_name"]).toBe("app")
    expect(rows.some((e) => e["event"] === "db.session.end" && e["sid"] === start["sid"])).toBe(true)
  })

  it("tsh db config and env print the MySQL variants", async () => {
    const cmd = await tsh(["db", "config", "--format=cmd", "maria1"])
    expect(cmd.stdout).toMatch(new RegExp(`^mysql --host=localhost --port=${mysqlPort} --protocol=TCP --user=alice --database=app --ssl-ca=\\S+ --ssl-cert=\\S+ --ssl-key=\\S+ --ssl-verify-server-cert$`, "m"))
    // The printed command line works as printed.
    const args = cmd.stdout.trim().split(" ").slice(1)
    const r = await run("mysql", ["--no-defaults", ...args, "-N", "-B", "-e", "SELECT 40 + 2"])
    expect(r.stderr).toBe("")
    expect(r.stdout.trim()).toBe("42")
    // tsh db connect runs the client with the login's option group (here reading SQL from stdin).
    const viaConnect = await tsh(["db", "connect", "maria1"], "SELECT CONCAT('via ', 'connect');\n")
    expect(viaConnect.stdout).toContain("via connect")
    const e = await tsh(["db", "env", "maria1"])
    expect(e.stdout).toContain(`export MYSQL_TCP_PORT=${mysqlPort}`)
    expect(e.stdout).toContain("export MYSQL_GROUP_SUFFIX=_main-maria1")
  })

  it("mysql2 with server-side prepared statements: executions are audited with their parameters", async () => {
    const conn = await connect2()
    try {
      await conn.execute("INSERT INTO notes VALUES (?, ?)", [2, "from mysql2"])
      const [rows] = await conn.execute("SELECT id, body FROM notes WHERE id = ? AND body LIKE ?", [2, "from%"])
      expect(rows).toEqual([{ id: 2, body: "from mysql2" }])
      const [nulls] = await conn.execute("SELECT ? IS NULL AS n, ? AS d", [null, new Date(Date.UTC(2024, 0, 2, 3, 4, 5))])
      expect((nulls as Array<{ n: number }>)[0]!.n).toBe(1)
    } finally {
      await conn.end()
    }
    const same = (a: unknown, b: ReadonlyArray<unknown>) => JSON.stringify(a) === JSON.stringify(b)
    expectAudit("an execution with its parameters", "db.session.query", (e) =>
      e["db_query"] === "SELECT id, body FROM notes WHERE id = ? AND body LIKE ?" && same(e["db_query_parameters"], ["2", "from%"]) && typeof e["statement_id"] === "number"
    )
    expectAudit("an insert with its parameters", "db.session.query", (e) => e["db_query"] === "INSERT INTO notes VALUES (?, ?)" && same(e["db_query_parameters"], ["2", "from mysql2"]))
    expectAudit("NULL and a DATETIME parameter", "db.session.query", (e) => e["db_query"] === "SELECT ? IS NULL AS n, ? AS d" && Array.isArray(e["db_query_parameters"]) && (e["db_query_parameters"] as Array<unknown>)[0] === null)
    expectAudit("the prepare, with Teleport's code", "db.session.mysql.statements.prepare", (e) => e["db_query"] === "INSERT INTO notes VALUES (?, ?)" && e["code"] === "TMY00I")
  })

  it("packets over 16 MiB cross the relay both ways, and their audit events are cut to a size the upload takes", async () => {
    const n = 17 * 1024 * 1024 + 5
    const big = "x".repeat(n)
    const conn = await connect2()
    try {
      const [q] = await conn.query(`SELECT LENGTH('${big}') AS n`)
      expect(q).toEqual([{ n }])
      const [e] = await conn.execute("SELECT LENGTH(?) AS n", [big])
      expect(e).toEqual([{ n }])
      const [r] = await conn.query(`SELECT REPEAT('y', ${n}) AS s`)
      expect((r as Array<{ s: string }>)[0]!.s.length).toBe(n)
    } finally {
      await conn.end()
    }
    expectAudit("the 17 MiB query, cut", "db.session.query", (q) => typeof q["db_query"] === "string" && q["db_query"].startsWith("SELECT LENGTH('xxx") && q["db_query"].endsWith(`…(${n + 22} characters)`))
    expectAudit("the 17 MiB parameter, cut", "db.session.query", (q) => q["db_query"] === "SELECT LENGTH(?) AS n" && Array.isArray(q["db_query_parameters"]) && String((q["db_query_parameters"] as Array<unknown>)[0]).endsWith(`…(${n} characters)`))
  })

  it("ALPN remoteler-mysql on the web port: TLS first, then plain MySQL inside, greeted with the server's version", async () => {
    const sock = tls.connect({ host: "localhost", port: c.port, ALPNProtocols: ["remoteler-mysql"], ...certFiles(), servername: "localhost" })
    await new Promise((r, j) => {
      sock.once("secureConnect", r)
      sock.once("error", j)
    })
    expect(sock.alpnProtocol).toBe("remoteler-mysql")
    const conn = await mysql.createConnection({ stream: sock, user: "alice", database: "app" })
    try {
      const greeting = (conn as unknown as { connection: { _handshakePacket: { serverVersion: string } } }).connection._handshakePacket
      expect(greeting.serverVersion).toContain(db.serverVersion)
      const [rows] = await conn.execute("SELECT ? + 1 AS n", [41])
      expect(rows).toEqual([{ n: 42 }])
    } finally {
      await conn.end()
    }
    expectAudit("a query over the ALPN path", "db.session.query", (q) => q["db_query"] === "SELECT ? + 1 AS n" && JSON.stringify(q["db_query_parameters"]) === '["41"]')
  })

  it("tsh proxy db --tunnel: a local listener any MySQL client reaches without certificates", async () => {
    const tunnel = startService(process.execPath, [bin("tsh"), "proxy", "db", "--tunnel", "maria1"], env())
    try {
      const line = await tunnel.waitFor(/on 127\.0\.0\.1:\d+/, 60_000)
      const port = /:(\d+)$/.exec(line)![1]!
      const r = await run("mysql", ["--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-P", port, "-u", "alice", "-N", "-B", "app", "-e", "SELECT CONCAT('through ', 'the tunnel')"])
      expect(r.stderr).toBe("")
      expect(r.stdout.trim()).toBe("through the tunnel")
    } finally {
      await tunnel.stop()
    }
  })

  it("refuses a database name the roles do not allow: at connect, on COM_INIT_DB and on USE; the session goes on", async () => {
    const initial = await mysqlCli(["--database=other", "-e", "SELECT 1"])
    expect(initial.code).not.toBe(0)
    expect(initial.stderr).toMatch(/1044/)
    expect(initial.stderr).toMatch(/database other on db maria1 as db user alice/)
    expect(initial.stderr).toMatch(/not allowed by any role/)
    expectAudit("the refused initial database", "db.session.start", (s) => s["code"] === "TDB00W" && s["db_name"] === "other")

    // The mysql client's own `use` command is COM_INIT_DB.
    const initDb = await mysqlCli(["--force"], "use other\nSELECT DATABASE();\n")
    expect(initDb.stderr).toMatch(/database other on db maria1 as db user alice not allowed/)
    expect(initDb.stdout.trim()).toBe("app")
    expectAudit("the refused COM_INIT_DB", "db.session.mysql.init_db", (e) => e["schema_name"] === "other" && e["success"] === false && e["code"] === "TMY07I")

    const conn = await connect2()
    try {
      await expect(conn.query("USE other")).rejects.toThrow(/database other on db maria1 as db user alice not allowed/)
      await expect(conn.query("/* hi */ use `other`")).rejects.toThrow(/not allowed/)
      const [rows] = await conn.query("SELECT DATABASE() AS d")
      expect(rows).toEqual([{ d: "app" }])
      await conn.query("USE app")
      // COM_CHANGE_USER would switch db users under the same certificate: refused, connection closed.
      await expect(conn.changeUser({ user: "bob" })).rejects.toThrow(/COM_CHANGE_USER/)
    } finally {
      conn.destroy()
    }
    expectAudit("the refused USE", "db.session.query", (q) => q["db_query"] === "USE other" && q["success"] === false)
  })

  it("logs in as a MariaDB user that requires the certificate's subject (REQUIRE SUBJECT)", async () => {
    await dbCertFor("carol")
    const r = await mysqlCli(["--user=carol", `--ssl-cert=${path.join(home, "carol.crt")}`, `--ssl-key=${path.join(home, "carol.key")}`, "-e", "SELECT CURRENT_USER()"])
    expect(r.stderr).toBe("")
    expect(r.stdout.trim()).toBe("carol@%")
  })

  it("refuses a database user the roles do not allow, naming the user, the database and the rule", async () => {
    await dbCertFor("bob")
    const r = await mysqlCli(["--user=bob", `--ssl-cert=${path.join(home, "bob.crt")}`, `--ssl-key=${path.join(home, "bob.key")}`, "-e", "SELECT 1"])
    expect(r.code).not.toBe(0)
    expect(r.stderr).toMatch(/1045/)
    expect(r.stderr).toMatch(/access to db maria1 as db user bob not allowed by any role \(allow\.db_users\)/)
    expectAudit("the refused db user", "db.session.start", (s) => s["code"] === "TDB00W" && s["db_user"] === "bob" && /db_users/.test(String(s["error"])))
  })

  it("bad input closes only that connection, with MySQL's own errors", async () => {
    /** A raw client: the greeting, then whatever the test sends. */
    const raw = async () => {
      const s = net.connect({ host: "127.0.0.1", port: mysqlPort })
      const received: Array<Buffer> = []
      s.on("data", (d: Buffer) => received.push(d))
      const closed = new Promise<void>((r) => s.once("close", () => r()))
      await new Promise((r) => s.once("connect", r))
      while (Buffer.concat(received).length < 4) await new Promise((r) => setTimeout(r, 20))
      return { s, received, closed }
    }
    const errOf = (b: Buffer) => ({ code: b.readUInt16LE(5), message: b.subarray(13).toString("utf8") })

    // A client that does not ask for TLS is told to use the certificate.
    const plain = await raw()
    plain.received.length = 0
    const resp = Buffer.alloc(4 + 32 + 6 + 1)
    resp.writeUIntLE(resp.length - 4, 0, 3)
    resp[3] = 1
    resp.writeUInt32LE(0x200 | 0x8000, 4)
    resp.write("alice\0", 36)
    plain.s.write(resp)
    await plain.closed
    const tlsErr = errOf(Buffer.concat(plain.received))
    expect(tlsErr.code).toBe(1045)
    expect(tlsErr.message).toMatch(/tsh db login/)

    // A header whose length lies far beyond any handshake: ERR 1153 at once, without waiting for the bytes.
    const liar = await raw()
    liar.received.length = 0
    liar.s.write(Buffer.from([0xf0, 0xff, 0xff, 1]))
    await liar.closed
    expect(errOf(Buffer.concat(liar.received)).code).toBe(1153)

    // Inside TLS, a handshake response whose user name is not terminated: ERR 1835, closed.
    const trunc = await raw()
    const ssl = Buffer.alloc(4 + 32)
    ssl.writeUIntLE(32, 0, 3)
    ssl[3] = 1
    ssl.writeUInt32LE(0x200 | 0x800 | 0x8000, 4)
    trunc.s.write(ssl)
    trunc.s.removeAllListeners("data")
    const secure = tls.connect({ socket: trunc.s, ...certFiles(), servername: "localhost" })
    await new Promise((r, j) => {
      secure.once("secureConnect", r)
      secure.once("error", j)
    })
    const got: Array<Buffer> = []
    secure.on("data", (d: Buffer) => got.push(d))
    const bad = Buffer.alloc(4 + 32 + 3)
    bad.writeUIntLE(35, 0, 3)
    bad[3] = 2
    bad.writeUInt32LE(0x200 | 0x800 | 0x8000, 4)
    bad.write("ali", 36)
    secure.write(bad)
    await new Promise((r) => secure.once("close", r))
    const err = errOf(Buffer.concat(got))
    expect(err.code).toBe(1835)
    expect(err.message).toMatch(/username/)

    // Everyone else keeps working.
    expect((await mysqlCli(["-e", "SELECT 7"])).stdout.trim()).toBe("7")
  })

  it("records every statement of a session in order, and nothing is lost when the agent is killed mid-session", async () => {
    const conn = await connect2()
    const marker = `m${Date.now()}`
    const statements = [`SELECT '${marker}-1'`, `SELECT '${marker}-2'`, `UPDATE notes SET body = '${marker}' WHERE id = 1`]
    for (const s of statements) await conn.query(s)
    await agent!.kill()
    await expect(conn.query(`SELECT '${marker}-after'`)).rejects.toThrow()
    conn.destroy()
    agent = await startAgent([])
    // The agent's buffer was on disk: after the restart the statements reach the log.
    for (const s of statements) expectAudit(`statement ${s}`, "db.session.query", (q) => q["db_query"] === s)
    const rows = await settle()
    const found = statements.map((s) => rows.find((q) => q["db_query"] === s)!)
    expect(new Set(found.map((q) => q["sid"])).size).toBe(1)
    const eis = found.map((q) => Number(q["ei"]))
    expect([...eis].sort((a, b) => a - b)).toEqual(eis)

    // And the new agent serves again.
    const deadline = Date.now() + 20_000
    let out = ""
    while (Date.now() < deadline) {
      out = (await mysqlCli(["-e", "SELECT 'back'"])).stdout.trim()
      if (out === "back") break
      await new Promise((r) => setTimeout(r, 300))
    }
    expect(out).toBe("back")
    expect((await c.tctl("audit", "verify")).code).toBe(0)
  })

  it("tsh db logout and tsh logout remove the my.cnf group", async () => {
    fs.appendFileSync(path.join(home, ".my.cnf"), "\n[client]\ndefault-character-set=utf8mb4\n")
    expect((await tsh(["db", "logout", "maria1"])).code).toBe(0)
    const cnf = fs.readFileSync(path.join(home, ".my.cnf"), "utf8")
    expect(cnf).not.toMatch(/client_main-maria1/)
    expect(cnf).toMatch(/^\[client\]$/m)
    // tsh logout takes the groups of the profile's database logins with it, and leaves the user's own.
    expect((await tsh(["db", "login", "maria1", "--db-user=alice", "--db-name=app"])).code).toBe(0)
    expect(fs.readFileSync(path.join(home, ".my.cnf"), "utf8")).toMatch(/client_main-maria1/)
    expect((await tsh(["logout"])).code).toBe(0)
    const after = fs.readFileSync(path.join(home, ".my.cnf"), "utf8")
    expect(after).not.toMatch(/client_main-maria1/)
    expect(after).toMatch(/^default-character-set=utf8mb4$/m)
  })
})
