/**
 * `remoteler`: runs any set of roles in one process. This file parses flags and wires layers;
 * everything it starts lives in a scope that SIGINT/SIGTERM close, which stops every fiber and
 * closes the store.
 */
import "reflect-metadata"
import { Command, Options } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Console, Duration, Effect, Either, Layer, Logger, LogLevel, Option, Redacted, Schedule, Schema, Stream } from "effect"
import * as AuthServer from "../actors/AuthServer.ts"
import * as fs from "node:fs"
import * as crypto from "node:crypto"
import * as os from "node:os"
import * as DbAgent from "../actors/DbAgent.ts"
import * as TunnelPool from "../actors/TunnelPool.ts"
import * as NodeAgent from "../actors/NodeAgent.ts"
import { engineFor, engines } from "../protocols/engine.ts"
import * as AgentIdentity from "../adapters/AgentIdentity.ts"
import * as X509 from "../adapters/x509.ts"
import * as CertAuthority from "../actors/CertAuthority.ts"
import * as Outbox from "../actors/Outbox.ts"
import * as ProxyWeb from "../actors/ProxyWeb.ts"
import * as AuthApiBus from "../adapters/AuthApiBus.ts"
import * as Presence from "../adapters/Presence.ts"
import { AuthMethods } from "../domain/AuthApi.ts"
import { Bus } from "../adapters/Bus.ts"
import { serveUnixSocket } from "../adapters/AuthApiHttp.ts"
import * as BusMemory from "../adapters/BusMemory.ts"
import * as BusNats from "../adapters/BusNats.ts"
import * as DataDir from "../adapters/DataDir.ts"
import { EventStore } from "../adapters/EventStore.ts"
import * as EventStorePg from "../adapters/EventStorePg.ts"
import { toAuditJson } from "../domain/AuditEvent.ts"
import * as EventStoreSqlite from "../adapters/EventStoreSqlite.ts"
import * as RecordingStorePg from "../adapters/RecordingStorePg.ts"
import * as RecordingStoreSqlite from "../adapters/RecordingStoreSqlite.ts"
import type { NatsConfig, ResolvedConfig } from "../domain/Config.ts"
import { parseDurationOption } from "../domain/Rbac.ts"
import { describeNats, describeStorage, resolve } from "./config.ts"
import { runCli } from "./run.ts"

const storeLayer = (cfg: ResolvedConfig) =>
  cfg.storage.type === "postgres"
    ? EventStorePg.layer({ url: cfg.storage.conn_string })
    : EventStoreSqlite.layer({ filename: cfg.storage.path ?? `${cfg.dataDir}/events.db` })

/** Session recordings: in the event store's PostgreSQL database, or a SQLite file beside it. */
const recordingLayer = (cfg: ResolvedConfig) =>
  cfg.storage.type === "postgres"
    ? RecordingStorePg.layer({ url: cfg.storage.conn_string })
    : RecordingStoreSqlite.layer({ filename: `${cfg.dataDir}/recordings.sqlite` })

const natsOptions = (n: NatsConfig, clusterName: string): BusNats.NatsOptions => {
  const fromUrl = BusNats.parseNatsUrl(n.url)
  return {
    ...fromUrl,
    ...(n.user === undefined ? {} : { user: n.user }),
    ...(n.password === undefined ? {} : { pass: Redacted.make(n.password) }),
    ...(n.nkey_seed_file === undefined ? {} : { nkeySeedFile: n.nkey_seed_file }),
    ...(n.tls === undefined
      ? {}
      : {
          tls: {
            ...(n.tls.ca_file === undefined ? {} : { caFile: n.tls.ca_file }),
            ...(n.tls.cert_file === undefined ? {} : { certFile: n.tls.cert_file }),
            ...(n.tls.key_file === undefined ? {} : { keyFile: n.tls.key_file })
          }
        }),
    ...Option.match(Option.flatMap(Option.fromNullable(n.stream_max_age), parseDurationOption), {
      onNone: () => ({}),
      onSome: (maxAgeMs) => ({ maxAgeMs })
    }),
    name: `remoteler-${clusterName}`
  }
}

