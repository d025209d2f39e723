/**
 * `remoteler start --storage=postgres://... --nats=nats://...`: the same commands on the cluster
 * backends. A SIEM-style subscriber on `remoteler.main.events.>` sees every committed event once,
 * in seq order, and the JetStream stream REMOTELER_EVENTS keeps them.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { connect } from "@nats-io/transport-node"
import { jetstreamManager } from "@nats-io/jetstream"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { NatsServer } from "./fixtures/nats.ts"
import { startNatsServer } from "./fixtures/nats.ts"
import type { PostgresServer } from "./fixtures/postgres.ts"
import { startPostgresAsync } from "./fixtures/postgres.ts"
import type { Service } from "./fixtures/processes.ts"
import { bin, node, startService } from "./fixtures/processes.ts"

describe("remoteler start on PostgreSQL and NATS", () => {
  let pg: PostgresServer
  let nats: NatsServer
  let dir: string
  let server: Service | undefined
  let storage: string

  const start = async () => {
    const s = startService(process.execPath, [bin("remoteler"), "start", "--roles=auth", "--data-dir", dir, `--storage=${storage}`, `--nats=${nats.urlWithAuth}`])
    await s.waitFor(/auth service running/, 60_000)
    return s
  }
  const tctl = (...args: Array<string>) => node(bin("tctl"), ["--data-dir", dir, ...args])

  beforeAll(async () => {
    ;[pg, nats] = await Promise.all([
      startPostgresAsync(),
      startNatsServer({
        extraUsers: [
          {
            user: "siem",
            pass: "siem-secret",
            permissions: {
              publish: {
                allow: [
                  "$JS.API.CONSUMER.CREATE.REMOTELER_EVENTS.>",
                  "$JS.API.CONSUMER.INFO.REMOTELER_EVENTS.siem",
                  "$JS.API.CONSUMER.MSG.NEXT.REMOTELER_EVENTS.siem",
                  "$JS.API.STREAM.INFO.REMOTELER_EVENTS",
                  "$JS.ACK.REMOTELER_EVENTS.siem.>",
                  "$JS.API.INFO"
                ]
              },
              subscribe: { allow: ["_INBOX.>"] }
            }
          }
        ]
      })
    ])
    storage = await pg.createDatabase("remoteler")
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "remoteler-cluster-"))
  })
  afterAll(async () => {
    await server?.stop()
    await Promise.all([pg?.stop(), nats?.dispose()])
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  it("stores events in PostgreSQL and publishes each once, in order, on NATS", async () => {
    const nc = await connect({ servers: nats.url, user: nats.user, pass: nats.pass })
    const received: Array<{ subject: string; seq: number; event: string }> = []
    const sub = nc.subscribe("remoteler.main.events.>", {
      callback: (_err, msg) => {
        const e = msg.json<{ seq: number; event: string }>()
        received.push({ subject: msg.subject, seq: e.seq, event: e.event })
      }
    })
    await nc.flush()

    server = await start()
    const status = await tctl("status")
    expect(status.stdout).toMatch(/Storage\s+postgres:\/\/127\.0\.0\.1:\d+\/remoteler/)
    expect(status.stdout).toMatch(/Bus\s+nats:\/\/127\.0\.0\.1/)
    expect(status.stdout).not.toContain(nats.pass)

    expect((await tctl("users", "add", "alice", "--roles=access", "--logins=alice")).code).toBe(0)
    expect((await tctl("users", "add", "bob", "--roles=auditor")).code).toBe(0)
    expect((await tctl("users", "rm", "bob")).code).toBe(0)

    const head = Number((await pg.psql("SELECT max(seq) FROM events", "remoteler")).trim())
    const deadline = Date.now() + 10_000
    while (received.length < head && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
    // Every event once, in seq order: the CAs created at first start, then the users.
    expect(received.map((r) => r.seq)).toEqual(Array.from({ length: head }, (_, i) => i + 1))
    expect(received.filter((r) => r.event.startsWith("user.")).map((r) => r.event)).toEqual(["user.create", "user.create", "user.delete"])
    expect(received.find((r) => r.event === "user.create")!.subject).toBe("remoteler.main.events.user.create")
    expect(received.filter((r) => r.event === "ca.create")).toHaveLength(3)

    const jsm = await jetstreamManager(nc)
    const info = await jsm.streams.info("REMOTELER_EVENTS")
    expect(info.state.messages).toBe(head)
    sub.unsubscribe()
    await nc.close()

    // The rows are in PostgreSQL, and they survive a restart of the service.
    expect(Number((await pg.psql("SELECT count(*) FROM events", "remoteler")).trim())).toBe(head)
    await server.stop()
    server = await start()
    const users = JSON.parse((await tctl("users", "ls", "--format=json")).stdout) as Array<{ name: string }>
    expect(users.map((u) => u.name)).toEqual(["alice"])
    expect((await tctl("audit", "verify")).stdout).toMatch(new RegExp(`chain intact: ${head} events`))
  })

  it("keeps appending while NATS is down and publishes the backlog when it returns", async () => {
    await nats.stop()
    const before = Number(/Events\s+(\d+)/.exec((await tctl("status")).stdout)![1])
    expect((await tctl("users", "add", "carol", "--roles=access")).code).toBe(0)
    const during = await tctl("status")
    const head = Number(/Events\s+(\d+)/.exec(during.stdout)![1])
    expect(head).toBeGreaterThan(before)

    await nats.restart()
    const nc = await connect({ servers: nats.url, user: nats.user, pass: nats.pass })
    const jsm = await jetstreamManager(nc)
    const deadline = Date.now() + 20_000
    let messages = 0
    while (Date.now() < deadline) {
      messages = (await jsm.streams.info("REMOTELER_EVENTS")).state.messages
      if (messages >= head) break
      await new Promise((r) => setTimeout(r, 250))
    }
    expect(messages).toBe(head)
    await nc.close()
    expect((await tctl("status")).stdout).toMatch(new RegExp(`Outbox\\s+at seq ${head}`))
  })

  it("the example SIEM consumer receives every event once, in order, and resumes after its last ack", async () => {
    const siemUrl = nats.url.replace("nats://", "nats://siem:siem-secret@")
    const consumer = () => startService(process.execPath, ["--import", "tsx", "examples/siem/consumer.ts", "--server", siemUrl, "--durable", "siem"])
    const seqs = (out: string) =>
      out
        .trim()
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => (JSON.parse(l) as { seq: number }).seq)
    const first = consumer()
    const head = Number(/Events\s+(\d+)/.exec((await tctl("status")).stdout)![1])
    await first.waitFor(new RegExp(`"seq":${head}[,}]`), 60_000)
    await first.stop()
    const before = seqs(first.output())
    expect(before).toEqual(Array.from({ length: head }, (_, i) => i + 1))

    expect((await tctl("users", "add", "erin", "--roles=access")).code).toBe(0)
    const next = Number(/Events\s+(\d+)/.exec((await tctl("status")).stdout)![1])
    const second = consumer()
    await second.waitFor(new RegExp(`"seq":${next}[,}]`), 60_000)
    await second.stop()
    // Only what came after the last acknowledged event.
    expect(seqs(second.output())).toEqual(Array.from({ length: next - head }, (_, i) => head + i + 1))
    expect(second.output()).not.toContain("siem-secret")

    // The SIEM account can read the stream, but cannot publish on the cluster's subjects.
    const nc = await connect({ servers: nats.url, user: "siem", pass: "siem-secret" })
    const errors: Array<string> = []
    ;(async () => {
      for await (const st of nc.status()) if (st.type === "error") errors.push(String(st.error))
    })().catch(() => undefined)
    nc.publish("remoteler.main.events.user.create", "forged")
    await nc.flush().catch(() => undefined)
    await new Promise((r) => setTimeout(r, 500))
    await nc.close()
    expect(errors.join(" ")).toMatch(/Permissions Violation/i)
  })
})
