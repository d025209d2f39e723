/**
 * `tsh db` and `tsh proxy db --tunnel` as a user runs them (the real bin/tsh.mjs process, and the
 * real psql), against a FAKE PROXY: one in-test TCP listener that does what DESIGN.md gives the
 * proxy's web port. Its first bytes decide: a PostgreSQL SSLRequest is answered `S` and TLS-
 * terminated with the proxy's host certificate (a fake PostgreSQL end that answers the startup with
 * an ErrorResponse naming what it saw, then echoes); anything else goes to an HTTPS server with the
 * web API's `GET /v1/webapi/databases` and `POST /v1/webapi/db/certs` (mTLS). It is a fake because
 * the real proxy's database routing is not built yet.
 *
 * The `tsh login` state is made directly with TshProfile.saveLogin and certificates signed here.
 */
import { generateKeyPairSync } from "node:crypto"
import * as fs from "node:fs"
import type { ServerResponse } from "node:http"
import * as https from "node:https"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as tls from "node:tls"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Effect, Either } from "effect"
import * as PgService from "../src/adapters/PgServiceFile.ts"
import * as Profiles from "../src/adapters/TshProfile.ts"
import type { CertificateAuthority } from "../src/adapters/x509.ts"
import { generateCa, generateEcdsaKeyPair, parseCertIdentity, signHostCert, signUserCert } from "../src/adapters/x509.ts"
import { RouteToDatabase } from "../src/domain/Identity.ts"
import type { DatabaseInfo } from "../src/domain/WebApi.ts"
import { privateKeyToOpenSsh, publicKeyBlob, publicKeyLine, signCertificate, userCertFields } from "../src/protocols/ssh/cert.ts"
import { bin, node, run, startService } from "./fixtures/processes.ts"

const DATABASES: ReadonlyArray<DatabaseInfo> = [
  { name: "pg", description: "Production PostgreSQL", protocol: "postgres", labels: { team: "db", env: "prod" }, allowed_users: ["alice", "*"], host_id: "agent-1" },
  { name: "reports", description: "Reporting", protocol: "postgres", labels: {}, allowed_users: ["reader"], host_id: "agent-1" },
  { name: "shop", description: "MySQL shop", protocol: "mysql", labels: { env: "dev" }, allowed_users: ["alice"], host_id: "agent-2" }
]

interface FakeProxy {
  readonly addr: string
  readonly port: number
  readonly userCa: CertificateAuthority
  readonly hostCa: CertificateAuthority
  /** Bodies of `POST /v1/webapi/db/certs`. */
  readonly certRequests: Array<Record<string, unknown>>
  readonly close: () => Promise<void>
}

/** One PostgreSQL message: type byte, Int32 length, body. */
const pgMessage = (type: string, body: Buffer) => {
  const h = Buffer.alloc(5)
  h.write(type, 0, "ascii")
  h.writeInt32BE(body.length + 4, 1)
  return Buffer.concat([h, body])
}
const cstr = (s: string) => Buffer.concat([Buffer.from(s, "utf8"), Buffer.from([0])])

/** StartupMessage: Int32 length, Int32 196608 (3.0), name/value pairs, NUL. */
const startupMessage = (params: Record<string, string>) => {
  const body = Buffer.concat([...Object.entries(params).flatMap(([k, v]) => [cstr(k), cstr(v)]), Buffer.from([0])])
  const h = Buffer.alloc(8)
  h.writeInt32BE(body.length + 8, 0)
  h.writeInt32BE(196608, 4)
  return Buffer.concat([h, body])
}

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])

/** The fake PostgreSQL end, after TLS: names the startup's user, database and the certificate's route, then echoes. */
const fakePostgres = (s: tls.TLSSocket) => {
  let buf = Buffer.alloc(0)
  let started = false
  s.on("error", () => s.destroy())
  s.on("data", (chunk: Buffer) => {
    if (started) return void s.write(chunk)
    buf = Buffer.concat([buf, chunk])
    if (buf.length < 4 || buf.length < buf.readInt32BE(0)) return
    const len = buf.readInt32BE(0)
    const fields = buf.subarray(8, len).toString("utf8").split("\0")
    const params: Record<string, string> = {}
    for (let i = 0; i + 1 < fields.length && fields[i] !== ""; i += 2) params[fields[i]!] = fields[i + 1]!
    const id = Either.getOrThrow(parseCertIdentity(s.getPeerX509Certificate()!.toString()))
    const r = id.routeToDatabase
    const route = r === undefined ? "none" : `${r.serviceName}/${r.username}/${r.database}`
    started = true
    s.write(
      pgMessage(
        "E",
        Buffer.concat([cstr("SFATAL"), cstr("VFATAL"), cstr("C28000"), cstr(`Mfake proxy: user=${params["user"]} database=${params["database"]} cert=${id.username} route=${route}`), Buffer.from([0])])
      )
    )
    const rest = buf.subarray(len)
    if (rest.length > 0) s.write(rest)
  })
}

