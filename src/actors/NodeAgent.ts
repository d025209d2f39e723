/**
 * The SSH node agent: joins once (see AgentIdentity), keeps an Ed25519 host key in its data dir,
 * dials the proxy's reverse tunnel advertising itself as a node (with that host key, which
 * clients pin), and serves SSH (protocols/ssh/server.ts) on every stream the proxy opens to it,
 * and on `ssh_service.listen_addr` when one is set, for direct access.
 *
 * What it learns from auth, through the proxy with its host certificate:
 *   - the user CA's SSH keys (`/v1/webapi/agent/ssh-user-cas`), refreshed every 10 s (so a key a
 *     rotation retires stops working here within that) and at once when a certificate names a CA
 *     key we do not know (a rotation's new key), cached in the data dir so a node cut off from the
 *     proxy still admits users it can check;
 *   - a user's current roles and traits (`/v1/webapi/agent/ssh-session`) at each login.
 * Audit events go to the durable buffer first and are uploaded in order, as the db agent does;
 * recordings are uploaded from `<data_dir>/recordings` (see protocols/ssh/recording.ts).
 */
import { generateKeyPairSync, createPrivateKey } from "node:crypto"
import * as fs from "node:fs"
import { isIP } from "node:net"
import * as path from "node:path"
import { Deferred, Duration, Effect, Either, Layer, Schedule, Schema } from "effect"
import type { AgentIdentity } from "../adapters/AgentIdentity.ts"
import * as AuditBuffer from "../adapters/AuditBuffer.ts"
import { Role, Traits } from "../domain/Role.ts"
import { parseOpenSshPrivateKey, parsePublicKeyLine, privateKeyToOpenSsh, publicKeyBlob, publicKeyLine } from "../protocols/ssh/cert.ts"
import { uploadRecordings } from "../protocols/ssh/recording.ts"
import type { NodeServer } from "../protocols/ssh/server.ts"
import { makeNodeServer } from "../protocols/ssh/server.ts"
import { NodeResource, Resources } from "../protocols/tunnel/wire.ts"
import * as TunnelPool from "./TunnelPool.ts"

export const HOST_KEY_FILE = "ssh_host_ed25519_key"
const USER_CA_CACHE = "user-ca.pub"
/** How often the node asks for the user CA's keys: the longest a retired CA key still works here. */
const CA_REFRESH_SECONDS = 10

const decodeAccess = Schema.decodeUnknownSync(Schema.Struct({ roles: Schema.Array(Role), traits: Traits }))

/** The node's host key: made once, kept in the data dir as sshd keeps its own (0600, OpenSSH format). */
export const loadOrCreateHostKey = (dataDir: string): { readonly privateKey: string; readonly publicLine: string } => {
  const file = path.join(dataDir, HOST_KEY_FILE)
  if (!fs.existsSync(file)) {
    const { privateKey } = generateKeyPairSync("ed25519")
    const tmp = `${file}.tmp-${process.pid}`
    fs.writeFileSync(tmp, privateKeyToOpenSsh(privateKey, "remoteler-node"), { mode: 0o600 })
    fs.renameSync(tmp, file)
  }
  const text = fs.readFileSync(file, "utf8")
  const line = publicKeyLine(publicKeyBlob(createPrivateKey(pemForNode(text))))
  fs.writeFileSync(`${file}.pub`, `${line}\n`, { mode: 0o644 })
  return { privateKey: text, publicLine: line }
}

/** node:crypto cannot read openssh-key-v1; cert.ts can. */
const pemForNode = (text: string): string => {
  const r = parseOpenSshPrivateKey(text)
  if (Either.isLeft(r)) throw new Error(`${HOST_KEY_FILE}: ${r.left.message}`)
  return r.right.privateKey.export({ format: "pem", type: "pkcs8" }) as string
}

