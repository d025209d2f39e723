/**
 * The PostgreSQL engine against a real PostgreSQL 15 that only accepts TLS client certificates
 * (`hostssl all all 127.0.0.1/32 cert`, server and client certificates from a test db CA), driven
 * by the real psql and pgbench. A plain TCP listener stands in for the proxy: it hands each socket
 * to the engine with a fixed identity (TLS termination is the proxy's job, tested elsewhere) and
 * sends 16-byte CancelRequests to the cancel registry, as the proxy does.
 */
import { spawn } from "node:child_process"
import { execFileSync } from "node:child_process"
import { randomUUID } from "node:crypto"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Fiber, Schema } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { generateCa, generateEcdsaKeyPair, signHostCert, signUserCert } from "../src/adapters/x509.ts"
import type { CertificateAuthority } from "../src/adapters/x509.ts"
import { Role } from "../src/domain/Role.ts"
import { engineFor, engines } from "../src/protocols/engine.ts"
import type { AuditRecord, DatabaseTls, SessionContext } from "../src/protocols/engine.ts"
import { BackendParser, serializeFrontend } from "../src/protocols/postgres/index.ts"
import type { BackendMessage } from "../src/protocols/postgres/index.ts"
import { PostgresCancelRegistry, PostgresEngine, cancelRequest, isCancelRequest } from "../src/protocols/postgres/engine.ts"
import type { PostgresServer } from "./fixtures/postgres.ts"
import { startPostgresAsync } from "./fixtures/postgres.ts"
import { run } from "./fixtures/processes.ts"

const decodeRole = Schema.decodeUnknownSync(Role)

const dev = decodeRole({
  kind: "role",
  version: "v7",
  metadata: { name: "dev" },
  spec: {
    allow: { db_labels: { "*": "*" }, db_users: ["alice", "bob"], db_names: ["appdb", "postgres"] },
    deny: { db_labels: { "*": "*" }, db_users: ["postgres"], db_names: ["secret"] }
  }
})

const strict = decodeRole({
  kind: "role",
  version: "v7",
  metadata: { name: "strict" },
  spec: { allow: { db_labels: { "*": "*" }, db_users: ["alice"], db_names: ["*"] }, options: { disconnect_expired_cert: true } }
})

interface Listener {
  readonly port: number
  readonly events: Array<AuditRecord>
  readonly cancels: Array<boolean>
  readonly fibers: Array<Fiber.RuntimeFiber<void>>
  readonly close: () => Promise<void>
}

interface ListenerOptions {
  readonly dbUser: string
  readonly dbName?: string
  readonly roles?: ReadonlyArray<Role>
  readonly expires?: Date
  readonly tls?: DatabaseTls
  /** Per-record delay of the audit sink. */
  readonly auditDelayMs?: number
}

