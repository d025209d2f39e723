/**
 * An agent's identity: joined once with a token, kept in its data dir, used for every connection
 * to the proxy afterwards (the tunnel, audit uploads, certificate requests).
 *
 *   <data_dir>/host.json    host id, node name, role, proxy, expiry
 *   <data_dir>/host.key     ECDSA P-256 private key (0600)
 *   <data_dir>/host.crt     host certificate from the host CA
 *   <data_dir>/host-ca.pem  the host CA, which the proxy's certificate must chain to
 *
 * The first connection, before the agent knows the host CA, is checked with `--ca-pin`
 * (sha256 of the CA's SubjectPublicKeyInfo, printed by `tctl tokens add`), as Teleport does: the
 * token is never sent to a proxy whose certificate is not signed by the pinned CA.
 */
import { createHash, X509Certificate } from "node:crypto"
import * as fs from "node:fs"
import * as https from "node:https"
import * as path from "node:path"
import * as tls from "node:tls"
import { Data, Effect, Either } from "effect"
import * as X509 from "./x509.ts"

export class AgentIdentityError extends Data.TaggedError("AgentIdentityError")<{ readonly message: string }> {}

export interface AgentIdentity {
  readonly hostId: string
  readonly nodeName: string
  readonly role: "db" | "node"
  readonly certPem: string
  readonly keyPem: string
  readonly caPems: ReadonlyArray<string>
  readonly expires: string
}

export interface ProxyAddress {
  readonly host: string
  readonly port: number
}

export const parseProxy = (addr: string): ProxyAddress => {
  const m = /^(?:\[([^\]]+)\]|([^:]+))(?::(\d+))?$/.exec(addr)
  if (m === null) throw new AgentIdentityError({ message: `--proxy: expected HOST[:PORT], got ${JSON.stringify(addr)}` })
  return { host: m[1] ?? m[2]!, port: m[3] === undefined ? 3080 : Number(m[3]) }
}

/** `sha256:<hex>` of a CA certificate's SubjectPublicKeyInfo. */
export const caPin = (caPem: string): string =>
  `sha256:${createHash("sha256").update(new X509Certificate(caPem).publicKey.export({ type: "spki", format: "der" })).digest("hex")}`

const files = (dataDir: string) => ({
  meta: path.join(dataDir, "host.json"),
  key: path.join(dataDir, "host.key"),
  cert: path.join(dataDir, "host.crt"),
  ca: path.join(dataDir, "host-ca.pem")
})

const writeAtomic = (file: string, data: string, mode: number) => {
  const tmp = `${file}.tmp-${process.pid}`
  const fd = fs.openSync(tmp, "w", mode)
  fs.writeSync(fd, data)
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  fs.renameSync(tmp, file)
}

export const load = (dataDir: string): AgentIdentity | undefined => {
  const f = files(dataDir)
  if (!fs.existsSync(f.meta)) return undefined
  const meta = JSON.parse(fs.readFileSync(f.meta, "utf8")) as { host_id: string; node_name: string; role: "db" | "node"; expires: string }
  const caText = fs.readFileSync(f.ca, "utf8")
  return {
    hostId: meta.host_id,
    nodeName: meta.node_name,
    role: meta.role,
    expires: meta.expires,
    certPem: fs.readFileSync(f.cert, "utf8"),
    keyPem: fs.readFileSync(f.key, "utf8"),
    caPems: caText.split(/(?<=-----END CERTIFICATE-----\n?)/).filter((p) => p.includes("BEGIN CERTIFICATE"))
  }
}

export const save = (dataDir: string, id: AgentIdentity) => {
  const f = files(dataDir)
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 })
  writeAtomic(f.key, id.keyPem, 0o600)
  writeAtomic(f.cert, id.certPem, 0o644)
  writeAtomic(f.ca, id.caPems.join(""), 0o644)
  writeAtomic(f.meta, JSON.stringify({ host_id: id.hostId, node_name: id.nodeName, role: id.role, expires: id.expires }, null, 2), 0o600)
}

/** Opens TLS to the proxy and checks its certificate against the pinned CA before anything is sent. */
const pinnedSocket = (proxy: ProxyAddress, pin: string) =>
  Effect.async<tls.TLSSocket, AgentIdentityError>((resume) => {
    const socket = tls.connect({ host: proxy.host, port: proxy.port, servername: proxy.host, rejectUnauthorized: false, ALPNProtocols: ["http/1.1"] })
    socket.once("error", (e) => resume(Effect.fail(new AgentIdentityError({ message: `cannot reach the proxy at ${proxy.host}:${proxy.port}: ${e.message}` }))))
    socket.once("secureConnect", () => {
      const leaf = socket.getPeerCertificate(true)
      const issuer = leaf.issuerCertificate
      const refuse = (why: string) => {
        socket.destroy()
        resume(Effect.fail(new AgentIdentityError({ message: why })))
      }
      if (leaf.raw === undefined || issuer === undefined || issuer.raw === undefined || issuer === leaf) {
        return refuse("the proxy did not present its CA, so --ca-pin cannot be checked")
      }
      const caPem = X509.toPem(issuer.raw, "CERTIFICATE")
      if (caPin(caPem) !== pin) return refuse(`the proxy's CA does not match --ca-pin (it is ${caPin(caPem)})`)
      const leafPem = X509.toPem(leaf.raw, "CERTIFICATE")
      Effect.runPromise(Effect.either(X509.verifyChain(leafPem, [caPem]))).then((r) =>
        Either.isLeft(r) ? refuse(`the proxy's certificate is not signed by the pinned CA: ${r.left.message}`) : resume(Effect.succeed(socket))
      )
    })
  })

