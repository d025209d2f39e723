/**
 * `node --import tsx bench/tunnel.ts`: throughput of one reverse-tunnel stream against one direct
 * TLS connection and loopback TCP, everything in this one process on 127.0.0.1 (so each figure pays
 * for both ends). The tunnel is measured both ways: download (agent → proxy, query results) and
 * upload (proxy → agent). The last line is one JSON object.
 *
 *   --mib=N              bytes per measurement, in MiB (default 1024)
 *   --stream-window=N    HTTP/2 stream window in KiB (default: the library's)
 *   --conn-window=N      HTTP/2 connection window in KiB (default: the library's)
 */
import "reflect-metadata"
import * as net from "node:net"
import * as tls from "node:tls"
import type { Duplex } from "node:stream"
import { Effect } from "effect"
import * as X509 from "../src/adapters/x509.ts"
import { makeHostIdentity } from "../src/domain/Identity.ts"
import type { SystemRole } from "../src/domain/Identity.ts"
import * as TunnelAgent from "../src/actors/TunnelAgent.ts"
import * as TunnelServer from "../src/actors/TunnelServer.ts"
import { DEFAULT_CONNECTION_WINDOW, DEFAULT_STREAM_WINDOW, DatabaseResource, Resources } from "../src/protocols/tunnel/wire.ts"

