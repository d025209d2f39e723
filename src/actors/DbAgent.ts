/**
 * The database agent: joins once (see AgentIdentity), dials the proxy's reverse tunnel, advertises
 * its databases, and runs one protocol engine per session the proxy opens through the tunnel.
 * Audit events go to a durable buffer in the data dir first; an uploader sends them to auth
 * through the proxy and drops them only once auth has stored them.
 */
import { randomUUID } from "node:crypto"
import { Deferred, Duration, Effect, Layer, Schema, Schedule } from "effect"
import type { AgentIdentity } from "../adapters/AgentIdentity.ts"
import * as AuditBuffer from "../adapters/AuditBuffer.ts"
import * as X509 from "../adapters/x509.ts"
import { Role } from "../domain/Role.ts"
import type { SessionDatabase, SessionIdentity } from "../protocols/engine.ts"
import { EngineError, engineFor, engines } from "../protocols/engine.ts"
import { learnServers as learnMysqlServers } from "../protocols/mysql/io.ts"
import type { ServerInfo as MysqlServerInfo } from "../protocols/mysql/io.ts"
import { cancelRequest } from "../protocols/postgres/engine.ts"
import { CANCEL_TARGET, DatabaseResource, Resources } from "../protocols/tunnel/wire.ts"
import * as TunnelPool from "./TunnelPool.ts"

export interface AgentDatabase extends SessionDatabase {
  readonly description?: string | undefined
}

/** Events per audit upload, at most (a batch also stays near 1 MiB). */
const UPLOAD_MAX_EVENTS = 5_000

const decodeRoles = Schema.decodeUnknownSync(Schema.Array(Role))

export const make = (options: {
  readonly dataDir: string
  readonly proxy: string
  readonly clusterName: string
  readonly identity: AgentIdentity
  readonly databases: ReadonlyArray<AgentDatabase>
}) =>
  Effect.gen(function* () {
    const { identity, proxy } = options
    const buffer = AuditBuffer.open(options.dataDir)
    // Calls to the proxy go through the tunnel pool: the given proxy first, then any other.
    const pool = yield* Deferred.make<TunnelPool.TunnelPoolApi>()
    const post = (urlPath: string, body: unknown) => Effect.flatMap(Deferred.await(pool), (p) => p.post(urlPath, body))
    yield* Effect.addFinalizer(() => buffer.close)

    // Uploads the buffer in order; a failure leaves everything in place for the next round.
    // Batches stay near 1 MiB, well inside what the proxy reads, however long the backlog. A batch
    // that is not full ends the round: under load the next 500 ms gather a big batch instead of a
    // stream of small uploads (each a TLS handshake and a certificate check at the proxy).
    const upload = Effect.gen(function* () {
      for (;;) {
        const { events, from, next } = yield* buffer.pending(UPLOAD_MAX_EVENTS, 1024 * 1024)
        if (events.length === 0) {
          // Only unreadable (torn) lines: step over them, or they would hold back every later event.
          if (next === from) return
          yield* buffer.acknowledge(next)
          continue
        }
        yield* post("/v1/webapi/agent/events", { events })
        yield* buffer.acknowledge(next)
        if (events.length < UPLOAD_MAX_EVENTS && next - from < 512 * 1024) return
      }
    })
    yield* upload.pipe(
      Effect.catchAll((e) => Effect.logDebug(`audit upload deferred: ${e.message}`)),
      Effect.repeat(Schedule.spaced(Duration.millis(500))),
      Effect.forkScoped
    )

    const issueClientCert = (dbUser: string) =>
      Effect.gen(function* () {
        const keys = yield* X509.generateEcdsaKeyPair()
        const r = (yield* post("/v1/webapi/agent/db-client-cert", {
          db_user: dbUser,
          tls_pub_key: keys.publicKeyPem
        })) as { tls_cert: string; tls_ca_certs: ReadonlyArray<string> }
        return { certPem: r.tls_cert, keyPem: keys.privateKeyPem, caPems: r.tls_ca_certs }
      }).pipe(Effect.mapError((e) => new EngineError({ reason: "UpstreamAuth", message: `cannot get a certificate for db user ${dbUser}: ${e.message}`, cause: e })))

    // MySQL servers speak first, so the proxy greets clients itself, with the version and
    // capabilities of the real server: learned from its greeting here and advertised with it.
    const agentReady = yield* Deferred.make<TunnelPool.TunnelPoolApi>()
    const mysqlField = (info: MysqlServerInfo) => ({ server_version: info.serverVersion, capabilities: info.capabilities, charset: info.charset })
    const mysqlInfo = yield* learnMysqlServers(options.databases, (name, info) =>
      Effect.flatMap(Deferred.await(agentReady), (a) =>
        Effect.flatMap(a.resources, (r) =>
          a.setResources(new Resources({ ...r, databases: r.databases.map((d) => (d.name === name ? new DatabaseResource({ ...d, mysql: mysqlField(info) }) : d)) }))
        )
      )
    )

    const byName = new Map(options.databases.map((d) => [d.name, d]))
    const agent = yield* TunnelPool.make({
      proxy,
      identity,
      dataDir: options.dataDir,
      resources: new Resources({
        databases: options.databases.map(
          (d) =>
            new DatabaseResource({
              name: d.name,
              protocol: d.protocol,
              labels: { ...d.labels, ...(d.description === undefined ? {} : { description: d.description }) },
              ...(mysqlInfo.has(d.name) ? { mysql: mysqlField(mysqlInfo.get(d.name)!) } : {})
            })
        )
      }),
      onDial: ({ target: t, stream }) =>
        Effect.gen(function* () {
          // A forwarded CancelRequest: addressed to one of our databases, marked in its meta.
          if (t.name === CANCEL_TARGET || t.meta[CANCEL_TARGET] === "1") {
            yield* cancelRequest(Number(t.meta["pid"]), new Uint8Array(Buffer.from(t.meta["secret"] ?? "", "hex")))
            return
          }
          const database = byName.get(t.name)
          const engine = database === undefined ? undefined : engineFor(engines, database.protocol)
          if (database === undefined || engine === undefined) return yield* Effect.fail(new Error(`no engine for ${t.name}`))
          const raw = JSON.parse(t.meta["identity"] ?? "{}") as Omit<SessionIdentity, "expires"> & { expires: string }
          const sessionIdentity: SessionIdentity = { ...raw, expires: new Date(raw.expires) }
          const roles = decodeRoles(JSON.parse(t.meta["roles"] ?? "[]"))
          yield* Effect.scoped(
            engine.handleSession({
              client: stream,
              identity: sessionIdentity,
              roles,
              database,
              issueClientCert,
              audit: (e) => buffer.append({ type: e.type, code: e.code, payload: { ...e.fields } }),
              // Queries: written before they are forwarded, fsynced in groups (see AuditBuffer).
              appendAudit: (e) => buffer.write({ type: e.type, code: e.code, payload: e.fields }),
              sessionId: t.meta["session_id"] ?? randomUUID(),
              clusterName: options.clusterName,
              hostId: identity.hostId
            })
          )
        })
    })
    yield* Deferred.succeed(agentReady, agent)
    yield* Deferred.succeed(pool, agent)
    return agent
  })

export const layer = (options: Parameters<typeof make>[0]) => Layer.scopedDiscard(make(options))
