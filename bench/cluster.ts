/**
 * `npm run bench:cluster`: login round trips per second and events committed per second through
 * one proxy, with one auth service and then with two, all sharing one PostgreSQL and one NATS
 * (real processes). Each login commits two events (user.login, cert.create). The last line is
 * one JSON object.
 *
 *   --seconds=N      per measurement (default 20)
 *   --concurrency=N  logins in flight (default 8)
 */
import { generateKeyPairSync } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect } from "effect"
import * as X509 from "../src/adapters/x509.ts"
import { publicKeyBlob, publicKeyLine } from "../src/protocols/ssh/cert.ts"
import { request } from "../test/fixtures/cluster.ts"
import { startNatsServer } from "../test/fixtures/nats.ts"
import { startPostgresAsync } from "../test/fixtures/postgres.ts"
import type { Service } from "../test/fixtures/processes.ts"
import { bin, freePort, node, startService } from "../test/fixtures/processes.ts"

const arg = (name: string, dflt: number) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`))
  return a === undefined ? dflt : Number(a.slice(name.length + 3))
}
const SECONDS = arg("seconds", 20)
const CONCURRENCY = arg("concurrency", 8)
const log = (s: string) => console.error(`bench:cluster: ${s}`)

const services: Array<Service> = []
const [pg, nats] = await Promise.all([startPostgresAsync(), startNatsServer()])
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-cluster-"))
try {
  const storage = await pg.createDatabase("remoteler")
  fs.writeFileSync(path.join(dir, "auth.yaml"), 'auth_service:\n  authentication: { second_factor: "off" }\n')
  const startAuth = async (name: string) => {
    const s = startService(process.execPath, [
      bin("remoteler"), "start", "--roles=auth", "-c", path.join(dir, "auth.yaml"), "--data-dir", path.join(dir, name), `--storage=${storage}`, `--nats=${nats.urlWithAuth}`
    ])
    services.push(s)
    await s.waitFor(/auth service running/, 120_000)
    return s
  }
  const tctl = (...a: Array<string>) => node(bin("tctl"), ["--data-dir", path.join(dir, "auth1"), ...a], { input: "correct horse battery\n" })

  log("starting PostgreSQL, NATS, one auth service and a proxy")
  await startAuth("auth1")
  const port = await freePort()
  const token = /--token=([0-9a-f]{32})/.exec((await tctl("tokens", "add", "--type=proxy")).stdout)![1]!
  fs.writeFileSync(path.join(dir, "proxy.yaml"), `proxy_service:\n  web_listen_addr: 127.0.0.1:${port}\n  public_addr: localhost:${port}\n`)
  const proxy = startService(process.execPath, [
    bin("remoteler"), "start", "--roles=proxy", "-c", path.join(dir, "proxy.yaml"), "--data-dir", path.join(dir, "proxy"), `--nats=${nats.urlWithAuth}`, `--token=${token}`
  ])
  services.push(proxy)
  await proxy.waitFor(/proxy running/, 120_000)
  await tctl("users", "add", "alice", "--roles=access", "--logins=alice")
  await tctl("users", "set-password", "alice")

  const tls = (await Effect.runPromise(X509.generateEcdsaKeyPair())).publicKeyPem
  const ssh = publicKeyLine(publicKeyBlob(generateKeyPairSync("ed25519").publicKey))
  const body = { user: "alice", password: "correct horse battery", pub_key: ssh, tls_pub_key: tls }
  const head = async () => Number((await pg.psql("SELECT coalesce(max(seq), 0) FROM events", "remoteler")).trim())

  const measure = async (label: string) => {
    log(`${label}: logging in for ${SECONDS} s, ${CONCURRENCY} at a time`)
    const seqBefore = await head()
    const started = performance.now()
    let ok = 0
    let failed = 0
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (performance.now() - started < SECONDS * 1000) {
          const r = await request(port, "POST", "/v1/webapi/ssh/certs", { body })
          if (r.status === 200) ok++
          else failed++
        }
      })
    )
    const secs = (performance.now() - started) / 1000
    const events = (await head()) - seqBefore
    return { logins_per_second: Number((ok / secs).toFixed(1)), events_per_second: Number((events / secs).toFixed(1)), failed }
  }

  const one = await measure("one auth")
  log("starting a second auth service")
  await startAuth("auth2")
  const two = await measure("two auths")
  console.log(`one auth:  ${one.logins_per_second} logins/s, ${one.events_per_second} events/s (${one.failed} failed)`)
  console.log(`two auths: ${two.logins_per_second} logins/s, ${two.events_per_second} events/s (${two.failed} failed)`)
  console.log(`note: on this ${os.cpus().length}-core machine every process shares the same cores; the ratio shows scaling only where cores are free`)
  console.log(
    JSON.stringify({
      one_auth: one,
      two_auths: two,
      logins_ratio: Number((two.logins_per_second / Math.max(one.logins_per_second, 0.001)).toFixed(2)),
      cores: os.cpus().length,
      seconds: SECONDS,
      concurrency: CONCURRENCY
    })
  )
} finally {
  for (const s of services.reverse()) await s.stop()
  await Promise.all([pg.stop(), nats.dispose()])
  fs.rmSync(dir, { recursive: true, force: true })
}
