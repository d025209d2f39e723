/**
 * `npm run bench:certs`: certificate pairs (X.509 ECDSA P-256 + OpenSSH Ed25519) signed per second
 * on one core, and logins per second end to end through the proxy (second_factor off), from one
 * run. The last line is one JSON object.
 *
 *   --seconds=N   how long each measurement runs (default 5)
 */
import "reflect-metadata"
import { generateKeyPairSync } from "node:crypto"
import * as fs from "node:fs"
import * as https from "node:https"
import * as os from "node:os"
import * as path from "node:path"
import { Effect } from "effect"
import * as X509 from "../src/adapters/x509.ts"
import { publicKeyBlob, publicKeyLine, signCertificate, userCertFields } from "../src/protocols/ssh/cert.ts"
import { bin, freePort, node, startService } from "../test/fixtures/processes.ts"

const arg = (name: string, dflt: number) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`))
  return a === undefined ? dflt : Number(a.slice(name.length + 3))
}
const SECONDS = arg("seconds", 5)
const log = (s: string) => console.error(`bench:certs: ${s}`)

const signingRate = async () => {
  log("generating CAs and 256 client key pairs")
  const ca = await Effect.runPromise(X509.generateCa("bench user CA", "main", 1))
  const sshCa = generateKeyPairSync("ed25519")
  const clients = await Promise.all(
    Array.from({ length: 256 }, async () => ({
      tls: (await Effect.runPromise(X509.generateEcdsaKeyPair())).publicKeyPem,
      ssh: publicKeyBlob(generateKeyPairSync("ed25519").publicKey)
    }))
  )
  const identity = { username: "alice", roles: ["access"], logins: ["alice", "root"], routeToCluster: "main", traits: { logins: ["alice", "root"] } }
  log(`signing pairs for ${SECONDS} s`)
  const started = performance.now()
  let pairs = 0
  while (performance.now() - started < SECONDS * 1000) {
    const c = clients[pairs % clients.length]!
    const expires = new Date(Date.now() + 12 * 3600_000)
    await Effect.runPromise(X509.signUserCert({ caCert: ca.cert, caKey: ca.privateKey, publicKey: c.tls, identity, notAfter: expires }))
    signCertificate(
      userCertFields({ publicKey: c.ssh, username: "alice", logins: identity.logins, roles: identity.roles, traits: identity.traits, routeToCluster: "main", expires }),
      sshCa.privateKey
    )
    pairs++
  }
  return pairs / ((performance.now() - started) / 1000)
}

const post = (port: number, body: unknown) =>
  new Promise<number>((resolve, reject) => {
    const payload = JSON.stringify(body)
    const req = https.request(
      { host: "127.0.0.1", port, method: "POST", path: "/v1/webapi/ssh/certs", rejectUnauthorized: false, headers: { "content-type": "application/json" } },
      (res) => {
        res.resume()
        res.on("end", () => resolve(res.statusCode ?? 0))
      }
    )
    req.on("error", reject)
    req.end(payload)
  })

const loginRate = async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-certs-"))
  const port = await freePort()
  fs.writeFileSync(
    path.join(dir, "remoteler.yaml"),
    `remoteler:\n  data_dir: ${dir}/data\nauth_service:\n  authentication: { second_factor: "off" }\nproxy_service:\n  web_listen_addr: 127.0.0.1:${port}\n  public_addr: localhost:${port}\n`
  )
  log("starting remoteler (auth + proxy, SQLite)")
  const server = startService(process.execPath, [bin("remoteler"), "start", "-c", path.join(dir, "remoteler.yaml")])
  try {
    await server.waitFor(/proxy running/, 60_000)
    const tctl = (...a: Array<string>) => node(bin("tctl"), ["--data-dir", `${dir}/data`, ...a], { input: "correct horse battery\n" })
    await tctl("users", "add", "alice", "--roles=access", "--logins=alice")
    await tctl("users", "set-password", "alice")
    const tls = (await Effect.runPromise(X509.generateEcdsaKeyPair())).publicKeyPem
    const ssh = publicKeyLine(publicKeyBlob(generateKeyPairSync("ed25519").publicKey))
    const body = { user: "alice", password: "correct horse battery", pub_key: ssh, tls_pub_key: tls }
    const run = async (concurrency: number) => {
      const started = performance.now()
      let done = 0
      let failed = 0
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (performance.now() - started < SECONDS * 1000) {
            const status = await post(port, body)
            if (status === 200) done++
            else failed++
          }
        })
      )
      if (failed > 0) throw new Error(`${failed} logins failed`)
      return done / ((performance.now() - started) / 1000)
    }
    log(`logging in for ${SECONDS} s, 1 at a time`)
    const sequential = await run(1)
    log(`logging in for ${SECONDS} s, 8 at a time`)
    const concurrent = await run(8)
    return { sequential, concurrent }
  } finally {
    await server.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

const pairsPerSecond = await signingRate()
console.log(`certificate pairs signed per second (one core): ${pairsPerSecond.toFixed(0)} (aim: >= 1000)`)
const logins = await loginRate()
console.log(`logins per second through the proxy: ${logins.sequential.toFixed(1)} sequential, ${logins.concurrent.toFixed(1)} with 8 concurrent`)
console.log(
  JSON.stringify({
    cert_pairs_per_second: Math.round(pairsPerSecond),
    logins_per_second_sequential: Number(logins.sequential.toFixed(1)),
    logins_per_second_concurrent8: Number(logins.concurrent.toFixed(1)),
    seconds_per_measurement: SECONDS
  })
)