const startFakeProxy = async (): Promise<FakeProxy> => {
  const { hostCa, userCa, serverKey, serverCert } = await Effect.runPromise(
    Effect.gen(function* () {
      const hostCa = yield* generateCa("host-ca", "main", 1)
      const userCa = yield* generateCa("user-ca", "main", 1)
      const serverKey = yield* generateEcdsaKeyPair()
      const serverCert = yield* signHostCert({
        caCert: hostCa.certPem,
        caKey: hostCa.privateKey,
        publicKey: serverKey.publicKeyPem,
        identity: { username: "proxy-1", roles: ["Proxy"], logins: [], routeToCluster: "main", traits: {}, hostId: "proxy-1", nodeName: "proxy", systemRole: "Proxy" },
        notAfter: new Date(Date.now() + 86_400_000),
        dnsNames: ["localhost"],
        ipAddresses: ["127.0.0.1"]
      })
      return { hostCa, userCa, serverKey, serverCert }
    })
  )
  const certRequests: Array<Record<string, unknown>> = []
  const reply = (res: ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { "content-type": "application/json" })
    res.end(JSON.stringify(body))
  }
  const tlsOptions = { key: serverKey.privateKeyPem, cert: serverCert.pem, requestCert: true, rejectUnauthorized: false, ca: [userCa.certPem] }
  const web = https.createServer(tlsOptions, (req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      void (async () => {
        const socket = req.socket as tls.TLSSocket
        if (!socket.authorized) return reply(res, 401, { error: { message: "a user certificate is required" } })
        const id = Either.getOrThrow(parseCertIdentity(socket.getPeerX509Certificate()!.toString()))
        if (req.method === "GET" && req.url === "/v1/webapi/databases") return reply(res, 200, { databases: DATABASES })
        if (req.method === "POST" && req.url === "/v1/webapi/db/certs") {
          const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as { service_name: string; db_user: string; db_name?: string; tls_pub_key: string }
          certRequests.push(body)
          const db = DATABASES.find((d) => d.name === body.service_name)
          if (db === undefined) return reply(res, 404, { error: { message: `database ${body.service_name} not found` } })
          const expires = new Date(Date.now() + 3_600_000)
          const cert = await Effect.runPromise(
            signUserCert({
              caCert: userCa.certPem,
              caKey: userCa.privateKey,
              publicKey: body.tls_pub_key,
              identity: {
                username: id.username,
                roles: id.roles,
                logins: id.logins,
                routeToCluster: "main",
                traits: {},
                routeToDatabase: new RouteToDatabase({ serviceName: db.name, protocol: db.protocol, username: body.db_user, database: body.db_name ?? "" })
              },
              notAfter: expires
            })
          )
          return reply(res, 200, { tls_cert: cert.pem, tls_ca_certs: [hostCa.certPem], expires: expires.toISOString(), protocol: db.protocol })
        }
        reply(res, 404, { error: { message: `no route ${req.method} ${req.url}` } })
      })().catch((e: unknown) => reply(res, 500, { error: { message: String(e) } }))
    })
  })
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    sockets.add(socket)
    socket.on("close", () => sockets.delete(socket))
    socket.on("error", () => socket.destroy())
    socket.once("data", (first: Buffer) => {
      socket.pause()
      if (first.length >= 8 && first.subarray(0, 8).equals(SSL_REQUEST)) {
        socket.write("S")
        const s = new tls.TLSSocket(socket, { isServer: true, ...tlsOptions, rejectUnauthorized: true })
        s.once("secure", () => fakePostgres(s))
        s.on("error", () => socket.destroy())
        return
      }
      socket.unshift(first)
      web.emit("connection", socket)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as net.AddressInfo).port
  return {
    addr: `127.0.0.1:${port}`,
    port,
    userCa,
    hostCa,
    certRequests,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      })
  }
}