const postJson = (socket: tls.TLSSocket, proxy: ProxyAddress, urlPath: string, body: unknown) =>
  Effect.async<{ status: number; json: unknown }, AgentIdentityError>((resume) => {
    const payload = JSON.stringify(body)
    const req = https.request(
      {
        host: proxy.host,
        port: proxy.port,
        method: "POST",
        path: urlPath,
        createConnection: () => socket,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) }
      },
      (res) => {
        let text = ""
        res.on("data", (d: Buffer) => (text += d.toString()))
        res.on("end", () => {
          try {
            resume(Effect.succeed({ status: res.statusCode ?? 0, json: JSON.parse(text) as unknown }))
          } catch {
            resume(Effect.fail(new AgentIdentityError({ message: `the proxy answered ${res.statusCode} with something that is not JSON` })))
          }
        })
      }
    )
    req.on("error", (e) => resume(Effect.fail(new AgentIdentityError({ message: `join request failed: ${e.message}` }))))
    req.end(payload)
  })

/**
 * The agent's identity: from the data dir when it is there and valid, else by joining with the
 * token (which then is no longer needed).
 */
export const loadOrJoin = (options: {
  readonly dataDir: string
  readonly proxy: string
  readonly role: "db" | "node"
  readonly nodeName: string
  readonly token: string | undefined
  readonly caPin: string | undefined
}): Effect.Effect<AgentIdentity, AgentIdentityError> =>
  Effect.gen(function* () {
    const existing = yield* Effect.try({
      try: () => load(options.dataDir),
      catch: (e) => new AgentIdentityError({ message: `cannot read the agent identity in ${options.dataDir}: ${(e as Error).message}` })
    })
    if (existing !== undefined && existing.role === options.role && Date.parse(existing.expires) > Date.now()) return existing
    if (options.token === undefined) {
      return yield* new AgentIdentityError({
        message:
          existing === undefined
            ? "this agent has not joined the cluster yet: give --token (from 'tctl tokens add') and --ca-pin"
            : "this agent's certificate has expired: join again with a new --token"
      })
    }
    if (options.caPin === undefined || !/^sha256:[0-9a-f]{64}$/.test(options.caPin)) {
      return yield* new AgentIdentityError({ message: "--ca-pin=sha256:... is required to join (printed by 'tctl tokens add')" })
    }
    const proxy = parseProxy(options.proxy)
    const keys = yield* X509.generateEcdsaKeyPair().pipe(Effect.mapError((e) => new AgentIdentityError({ message: e.message })))
    const socket = yield* pinnedSocket(proxy, options.caPin)
    const r = yield* postJson(socket, proxy, "/v1/webapi/host/join", {
      token: options.token,
      role: options.role,
      node_name: options.nodeName,
      tls_pub_key: keys.publicKeyPem
    })
    if (r.status !== 200) {
      const message = (r.json as { error?: { message?: string } }).error?.message ?? `HTTP ${r.status}`
      return yield* new AgentIdentityError({ message: `the cluster refused to join this agent: ${message}` })
    }
    const body = r.json as { host_id: string; tls_cert: string; tls_ca_certs: ReadonlyArray<string>; expires: string }
    const identity: AgentIdentity = {
      hostId: body.host_id,
      nodeName: options.nodeName,
      role: options.role,
      certPem: body.tls_cert,
      keyPem: keys.privateKeyPem,
      caPems: body.tls_ca_certs,
      expires: body.expires
    }
    yield* Effect.try({
      try: () => save(options.dataDir, identity),
      catch: (e) => new AgentIdentityError({ message: `cannot save the agent identity: ${(e as Error).message}` })
    })
    return identity
  })

/** A JSON POST to the proxy authenticated by the agent's host certificate. */
export const agentPost = (proxy: string, identity: AgentIdentity, urlPath: string, body: unknown) =>
  Effect.async<unknown, AgentIdentityError>((resume) => {
    const p = parseProxy(proxy)
    const payload = JSON.stringify(body)
    const req = https.request(
      {
        host: p.host,
        port: p.port,
        method: "POST",
        path: urlPath,
        cert: identity.certPem,
        key: identity.keyPem,
        ca: [...identity.caPems],
        agent: false,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) }
      },
      (res) => {
        let text = ""
        res.on("data", (d: Buffer) => (text += d.toString()))
        res.on("end", () => {
          let json: unknown
          try {
            json = JSON.parse(text)
          } catch {
            json = undefined
          }
          if (res.statusCode === 200) resume(Effect.succeed(json))
          else {
            const message = (json as { error?: { message?: string } } | undefined)?.error?.message ?? `HTTP ${res.statusCode}`
            resume(Effect.fail(new AgentIdentityError({ message })))
          }
        })
      }
    )
    req.on("error", (e) => resume(Effect.fail(new AgentIdentityError({ message: `proxy unreachable: ${e.message}` }))))
    req.setTimeout(15_000, () => req.destroy(new Error("timed out")))
    req.end(payload)
  })
