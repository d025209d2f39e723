/**
 * End to end, as a user runs it: the real `remoteler start` on embedded defaults (SQLite in the
 * data dir, in-process bus) and the real `tctl` talking to it through the admin socket.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import Database from "better-sqlite3"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { canonicalize, sha256Hex } from "../src/domain/Chain.ts"
import type { Service } from "./fixtures/processes.ts"
import { bin, node, startService } from "./fixtures/processes.ts"

const READY = /auth service running/

describe("remoteler start + tctl on embedded defaults", () => {
  let dir: string
  let dataDir: string
  let server: Service

  const start = async (extra: ReadonlyArray<string> = []) => {
    const s = startService(process.execPath, [bin("remoteler"), "start", "--roles=auth", "--data-dir", dataDir, ...extra])
    await s.waitFor(READY, 60_000)
    return s
  }
  const tctl = (...args: Array<string>) => node(bin("tctl"), ["--data-dir", dataDir, ...args])

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "remoteler-e2e-"))
    dataDir = path.join(dir, "data")
    server = await start()
  })
  afterAll(async () => {
    await server?.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it("reports status", async () => {
    const r = await tctl("status")
    expect(r.stderr).toBe("")
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/Cluster\s+main/)
    expect(r.stdout).toMatch(/Storage\s+sqlite:/)
    expect(r.stdout).toMatch(/Bus\s+in-process/)
  })

  it("refuses a second start on the same data dir", async () => {
    const r = await node(bin("remoteler"), ["start", "--roles=auth", "--data-dir", dataDir])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/already running on data dir/)
  })

  it("adds, lists, updates and removes users as events", async () => {
    const add = await tctl("users", "add", "alice", "--roles=access", "--logins=alice,root", "--db-users=alice", "--db-names=app")
    expect(add.stderr).toBe("")
    expect(add.stdout).toMatch(/User "alice" has been created/)
    expect((await tctl("users", "add", "bob", "--roles=access,auditor")).code).toBe(0)

    const dup = await tctl("users", "add", "alice", "--roles=access")
    expect(dup.code).toBe(1)
    expect(dup.stderr).toMatch(/already exists/)

    const unknownRole = await tctl("users", "add", "carol", "--roles=nosuchrole")
    expect(unknownRole.code).toBe(1)
    expect(unknownRole.stderr).toMatch(/role "nosuchrole" not found/)

    const ls = await tctl("users", "ls", "--format=json")
    const users = JSON.parse(ls.stdout) as Array<{ name: string; roles: Array<string>; traits: Record<string, Array<string>> }>
    expect(users.map((u) => u.name)).toEqual(["alice", "bob"])
    expect(users[0]!.traits["logins"]).toEqual(["alice", "root"])

    expect((await tctl("users", "update", "bob", "--set-roles=editor")).code).toBe(0)
    const bob = JSON.parse((await tctl("get", "user/bob", "--format=json")).stdout) as Array<{ spec: { roles: Array<string> } }>
    expect(bob[0]!.spec.roles).toEqual(["editor"])

    expect((await tctl("users", "rm", "bob")).code).toBe(0)
    const gone = await tctl("get", "user/bob")
    expect(gone.code).toBe(1)
    expect(gone.stderr).toMatch(/user "bob" not found/)
  })

  it("creates roles from YAML, refuses to overwrite without --force, names line and field of a bad one", async () => {
    const good = path.join(dir, "dev.yaml")
    fs.writeFileSync(
      good,
      [
        "kind: role",
        "version: v7",
        "metadata:",
        "  name: dev",
        "spec:",
        "  allow:",
        "    logins: ['{{internal.logins}}']",
        "    db_labels: {env: dev}",
        "    db_users: [alice]",
        "  deny:",
        "    db_names: [prod]",
        "  options:",
        "    max_session_ttl: 8h",
        ""
      ].join("\n")
    )
    const c1 = await tctl("create", good)
    expect(c1.stderr).toBe("")
    expect(c1.stdout).toMatch(/role "dev" has been created/)
    const c2 = await tctl("create", good)
    expect(c2.code).toBe(1)
    expect(c2.stderr).toMatch(/already exists/)
    expect((await tctl("create", "-f", good)).stdout).toMatch(/role "dev" has been updated/)

    const bad = path.join(dir, "bad.yaml")
    fs.writeFileSync(bad, "kind: role\nversion: v7\nmetadata:\n  name: x\nspec:\n  allow:\n    db_userz: [a]\n")
    const b = await tctl("create", bad)
    expect(b.code).toBe(1)
    expect(b.stderr).toMatch(/line 7/)
    expect(b.stderr).toMatch(/db_userz/)

    const roles = await tctl("get", "roles", "--format=text")
    expect(roles.stdout).toMatch(/^access/m)
    expect(roles.stdout).toMatch(/^dev/m)
    const yaml = await tctl("get", "role/dev")
    expect(yaml.stdout).toMatch(/max_session_ttl: 8h/)

    expect((await tctl("rm", "role/dev")).stdout).toMatch(/role "dev" has been deleted/)
    expect((await tctl("get", "role/dev")).code).toBe(1)
  })

  it("searches the audit log with Teleport's field names plus seq and hash", async () => {
    const r = await tctl("audit", "search", "--since=1h", "--type=user.create", "--format=json")
    expect(r.code).toBe(0)
    const events = r.stdout.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>)
    expect(events.map((e) => e["name"])).toEqual(["alice", "bob"])
    for (const e of events) {
      expect(e["event"]).toBe("user.create")
      expect(e["code"]).toBe("T1002I")
      expect(e["cluster_name"]).toBe("main")
      expect(typeof e["uid"]).toBe("string")
      expect(typeof e["seq"]).toBe("number")
      expect(e["hash"]).toMatch(/^[0-9a-f]{64}$/)
    }
    const del = await tctl("audit", "search", "--type=role.deleted", "--format=json")
    expect(JSON.parse(del.stdout.trim()).code).toBe("T9001I")
    const none = await tctl("audit", "search", "--from=2000-01-01T00:00:00Z", "--to=2000-01-02T00:00:00Z", "--format=json")
    expect(none.stdout.trim()).toBe("")
  })

  it("follows the audit log like tail -f with tctl audit stream", async () => {
    const follower = startService(process.execPath, [bin("tctl"), "--data-dir", dataDir, "audit", "stream", "--from-seq=1", "--type=user.create"])
    try {
      await follower.waitFor(/"name":"bob"/, 30_000)
      expect((await tctl("users", "add", "dave", "--roles=access")).code).toBe(0)
      await follower.waitFor(/"name":"dave"/, 30_000)
      const lines = follower.output().trim().split("\n").map((l) => JSON.parse(l) as { event: string; seq: number })
      expect(lines.every((l) => l.event === "user.create")).toBe(true)
      expect(lines.map((l) => l.seq)).toEqual([...lines.map((l) => l.seq)].sort((a, b) => a - b))
    } finally {
      await follower.stop()
    }
    expect((await tctl("users", "rm", "dave")).code).toBe(0)
  })

  it("verifies the chain and rebuilds projections by replay", async () => {
    const v = await tctl("audit", "verify")
    expect(v.code).toBe(0)
    expect(v.stdout).toMatch(/^chain intact: \d+ events/)
    const before = (await tctl("users", "ls", "--format=json")).stdout
    const r = await tctl("events", "replay")
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/replayed \d+ events/)
    expect((await tctl("users", "ls", "--format=json")).stdout).toBe(before)
    const all = await tctl("audit", "search", "--format=json")
    expect(all.stdout.trim().split("\n").length).toBeGreaterThanOrEqual(7)
  })

  it("stops on SIGTERM, keeps every user and role across a restart, and tctl says when auth is down", async () => {
    expect(await server.stop()).toBe(0)
    expect(fs.existsSync(path.join(dataDir, "remoteler.lock"))).toBe(false)

    const down = await tctl("status")
    expect(down.code).toBe(1)
    expect(down.stderr).toMatch(/no auth service is running/)

    server = await start()
    const users = JSON.parse((await tctl("users", "ls", "--format=json")).stdout) as Array<{ name: string }>
    expect(users.map((u) => u.name)).toEqual(["alice"])
    expect((await tctl("audit", "verify")).stdout).toMatch(/chain intact/)
  })

  it("detects a changed byte in a stored event and names its seq", async () => {
    expect(await server.stop()).toBe(0)
    const db = new Database(path.join(dataDir, "events.db"))
    const row = db.prepare("SELECT seq, body FROM events WHERE type = 'user.create' ORDER BY seq LIMIT 1").get() as { seq: number; body: string }
    const tampered = row.body.replace('"admin"', '"admim"')
    expect(tampered).not.toBe(row.body)
    db.prepare("UPDATE events SET body = ? WHERE seq = ?").run(tampered, row.seq)
    db.close()

    server = await start()
    const v = await tctl("audit", "verify")
    expect(v.code).toBe(1)
    expect(v.stderr).toMatch(new RegExp(`chain broken at seq ${row.seq}:`))

    // Put the original back: the chain verifies again.
    await server.stop()
    const db2 = new Database(path.join(dataDir, "events.db"))
    db2.prepare("UPDATE events SET body = ? WHERE seq = ?").run(row.body, row.seq)
    db2.close()
    server = await start()
    expect((await tctl("audit", "verify")).code).toBe(0)
  })

  it("stops replay at an event that fails its schema, naming its seq", async () => {
    await server.stop()
    // A well-chained event whose payload does not match its type's schema.
    const db = new Database(path.join(dataDir, "events.db"))
    const head = db.prepare("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").get() as { seq: number; hash: string }
    const seq = head.seq + 1
    const fields = {
      seq,
      id: "00000000-0000-4000-8000-000000000001",
      type: "user.create",
      code: "T1002I",
      time: new Date().toISOString(),
      stream: "user/mallory",
      version: 1,
      actor: "admin",
      payload: { name: "mallory", roles: "not-a-list" },
      prev_hash: head.hash
    }
    const body = canonicalize(fields)
    const cols = db.prepare("PRAGMA table_info(events)").all() as Array<{ name: string }>
    const values: Record<string, unknown> = { ...fields, body, hash: sha256Hex(body) }
    const names = cols.map((c) => c.name).filter((n) => n in values)
    db.prepare(`INSERT INTO events (${names.join(",")}) VALUES (${names.map(() => "?").join(",")})`).run(
      ...names.map((n) => (n === "payload" ? JSON.stringify(values[n]) : values[n]))
    )
    // The store's own head moves with every append; a row inserted behind its back moves it too.
    db.prepare("UPDATE chain_head SET seq = ?, hash = ?").run(seq, values["hash"])
    db.close()

    // The chain is intact, but the RBAC view cannot be built past it: auth refuses to serve with
    // a view that may be missing later changes (a deleted user, a removed role), and says where.
    const r = await node(bin("remoteler"), ["start", "--roles=auth", "--data-dir", dataDir])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(new RegExp(`event seq ${seq} \\(user.create\\) does not decode: payload.roles`))
    expect(r.stderr.length).toBeLessThan(2_000)
  })
})

describe("remoteler start configuration errors", () => {
  it("fails start on an unknown config key, naming the file, line and key path", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "remoteler-cfg-"))
    const file = path.join(dir, "remoteler.yaml")
    fs.writeFileSync(file, `version: v1\nremoteler:\n  data_dir: ${dir}/data\nauth_service:\n  enabled: true\n  listen_adr: 0.0.0.0:3025\n`)
    const r = await node(bin("remoteler"), ["start", "-c", file])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain(`${file}: line 6: auth_service.listen_adr: unknown key`)

    fs.writeFileSync(file, `auth_service:\n  cluster_name: Not_Valid\n`)
    const r2 = await node(bin("remoteler"), ["start", "-c", file])
    expect(r2.code).toBe(1)
    expect(r2.stderr).toMatch(/line 2: auth_service.cluster_name: a cluster name is/)
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it("rejects an unknown role and a bad storage URL", async () => {
    const r = await node(bin("remoteler"), ["start", "--data-dir", os.tmpdir(), "--roles=auth,wizard"])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/unknown role "wizard"/)
    const s = await node(bin("remoteler"), ["start", "--data-dir", os.tmpdir(), "--storage=mysql://x"])
    expect(s.code).toBe(1)
    expect(s.stderr).toMatch(/--storage: expected postgres/)
  })
})
