/**
 * Database access on the auth side: the inventory of databases that agents advertise (presence
 * is ephemeral; first appearance and expiry are events), database certificates for users, the
 * roles an agent needs to decide a session, short-lived upstream client certificates from the db
 * CA, and the audit events agents upload.
 */
import { Effect, Either, HashMap, Option, Schema } from "effect"
import type { EventStoreShape } from "../adapters/EventStore.ts"
import type { Handlers } from "../adapters/AuthApiHttp.ts"
import * as X509 from "../adapters/x509.ts"
import type { ApiError } from "../domain/Errors.ts"
import { BadParameter, Forbidden, NotFound, Unavailable } from "../domain/Errors.ts"
import * as Event from "../domain/Event.ts"
import { agentlessHostId } from "../domain/AgentlessNode.ts"
import { EventTypes } from "../domain/Event.ts"
import type { EventDraft } from "../adapters/EventStore.ts"
import { expandSelector, matchLabels } from "../domain/Labels.ts"
import { RouteToDatabase } from "../domain/Identity.ts"
import { checkNodeAccess, maxSessionTtl } from "../domain/Rbac.ts"
import type { NodeInfo } from "../domain/WebApi.ts"
import * as RbacView from "../domain/RbacView.ts"
import { expandValues } from "../domain/Template.ts"
import type { CertAuthorityShape } from "./CertAuthority.ts"
import type { ProjectorShape } from "./Projector.ts"

/** An agent that has not been heard of for this long is gone, and its databases expire. */
export const PRESENCE_TTL_MS = 15_000

/** What presence events record: a database or a node, served by one agent. */
interface PresentResource {
  readonly kind: "db" | "node"
  readonly name: string
  readonly hostId: string
  readonly protocol?: string | undefined
  readonly labels: Readonly<Record<string, string>>
}

interface PresentNode {
  readonly name: string
  /** The host name the agent reported. */
  readonly hostname: string
  labels: Readonly<Record<string, string>>
  hostKey: string | undefined
  readonly hostId: string
  lastSeen: number
}

interface PresentDb {
  readonly name: string
  readonly protocol: string
  readonly labels: Readonly<Record<string, string>>
  readonly hostId: string
  readonly nodeName: string
  lastSeen: number
}

type DbHandlers = Pick<
  Handlers,
  | "web.trusted_host_cas"
  | "web.agent_presence"
  | "web.databases"
  | "web.nodes"
  | "web.db_cert"
  | "web.db_session"
  | "web.db_client_cert"
  | "web.agent_events"
>

/** What agents may report: the database session events of the registry. */
const DB_EVENT_TYPES = new Set(Object.keys(EventTypes).filter((t) => t.startsWith("db.session.")))
/** What SSH nodes report: their sessions, and logins and connections they refused. */
const NODE_EVENT_TYPES = new Set(["session.start", "session.end", "exec", "port", "scp", "auth", "client.disconnect"])