/** A logged-in `tsh` (what `tsh login` leaves), alice with roles access and dba. */
const loggedIn = async (proxy: FakeProxy, home: string) => {
  const m = await Effect.runPromise(
    Effect.gen(function* () {
      const keys = yield* generateEcdsaKeyPair()
      const expires = new Date(Date.now() + 3_600_000)
      const tlsCert = yield* signUserCert({
        caCert: proxy.userCa.certPem,
        caKey: proxy.userCa.privateKey,
        publicKey: keys.publicKeyPem,
        identity: { username: "alice", roles: ["access", "dba"], logins: ["alice"], routeToCluster: "main", traits: {} },
        notAfter: expires
      })
      const sshCa = generateKeyPairSync("ed25519")
      const ssh = generateKeyPairSync("ed25519")
      const cert = signCertificate(
        userCertFields({ publicKey: publicKeyBlob(ssh.publicKey), username: "alice", logins: ["alice"], roles: ["access", "dba"], traits: {}, routeToCluster: "main", expires }),
        sshCa.privateKey
      )
      return {
        proxy: proxy.addr,
        user: "alice",
        cluster: "main",
        tlsPrivateKeyPem: keys.privateKeyPem,
        tlsCert: tlsCert.pem,
        sshPrivateKey: privateKeyToOpenSsh(ssh.privateKey, "alice"),
        sshPublicKey: publicKeyLine(publicKeyBlob(ssh.publicKey)),
        sshCert: cert.line,
        caCerts: [proxy.hostCa.certPem],
        knownHosts: []
      }
    })
  )
  await Effect.runPromise(Profiles.saveLogin(home, m))
}

interface Sandbox {
  readonly home: string
  readonly userHome: string
  readonly serviceFile: string
  readonly env: NodeJS.ProcessEnv
}

const sandbox = (withServiceFileEnv = true): Sandbox => {
  const userHome = fs.mkdtempSync(path.join(os.tmpdir(), "tsh-db-"))
  const home = path.join(userHome, ".tsh")
  const serviceFile = withServiceFileEnv ? path.join(userHome, "services", "pg_service.conf") : path.join(userHome, ".pg_service.conf")
  return { home, userHome, serviceFile, env: { TSH_HOME: home, HOME: userHome, PGSERVICEFILE: withServiceFileEnv ? serviceFile : "", NODE_EXTRA_CA_CERTS: "" } }
}

const tsh = (sb: Sandbox, args: ReadonlyArray<string>) => node(bin("tsh"), args, { env: sb.env })

const files = (dir: string): Array<string> =>
  fs.existsSync(dir)
    ? fs
        .readdirSync(dir, { recursive: true, encoding: "utf8" })
        .filter((f) => fs.statSync(path.join(dir, f)).isFile())
        .sort()
    : []

const UNRELATED = "# mine\n[local]\nhost=/var/run/postgresql\ndbname=postgres\n"