/** The client's address from the proxy's `remote_addr` (`ip`, `ip:port` or `[v6]:port`), without the port. */
export const remoteIp = (addr: string | undefined): string | undefined => {
  if (addr === undefined || addr === "") return undefined
  if (isIP(addr) !== 0) return addr.replace(/^::ffff:/, "")
  const m = /^\[([^\]]+)\]:\d+$/.exec(addr) ?? /^([^:]+):\d+$/.exec(addr)
  return m !== null && isIP(m[1]!) !== 0 ? m[1]!.replace(/^::ffff:/, "") : undefined
}

export interface NodeAgentOptions {
  readonly dataDir: string
  readonly proxy: string
  readonly clusterName: string
  readonly identity: AgentIdentity
  readonly nodeName: string
  readonly hostname: string
  readonly labels: Readonly<Record<string, string>>
  /** `host:port` to accept SSH on directly, besides the tunnel. */
  readonly listenAddr?: string | undefined
}

export const make = (options: NodeAgentOptions) =>
  Effect.gen(function* () {
    const { identity, proxy, dataDir } = options
    // Calls to the proxy go through the tunnel pool: the given proxy first, then any other.
    const pool = yield* Deferred.make<TunnelPool.TunnelPoolApi>()
    const postEffect = (urlPath: string, body: unknown) => Effect.flatMap(Deferred.await(pool), (p) => p.post(urlPath, body))
    const post = (urlPath: string, body: unknown) => Effect.runPromise(postEffect(urlPath, body))
    const hostKey = loadOrCreateHostKey(dataDir)
    const buffer = AuditBuffer.open(dataDir)
    yield* Effect.addFinalizer(() => buffer.close)

    // Audit upload, as the db agent does: in order, acknowledged only once auth stored the batch.
    const upload = Effect.gen(function* () {
      for (;;) {
        const { events, from, next } = yield* buffer.pending(200, 1024 * 1024)
        if (events.length === 0) {
          if (next === from) return
          yield* buffer.acknowledge(next)
          continue
        }
        yield* postEffect("/v1/webapi/agent/events", { events })
        yield* buffer.acknowledge(next)
      }
    })
    yield* upload.pipe(
      Effect.catchAll((e) => Effect.logDebug(`audit upload deferred: ${e.message}`)),
      Effect.repeat(Schedule.spaced(Duration.millis(500))),
      Effect.forkScoped
    )

    // The user CA's keys: cached on disk, refreshed in the background and on an unknown CA key.
    const cacheFile = path.join(dataDir, USER_CA_CACHE)
    const parseLines = (lines: ReadonlyArray<string>) =>
      lines.flatMap((l) => {
        const k = parsePublicKeyLine(l)
        return Either.isRight(k) ? [k.right.blob] : []
      })
    let caKeys: ReadonlyArray<Uint8Array> = fs.existsSync(cacheFile) ? parseLines(fs.readFileSync(cacheFile, "utf8").split("\n").filter((l) => l.trim() !== "")) : []
    let lastFetch = 0
    let inflight: Promise<ReadonlyArray<Uint8Array>> | undefined
    const fetchCaKeys = (): Promise<ReadonlyArray<Uint8Array>> => {
      inflight ??= post("/v1/webapi/agent/ssh-user-cas", {})
        .then((r) => {
          const lines = (r as { ssh_keys?: ReadonlyArray<string> }).ssh_keys ?? []
          const keys = parseLines(lines)
          if (keys.length > 0) {
            caKeys = keys
            fs.writeFileSync(`${cacheFile}.tmp`, lines.join("\n") + "\n")
            fs.renameSync(`${cacheFile}.tmp`, cacheFile)
          }
          return caKeys
        })
        .finally(() => {
          lastFetch = Date.now()
          inflight = undefined
        })
      return inflight
    }
    const trustedCaKeys = async (refresh: boolean) => {
      // A certificate from an unknown CA asks again, but at most every 2 s: a client cannot make the
      // node hammer auth. Inside that window the login waits for the next ask instead of being
      // refused, so a key minted just after a background refresh (a CA rotation) still gets in.
      if (refresh) {
        const wait = lastFetch + 2_000 - Date.now()
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
        if (inflight !== undefined || Date.now() - lastFetch >= 2_000) await (inflight ?? fetchCaKeys()).catch(() => undefined)
      } else if (caKeys.length === 0) {
        await fetchCaKeys().catch(() => undefined)
      }
      return caKeys
    }
    yield* Effect.tryPromise(() => fetchCaKeys()).pipe(
      Effect.catchAll((e) => Effect.logDebug(`user CA refresh deferred: ${String(e)}`)),
      Effect.repeat(Schedule.spaced(Duration.seconds(CA_REFRESH_SECONDS))),
      Effect.delay(Duration.seconds(CA_REFRESH_SECONDS)),
      Effect.forkScoped
    )

    // Recordings: a pass every 2 s, and one as soon as a session ends.
    let uploading = false
    const uploadNow = () => {
      if (uploading) return
      uploading = true
      uploadRecordings(dataDir, (chunk) => post("/v1/webapi/agent/recording", chunk) as Promise<{ stored: number }>)
        .then((r) => {
          for (const e of r.errors) Effect.runFork(Effect.logDebug(`recording upload deferred: ${e}`))
        })
        .finally(() => (uploading = false))
    }
    yield* Effect.sync(uploadNow).pipe(Effect.repeat(Schedule.spaced(Duration.seconds(2))), Effect.forkScoped)

    const log = (level: "debug" | "info" | "warn", message: string) =>
      Effect.runFork((level === "warn" ? Effect.logWarning(message) : level === "info" ? Effect.logInfo(message) : Effect.logDebug(message)).pipe(Effect.annotateLogs({ actor: "NodeAgent" })))
    const server: NodeServer = makeNodeServer({
      node: { name: options.nodeName, hostId: identity.hostId, labels: options.labels, clusterName: options.clusterName, hostname: options.hostname },
      hostKey: hostKey.privateKey,
      dataDir,
      trustedCaKeys,
      userAccess: async (user) => decodeAccess(await post("/v1/webapi/agent/ssh-session", { user })),
      audit: (e) => Effect.runPromise(buffer.append({ type: e.type, code: e.code, payload: { ...e.payload } })),
      onRecordingDone: uploadNow,
      log
    })
    yield* Effect.addFinalizer(() => Effect.promise(() => server.close()))

    let listenPort: number | undefined
    if (options.listenAddr !== undefined) {
      const i = options.listenAddr.lastIndexOf(":")
      const host = options.listenAddr.slice(0, i).replace(/^\[|\]$/g, "") || "0.0.0.0"
      listenPort = yield* Effect.tryPromise({
        try: () => server.listen(host, Number(options.listenAddr!.slice(i + 1))),
        catch: (e) => new Error(`cannot listen on ${options.listenAddr}: ${(e as Error).message}`)
      })
    }

    const agent = yield* TunnelPool.make({
      proxy,
      identity,
      dataDir,
      resources: new Resources({
        databases: [],
        node: new NodeResource({ name: options.nodeName, labels: { ...options.labels }, host_key: hostKey.publicLine })
      }),
      onDial: ({ target: t, stream }) =>
        t.kind === "ssh" ? Effect.promise(() => server.accept(stream, remoteIp(t.meta["remote_addr"]))) : Effect.fail(new Error(`a node serves no ${t.kind}`))
    })
    yield* Deferred.succeed(pool, agent)
    // The CA keys before the first login (from the cache until the proxy answers).
    yield* Effect.promise(() => fetchCaKeys().catch(() => undefined))
    return { agent, server, listenPort, hostKey: hostKey.publicLine }
  })

export const layer = (options: NodeAgentOptions) => Layer.scopedDiscard(make(options))