export const make = (deps: {
  readonly store: EventStoreShape
  readonly projector: ProjectorShape<RbacView.RbacView>
  readonly ca: CertAuthorityShape
  readonly clusterName: string
  readonly write: (stream: string, actor: string, drafts: ReadonlyArray<Omit<EventDraft, "actor">>) => Effect.Effect<void, ApiError>
}) =>
  Effect.gen(function* () {
    const { store, projector, ca, clusterName, write } = deps
    /** Keyed by `hostId/name`: the same database name served by two agents is two entries. */
    const inventory = new Map<string, PresentDb>()

    /** Keyed by host id: one node per node agent. */
    const nodes = new Map<string, PresentNode>()

    /**
     * Records a resource's first appearance or its expiry. Every auth instance hears every
     * heartbeat, so several may try at once: the resource's stream alternates appeared (odd
     * versions) and expired (even), and each write expects the version it read, so exactly one
     * instance records each transition and the others see it already done.
     */
    const presence = (kind: "appeared" | "expired", r: PresentResource) =>
      Effect.gen(function* () {
        const stream = `resource/${r.kind}/${r.hostId}/${r.name}`
        const event = Event.make(kind === "appeared" ? "resource.appeared" : "resource.expired", {
          kind: r.kind,
          name: r.name,
          host_id: r.hostId,
          ...(r.protocol === undefined ? {} : { protocol: r.protocol }),
          labels: { ...r.labels }
        })
        for (let attempt = 0; attempt < 5; attempt++) {
          const version = yield* store.streamVersion(stream)
          if ((version % 2 === 1) === (kind === "appeared")) return
          const appended = yield* Effect.either(store.append({ stream, expectedVersion: version, events: [{ ...event, actor: "system" }] }))
          if (Either.isRight(appended)) return yield* projector.awaitSeq(appended.right[0]!.seq).pipe(Effect.ignore)
          if (appended.left._tag !== "VersionConflict") return yield* Effect.fail(appended.left)
        }
      }).pipe(Effect.catchAll((e) => Effect.logWarning(`could not record ${kind} of ${r.kind} ${r.name}: ${e.message}`)))

    // Expiry: agents are refreshed by the proxies' heartbeats; silence past the TTL removes them.
    yield* Effect.forkScoped(
      Effect.forever(
        Effect.gen(function* () {
          yield* Effect.sleep("2 seconds")
          const now = Date.now()
          for (const [key, db] of inventory) {
            if (now - db.lastSeen > PRESENCE_TTL_MS) {
              inventory.delete(key)
              yield* presence("expired", { kind: "db", ...db })
            }
          }
          for (const [key, node] of nodes) {
            if (now - node.lastSeen > PRESENCE_TTL_MS) {
              nodes.delete(key)
              yield* presence("expired", { kind: "node", ...node })
            }
          }
        })
      )
    )

    const requireUser = (name: string) =>
      Effect.flatMap(projector.state, (v) =>
        Option.match(RbacView.userOf(v, name), {
          onNone: () => Effect.fail(new Forbidden({ message: `user ${JSON.stringify(name)} does not exist` })),
          onSome: (u) => Effect.succeed({ user: u, roles: RbacView.resolveRoles(v, u.roles) })
        })
      )

    const handlers: DbHandlers = {
      "web.trusted_host_cas": () => Effect.map(ca.trustedTlsCerts("host"), (tls_ca_certs) => ({ tls_ca_certs })),

      "web.agent_presence": (req) =>
        Effect.gen(function* () {
          const now = Date.now()
          const current = new Set<string>()
          if (req.state === "connected") {
            for (const d of req.databases) {
              const key = `${req.host_id}/${d.name}`
              current.add(key)
              const known = inventory.get(key)
              if (known !== undefined) known.lastSeen = now
              else {
                const db: PresentDb = { name: d.name, protocol: d.protocol, labels: d.labels, hostId: req.host_id, nodeName: req.node_name, lastSeen: now }
                inventory.set(key, db)
                yield* presence("appeared", { kind: "db", ...db })
              }
            }
          }
          // Databases this agent no longer advertises (or all, when it is gone) expire now.
          for (const [key, db] of inventory) {
            if (db.hostId === req.host_id && !current.has(key)) {
              inventory.delete(key)
              yield* presence("expired", { kind: "db", ...db })
            }
          }
          const knownNode = nodes.get(req.host_id)
          const node = req.state === "connected" ? req.node : undefined
          if (knownNode !== undefined && (node === undefined || node.name !== knownNode.name)) {
            nodes.delete(req.host_id)
            yield* presence("expired", { kind: "node", ...knownNode })
          }
          if (node !== undefined) {
            const present = nodes.get(req.host_id)
            if (present !== undefined) {
              present.lastSeen = now
              present.labels = node.labels
              present.hostKey = node.host_key
            } else {
              const fresh: PresentNode = { name: node.name, hostname: req.node_name, labels: node.labels, hostKey: node.host_key, hostId: req.host_id, lastSeen: now }
              nodes.set(req.host_id, fresh)
              yield* presence("appeared", { kind: "node", ...fresh })
            }
          }
          return {}
        }),

      "web.databases": (req) =>
        Effect.gen(function* () {
          const { user, roles } = yield* requireUser(req.user)
          const visible = [...inventory.values()].filter((db) => roles.some((r) => matchLabels(r.spec.allow?.db_labels, db.labels)))
          const byName = new Map<string, PresentDb>()
          for (const db of visible) if (!byName.has(db.name)) byName.set(db.name, db)
          return {
            databases: [...byName.values()]
              .sort((a, b) => a.name.localeCompare(b.name))
              .map((db) => ({
                name: db.name,
                description: db.labels["description"] ?? "",
                protocol: db.protocol,
                labels: { ...db.labels },
                allowed_users: [
                  ...new Set(
                    roles
                      .filter((r) => matchLabels(r.spec.allow?.db_labels, db.labels))
                      .flatMap((r) => expandValues(r.spec.allow?.db_users, user.traits))
                  )
                ].sort(),
                host_id: db.hostId
              }))
          }
        }),

      "web.nodes": (req) =>
        Effect.gen(function* () {
          const { user, roles } = yield* requireUser(req.user)
          const candidates = [...new Set(roles.flatMap((r) => expandValues(r.spec.allow?.logins, user.traits)))].filter((l) => l !== "*")
          const out: Array<NodeInfo> = []
          // Agentless OpenSSH nodes (tctl create node.yaml) show beside the agents' nodes.
          const agentless = [...HashMap.values((yield* projector.state).agentlessNodes)].map((n) => ({
            name: n.name,
            hostname: n.hostname,
            labels: n.labels,
            // Users' clients talk to the proxy, which terminates their sessions: they pin its key.
            hostKey: n.proxy_host_key,
            hostId: agentlessHostId(n.name),
            addr: n.addr
          }))
          const all: ReadonlyArray<Omit<PresentNode, "lastSeen"> & { readonly addr?: string }> = [...nodes.values(), ...agentless]
          for (const node of [...all].sort((a, b) => a.name.localeCompare(b.name) || a.hostId.localeCompare(b.hostId))) {
            const target = { name: node.name, labels: node.labels }
            const logins = candidates.filter((l) => Either.isRight(checkNodeAccess(roles, user.traits, target, l))).sort()
            // A node shows when some role selects it by its labels and no deny rule takes every login away.
            const selected = roles.some((r) => matchLabels(expandSelector(r.spec.allow?.node_labels, user.traits), node.labels))
            if (!selected || (logins.length === 0 && candidates.length > 0)) continue
            out.push({
              name: node.name,
              host_id: node.hostId,
              hostname: node.hostname,
              labels: { ...node.labels },
              ...(node.hostKey === undefined ? {} : { host_key: node.hostKey }),
              ...(node.addr === undefined ? {} : { addr: node.addr, agentless: true }),
              logins
            })
          }
          return { nodes: out }
        }),

      "web.db_cert": (req) =>
        Effect.gen(function* () {
          const { user, roles } = yield* requireUser(req.user)
          const db = [...inventory.values()].find((d) => d.name === req.service_name)
          if (db === undefined) return yield* new NotFound({ message: `database ${JSON.stringify(req.service_name)} is not available; see 'tsh db ls'` })
          const ttl = Math.min((req.ttl_seconds ?? 12 * 3600) * 1000, maxSessionTtl(roles))
          const expires = new Date(Date.now() + ttl)
          const issued = yield* ca.signUser({
            username: user.name,
            roles: user.roles,
            logins: [],
            traits: user.traits,
            tlsPublicKey: req.tls_pub_key,
            expires,
            routeToDatabase: new RouteToDatabase({
              serviceName: db.name,
              protocol: db.protocol,
              username: req.db_user,
              database: req.db_name ?? ""
            })
          })
          yield* write(`user/${user.name}`, user.name, [
            Event.make("cert.create", {
              cert_type: "db",
              user: user.name,
              identity: {
                user: user.name,
                roles: user.roles,
                logins: [],
                expires: expires.toISOString(),
                route_to_cluster: clusterName,
                db_service: db.name,
                db_user: req.db_user,
                ...(req.db_name === undefined ? {} : { db_name: req.db_name })
              }
            })
          ])
          return { tls_cert: issued.tlsCert!, tls_ca_certs: yield* ca.trustedTlsCerts("host"), expires: expires.toISOString(), protocol: db.protocol }
        }),

      "web.db_session": (req) =>
        Effect.map(requireUser(req.user), ({ user, roles }) => ({ roles, traits: user.traits })),

      "web.db_client_cert": (req) =>
        Effect.gen(function* () {
          // The engine logs in upstream as the database user: a short certificate from the db CA.
          const dbCa = yield* ca.get("db")
          const signing = RbacView.signingKeys(dbCa)
          const key = yield* store.getSecret(`ca/${signing.key_id}/tls`).pipe(Effect.mapError((e) => new Unavailable({ message: e.message })))
          if (key === undefined) return yield* new Unavailable({ message: "db CA key is missing" })
          const expires = new Date(Date.now() + 3600_000)
          const issued = yield* X509.signUserCert({
            caCert: signing.tls_cert,
            caKey: new TextDecoder().decode(key),
            publicKey: req.tls_pub_key,
            identity: { username: req.db_user, roles: [], logins: [], routeToCluster: clusterName, traits: {} },
            notAfter: expires
          }).pipe(Effect.mapError((e) => new BadParameter({ message: `cannot sign: ${e.message}` })))
          return { tls_cert: issued.pem, tls_ca_certs: yield* ca.trustedTlsCerts("db"), expires: expires.toISOString() }
        }),

      "web.agent_events": (req) =>
        Effect.gen(function* () {
          // Validate everything first: a bad event refuses the whole upload, before anything is stored.
          const drafts: Array<{ sid: string; draft: EventDraft }> = []
          for (const e of req.events) {
            const allowed = req.system_role === "Node" ? NODE_EVENT_TYPES : DB_EVENT_TYPES
            if (!allowed.has(e.type)) return yield* new BadParameter({ message: `agents may not report ${e.type}` })
            const schema = EventTypes[e.type as keyof typeof EventTypes].payload as Schema.Schema<unknown, unknown>
            const payload: Record<string, unknown> = { ...(e.payload as Record<string, unknown>), server_id: req.host_id }
            if (Schema.decodeUnknownEither(schema)(payload)._tag === "Left") {
              return yield* new BadParameter({ message: `bad ${e.type} event from agent ${req.host_id}` })
            }
            // Events outside a session (refused logins, port forwards) go to the agent's own stream.
            const sid = typeof payload["sid"] === "string" ? payload["sid"] : undefined
            drafts.push({ sid: sid ?? `host:${req.host_id}`, draft: { id: e.id, time: e.time, type: e.type, code: e.code, actor: req.host_id, payload } })
          }
          // One append per session (in the agent's order); the sessions' appends share the store's
          // group commit. A retried upload repeats ids, which the store refuses: then each event of
          // that session goes alone, so the ones already stored are skipped and the rest go in.
          const bySession = new Map<string, Array<EventDraft>>()
          // Pushed in place: copying the list per event made a batch of thousands quadratic.
          for (const { sid, draft } of drafts) {
            const list = bySession.get(sid)
            if (list === undefined) bySession.set(sid, [draft])
            else list.push(draft)
          }
          const streamOf = (sid: string) => (sid.startsWith("host:") ? `agent/${sid.slice(5)}` : `session/${sid}`)
          const alreadyIn = (m: string) => /already exists/.test(m)
          const results = yield* Effect.forEach(
            [...bySession],
            ([sid, events]) =>
              Effect.gen(function* () {
                const all = yield* Effect.either(store.append({ stream: streamOf(sid), expectedVersion: "any", events }))
                if (all._tag === "Right") return { stored: events.length, seq: all.right[all.right.length - 1]!.seq }
                if (!alreadyIn(all.left.message)) return yield* new Unavailable({ message: `event store: ${all.left.message}` })
                let stored = 0
                let seq = 0
                for (const event of events) {
                  const one = yield* Effect.either(store.append({ stream: streamOf(sid), expectedVersion: "any", events: [event] }))
                  if (one._tag === "Right") {
                    stored++
                    seq = one.right[0]!.seq
                  } else if (!alreadyIn(one.left.message)) return yield* new Unavailable({ message: `event store: ${one.left.message}` })
                }
                return { stored, seq }
              }),
            { concurrency: "unbounded" }
          )
          const last = Math.max(0, ...results.map((r) => r.seq))
          if (last > 0) yield* projector.awaitSeq(last).pipe(Effect.ignore)
          return { stored: results.reduce((n, r) => n + r.stored, 0) }
        })
    }
    return handlers
  })