const busLayer = (cfg: ResolvedConfig) =>
  cfg.nats === undefined ? BusMemory.layer : BusNats.layer(natsOptions(cfg.nats, cfg.clusterName))

/** The auth role: store, projector, outbox, CAs, handlers; the admin socket for `tctl`; RPC on the bus. */
const authLayer = (cfg: ResolvedConfig) => {
  const actors = Layer.merge(AuthServer.projectorLayer, Outbox.layer(cfg.clusterName))
  const ca = CertAuthority.layer(AuthServer.RbacProjector, cfg.clusterName)
  const server = AuthServer.layer({
    clusterName: cfg.clusterName,
    storage: describeStorage(cfg.storage),
    bus: describeNats(cfg.nats),
    secondFactor: cfg.secondFactor,
    hostCertTtlMs: cfg.hostCertTtlMs,
    proxyPublicAddr: proxyPublicAddr(cfg),
    mysqlPublicAddr: mysqlPublicAddr(cfg),
    version: AuthServer.VERSION
  })
  const endpoints = Layer.scopedDiscard(
    Effect.gen(function* () {
      const handlers = yield* AuthServer.AuthServer
      const store = yield* EventStore
      yield* serveUnixSocket(handlers, DataDir.adminSocketPath(cfg.dataDir), {
        audit: (fromSeq, types) =>
          Stream.unwrap(
            Effect.map(fromSeq === undefined ? Effect.map(store.head, (h) => h + 1) : Effect.succeed(fromSeq), (from) =>
              store.tail(from).pipe(
                Stream.filter((e) => types.length === 0 || types.includes(e.type)),
                Stream.map((e) => toAuditJson(e, cfg.clusterName))
              )
            )
          )
      })
      const bus = yield* Bus
      yield* AuthApiBus.serve(bus, handlers, cfg.clusterName)
      // Every auth instance hears every agent heartbeat the proxies relay, so all keep the same inventory.
      const decodePresence = Schema.decodeUnknownEither(AuthMethods["web.agent_presence"].request)
      const heartbeats = yield* Presence.subscribe(bus, cfg.clusterName, "agent", Effect.map(handlers["web.trusted_host_cas"]({}), (r) => r.tls_ca_certs)).pipe(Effect.orDie)
      yield* heartbeats.pipe(
        Stream.runForEach((hb) =>
          Either.match(decodePresence(hb.body), {
            onLeft: () => Effect.logWarning(`a heartbeat from proxy ${hb.proxyHostId} is malformed; dropped`),
            onRight: (req) => handlers["web.agent_presence"](req).pipe(Effect.catchAll((e) => Effect.logWarning(`heartbeat not applied: ${e.message}`)))
          })
        ),
        Effect.forkScoped
      )
    })
  )
  return endpoints.pipe(
    Layer.provideMerge(server),
    Layer.provide(ca),
    Layer.provideMerge(actors),
    Layer.provide(Layer.merge(storeLayer(cfg), recordingLayer(cfg)))
  )
}

const DEFAULT_WEB_LISTEN = "0.0.0.0:3080"

/**
 * A db agent in the auth+proxy process. Its identity lives in `<data_dir>/db-agent`; the first
 * start joins with a one-minute token it asks the local auth for, so the log shows the token and
 * the join like any other agent's.
 */
