/**
 * Redis access end to end, every part a real process: Redis 7 with TLS, client certificates
 * (`tls-auth-clients yes`) and ACL users, `remoteler start` (auth + proxy), a db agent joined with
 * a token, `tsh`, the real `redis-cli`, and ioredis for pipelining, pub/sub and transactions.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as tls from "node:tls"
import { Redis } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Cluster } from "./fixtures/cluster.ts"
import { startCluster, stopCluster } from "./fixtures/cluster.ts"
import type { Service } from "./fixtures/processes.ts"
import { bin, node, run, startService } from "./fixtures/processes.ts"
import type { RedisServer } from "./fixtures/redis.ts"
import { startRedis } from "./fixtures/redis.ts"

type Event = Record<string, unknown>

describe("Redis through the proxy and a db agent", () => {
  let c: Cluster
  let redis: RedisServer
  let agent: Service | undefined
  let home: string
  let token = ""
  let pin = ""
  const clients: Array<Redis> = []
  const tmp = (name: string) => path.join(c.dir, name)
  const env = () => ({ TSH_HOME: c.tshHome, HOME: home })
  const tsh = (args: ReadonlyArray<string>, input?: string) => node(bin("tsh"), [...args], { env: env(), ...(input === undefined ? {} : { input }) })
  /** The files of the current `tsh db login cache1`. */
  const dbFiles = () => {
    const dir = path.join(c.tshHome, "keys", "localhost", "alice-db", "main")
    return { cert: path.join(dir, "cache1.crt"), key: path.join(dir, "cache1.key"), ca: path.join(dir, "cache1-ca.pem") }
  }
  /** redis-cli as `tsh db config --format=cmd` prints it, plus the command. */
  let cliArgs: Array<string> = []
  const cli = (args: ReadonlyArray<string>, input?: string) => run("redis-cli", [...cliArgs, ...args], { env: env(), ...(input === undefined ? {} : { input }) })
  const ioredis = (options: { alpn?: boolean } = {}) => {
    const f = dbFiles()
    const r = new Redis({
      host: "127.0.0.1",
      port: c.port,
      tls: {
        cert: fs.readFileSync(f.cert),
        key: fs.readFileSync(f.key),
        ca: fs.readFileSync(f.ca),
        servername: "localhost",
        ...(options.alpn === true ? { ALPNProtocols: ["remoteler-redis"] } : {})
      },
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      enableOfflineQueue: true,
      lazyConnect: true
    })
    r.on("error", () => undefined)
    clients.push(r)
    return r
  }
  /** A raw TLS connection with the database certificate: what it reads until the proxy closes it (or `waitMs`). */
  const raw = (bytes: string | Buffer, waitMs = 3_000, until?: RegExp) =>
    new Promise<{ text: string; closed: boolean }>((resolve, reject) => {
      const f = dbFiles()
      const s = tls.connect({ host: "127.0.0.1", port: c.port, cert: fs.readFileSync(f.cert), key: fs.readFileSync(f.key), ca: fs.readFileSync(f.ca), servername: "localhost" })
      let text = ""
      const timer = setTimeout(() => {
        s.destroy()
        resolve({ text, closed: false })
      }, waitMs)
      s.on("data", (d: Buffer) => {
        text += d.toString("latin1")
        if (until?.test(text) === true) {
          clearTimeout(timer)
          s.destroy()
          resolve({ text, closed: false })
        }
      })
      s.on("error", reject)
      s.on("close", () => {
        clearTimeout(timer)
        resolve({ text, closed: true })
      })
      s.once("secureConnect", () => s.write(bytes))
    })
  const audit = async (type: string): Promise<Array<Event>> => {
    const r = await c.tctl("audit", "search", `--type=${type}`, "--format=json", "--limit=100000")
    return r.stdout.trim() === "" ? [] : r.stdout.trim().split("\n").map((l) => JSON.parse(l) as Event)
  }
  /** Polls the audit log until `pred` holds of the events of `type` (the agent uploads twice a second). */
  const auditUntil = async (type: string, pred: (es: Array<Event>) => boolean, ms = 20_000) => {
    const deadline = Date.now() + ms
    let es: Array<Event> = []
    while (Date.now() < deadline) {
      es = await audit(type)
      if (pred(es)) return es
      await new Promise((r) => setTimeout(r, 500))
    }
    return es
  }
  const startAgent = async (extra: ReadonlyArray<string>) => {
    const s = startService(process.execPath, [
      bin("remoteler"), "start", "--roles=db", `--proxy=localhost:${c.port}`, "--data-dir", tmp("agent"),
      `--db=name=cache1,protocol=redis,uri=localhost:${redis.port},label=env:dev,description=cache`,
      ...extra
    ])
    await s.waitFor(/db agent .* serving cache1/, 60_000)
    return s
  }
  /** Waits until a new session reaches Redis (after an agent restart the tunnel takes a moment). */
  const untilServing = async () => {
    const deadline = Date.now() + 20_000
    let out = ""
    while (Date.now() < deadline) {
      out = (await cli(["PING"])).stdout.trim()
      if (out === "PONG") return
      await new Promise((r) => setTimeout(r, 300))
    }
    expect(out).toBe("PONG")
  }

  beforeAll(async () => {
    c = await startCluster("off")
    home = fs.mkdtempSync(path.join(os.tmpdir(), "home-"))
    redis = await startRedis(c.tctl, tmp("redis"))
    fs.writeFileSync(
      tmp("no-carol.yaml"),
      "kind: role\nversion: v7\nmetadata:\n  name: no-carol\nspec:\n  deny:\n    db_labels: {'*': '*'}\n    db_users: [carol]\n"
    )
    expect((await c.tctl("create", tmp("no-carol.yaml"))).code).toBe(0)
    expect((await c.tctl("users", "add", "alice", "--roles=access,no-carol", "--logins=alice", "--db-users=alice,carol")).code).toBe(0)
    expect((await node(bin("tctl"), ["--data-dir", `${c.dir}/data`, "users", "set-password", "alice"], { input: "correct horse battery\n" })).code).toBe(0)
    const t = await c.tctl("tokens", "add", "--type=db")
    token = /--token=([0-9a-f]{32})/.exec(t.stdout)![1]!
    pin = /--ca-pin=(sha256:[0-9a-f]{64})/.exec(t.stdout)![1]!
    agent = await startAgent([`--token=${token}`, `--ca-pin=${pin}`])
    expect((await tsh(["login", `--proxy=localhost:${c.port}`, "--user=alice", "--insecure"], "correct horse battery\n")).code).toBe(0)
    // Eight processes start here (cluster, Redis, tctl five times, the agent, tsh): on a loaded CI machine that takes a while.
  }, 170_000)
  afterAll(async () => {
    for (const r of clients) r.disconnect()
    await agent?.stop()
    await redis?.stop()
    await stopCluster(c)
  })

  it("tsh db login, config and connect: redis-cli reaches Redis as the certificate's db user", async () => {
    const deadline = Date.now() + 15_000
    let listed = ""
    while (Date.now() < deadline && !listed.includes("cache1")) listed = (await tsh(["db", "ls"])).stdout
    expect(listed).toMatch(/cache1/)
    const login = await tsh(["db", "login", "cache1", "--db-user=alice"])
    expect(login.stderr).toBe("")
    expect(login.code).toBe(0)
    const cmd = (await tsh(["db", "config", "--format=cmd", "cache1"])).stdout.trim()
    const f = dbFiles()
    expect(cmd).toBe(`redis-cli --tls --cert ${f.cert} --key ${f.key} --cacert ${f.ca} -h localhost -p ${c.port}`)
    cliArgs = cmd.split(" ").slice(1)
    expect((await tsh(["db", "config", "cache1"])).stdout).toMatch(/Connect with redis-cli:/)

    const who = await cli(["ACL", "WHOAMI"])
    expect(who.stderr).toBe("")
    expect(who.stdout.trim()).toBe("alice")
    expect((await cli(["SET", "greeting", "hello world"])).stdout.trim()).toBe("OK")
    expect((await cli(["GET", "greeting"])).stdout.trim()).toBe("hello world")
    // Straight to Redis, bypassing Remoteler: the write really happened there.
    expect((await run("redis-cli", [...redis.cliArgs(), "GET", "greeting"])).stdout.trim()).toBe("hello world")

    // tsh db connect runs redis-cli itself; commands come on stdin, one per line (inline commands).
    const connected = await tsh(["db", "connect", "cache1"], "PING\nINCRBY counter 41\nINCR counter\n")
    expect(connected.stdout.trim().split("\n")).toEqual(["PONG", "41", "42"])
  })

  it("ioredis: a pipeline of 1000 commands, MULTI/EXEC, pub/sub, BLPOP and a big value, over ALPN and by certificate", async () => {
    const r = ioredis()
    await r.connect()
    const p = r.pipeline()
    for (let i = 0; i < 500; i++) p.set(`pipe:${i}`, String(i))
    for (let i = 0; i < 500; i++) p.get(`pipe:${i}`)
    const results = await p.exec()
    expect(results).toHaveLength(1000)
    expect(results!.slice(0, 500).every(([e, v]) => e === null && v === "OK")).toBe(true)
    expect(results!.slice(500).map(([, v]) => v)).toEqual(Array.from({ length: 500 }, (_, i) => String(i)))

    const tx = await r.multi().incr("tx").incr("tx").get("tx").exec()
    expect(tx!.map(([, v]) => v)).toEqual([1, 2, "2"])

    // 3 MiB, far beyond one TLS record and one tunnel frame.
    const big = "x".repeat(3 * 1024 * 1024)
    expect(await r.set("big", big)).toBe("OK")
    expect((await r.get("big"))?.length).toBe(big.length)

    const sub = ioredis({ alpn: true })
    await sub.connect()
    const got: Array<string> = []
    sub.on("message", (ch: string, msg: string) => got.push(`${ch}:${msg}`))
    await sub.subscribe("news", "sport")
    expect(await r.publish("news", "hello")).toBe(1)
    expect(await r.publish("sport", "goal")).toBe(1)
    const deadline = Date.now() + 5_000
    while (got.length < 2 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50))
    expect(got).toEqual(["news:hello", "sport:goal"])
    await sub.unsubscribe()
    expect(await sub.ping()).toBe("PONG")

    const blocked = ioredis()
    await blocked.connect()
    const pop = blocked.blpop("queue", 10)
    await new Promise((res) => setTimeout(res, 300))
    await r.lpush("queue", "job1")
    expect(await pop).toEqual(["queue", "job1"])
  })

  it("refuses a denied db user at session start and AUTH as another user, naming the user, the database and the rule", async () => {
    // AUTH as the session's own user is fine (rewritten, answered by Redis in order); as bob (not
    // in the roles) or carol (denied by no-carol) it is refused, and the session stays alice's.
    const r = ioredis()
    await r.connect()
    const p = r.pipeline().set("before", "1").call("AUTH", "bob", "secret").get("before").call("AUTH", "alice", "whatever").call("ACL", "WHOAMI")
    const res = await p.exec()
    expect(res![0]).toEqual([null, "OK"])
    expect(String(res![1]![0])).toMatch(/NOPERM access to db cache1 as db user bob .*(allow\.db_users|not allowed)/)
    expect(res![2]).toEqual([null, "1"])
    expect(res![3]).toEqual([null, "OK"])
    expect(res![4]).toEqual([null, "alice"])
    const carol = await cli(["AUTH", "carol", "x"])
    expect(carol.stdout).toMatch(/NOPERM access to db cache1 as db user carol denied by role no-carol \(deny\.db_users\)/)
    const hello = await cli(["HELLO", "3", "AUTH", "bob", "x"])
    expect(hello.stdout).toMatch(/NOPERM .*db user bob/)
    // RESP3, pipelined: the refusal comes after the SUBSCRIBE confirmation (a push) and before
    // the PING's answer, as Redis would order its own replies.
    const resp3 = await raw("HELLO 3\r\nSUBSCRIBE ch3\r\nAUTH bob x\r\nPING\r\n", 20_000, /\+PONG\r\n$/)
    expect(resp3.text).toMatch(/^%\d+\r\n[\s\S]*>3\r\n\$9\r\nsubscribe\r\n\$3\r\nch3\r\n:1\r\n-NOPERM [^\r]*db user bob[^\r]*\r\n\+PONG\r\n$/)

    expect((await tsh(["db", "login", "cache1", "--db-user=carol"])).code).toBe(0)
    const denied = await cli(["PING"])
    expect(denied.stdout + denied.stderr).toMatch(/NOPERM access to db cache1 as db user carol denied by role no-carol \(deny\.db_users\)/)
    const starts = await auditUntil("db.session.start", (es) => es.some((e) => e["code"] === "TDB00W" && e["db_user"] === "carol"))
    expect(starts.some((e) => e["code"] === "TDB00W" && e["db_user"] === "carol")).toBe(true)
    expect((await tsh(["db", "login", "cache1", "--db-user=alice"])).code).toBe(0)
    expect((await cli(["ACL", "WHOAMI"])).stdout.trim()).toBe("alice")
  })

  it("bad input gets a RESP error and closes only that connection", async () => {
    const bystander = ioredis()
    await bystander.connect()
    expect(await bystander.set("bystander", "still here")).toBe("OK")

    const huge = await raw("*2\r\n$3\r\nGET\r\n$1099511627776\r\n")
    expect(huge.text).toMatch(/^-ERR Protocol error: invalid bulk length\r\n$/)
    expect(huge.closed).toBe(true)
    const quotes = await raw('GET "unterminated\r\n')
    expect(quotes.text).toMatch(/^-ERR Protocol error: unbalanced quotes in request\r\n$/)
    expect(quotes.closed).toBe(true)
    const garbage = await raw(Buffer.from([0x2a, 0x31, 0x0d, 0x0a, 0x2b, 0xff, 0x00, 0x0d, 0x0a]))
    expect(garbage.text).toMatch(/^-ERR Protocol error/)
    expect(garbage.closed).toBe(true)
    // An unknown command is Redis's business: an error reply, and the connection goes on.
    const unknown = await raw("NOSUCHCOMMAND a b\r\nPING\r\n", 20_000, /\+PONG\r\n$/)
    expect(unknown.text).toMatch(/^-ERR unknown command 'NOSUCHCOMMAND'.*\r\n\+PONG\r\n$/)
    expect(unknown.closed).toBe(false)

    expect(await bystander.get("bystander")).toBe("still here")
    expect((await cli(["PING"])).stdout.trim()).toBe("PONG")
  })

  it("audits every command with its arguments, long ones cut and passwords masked, and nothing is lost when the agent is killed", async () => {
    const r = ioredis()
    await r.connect()
    const marker = `m${Date.now()}`
    expect(await r.set(`${marker}:long`, "y".repeat(5000))).toBe("OK")
    expect(await r.call("AUTH", "alice", "hunter2")).toBe("OK")
    const p = r.pipeline()
    for (let i = 0; i < 300; i++) p.set(`${marker}:${i}`, String(i))
    await p.exec()

    // Kill the agent mid-session: the client sees its connection end, Redis keeps its data.
    await agent!.kill()
    const deadline = Date.now() + 10_000
    while (r.status !== "end" && Date.now() < deadline) await new Promise((res) => setTimeout(res, 100))
    expect(r.status).toBe("end")
    agent = await startAgent([])
    await untilServing()
    expect((await cli(["GET", `${marker}:299`])).stdout.trim()).toBe("299")

    const cmds = await auditUntil("db.session.redis.command", (es) => es.filter((e) => String(e["db_query"]).startsWith(`SET ${marker}:`)).length >= 301)
    const mine = cmds.filter((e) => String(e["db_query"]).startsWith(`SET ${marker}:`))
    expect(mine.length).toBe(301)
    for (let i = 0; i < 300; i++) expect(mine.some((e) => (e["args"] as Array<string>)[0] === `${marker}:${i}`)).toBe(true)
    const long = mine.find((e) => (e["args"] as Array<string>)[0] === `${marker}:long`)!
    expect((long["args"] as Array<string>)[1]).toBe(`${"y".repeat(1024)}...(5000 bytes)`)
    expect(long).toMatchObject({ code: "TRD00I", command: "SET", db_user: "alice", db_service: "cache1", db_protocol: "redis" })
    const auths = cmds.filter((e) => e["command"] === "AUTH")
    expect(auths.length).toBeGreaterThan(0)
    expect(JSON.stringify(cmds)).not.toMatch(/hunter2|secret/)
    expect(auths.some((e) => e["db_query"] === "AUTH alice ****")).toBe(true)
    expect(auths.some((e) => e["db_query"] === "AUTH bob ****" && e["success"] === false)).toBe(true)
    // Commands from every client: redis-cli's, tsh db connect's inline ones, the pipeline's.
    for (const q of ["ACL WHOAMI", "SET greeting hello world", "INCRBY counter 41", "SUBSCRIBE news sport", "BLPOP queue 10", "MULTI", "EXEC", "NOSUCHCOMMAND a b"]) {
      expect(cmds.some((e) => e["db_query"] === q), q).toBe(true)
    }
    expect(cmds.filter((e) => String(e["db_query"]).startsWith("SET pipe:")).length).toBe(500)
    const ends = await auditUntil("db.session.end", (es) => es.some((e) => e["db_protocol"] === "redis"))
    expect(ends.some((e) => e["db_protocol"] === "redis")).toBe(true)
    expect((await c.tctl("audit", "verify")).code).toBe(0)
  })
})