const waitFor = async (what: string, pred: () => boolean, timeoutMs = 15_000): Promise<void> => {
  const start = Date.now()
  while (!pred()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

describe("PostgreSQL engine", () => {
  let pg: PostgresServer
  let ca: CertificateAuthority
  let keyDir: string
  const listeners: Array<Listener> = []

  const issueClientCert = (dbUser: string) =>
    Effect.gen(function* () {
      const keys = yield* generateEcdsaKeyPair()
      const cert = yield* signUserCert({
        caCert: ca.certPem,
        caKey: ca.keyPem,
        publicKey: keys.publicKeyPem,
        identity: { username: dbUser, roles: [], logins: [], routeToCluster: "", traits: {} },
        notAfter: new Date(Date.now() + 3_600_000)
      })
      return { certPem: cert.pem, keyPem: keys.privateKeyPem, caPems: [ca.certPem] }
    }).pipe(Effect.orDie)

  const listen = async (opts: ListenerOptions): Promise<Listener> => {
    const events: Array<AuditRecord> = []
    const cancels: Array<boolean> = []
    const fibers: Array<Fiber.RuntimeFiber<void>> = []
    const sockets = new Set<net.Socket>()
    const server = net.createServer((socket) => {
      sockets.add(socket)
      socket.once("close", () => sockets.delete(socket))
      socket.on("error", () => undefined)
      socket.once("data", (chunk: Buffer) => {
        socket.pause()
        if (isCancelRequest(chunk)) {
          void Effect.runPromise(cancelRequest(chunk.readInt32BE(8), chunk.subarray(12, 16))).then((ok) => {
            cancels.push(ok)
            socket.destroy()
          })
          return
        }
        socket.unshift(chunk)
        const ctx: SessionContext = {
          client: socket,
          identity: {
            username: "alice@example.com",
            roles: (opts.roles ?? [dev]).map((r) => r.metadata.name),
            traits: {},
            expires: opts.expires ?? new Date(Date.now() + 3_600_000),
            routeToDatabase: { serviceName: "pg1", protocol: "postgres", username: opts.dbUser, database: opts.dbName }
          },
          roles: opts.roles ?? [dev],
          database: {
            name: "pg1",
            protocol: "postgres",
            uri: `127.0.0.1:${pg.port}`,
            labels: { env: "test" },
            tls: opts.tls ?? { mode: "verify-full", caCertPem: ca.certPem, serverName: "localhost" }
          },
          issueClientCert,
          audit: (e) =>
            Effect.zipRight(
              opts.auditDelayMs === undefined ? Effect.void : Effect.sleep(opts.auditDelayMs),
              Effect.sync(() => void events.push(e))
            ),
          sessionId: randomUUID(),
          clusterName: "main",
          hostId: "host-1"
        }
        fibers.push(Effect.runFork(Effect.scoped(PostgresEngine.handleSession(ctx))))
      })
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const port = (server.address() as net.AddressInfo).port
    const l: Listener = {
      port,
      events,
      cancels,
      fibers,
      close: () =>
        new Promise<void>((resolve) => {
          for (const s of sockets) s.destroy()
          server.close(() => resolve())
        })
    }
    listeners.push(l)
    return l
  }

  const conn = (l: Listener, user: string, db: string) => `host=127.0.0.1 port=${l.port} user=${user} dbname=${db} sslmode=disable`
  const psql = (l: Listener, user: string, db: string, sql: string, input?: string) =>
    run("psql", [conn(l, user, db), "-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql], {
      ...(input !== undefined ? { input } : {}),
      timeoutMs: 30_000
    })

  beforeAll(async () => {
    ca = await Effect.runPromise(generateCa("db", "main", 1))
    const serverKeys = await Effect.runPromise(generateEcdsaKeyPair())
    const serverCert = await Effect.runPromise(
      signHostCert({
        caCert: ca.certPem,
        caKey: ca.keyPem,
        publicKey: serverKeys.publicKeyPem,
        identity: { username: "localhost", roles: [], logins: [], routeToCluster: "", traits: {} },
        notAfter: new Date(Date.now() + 86_400_000),
        dnsNames: ["localhost"],
        ipAddresses: ["127.0.0.1"]
      })
    )
    // PostgreSQL reads its key only when its own OS user owns it.
    keyDir = fs.mkdtempSync(path.join(os.tmpdir(), "pgengine-keys-"))
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim())
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim())
    const files: Record<string, string> = {
      "server.crt": serverCert.pem,
      "server.key": serverKeys.privateKeyPem,
      "ca.crt": ca.certPem,
      "pg_hba.conf": "local all all trust\nhostssl all bob 127.0.0.1/32 scram-sha-256\nhostssl all all 127.0.0.1/32 cert\n"
    }
    for (const [name, text] of Object.entries(files)) {
      fs.writeFileSync(path.join(keyDir, name), text, { mode: 0o600 })
      fs.chownSync(path.join(keyDir, name), uid, gid)
    }
    fs.chmodSync(keyDir, 0o755)
    pg = await startPostgresAsync({
      fsync: false,
      settings: {
        ssl: "on",
        ssl_cert_file: path.join(keyDir, "server.crt"),
        ssl_key_file: path.join(keyDir, "server.key"),
        ssl_ca_file: path.join(keyDir, "ca.crt"),
        hba_file: path.join(keyDir, "pg_hba.conf")
      }
    })
    await pg.psql("CREATE ROLE alice LOGIN")
    await pg.psql("CREATE ROLE bob LOGIN PASSWORD 'secret'")
    await pg.psql("CREATE DATABASE appdb OWNER alice")
  })

  afterAll(async () => {
    for (const l of listeners) await l.close()
    await pg?.stop()
    if (keyDir !== undefined) fs.rmSync(keyDir, { recursive: true, force: true })
  })

  it("is registered under its protocol", () => {
    expect(engineFor(engines, "postgres")).toBe(PostgresEngine)
    expect(engineFor(engines, "toString")).toBeUndefined()
  })

  it("runs psql queries over a TLS, certificate-authenticated upstream and audits them", async () => {
    const l = await listen({ dbUser: "alice", dbName: "appdb" })
    const r = await psql(l, "alice", "appdb", "select current_user, current_database(), ssl from pg_stat_ssl where pid = pg_backend_pid()")
    expect(r.stderr).toBe("")
    expect(r.stdout.trim()).toBe("alice|appdb|t")
    await waitFor("session end", () => l.events.some((e) => e.type === "db.session.end"))
    expect(l.events.map((e) => `${e.type}/${e.code}`)).toEqual([
      "db.session.start/TDB00I",
      "db.session.query/TDB02I",
      "db.session.end/TDB01I"
    ])
    const [start, query] = l.events
    expect(start!.fields).toMatchObject({
      user: "alice@example.com",
      db_service: "pg1",
      db_protocol: "postgres",
      db_uri: `127.0.0.1:${pg.port}`,
      db_user: "alice",
      db_name: "appdb",
      success: true,
      server_id: "host-1"
    })
    expect(query!.fields["db_query"]).toMatch(/^select current_user/)
    expect(query!.fields["sid"]).toBe(start!.fields["sid"])
    expect(PostgresCancelRegistry.size).toBe(0)
  })

  it("takes the database name from the startup when the certificate names none", async () => {
    const l = await listen({ dbUser: "alice" })
    const r = await psql(l, "alice", "postgres", "select current_database()")
    expect(r.stdout.trim()).toBe("postgres")
  })

  it("refuses a db user that a deny rule names, with the rule in the message", async () => {
    const l = await listen({ dbUser: "postgres" })
    const r = await psql(l, "postgres", "postgres", "select 1")
    expect(r.code).not.toBe(0)
    expect(r.stderr).toContain("access to db pg1 as db user postgres denied by role dev (deny.db_users)")
    await waitFor("start failure", () => l.events.length > 0)
    expect(l.events[0]).toMatchObject({
      type: "db.session.start",
      code: "TDB00W",
      fields: { success: false, error: "access to db pg1 as db user postgres denied by role dev (deny.db_users)" }
    })
  })

  it("refuses a database name that a deny rule names", async () => {
    const l = await listen({ dbUser: "alice", dbName: "secret" })
    const r = await psql(l, "alice", "secret", "select 1")
    expect(r.code).not.toBe(0)
    expect(r.stderr).toContain("access to database secret on db pg1 as db user alice denied by role dev (deny.db_names)")
  })

  it("refuses a startup whose user or database differs from the certificate's route", async () => {
    const l = await listen({ dbUser: "alice", dbName: "appdb" })
    const wrongDb = await psql(l, "alice", "postgres", "select 1")
    expect(wrongDb.code).not.toBe(0)
    expect(wrongDb.stderr).toContain("the certificate is for database appdb, but the client asked for database postgres")
    const wrongUser = await psql(l, "bob", "appdb", "select 1")
    expect(wrongUser.stderr).toContain("the certificate is for db user alice, but the client asked for db user bob")
  })

  it("relays COPY both ways (\\copy in and out)", async () => {
    const l = await listen({ dbUser: "alice", dbName: "appdb" })
    expect((await psql(l, "alice", "appdb", "create table copytest (id int, name text)")).code).toBe(0)
    const rows = Array.from({ length: 5000 }, (_, i) => `${i}\tname ${i}`).join("\n") + "\n"
    const load = await psql(l, "alice", "appdb", "\\copy copytest from pstdin", rows)
    expect(load.stderr).toBe("")
    expect(load.code).toBe(0)
    const out = await psql(l, "alice", "appdb", "\\copy (select * from copytest order by id) to pstdout")
    expect(out.code).toBe(0)
    expect(out.stdout).toBe(rows)
  })

  it("runs pgbench -i and pgbench -M prepared; executions are audited with their parameters", async () => {
    const l = await listen({ dbUser: "alice", dbName: "appdb" })
    const args = ["-h", "127.0.0.1", "-p", String(l.port), "-U", "alice"]
    const env = { PGSSLMODE: "disable" }
    const init = await run("pgbench", ["-i", "-s", "1", ...args, "appdb"], { env, timeoutMs: 60_000 })
    expect(init.code, init.stderr).toBe(0)
    expect((await psql(l, "alice", "appdb", "select count(*) from pgbench_accounts")).stdout.trim()).toBe("100000")
    const bench = await run("pgbench", ["-M", "prepared", "-T", "3", "-c", "2", ...args, "appdb"], { env, timeoutMs: 60_000 })
    expect(bench.code, bench.stderr).toBe(0)
    expect(bench.stdout).toMatch(/number of failed transactions: 0/)
    await waitFor("all session ends", () => l.events.filter((e) => e.type === "db.session.end").length >= 5)
    const executions = l.events.filter((e) => e.type === "db.session.query" && e.fields["db_query_parameters"] !== undefined)
    expect(executions.length).toBeGreaterThan(100)
    const update = executions.find((e) => String(e.fields["db_query"]).startsWith("UPDATE pgbench_accounts"))
    expect(update).toBeDefined()
    const params = update!.fields["db_query_parameters"] as Array<string>
    expect(params).toHaveLength(2)
    for (const p of params) expect(p).toMatch(/^-?\d+$/)
  }, 120_000)

  it("cancels a running query through the cancel registry", async () => {
    const l = await listen({ dbUser: "alice", dbName: "appdb" })
    const child = spawn("psql", [conn(l, "alice", "appdb"), "-X", "-At", "-c", "select pg_sleep(30)"], { stdio: ["ignore", "pipe", "pipe"] })
    let stderr = ""
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()))
    // "close", not "exit": exit can come before the last of stderr has been read.
    const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)))
    await waitFor("the sleep to start", () => l.events.some((e) => e.fields["db_query"] === "select pg_sleep(30)"))
    await waitFor("the backend to run it", () => PostgresCancelRegistry.size > 0)
    await new Promise((r) => setTimeout(r, 300))
    const started = Date.now()
    child.kill("SIGINT")
    const code = await exited
    expect(Date.now() - started).toBeLessThan(10_000)
    expect(code).not.toBe(0)
    expect(stderr).toContain("canceling statement due to user request")
    expect(l.cancels).toEqual([true])
    // A key nobody was given cancels nothing.
    expect(await Effect.runPromise(cancelRequest(12345, 678))).toBe(false)
  })

  const rawExchange = (port: number, bytes: Uint8Array): Promise<Buffer> =>
    new Promise((resolve, reject) => {
      const s = net.connect({ host: "127.0.0.1", port }, () => s.write(bytes))
      const chunks: Array<Buffer> = []
      s.on("data", (d: Buffer) => chunks.push(d))
      s.on("error", reject)
      s.on("close", () => resolve(Buffer.concat(chunks)))
      setTimeout(() => {
        s.destroy()
        reject(new Error("connection was not closed"))
      }, 10_000)
    })

  it("answers garbage, a 20 KiB startup and a lying length with an ErrorResponse and closes only that connection", async () => {
    const l = await listen({ dbUser: "alice", dbName: "appdb" })
    const busy = psql(l, "alice", "appdb", "select pg_sleep(1), 'still here'")
    await waitFor("the busy session", () => l.events.some((e) => e.type === "db.session.query"))
    const garbage = await rawExchange(l.port, Buffer.from("GET / HTTP/1.1\r\nHost: example\r\n\r\n"))
    expect(garbage[0]).toBe(0x45)
    expect(garbage.toString("latin1")).toContain("invalid length of startup packet")
    expect(garbage.toString("latin1")).toContain("08P01")

    const big = Buffer.alloc(20 * 1024)
    big.writeInt32BE(big.length, 0)
    big.writeInt32BE(196608, 4)
    Buffer.from("user\0alice\0application_name\0").copy(big, 8)
    const tooLarge = await rawExchange(l.port, big)
    expect(tooLarge[0]).toBe(0x45)
    expect(tooLarge.toString("latin1")).toContain("invalid length of startup packet")

    const lying = await rawExchange(l.port, Buffer.from([0, 0, 0, 4, 0, 3, 0, 0]))
    expect(lying[0]).toBe(0x45)
    expect(lying.toString("latin1")).toContain("08P01")

    // An open session on the same listener is not disturbed, and new ones still work.
    expect((await busy).stdout.trim()).toBe("|still here")
    const r = await psql(l, "alice", "appdb", "select 42")
    expect(r.stdout.trim()).toBe("42")
  })

  it("refuses SSLRequest with N, then serves the StartupMessage that follows", async () => {
    const l = await listen({ dbUser: "alice", dbName: "appdb" })
    const r = await run("psql", [`host=127.0.0.1 port=${l.port} user=alice dbname=appdb sslmode=prefer`, "-X", "-At", "-c", "select 7"])
    expect(r.stdout.trim()).toBe("7")
  })

  it("ends the session when the certificate expires, if a role asks for it", async () => {
    const l = await listen({ dbUser: "alice", dbName: "appdb", roles: [strict], expires: new Date(Date.now() + 2_500) })
    const started = Date.now()
    const r = await psql(l, "alice", "appdb", "select pg_sleep(20)")
    expect(Date.now() - started).toBeLessThan(10_000)
    expect(r.code).not.toBe(0)
    expect(r.stderr).toContain("certificate expired")
    await waitFor("session end", () => l.events.some((e) => e.type === "db.session.end"))
    expect(l.events.at(-1)!.fields["reason"]).toBe("certificate expired")
    // The statement the session was running was cancelled, not left to run out.
    const running = async () =>
      Number(await pg.psql("select count(*) from pg_stat_activity where query = 'select pg_sleep(20)' and state = 'active'"))
    const deadline = Date.now() + 5_000
    while ((await running()) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
    expect(await running()).toBe(0)
    // An already expired certificate gets no session at all.
    const expired = await listen({ dbUser: "alice", dbName: "appdb", expires: new Date(Date.now() - 1_000) })
    const late = await psql(expired, "alice", "appdb", "select 1")
    expect(late.stderr).toContain("certificate expired")
  })

  /** A bare protocol client: sends a StartupMessage and collects backend messages. */
  const rawSession = async (port: number) => {
    const s = net.connect({ host: "127.0.0.1", port })
    await new Promise<void>((resolve) => s.once("connect", () => resolve()))
    const parser = new BackendParser()
    const received: Array<BackendMessage> = []
    let closed = false
    s.on("data", (d: Buffer) => {
      for (const m of parser.push(d)) if (m.kind !== "error") received.push(m)
    })
    s.on("close", () => (closed = true))
    s.on("error", () => undefined)
    s.write(serializeFrontend({ kind: "startup", protocolVersion: 196608, parameters: [["user", "alice"], ["database", "appdb"]] }))
    const ready = async (n: number) => waitFor(`ReadyForQuery #${n}`, () => received.filter((m) => m.kind === "readyForQuery").length >= n)
    await ready(1)
    return { s, received, ready, isClosed: () => closed }
  }

  it("hands out its own cancel key, and a malformed frame mid-session ends it with 08P01", async () => {
    const l = await listen({ dbUser: "alice", dbName: "appdb" })
    const c = await rawSession(l.port)
    const key = c.received.find((m) => m.kind === "backendKeyData")
    expect(key).toBeDefined()
    c.s.write(serializeFrontend({ kind: "query", text: "select pg_backend_pid()" }))
    await c.ready(2)
    const row = c.received.find((m) => m.kind === "dataRow")
    const backendPid = row?.kind === "dataRow" ? Number(Buffer.from(row.columns[0]!).toString()) : NaN
    expect(backendPid).toBeGreaterThan(0)
    expect(key?.kind === "backendKeyData" && key.processId).not.toBe(backendPid)

    c.s.write(Buffer.from([0x51, 0, 0, 0, 2]))
    await waitFor("close", c.isClosed)
    const err = c.received.at(-1)
    expect(err?.kind).toBe("errorResponse")
    expect(err?.kind === "errorResponse" && err.fields.code).toBe("08P01")
    await waitFor("session end", () => l.events.some((e) => e.type === "db.session.end"))
    expect(String(l.events.at(-1)!.fields["reason"])).toMatch(/length 2 is below 4/)
  })

  it("keeps audit records in order behind a slow sink", async () => {
    const l = await listen({ dbUser: "alice", dbName: "appdb", auditDelayMs: 20 })
    const args = Array.from({ length: 30 }, (_, i) => ["-c", `select ${i}`]).flat()
    const r = await run("psql", [conn(l, "alice", "appdb"), "-X", "-At", ...args])
    expect(r.stdout.trim().split("\n")).toHaveLength(30)
    await waitFor("session end", () => l.events.some((e) => e.type === "db.session.end"))
    expect(l.events.map((e) => e.fields["db_query"] ?? e.type)).toEqual([
      "db.session.start",
      ...Array.from({ length: 30 }, (_, i) => `select ${i}`),
      "db.session.end"
    ])
    expect(l.events.map((e) => e.fields["ei"])).toEqual(Array.from({ length: 32 }, (_, i) => i))
  })

  it("checks the database's certificate as tls.mode says", async () => {
    const wrongName = await listen({ dbUser: "alice", dbName: "appdb", tls: { mode: "verify-full", caCertPem: ca.certPem, serverName: "db.example.com" } })
    const refused = await psql(wrongName, "alice", "appdb", "select 1")
    expect(refused.code).not.toBe(0)
    expect(refused.stderr).toMatch(/TLS with database pg1 at 127\.0\.0\.1:\d+ failed: .*db\.example\.com/)
    const caOnly = await listen({ dbUser: "alice", dbName: "appdb", tls: { mode: "verify-ca", caCertPem: ca.certPem, serverName: "db.example.com" } })
    expect((await psql(caOnly, "alice", "appdb", "select 1")).stdout.trim()).toBe("1")
    const other = await Effect.runPromise(generateCa("other", "main", 1))
    const wrongCa = await listen({ dbUser: "alice", dbName: "appdb", tls: { mode: "verify-ca", caCertPem: other.certPem } })
    expect((await psql(wrongCa, "alice", "appdb", "select 1")).stderr).toContain("TLS with database pg1")
    const insecure = await listen({ dbUser: "alice", dbName: "appdb", tls: { mode: "insecure", caCertPem: other.certPem } })
    expect((await psql(insecure, "alice", "appdb", "select 1")).stdout.trim()).toBe("1")
  })

  it("refuses a database that asks for a password instead of the client certificate", async () => {
    const l = await listen({ dbUser: "bob", dbName: "appdb" })
    const r = await psql(l, "bob", "appdb", "select 1")
    expect(r.code).not.toBe(0)
    expect(r.stderr).toContain("database pg1 asked for SASL authentication; the database agent authenticates with client certificates only")
  })

  it("relays the database's own refusal verbatim", async () => {
    const l = await listen({ dbUser: "alice", roles: [strict] })
    const r = await psql(l, "alice", "nosuchdb", "select 1")
    expect(r.code).not.toBe(0)
    expect(r.stderr).toContain('database "nosuchdb" does not exist')
  })

  it("ends a session whose fiber is interrupted (agent shutdown): audits the end, closes both sides", async () => {
    const l = await listen({ dbUser: "alice", dbName: "appdb" })
    const c = await rawSession(l.port)
    expect(PostgresCancelRegistry.size).toBe(1)
    await Effect.runPromise(Fiber.interrupt(l.fibers[0]!))
    await waitFor("close", c.isClosed)
    expect(l.events.at(-1)).toMatchObject({ type: "db.session.end", code: "TDB01I", fields: { reason: "session interrupted" } })
    expect(PostgresCancelRegistry.size).toBe(0)
  })

  // Last: SIGKILL of a backend makes the postmaster restart every backend.
  it("tells the client when the database connection dies mid-session and audits the end", async () => {
    const l = await listen({ dbUser: "alice", dbName: "appdb" })
    const child = spawn("psql", [`${conn(l, "alice", "appdb")} application_name=killme`, "-X", "-At", "-c", "select pg_sleep(30)"], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stderr = ""
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()))
    // "close", not "exit": exit can come before the last of stderr has been read.
    const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)))
    let pid = ""
    await waitFor(
      "the backend",
      () => {
        try {
          pid = execFileSync("runuser", ["-u", "postgres", "--", "psql", "-h", pg.socketDir, "-p", String(pg.port), "-U", "postgres", "-Atc", "select pid from pg_stat_activity where application_name = 'killme' and state = 'active'"], { encoding: "utf8" }).trim()
        } catch {
          pid = ""
        }
        return pid !== ""
      },
      15_000
    )
    process.kill(Number(pid), "SIGKILL")
    const code = await exited
    expect(code).not.toBe(0)
    expect(stderr).toContain("connection to database pg1 lost")
    await waitFor("session end", () => l.events.some((e) => e.type === "db.session.end"))
    expect(String(l.events.at(-1)!.fields["reason"])).toContain("connection to database pg1 lost")
  })
})