const embeddedDbAgentLayer = (cfg: ResolvedConfig, databases: ReadonlyArray<DbAgent.AgentDatabase>, nodeName: string) =>
  Layer.scopedDiscard(
    Effect.gen(function* () {
      // Provided by the auth layer this process runs (its type is erased where the roles are merged).
      const local = yield* Effect.serviceOption(AuthServer.AuthServer)
      if (local._tag === "None") return yield* Effect.fail(new Error("no auth service in this process"))
      const auth = local.value
      const dataDir = `${cfg.dataDir}/db-agent`
      fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 })
      const listen = cfg.proxy.web_listen_addr ?? DEFAULT_WEB_LISTEN
      const host = listen.slice(0, listen.lastIndexOf(":"))
      const proxy = `${host === "0.0.0.0" || host === "" || host === "[::]" ? "127.0.0.1" : host}:${listen.slice(listen.lastIndexOf(":") + 1)}`
      const existing = AgentIdentity.load(dataDir)
      const identity =
        existing !== undefined && existing.role === "db" && Date.parse(existing.expires) > Date.now()
          ? existing
          : yield* Effect.gen(function* () {
              const { token } = yield* auth["tokens.create"]({ roles: ["db"], ttl_seconds: 60 })
              const keys = yield* X509.generateEcdsaKeyPair()
              const r = yield* auth["web.join"]({ token, role: "db", node_name: nodeName, tls_pub_key: keys.publicKeyPem })
              const joined: AgentIdentity.AgentIdentity = {
                hostId: r.host_id,
                nodeName,
                role: "db",
                certPem: r.tls_cert!,
                keyPem: keys.privateKeyPem,
                caPems: r.tls_ca_certs,
                expires: r.expires
              }
              AgentIdentity.save(dataDir, joined)
              return joined
            })
      yield* DbAgent.make({ dataDir, proxy, clusterName: cfg.clusterName, identity, databases })
      yield* Console.log(`remoteler: db agent ${identity.hostId} (${identity.nodeName}) serving ${databases.map((d) => d.name).join(", ")} in this process`)
    }).pipe(Effect.mapError((e) => new Error(`the embedded db agent cannot start: ${e.message}`)))
  )
const DEFAULT_SSH_LISTEN = "0.0.0.0:3023"
const DEFAULT_MYSQL_LISTEN = "0.0.0.0:3036"

/** host:port MySQL clients reach the proxy on: the public host with the MySQL listener's port. */
const mysqlPublicAddr = (cfg: ResolvedConfig): string => {
  const web = proxyPublicAddr(cfg)
  const listen = cfg.proxy.mysql_listen_addr ?? DEFAULT_MYSQL_LISTEN
  return `${web.slice(0, web.lastIndexOf(":"))}:${listen.slice(listen.lastIndexOf(":") + 1)}`
}

/** Databases from `db_service.databases` and `--db` flags. */
const agentDatabases = (cfg: ResolvedConfig, flags: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const out: Array<DbAgent.AgentDatabase> = []
    for (const d of cfg.db.databases ?? []) {
      out.push({
        name: d.name,
        protocol: d.protocol,
        uri: d.uri,
        description: d.description,
        labels: { ...d.static_labels },
        tls: {
          mode: d.tls?.mode ?? "verify-full",
          caCertPem: d.tls?.ca_cert_file === undefined ? undefined : fs.readFileSync(d.tls.ca_cert_file, "utf8")
        }
      })
    }
    for (const spec of flags) {
      const fields: Record<string, string> = {}
      const labels: Record<string, string> = {}
      for (const part of spec.split(",")) {
        const eq = part.indexOf("=")
        if (eq < 0) return yield* Effect.fail(new Error(`--db: expected key=value in ${JSON.stringify(part)}`))
        const k = part.slice(0, eq)
        const v = part.slice(eq + 1)
        if (k === "label" || k === "labels") {
          const [lk, lv] = v.split(":")
          if (lk === undefined || lv === undefined) return yield* Effect.fail(new Error(`--db: labels are key:value, got ${JSON.stringify(v)}`))
          labels[lk] = lv
        } else fields[k] = v
      }
      const unknown = Object.keys(fields).filter((k) => !["name", "protocol", "uri", "tls", "ca", "description"].includes(k))
      if (unknown.length > 0) return yield* Effect.fail(new Error(`--db: unknown key ${unknown[0]}`))
      if (fields["name"] === undefined || fields["uri"] === undefined) return yield* Effect.fail(new Error("--db needs name= and uri="))
      const protocol = fields["protocol"] ?? "postgres"
      if (engineFor(engines, protocol) === undefined) {
        return yield* Effect.fail(new Error(`--db: protocol ${protocol} is not available in this version (${Object.keys(engines).join(", ")} are)`))
      }
      const mode = fields["tls"] ?? "verify-full"
      if (mode !== "verify-full" && mode !== "verify-ca" && mode !== "insecure") return yield* Effect.fail(new Error(`--db: tls must be verify-full, verify-ca or insecure`))
      out.push({
        name: fields["name"],
        protocol,
        uri: fields["uri"],
        description: fields["description"],
        labels,
        tls: { mode, caCertPem: fields["ca"] === undefined ? undefined : fs.readFileSync(fields["ca"], "utf8") }
      })
    }
    if (out.length === 0) return yield* Effect.fail(new Error("the db agent serves no database: give --db=... or db_service.databases"))
    return out
  })

