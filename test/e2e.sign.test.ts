/**
 * Long-lived credentials and certificate lifetimes: `tctl auth sign --format=db` files that a real
 * PostgreSQL and a real Redis serve TLS with, the roles' max_session_ttl capping `tsh login --ttl`,
 * and the proxy serving `https_keypairs` from the config.
 */
import { execFileSync, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as tls from "node:tls"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Cluster } from "./fixtures/cluster.ts"
import { startCluster, stopCluster } from "./fixtures/cluster.ts"
import { startPostgresAsync } from "./fixtures/postgres.ts"
import { bin, freePort, node } from "./fixtures/processes.ts"

describe("tctl auth sign and certificate lifetimes", () => {
  let c: Cluster
  const tmp = (name: string) => path.join(c.dir, name)

  beforeAll(async () => {
    c = await startCluster("off")
  })
  afterAll(() => stopCluster(c))

  it("--format=db writes a server certificate with IP SANs that PostgreSQL serves and psql verifies (verify-full)", async () => {
    const r = await c.tctl("auth", "sign", "--host=localhost,127.0.0.1", "--format=db", `--out=${tmp("db")}`, "--ttl=24h")
    expect(r.code).toBe(0)
    const text = execFileSync("openssl", ["x509", "-in", tmp("db.crt"), "-noout", "-text"], { encoding: "utf8" })
    expect(text).toMatch(/IP Address:127\.0\.0\.1/)
    expect(text).toMatch(/DNS:localhost/)
    expect(execFileSync("openssl", ["verify", "-CAfile", tmp("db.cas"), tmp("db.crt")], { encoding: "utf8" })).toMatch(/OK/)

    // PostgreSQL reads its key only when the server's own user owns it.
    // Outside the 0700 test dir, so the postgres user can reach it.
    const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), "pgkeys-"))
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim())
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim())
    for (const f of ["db.crt", "db.key", "db.cas"]) {
      fs.copyFileSync(tmp(f), path.join(keyDir, f))
      fs.chownSync(path.join(keyDir, f), uid, gid)
    }
    fs.chmodSync(keyDir, 0o755)
    fs.chmodSync(path.join(keyDir, "db.key"), 0o600)
    const pg = await startPostgresAsync({
      settings: {
        ssl: "on",
        ssl_cert_file: path.join(keyDir, "db.crt"),
        ssl_key_file: path.join(keyDir, "db.key"),
        ssl_ca_file: path.join(keyDir, "db.cas")
      }
    })
    try {
      const out = execFileSync(
        "psql",
        [`host=localhost port=${pg.port} user=postgres dbname=postgres sslmode=verify-full sslrootcert=${tmp("db.cas")}`, "-Atc", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"],
        { encoding: "utf8" }
      )
      expect(out.trim()).toBe("t")
      // Another CA's root does not verify the server.
      execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=other", "-keyout", tmp("other.key"), "-out", tmp("other.crt"), "-days", "1"], { stdio: "ignore" })
      expect(() =>
        execFileSync("psql", [`host=localhost port=${pg.port} user=postgres dbname=postgres sslmode=verify-full sslrootcert=${tmp("other.crt")}`, "-Atc", "select 1"], { stdio: "pipe" })
      ).toThrow()
    } finally {
      await pg.stop()
      fs.rmSync(keyDir, { recursive: true, force: true })
    }
  })

  it("--format=db files serve Redis over TLS, verified by redis-cli", async () => {
    const port = await freePort()
    const dir = fs.mkdtempSync(path.join(c.dir, "redis-"))
    const redis = spawn(
      "redis-server",
      ["--port", "0", "--tls-port", String(port), "--bind", "127.0.0.1", "--tls-cert-file", tmp("db.crt"), "--tls-key-file", tmp("db.key"), "--tls-ca-cert-file", tmp("db.cas"), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", dir],
      { stdio: ["ignore", "pipe", "pipe"] }
    )
    let log = ""
    redis.stdout.on("data", (d: Buffer) => (log += d.toString()))
    try {
      const started = Date.now()
      while (!log.includes("Ready to accept connections")) {
        if (redis.exitCode !== null || Date.now() - started > 15_000) throw new Error(`redis-server did not start: ${log}`)
        await new Promise((r) => setTimeout(r, 50))
      }
      const pong = execFileSync("redis-cli", ["--tls", "--cacert", tmp("db.cas"), "-h", "127.0.0.1", "-p", String(port), "ping"], { encoding: "utf8" })
      expect(pong.trim()).toBe("PONG")
    } finally {
      redis.kill()
    }
  })

  it("--format=db files serve MariaDB over TLS, verified by the mariadb client", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mariadb-"))
    const uid = Number(execFileSync("id", ["-u", "mysql"], { encoding: "utf8" }).trim())
    const gid = Number(execFileSync("id", ["-g", "mysql"], { encoding: "utf8" }).trim())
    fs.mkdirSync(path.join(dir, "data"))
    for (const f of ["db.crt", "db.key", "db.cas"]) fs.copyFileSync(tmp(f), path.join(dir, f))
    fs.chmodSync(dir, 0o755)
    execFileSync("chown", ["-R", `${uid}:${gid}`, dir])
    execFileSync("mariadb-install-db", ["--no-defaults", `--datadir=${dir}/data`, "--user=mysql", "--auth-root-authentication-method=normal", "--skip-test-db"], { stdio: "ignore" })
    const port = await freePort()
    // Grants are not what this test is about: only that the server takes the files and the client verifies it.
    const db = spawn(
      "mariadbd",
      ["--no-defaults", `--datadir=${dir}/data`, `--socket=${dir}/sock`, `--port=${port}`, "--bind-address=127.0.0.1", "--user=mysql", "--skip-grant-tables",
        `--ssl-cert=${dir}/db.crt`, `--ssl-key=${dir}/db.key`, `--ssl-ca=${dir}/db.cas`, `--pid-file=${dir}/pid`, "--skip-log-bin"],
      { stdio: ["ignore", "pipe", "pipe"] }
    )
    let log = ""
    db.stderr.on("data", (d: Buffer) => (log += d.toString()))
    try {
      const started = Date.now()
      while (!log.includes("ready for connections")) {
        if (db.exitCode !== null || Date.now() - started > 30_000) throw new Error(`mariadbd did not start: ${log}`)
        await new Promise((r) => setTimeout(r, 100))
      }
      const out = execFileSync(
        "mariadb",
        ["--no-defaults", "--protocol=TCP", "-h", "localhost", "-P", String(port), "-u", "root", "--ssl", `--ssl-ca=${tmp("db.cas")}`, "--ssl-verify-server-cert", "-N", "-e", "SHOW SESSION STATUS LIKE 'Ssl_cipher'"],
        { encoding: "utf8" }
      )
      expect(out).toMatch(/Ssl_cipher\s+\S+/)
    } finally {
      db.kill()
      await new Promise((r) => db.once("exit", r))
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("caps tsh login --ttl at the roles' max_session_ttl", async () => {
    fs.writeFileSync(
      tmp("short.yaml"),
      "kind: role\nversion: v7\nmetadata:\n  name: short\nspec:\n  allow:\n    logins: [bob]\n  options:\n    max_session_ttl: 1h\n"
    )
    expect((await c.tctl("create", tmp("short.yaml"))).code).toBe(0)
    expect((await c.tctl("users", "add", "bob", "--roles=short")).code).toBe(0)
    expect((await node(bin("tctl"), ["--data-dir", `${c.dir}/data`, "users", "set-password", "bob"], { input: "correct horse battery\n" })).code).toBe(0)
    const login = await c.tsh(["login", `--proxy=localhost:${c.port}`, "--user=bob", "--ttl=600", "--insecure"], "correct horse battery\n")
    expect(login.code).toBe(0)
    const crt = path.join(c.tshHome, "keys", "localhost", "bob.crt")
    const end = execFileSync("openssl", ["x509", "-in", crt, "-noout", "-enddate"], { encoding: "utf8" }).replace("notAfter=", "").trim()
    const lifetime = Date.parse(end) - Date.now()
    expect(lifetime).toBeLessThanOrEqual(3600_000)
    expect(lifetime).toBeGreaterThan(3500_000)
  })
})

describe("proxy with https_keypairs", () => {
  it("serves the configured certificate instead of a host-CA one", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keypair-"))
    execFileSync(
      "openssl",
      ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=proxy.example.test", "-addext", "subjectAltName=DNS:localhost", "-keyout", path.join(dir, "key.pem"), "-out", path.join(dir, "cert.pem"), "-days", "1"],
      { stdio: "ignore" }
    )
    const c = await startCluster("off", ["  https_keypairs:", `    - { key_file: ${dir}/key.pem, cert_file: ${dir}/cert.pem }`])
    try {
      const subject = await new Promise<string>((resolve, reject) => {
        const s = tls.connect({ host: "127.0.0.1", port: c.port, servername: "localhost", ca: fs.readFileSync(path.join(dir, "cert.pem")) }, () => {
          resolve(String(s.getPeerCertificate().subject.CN))
          s.end()
        })
        s.on("error", reject)
      })
      expect(subject).toBe("proxy.example.test")
    } finally {
      await stopCluster(c)
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