const arg = (name: string, dflt: number) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`))
  return a === undefined ? dflt : Number(a.slice(name.length + 3))
}
const TOTAL = arg("mib", 1024) * 1024 * 1024
const STREAM_WINDOW = arg("stream-window", DEFAULT_STREAM_WINDOW / 1024) * 1024
const CONN_WINDOW = arg("conn-window", DEFAULT_CONNECTION_WINDOW / 1024) * 1024
const log = (s: string) => console.error(`bench:tunnel: ${s}`)
const CHUNK = Buffer.alloc(1024 * 1024, 0x5a)

/** Writes `total` bytes with backpressure, then ends. */
const source = (stream: Duplex, total: number): Promise<void> =>
  new Promise((resolve, reject) => {
    let left = total
    stream.once("error", reject)
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, CHUNK.length)
        left -= n
        if (!stream.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) {
          stream.once("drain", pump)
          return
        }
      }
      stream.end(resolve)
    }
    pump()
  })

/** Counts bytes until the stream ends. */
const sink = (stream: Duplex): Promise<number> =>
  new Promise((resolve, reject) => {
    let n = 0
    stream.on("data", (c: Buffer) => {
      n += c.length
    })
    stream.once("end", () => resolve(n))
    stream.once("error", reject)
  })

const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000)

const timed = async (what: string, f: () => Promise<number>): Promise<number> => {
  const t0 = performance.now()
  const bytes = await f()
  const ms = performance.now() - t0
  if (bytes !== TOTAL) throw new Error(`${what}: got ${bytes} bytes, expected ${TOTAL}`)
  const rate = mbps(bytes, ms)
  log(`${what}: ${rate.toFixed(0)} MB/s (${(ms / 1000).toFixed(2)} s)`)
  return rate
}

const listenOn = (server: net.Server): Promise<number> =>
  new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as net.AddressInfo).port)))

const loopbackTcp = async (): Promise<number> => {
  const server = net.createServer((socket) => void source(socket, TOTAL))
  const port = await listenOn(server)
  try {
    return await timed("loopback TCP", async () => sink(net.connect(port, "127.0.0.1")))
  } finally {
    server.close()
  }
}

interface Pair {
  readonly cert: string
  readonly key: string
}

const directTls = async (ca: X509.CertificateAuthority, server: Pair, client: Pair): Promise<number> => {
  const listener = tls.createServer({ ...server, ca: ca.certPem, requestCert: true, rejectUnauthorized: true }, (socket) =>
    void source(socket, TOTAL)
  )
  const port = await listenOn(listener)
  try {
    return await timed("direct TLS", async () => {
      const socket = tls.connect({ host: "127.0.0.1", port, ca: ca.certPem, ...client })
      return sink(socket)
    })
  } finally {
    listener.close()
  }
}

const tunnel = (ca: X509.CertificateAuthority, proxy: Pair, agent: Pair) =>
  Effect.gen(function* () {
    const server = yield* TunnelServer.make({ streamWindow: STREAM_WINDOW, connectionWindow: CONN_WINDOW })
    const { port } = yield* TunnelServer.listen(server, { host: "127.0.0.1", port: 0, ...proxy, hostCaPems: [ca.certPem] })
    yield* TunnelAgent.make({
      host: "127.0.0.1",
      port,
      ...agent,
      ca: [ca.certPem],
      resources: new Resources({
        databases: ["download", "upload"].map((name) => new DatabaseResource({ name, protocol: "bench", labels: {} }))
      }),
      streamWindow: STREAM_WINDOW,
      connectionWindow: CONN_WINDOW,
      onDial: ({ target, stream }) =>
        Effect.promise(async () => {
          if (target.name === "download") {
            await source(stream, TOTAL)
          } else {
            const n = await sink(stream)
            await new Promise<void>((resolve) => stream.end(String(n), () => resolve()))
          }
        })
    })
    for (;;) {
      if ((yield* server.agents).length > 0) break
      yield* Effect.sleep(10)
    }
    const download = yield* Effect.promise(() =>
      timed("tunnel stream, download (agent → proxy)", async () => {
        const stream = await Effect.runPromise(server.dial("bench-agent", { kind: "db", name: "download", meta: {} }))
        return sink(stream)
      })
    )
    const upload = yield* Effect.promise(() =>
      timed("tunnel stream, upload (proxy → agent)", async () => {
        const stream = await Effect.runPromise(server.dial("bench-agent", { kind: "db", name: "upload", meta: {} }))
        const [, ack] = await Promise.all([source(stream, TOTAL), sink(stream)])
        return ack === 0 ? 0 : TOTAL
      })
    )
    return { download, upload }
  }).pipe(Effect.scoped)

const main = async () => {
  const ca = await Effect.runPromise(X509.generateCa("bench host CA", "main", 1))
  const pair = async (hostId: string, systemRole: SystemRole): Promise<Pair> => {
    const keys = await Effect.runPromise(X509.generateEcdsaKeyPair())
    const identity = makeHostIdentity({ hostId, nodeName: hostId, systemRole, clusterName: "main", expires: new Date(Date.now() + 3_600_000) })
    const { pem } = await Effect.runPromise(
      X509.signHostCert({ caCert: ca.certPem, caKey: ca.keyPem, publicKey: keys.publicKeyPem, identity, notAfter: identity.expires, ipAddresses: ["127.0.0.1"] })
    )
    return { cert: pem, key: keys.privateKeyPem }
  }
  const proxy = await pair("bench-proxy", "Proxy")
  const agent = await pair("bench-agent", "Db")
  log(`${TOTAL / 1024 / 1024} MiB per measurement; windows: stream ${STREAM_WINDOW / 1024} KiB, connection ${CONN_WINDOW / 1024} KiB`)
  const tcp = await loopbackTcp()
  const direct = await directTls(ca, proxy, agent)
  const t = await Effect.runPromise(tunnel(ca, proxy, agent))
  console.log(`loopback TCP          ${tcp.toFixed(0)} MB/s`)
  console.log(`direct TLS            ${direct.toFixed(0)} MB/s (${(direct / tcp).toFixed(2)} × TCP)`)
  console.log(`tunnel download       ${t.download.toFixed(0)} MB/s (${(t.download / direct).toFixed(2)} × TLS, ${(t.download / tcp).toFixed(2)} × TCP)`)
  console.log(`tunnel upload         ${t.upload.toFixed(0)} MB/s (${(t.upload / direct).toFixed(2)} × TLS, ${(t.upload / tcp).toFixed(2)} × TCP)`)
  console.log(
    JSON.stringify({
      bytes: TOTAL,
      stream_window: STREAM_WINDOW,
      connection_window: CONN_WINDOW,
      tcp_mb_s: Math.round(tcp),
      tls_mb_s: Math.round(direct),
      tunnel_download_mb_s: Math.round(t.download),
      tunnel_upload_mb_s: Math.round(t.upload),
      tunnel_download_vs_tls: Number((t.download / direct).toFixed(3)),
      tunnel_upload_vs_tls: Number((t.upload / direct).toFixed(3)),
      tunnel_download_vs_tcp: Number((t.download / tcp).toFixed(3)),
      tls_vs_tcp: Number((direct / tcp).toFixed(3))
    })
  )
}

await main()