/** host:port users reach the proxy on: `public_addr`, else the listen address with this host's name. */
const proxyPublicAddr = (cfg: ResolvedConfig): string => {
  const pa = cfg.proxy.public_addr
  if (pa !== undefined) return Array.isArray(pa) ? pa[0]! : (pa as string)
  const listen = cfg.proxy.web_listen_addr ?? DEFAULT_WEB_LISTEN
  const port = listen.slice(listen.lastIndexOf(":") + 1)
  const host = listen.slice(0, listen.lastIndexOf(":"))
  return `${host === "0.0.0.0" || host === "" || host === "[::]" ? os.hostname() : host}:${port}`
}

const proxyHosts = (cfg: ResolvedConfig) => {
  const publicAddr = proxyPublicAddr(cfg)
  const publicHost = publicAddr.slice(0, publicAddr.lastIndexOf(":")).replace(/^\[|\]$/g, "")
  return [...new Set([publicHost, "localhost", "127.0.0.1", "::1", os.hostname()])]
}

/**
 * The identity the proxy signs its requests to auth with. Beside auth in one process it is issued
 * directly; a proxy of its own joins with a token of type proxy, like an agent.
 */
const proxyCredentials = (cfg: ResolvedConfig, token: string | undefined) =>
  Layer.scoped(
    AuthApiBus.RpcCredentials,
    Effect.gen(function* () {
      const hostId = `proxy-${crypto.randomUUID()}`
      const local = yield* Effect.serviceOption(AuthServer.AuthServer)
      const bus = yield* Bus
      /** A certificate from auth in this process, or over the bus (joined with a token, then renewed). */
      const issue = (current: { certPem: string; keyPem: string } | undefined) =>
        Effect.gen(function* () {
          const keys = yield* X509.generateEcdsaKeyPair().pipe(Effect.orDie)
          if (local._tag === "Some") {
            const r = yield* local.value["web.proxy_cert"]({ host_id: hostId, hosts: proxyHosts(cfg), tls_pub_key: keys.publicKeyPem })
            return { certPem: r.tls_cert!, keyPem: keys.privateKeyPem }
          }
          if (current !== undefined) {
            const me = X509.parseCertIdentity(current.certPem)
            const id = me._tag === "Right" ? me.right : undefined
            const r = yield* AuthApiBus.call(bus, cfg.clusterName, "web.host_renew", {
              host_id: id?.hostId ?? hostId,
              node_name: id?.nodeName ?? os.hostname(),
              role: "proxy",
              tls_pub_key: keys.publicKeyPem
            }).pipe(Effect.provideService(AuthApiBus.RpcCredentials, current))
            return { certPem: r.tls_cert!, keyPem: keys.privateKeyPem }
          }
          if (token === undefined) {
            return yield* Effect.fail(new Error("a proxy without the auth role joins the cluster with --token (tctl tokens add --type=proxy)"))
          }
          const r = yield* AuthApiBus.call(bus, cfg.clusterName, "web.join", { token, role: "proxy", node_name: os.hostname(), tls_pub_key: keys.publicKeyPem })
          return { certPem: r.tls_cert!, keyPem: keys.privateKeyPem }
        })
      let state = yield* issue(undefined).pipe(Effect.mapError((e) => new Error(`the proxy cannot get its identity: ${e.message}`)))
      // Renewed at half its life, so a proxy that runs for weeks keeps a valid identity.
      yield* Effect.forkScoped(
        Effect.forever(
          Effect.gen(function* () {
            yield* Effect.sleep(Duration.millis(Math.max(1_000, Math.min(TunnelPool.renewAt(state.certPem) - Date.now(), 24 * 3600_000))))
            if (Date.now() < TunnelPool.renewAt(state.certPem)) return
            state = yield* issue(state).pipe(
              Effect.tapError((e) => Effect.logWarning(`proxy identity renewal failed, retrying in 10 s: ${e.message}`)),
              Effect.retry(Schedule.spaced(Duration.seconds(10)))
            )
            yield* Effect.logInfo("proxy identity renewed")
          })
        )
      )
      return {
        get certPem() {
          return state.certPem
        },
        get keyPem() {
          return state.keyPem
        }
      }
    })
  )