describe("tsh db against a fake proxy", () => {
  let proxy: FakeProxy
  beforeAll(async () => {
    proxy = await startFakeProxy()
  })
  afterAll(async () => {
    await proxy.close()
  })

  it("db ls shows the databases as Teleport's table, and as JSON", async () => {
    const sb = sandbox()
    await loggedIn(proxy, sb.home)
    const r = await tsh(sb, ["db", "ls"])
    expect(r.stderr).toBe("")
    expect(r.code).toBe(0)
    expect(r.stdout).toBe(
      [
        "Name    Description           Allowed Users Labels           Connect",
        "------- --------------------- ------------- ---------------- -------",
        "pg      Production PostgreSQL [* alice]     env=prod,team=db",
        "reports Reporting             [reader]",
        "shop    MySQL shop            [alice]       env=dev",
        ""
      ].join("\n")
    )
    const js = await tsh(sb, ["db", "ls", "--format=json"])
    expect(js.code).toBe(0)
    expect(JSON.parse(js.stdout)).toEqual(DATABASES)

    const notIn = sandbox()
    const none = await tsh(notIn, ["db", "ls"])
    expect(none.code).toBe(1)
    expect(none.stderr.trim()).toBe("ERROR: Not logged in.")
  }, 180_000)

  it("db login writes the routed certificate, its key 0600, the CA and a pg_service section beside the user's own; env, config, ls, logout", async () => {
    const sb = sandbox()
    await loggedIn(proxy, sb.home)
    fs.mkdirSync(path.dirname(sb.serviceFile), { recursive: true })
    fs.writeFileSync(sb.serviceFile, UNRELATED)

    const r = await tsh(sb, ["db", "login", "--db-user=alice", "--db-name=app", "pg"])
    expect(r.stderr).toBe("")
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('Connection information for database "pg" has been saved.')
    expect(r.stdout).toContain("  $ tsh db connect pg\n")
    expect(proxy.certRequests.at(-1)).toMatchObject({ service_name: "pg", db_user: "alice", db_name: "app" })
    expect(JSON.stringify(proxy.certRequests.at(-1))).not.toContain("PRIVATE KEY")

    const dbDir = path.join(sb.home, "keys/127.0.0.1/alice-db/main")
    expect(files(dbDir)).toEqual(["pg-ca.pem", "pg.crt", "pg.json", "pg.key"])
    expect(fs.statSync(path.join(dbDir, "pg.key")).mode & 0o777).toBe(0o600)
    const id = Either.getOrThrow(parseCertIdentity(fs.readFileSync(path.join(dbDir, "pg.crt"), "utf8")))
    expect(id.username).toBe("alice")
    expect(id.routeToDatabase).toEqual(new RouteToDatabase({ serviceName: "pg", protocol: "postgres", username: "alice", database: "app" }))
    expect(fs.readFileSync(path.join(dbDir, "pg-ca.pem"), "utf8")).toBe(proxy.hostCa.certPem)
    expect(JSON.parse(fs.readFileSync(path.join(dbDir, "pg.json"), "utf8"))).toMatchObject({ service_name: "pg", protocol: "postgres", db_user: "alice", db_name: "app" })

    const section = [
      "[main-pg]",
      "host=127.0.0.1",
      `port=${proxy.port}`,
      "sslmode=verify-full",
      `sslrootcert=${path.join(dbDir, "pg-ca.pem")}`,
      `sslcert=${path.join(dbDir, "pg.crt")}`,
      `sslkey=${path.join(dbDir, "pg.key")}`,
      "user=alice",
      "dbname=app"
    ].join("\n")
    expect(fs.readFileSync(sb.serviceFile, "utf8")).toBe(`${UNRELATED}\n${section}\n`)

    // a second login replaces the section in place: same text
    expect((await tsh(sb, ["db", "login", "--db-user=alice", "--db-name=app", "pg"])).code).toBe(0)
    expect(fs.readFileSync(sb.serviceFile, "utf8")).toBe(`${UNRELATED}\n${section}\n`)

    const env = await tsh(sb, ["db", "env"])
    expect(env.code).toBe(0)
    expect(env.stdout).toBe(
      [
        "export PGHOST=127.0.0.1",
        `export PGPORT=${proxy.port}`,
        "export PGSSLMODE=verify-full",
        `export PGSSLROOTCERT=${path.join(dbDir, "pg-ca.pem")}`,
        `export PGSSLCERT=${path.join(dbDir, "pg.crt")}`,
        `export PGSSLKEY=${path.join(dbDir, "pg.key")}`,
        "export PGUSER=alice",
        "export PGDATABASE=app",
        ""
      ].join("\n")
    )
    const config = await tsh(sb, ["db", "config", "pg"])
    expect(config.code).toBe(0)
    expect(config.stdout).toContain("Name:      pg\nHost:      127.0.0.1\n")
    expect(config.stdout).toContain(`Port:      ${proxy.port}\nUser:      alice\nDatabase:  app\n`)
    expect(config.stdout).toContain(`Key:       ${path.join(dbDir, "pg.key")}\n`)
    expect(config.stdout).toContain('  $ psql "service=main-pg"\n')
    const cmd = await tsh(sb, ["db", "config", "--format=cmd", "pg"])
    expect(cmd.stdout.trim()).toBe(
      `psql 'host=127.0.0.1 port=${proxy.port} sslmode=verify-full sslrootcert=${path.join(dbDir, "pg-ca.pem")} sslcert=${path.join(dbDir, "pg.crt")} sslkey=${path.join(dbDir, "pg.key")} user=alice dbname=app'`
    )

    const ls = await tsh(sb, ["db", "ls"])
    expect(ls.stdout.split("\n")[2]).toBe("> pg (user: alice, db: app) Production PostgreSQL [* alice]     env=prod,team=db tsh db connect pg")

    // a second database: env without a name is now ambiguous
    expect((await tsh(sb, ["db", "login", "reports"])).code).toBe(0)
    expect(proxy.certRequests.at(-1)).toMatchObject({ service_name: "reports", db_user: "reader" })
    expect(proxy.certRequests.at(-1)).not.toHaveProperty("db_name")
    const ambiguous = await tsh(sb, ["db", "env"])
    expect(ambiguous.code).toBe(1)
    expect(ambiguous.stderr).toContain("Logged in to several databases (pg, reports)")
    expect(PgService.parse(fs.readFileSync(sb.serviceFile, "utf8")).map((s) => s.name)).toEqual(["local", "main-pg", "main-reports"])

    const out = await tsh(sb, ["db", "logout", "pg"])
    expect(out.code).toBe(0)
    expect(out.stdout.trim()).toBe("Logged out of database pg")
    expect(files(dbDir)).toEqual(["reports-ca.pem", "reports.crt", "reports.json", "reports.key"])
    expect(PgService.parse(fs.readFileSync(sb.serviceFile, "utf8")).map((s) => s.name)).toEqual(["local", "main-reports"])
    expect((await tsh(sb, ["db", "logout"])).code).toBe(0)
    expect(fs.existsSync(path.join(sb.home, "keys/127.0.0.1/alice-db"))).toBe(false)
    expect(fs.readFileSync(sb.serviceFile, "utf8")).toBe(UNRELATED)
    const again = await tsh(sb, ["db", "logout", "pg"])
    expect(again.code).toBe(1)
    expect(again.stderr.trim()).toBe('ERROR: Not logged in to database "pg".')
  }, 300_000)

  it("db login refuses what it cannot do, saving nothing", async () => {
    const sb = sandbox()
    await loggedIn(proxy, sb.home)
    const cases: Array<[ReadonlyArray<string>, string]> = [
      [["db", "login", "nope"], 'ERROR: database "nope" not found'],
      // The fake proxy announces no MySQL listener (mysql_public_addr), so a MySQL login cannot work.
      [["db", "login", "shop"], "ERROR: the proxy announced no MySQL listener"],
      [["db", "login", "pg"], "ERROR: please give the database user with --db-user (allowed here: alice, *)"]
    ]
    for (const [args, message] of cases) {
      const r = await tsh(sb, args)
      expect(r.code).toBe(1)
      expect(r.stderr).toContain(message)
    }
    expect(fs.existsSync(path.join(sb.home, "keys/127.0.0.1/alice-db"))).toBe(false)
    expect(fs.existsSync(sb.serviceFile)).toBe(false)
  }, 180_000)

  it("db connect logs in when needed and runs the real psql through the service file, verify-full, returning its exit code", async () => {
    const sb = sandbox(false) // no PGSERVICEFILE: $HOME/.pg_service.conf
    await loggedIn(proxy, sb.home)
    const r = await tsh(sb, ["db", "connect", "--db-user=alice", "--db-name=app", "pg"])
    // psql reached the fake proxy with the database certificate and printed its FATAL error
    expect(r.stderr).toContain("fake proxy: user=alice database=app cert=alice route=pg/alice/app")
    expect(r.code).toBe(2)
    expect(PgService.readSections(sb.serviceFile).map((s) => s.name)).toEqual(["main-pg"])
    const before = proxy.certRequests.length
    // logged in already: no new certificate
    const again = await tsh(sb, ["db", "connect", "pg"])
    expect(again.stderr).toContain("route=pg/alice/app")
    expect(proxy.certRequests.length).toBe(before)
    // another db user: a new certificate
    const other = await tsh(sb, ["db", "connect", "--db-user=bob", "pg"])
    expect(other.stderr).toContain("fake proxy: user=bob database=app cert=alice route=pg/bob/app")
    expect(proxy.certRequests.length).toBe(before + 1)
  }, 180_000)

  it("tsh logout removes the database certificates and our pg_service sections, and keeps the user's own", async () => {
    const sb = sandbox()
    await loggedIn(proxy, sb.home)
    fs.mkdirSync(path.dirname(sb.serviceFile), { recursive: true })
    fs.writeFileSync(sb.serviceFile, UNRELATED)
    expect((await tsh(sb, ["db", "login", "--db-user=alice", "pg"])).code).toBe(0)
    expect((await tsh(sb, ["db", "login", "reports"])).code).toBe(0)
    expect(PgService.readSections(sb.serviceFile).map((s) => s.name)).toEqual(["local", "main-pg", "main-reports"])
    const out = await tsh(sb, ["logout"])
    expect(out.code).toBe(0)
    expect(files(sb.home)).toEqual([])
    expect(fs.readFileSync(sb.serviceFile, "utf8")).toBe(UNRELATED)
  }, 180_000)

  it("proxy db --tunnel: a plaintext local listener whose connections reach the proxy as TLS with the database certificate", async () => {
    const sb = sandbox()
    await loggedIn(proxy, sb.home)
    const svc = startService(process.execPath, [bin("tsh"), "proxy", "db", "--tunnel", "--db-user=alice", "--db-name=app", "pg"], sb.env)
    try {
      const line = await svc.waitFor(/on 127\.0\.0\.1:(\d+)\./)
      const port = Number(/:(\d+)\./.exec(line)![1])
      expect(svc.output()).toContain(`$ psql "postgres://alice@127.0.0.1:${port}/app"`)

      // a client that asks for TLS first is told no, then its startup goes through
      const sock = net.connect(port, "127.0.0.1")
      let received = Buffer.alloc(0)
      const waitFor = (pred: (b: Buffer) => boolean) =>
        new Promise<void>((resolve, reject) => {
          const check = () => (pred(received) ? resolve() : undefined)
          sock.on("data", (d: Buffer) => {
            received = Buffer.concat([received, d])
            check()
          })
          sock.once("error", reject)
          check()
        })
      sock.write(SSL_REQUEST)
      await waitFor((b) => b.length >= 1)
      expect(received.toString()).toBe("N")
      received = Buffer.alloc(0)
      sock.removeAllListeners("data")
      sock.write(startupMessage({ user: "alice", database: "app" }))
      await waitFor((b) => b.includes("route=pg/alice/app"))
      expect(received[0]).toBe(0x45) // 'E'
      expect(received.toString()).toContain("fake proxy: user=alice database=app cert=alice route=pg/alice/app")
      received = Buffer.alloc(0)
      sock.removeAllListeners("data")
      sock.write("ping through the tunnel")
      await waitFor((b) => b.toString() === "ping through the tunnel")
      sock.destroy()

      // and the real psql, with no certificates at all
      const psql = await run("psql", [`host=127.0.0.1 port=${port} user=alice dbname=app sslmode=prefer connect_timeout=10`, "-c", "select 1"], {
        env: { PGSERVICEFILE: "", PGSSLCERT: "/nonexistent", PGSSLKEY: "/nonexistent" }
      })
      expect(psql.stderr).toContain("fake proxy: user=alice database=app cert=alice route=pg/alice/app")
    } finally {
      expect(await svc.stop()).toBe(0)
    }
  }, 180_000)
})

describe("PgServiceFile", () => {
  it("upsert and removeWhere touch only our section and undo each other", () => {
    const a = PgService.upsert(UNRELATED, "main-pg", [["host", "h"], ["port", "1"]])
    expect(a).toBe(`${UNRELATED}\n[main-pg]\nhost=h\nport=1\n`)
    expect(PgService.upsert(a, "main-pg", [["host", "h"], ["port", "1"]])).toBe(a)
    const b = PgService.upsert(`${a}\n# theirs\n[other]\nx=1\n`, "main-pg", [["host", "k"]])
    expect(b).toBe(`${UNRELATED}\n[main-pg]\nhost=k\n\n# theirs\n[other]\nx=1\n`)
    expect(PgService.removeWhere(b, (s) => s.name === "main-pg")).toBe(`${UNRELATED}\n# theirs\n[other]\nx=1\n`)
    expect(PgService.removeWhere(a, (s) => s.entries["host"] === "h")).toBe(UNRELATED)
    expect(PgService.upsert("", "s", [["k", "v"]])).toBe("[s]\nk=v\n")
    expect(() => PgService.upsert("", "s", [["k", "v\nhost=evil"]])).toThrow()
  })
})
