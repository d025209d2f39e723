/**
 * `remoteler`: runs any set of roles in one process. This file parses flags and wires layers;
 * everything it starts lives in a scope that SIGINT/SIGTERM close, which stops every fiber and
 * closes the store.
 */
import "reflect-metadata"
import { Command, Options } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Layer, Logger, LogLevel, Option, Redacted } from "effect"
import * as AuthServer from "../actors/AuthServer.ts"
import * as Outbox from "../actors/Outbox.ts"
import { serveUnixSocket } from "../adapters/AuthApiHttp.ts"
import * as BusMemory from "../adapters/BusMemory.ts"
import * as BusNats from "../adapters/BusNats.ts"
import * as DataDir from "../adapters/DataDir.ts"
import * as EventStorePg from "../adapters/EventStorePg.ts"
import * as EventStoreSqlite from "../adapters/EventStoreSqlite.ts"
import type { NatsConfig, ResolvedConfig } from "../domain/Config.ts"
import { parseDurationOption } from "../domain/Rbac.ts"
import { describeNats, describeStorage, resolve } from "./config.ts"
import { runCli } from "./run.ts"

const storeLayer = (cfg: ResolvedConfig) =>
  cfg.storage.type === "postgres"
    ? EventStorePg.layer({ url: cfg.storage.conn_string })
    : EventStoreSqlite.layer({ filename: cfg.storage.path ?? `${cfg.dataDir}/events.db` })

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

/** The auth role: store, bus, projector, outbox, handlers, and the admin socket for `tctl`. */
const authLayer = (cfg: ResolvedConfig) => {
  const core = Layer.merge(storeLayer(cfg), busLayer(cfg))
  const actors = Layer.merge(AuthServer.projectorLayer, Outbox.layer(cfg.clusterName))
  const server = AuthServer.layer({
    clusterName: cfg.clusterName,
    storage: describeStorage(cfg.storage),
    bus: describeNats(cfg.nats)
  })
  const adminSocket = Layer.scopedDiscard(
    Effect.flatMap(AuthServer.AuthServer, (handlers) => serveUnixSocket(handlers, DataDir.adminSocketPath(cfg.dataDir)))
  )
  return adminSocket.pipe(Layer.provide(server), Layer.provide(actors), Layer.provide(core))
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
      const unsupported = [...cfg.roles].filter((r) => r !== "auth")
      if (unsupported.length > 0) {
        return yield* Effect.fail(new Error(`role ${unsupported.join(", ")} is not available in this version; run --roles=auth`))
      }
      yield* DataDir.acquire(cfg.dataDir)
      yield* Layer.launch(
        authLayer(cfg).pipe(
          Layer.tap(() =>
            Console.log(
              `remoteler: auth service running for cluster ${cfg.clusterName}; ` +
                `store ${describeStorage(cfg.storage)}, bus ${describeNats(cfg.nats)}; ` +
                `admin socket ${DataDir.adminSocketPath(cfg.dataDir)} (use: tctl --data-dir ${cfg.dataDir} status)`
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

runCli(Command.run(root, { name: "remoteler", version: AuthServer.VERSION }), NodeContext.layer, NodeRuntime.runMain)