const proxyLayer = (cfg: ResolvedConfig) => {
  const publicAddr = proxyPublicAddr(cfg)
  return ProxyWeb.layer({
    clusterName: cfg.clusterName,
    listenAddr: cfg.proxy.web_listen_addr ?? DEFAULT_WEB_LISTEN,
    publicHosts: proxyHosts(cfg),
    publicAddr,
    sshListenAddr: cfg.proxy.ssh_listen_addr ?? DEFAULT_SSH_LISTEN,
    sshHostKeyFile: `${cfg.dataDir}/proxy/ssh_host_ed25519_key`,
    mysqlListenAddr: cfg.proxy.mysql_listen_addr ?? DEFAULT_MYSQL_LISTEN,
    mysqlListenRequired: cfg.proxy.mysql_listen_addr !== undefined,
    ...(cfg.proxy.https_keypairs === undefined ? {} : { keyPairs: cfg.proxy.https_keypairs })
  })
}

const start = Command.make(
  "start",
  {
    config: Options.file("config").pipe(Options.withAlias("c"), Options.withDescription("YAML config file"), Options.optional),
    dataDir: Options.text("data-dir").pipe(Options.withDescription("where the event store and keys live (default /var/lib/remoteler)"), Options.optional),
    roles: Options.text("roles").pipe(Options.withDescription("comma-separated roles to run: auth, proxy, db, node"), Options.optional),
    storage: Options.text("storage").pipe(Options.withDescription("event store: postgres://... (cluster) or sqlite://PATH (default: SQLite in the data dir)"), Options.optional),
    nats: Options.text("nats").pipe(Options.withDescription("NATS bus URL, nats://[user:pass@]host:port (default: in-process bus)"), Options.optional),
    clusterName: Options.text("cluster-name").pipe(Options.withDescription("cluster name (default main)"), Options.optional),
    proxy: Options.text("proxy").pipe(Options.withDescription("agents: the proxy to join and tunnel to, HOST[:PORT]"), Options.optional),
    token: Options.text("token").pipe(Options.withDescription("agents: join token from 'tctl tokens add' (needed once)"), Options.optional),
    caPin: Options.text("ca-pin").pipe(Options.withDescription("agents: sha256:... pin of the cluster's host CA, checked before the token is sent"), Options.optional),
    db: Options.text("db").pipe(
      Options.withDescription("db agent: a database, name=NAME,protocol=postgres,uri=HOST:PORT[,label=K:V...][,tls=verify-full|verify-ca|insecure][,ca=FILE]"),
      Options.repeated
    ),
    nodename: Options.text("nodename").pipe(Options.withDescription("agents: the name this agent joins as (default: host name)"), Options.optional),
    labels: Options.text("labels").pipe(Options.withDescription("node: labels, key=value[,key=value...] (besides ssh_service.labels)"), Options.optional),
    listenAddr: Options.text("listen-addr").pipe(Options.withDescription("node: also accept SSH directly on HOST:PORT (ssh_service.listen_addr)"), Options.optional),
    debug: Options.boolean("debug").pipe(Options.withDescription("verbose logging"))
  },
  (flags) =>
    Effect.gen(function* () {
      const cfg = yield* resolve({
        config: Option.getOrUndefined(flags.config),
        dataDir: Option.getOrUndefined(flags.dataDir),
        roles: Option.getOrUndefined(flags.roles),
        storage: Option.getOrUndefined(flags.storage),
        nats: Option.getOrUndefined(flags.nats),
        clusterName: Option.getOrUndefined(flags.clusterName)
      })
      if (cfg.roles.has("node")) {
        if (cfg.roles.size > 1) return yield* Effect.fail(new Error("run the node agent in a process of its own: --roles=node"))
        yield* DataDir.acquire(cfg.dataDir)
        const proxy = Option.getOrUndefined(flags.proxy) ?? cfg.proxyServer
        if (proxy === undefined) return yield* Effect.fail(new Error("the node agent needs --proxy=HOST:PORT"))
        const labels: Record<string, string> = { ...cfg.ssh.labels }
        for (const part of Option.getOrElse(flags.labels, () => "").split(",").filter((p) => p !== "")) {
          const eq = part.indexOf("=")
          if (eq <= 0) return yield* Effect.fail(new Error(`--labels: expected key=value, got ${JSON.stringify(part)}`))
          labels[part.slice(0, eq)] = part.slice(eq + 1)
        }
        const listenAddr = Option.getOrUndefined(flags.listenAddr) ?? cfg.ssh.listen_addr
        if (listenAddr !== undefined && !/^(\[[0-9a-fA-F:]+\]|[a-zA-Z0-9.-]*):\d{1,5}$/.test(listenAddr)) {
          return yield* Effect.fail(new Error(`--listen-addr: expected HOST:PORT, got ${JSON.stringify(listenAddr)}`))
        }
        const nodeName = Option.getOrUndefined(flags.nodename) ?? os.hostname()
        const identity = yield* AgentIdentity.loadOrJoin({
          dataDir: cfg.dataDir,
          proxy,
          role: "node",
          nodeName,
          token: Option.getOrUndefined(flags.token) ?? cfg.authToken,
          caPin: Option.getOrUndefined(flags.caPin)
        })
        const clusterName = Either.getOrElse(
          Either.map(X509.parseCertIdentity(identity.certPem), (i) => i.routeToCluster),
          () => cfg.clusterName
        )
        return yield* Layer.launch(
          Layer.scopedDiscard(
            Effect.gen(function* () {
              const node = yield* NodeAgent.make({
                dataDir: cfg.dataDir,
                proxy,
                clusterName,
                identity,
                nodeName: identity.nodeName,
                hostname: os.hostname(),
                labels,
                listenAddr
              })
              yield* Console.log(
                `remoteler: node agent ${identity.hostId} (${identity.nodeName}) through ${proxy}` +
                  (node.listenPort === undefined ? "" : `; SSH listening on port ${node.listenPort}`) +
                  `; host key ${node.hostKey}`
              )
            })
          )
        )
      }
      const embeddedDb = cfg.roles.has("db") && cfg.roles.size > 1
      if (embeddedDb && !(cfg.roles.has("auth") && cfg.roles.has("proxy"))) {
        return yield* Effect.fail(new Error("the db agent runs in a process of its own (--roles=db) or beside auth and proxy (--roles=auth,proxy,db)"))
      }
      if (cfg.roles.has("db") && !embeddedDb) {
        yield* DataDir.acquire(cfg.dataDir)
        const databases = yield* agentDatabases(cfg, flags.db)
        const proxy = Option.getOrUndefined(flags.proxy) ?? cfg.proxyServer
        if (proxy === undefined) return yield* Effect.fail(new Error("the db agent needs --proxy=HOST:PORT"))
        const identity = yield* AgentIdentity.loadOrJoin({
          dataDir: cfg.dataDir,
          proxy,
          role: "db",
          nodeName: Option.getOrUndefined(flags.nodename) ?? os.hostname(),
          token: Option.getOrUndefined(flags.token) ?? cfg.authToken,
          caPin: Option.getOrUndefined(flags.caPin)
        })
        const clusterName = Either.getOrElse(
          Either.map(X509.parseCertIdentity(identity.certPem), (i) => i.routeToCluster),
          () => cfg.clusterName
        )
        return yield* Layer.launch(
          DbAgent.layer({ dataDir: cfg.dataDir, proxy, clusterName, identity, databases }).pipe(
            Layer.tap(() =>
              Console.log(
                `remoteler: db agent ${identity.hostId} (${identity.nodeName}) serving ${databases.map((d) => d.name).join(", ")} through ${proxy}`
              )
            )
          )
        )
      }
      if (cfg.roles.has("proxy") && !cfg.roles.has("auth") && cfg.nats === undefined) {
        return yield* Effect.fail(new Error("a proxy without the auth role in the same process reaches auth over NATS: give --nats"))
      }
      yield* DataDir.acquire(cfg.dataDir)
      const parts: Array<Layer.Layer<never, unknown, Bus>> = []
      if (cfg.roles.has("auth")) parts.push(authLayer(cfg))
      // The proxy starts after auth: it asks auth for its certificate over the bus.
      const base = Layer.mergeAll(Layer.empty, ...parts)
      const withProxy = cfg.roles.has("proxy")
        ? Layer.provideMerge(
            proxyLayer(cfg).pipe(Layer.provide(proxyCredentials(cfg, Option.getOrUndefined(flags.token) ?? cfg.authToken))),
            base
          )
        : base
      // The embedded default can serve databases too: the agent joins the auth in this process
      // and dials this process's proxy over loopback, exactly as a remote agent would.
      const app = embeddedDb
        ? Layer.provideMerge(embeddedDbAgentLayer(cfg, yield* agentDatabases(cfg, flags.db), Option.getOrUndefined(flags.nodename) ?? os.hostname()), withProxy)
        : withProxy
      yield* Layer.launch(
        app.pipe(
          Layer.provide(busLayer(cfg)),
          Layer.tap(() =>
            Console.log(
              [
                cfg.roles.has("auth")
                  ? `remoteler: auth service running for cluster ${cfg.clusterName}; ` +
                    `store ${describeStorage(cfg.storage)}, bus ${describeNats(cfg.nats)}; ` +
                    `admin socket ${DataDir.adminSocketPath(cfg.dataDir)} (use: tctl --data-dir ${cfg.dataDir} status)`
                  : "",
                cfg.roles.has("proxy") ? `remoteler: proxy running; users log in with: tsh login --proxy=${proxyPublicAddr(cfg)}` : ""
              ]
                .filter((l) => l !== "")
                .join("\n")
            )
          )
        )
      )
    }).pipe(Effect.scoped, Logger.withMinimumLogLevel(flags.debug ? LogLevel.Debug : LogLevel.Info))
).pipe(Command.withDescription("Start the Remoteler service with the given roles (embedded defaults: auth on SQLite, in-process bus)."))

const root = Command.make("remoteler").pipe(
  Command.withDescription("Remoteler: certificate-based access to databases and SSH servers, with a hash-chained audit log."),
  Command.withSubcommands([start])
)

runCli(Command.run(root, { name: "remoteler", version: AuthServer.VERSION }), NodeContext.layer, NodeRuntime.runMain, ["db"])
