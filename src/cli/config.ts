/**
 * Resolves what a `remoteler start` process runs with: the config file (validated, unknown keys
 * rejected), then command-line flags on top, then defaults. The only place that reads the file.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, Either, Option, Schema } from "effect"
import { parseDurationOption } from "../domain/Rbac.ts"
import type { FileConfig, NatsConfig, ResolvedConfig, Role, StorageConfig } from "../domain/Config.ts"
import { FileConfig as FileConfigSchema } from "../domain/Config.ts"
import { decodeYaml } from "../domain/YamlDecode.ts"

export class ConfigError extends Schema.TaggedError<ConfigError>()("ConfigError", { message: Schema.String }) {}

export interface StartFlags {
  readonly config?: string | undefined
  readonly dataDir?: string | undefined
  readonly roles?: string | undefined
  readonly storage?: string | undefined
  readonly nats?: string | undefined
  readonly clusterName?: string | undefined
}

export const DEFAULT_DATA_DIR = "/var/lib/remoteler"
const ROLES: ReadonlyArray<Role> = ["auth", "proxy", "db", "node"]

export const readConfigFile = (file: string): Effect.Effect<FileConfig, ConfigError> =>
  Effect.gen(function* () {
    const text = yield* Effect.try({
      try: () => fs.readFileSync(file, "utf8"),
      catch: (e) => new ConfigError({ message: `cannot read config file ${file}: ${(e as Error).message}` })
    })
    const decoded = decodeYaml(FileConfigSchema, text, file)
    if (Either.isLeft(decoded)) return yield* new ConfigError({ message: decoded.left.message })
    return decoded.right
  })

export const parseStorageUrl = (url: string, dataDir: string): Either.Either<StorageConfig, string> => {
  if (/^postgres(ql)?:\/\//.test(url)) return Either.right({ type: "postgres", conn_string: url })
  if (url.startsWith("sqlite://")) return Either.right({ type: "sqlite", path: path.resolve(dataDir, url.slice("sqlite://".length)) })
  return Either.left(`--storage: expected postgres://... or sqlite://PATH, got ${JSON.stringify(url)}`)
}

const parseRoles = (text: string): Either.Either<ReadonlySet<Role>, string> => {
  const names = text.split(",").map((s) => s.trim()).filter((s) => s !== "")
  const bad = names.filter((n) => !ROLES.includes(n as Role))
  if (bad.length > 0 || names.length === 0) {
    return Either.left(`--roles: unknown role ${JSON.stringify(bad[0] ?? text)}; expected a list of ${ROLES.join(", ")}`)
  }
  return Either.right(new Set(names as Array<Role>))
}

export const resolve = (flags: StartFlags): Effect.Effect<ResolvedConfig, ConfigError> =>
  Effect.gen(function* () {
    const file: FileConfig = flags.config === undefined ? {} : yield* readConfigFile(flags.config)
    const fail = (message: string) => Effect.fail(new ConfigError({ message }))

    const dataDir = path.resolve(flags.dataDir ?? file.remoteler?.data_dir ?? DEFAULT_DATA_DIR)

    let roles: ReadonlySet<Role>
    if (flags.roles !== undefined) {
      const r = parseRoles(flags.roles)
      if (Either.isLeft(r)) return yield* fail(r.left)
      roles = r.right
    } else {
      const enabled = new Set<Role>()
      if (file.auth_service?.enabled ?? file.auth_service !== undefined) enabled.add("auth")
      if (file.proxy_service?.enabled ?? file.proxy_service !== undefined) enabled.add("proxy")
      if (file.db_service?.enabled ?? file.db_service !== undefined) enabled.add("db")
      if (file.ssh_service?.enabled ?? file.ssh_service !== undefined) enabled.add("node")
      // The embedded default: with nothing configured, run auth and proxy in this process.
      roles = enabled.size > 0 ? enabled : new Set<Role>(["auth", "proxy"])
    }

    let storage: StorageConfig = file.remoteler?.storage ?? { type: "sqlite" }
    if (flags.storage !== undefined) {
      const s = parseStorageUrl(flags.storage, dataDir)
      if (Either.isLeft(s)) return yield* fail(s.left)
      storage = s.right
    }
    if (storage.type === "sqlite") storage = { type: "sqlite", path: path.resolve(dataDir, storage.path ?? "events.db") }

    let nats: NatsConfig | undefined = file.remoteler?.nats
    if (flags.nats !== undefined) {
      if (!/^(nats|tls):\/\//.test(flags.nats)) return yield* fail(`--nats: expected nats://HOST:PORT, got ${JSON.stringify(flags.nats)}`)
      nats = { ...nats, url: flags.nats }
    }

    const clusterName = flags.clusterName ?? file.auth_service?.cluster_name ?? "main"
    if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(clusterName)) {
      return yield* fail(`--cluster-name: ${JSON.stringify(clusterName)} is not a valid cluster name (lower-case letters, digits, '-')`)
    }

    const ttlText = file.auth_service?.host_cert_ttl
    const hostCertTtlMs = ttlText === undefined ? undefined : Option.getOrUndefined(parseDurationOption(ttlText))
    if (ttlText !== undefined && (hostCertTtlMs === undefined || hostCertTtlMs < 60_000)) {
      return yield* fail(`auth_service.host_cert_ttl: ${JSON.stringify(ttlText)} is not a duration of at least 1m (e.g. "168h", "30m")`)
    }

    return {
      dataDir,
      roles,
      hostCertTtlMs,
      clusterName,
      storage,
      nats,
      authListenAddr: file.auth_service?.listen_addr ?? "0.0.0.0:3025",
      secondFactor: file.auth_service?.authentication?.second_factor ?? "otp",
      proxy: file.proxy_service ?? {},
      db: file.db_service ?? {},
      ssh: file.ssh_service ?? {},
      proxyServer: file.remoteler?.proxy_server,
      authToken: file.remoteler?.auth_token
    } satisfies ResolvedConfig
  })

/** How the storage is named in logs and `tctl status`: never the password. */
export const describeStorage = (s: StorageConfig): string => {
  if (s.type === "sqlite") return `sqlite:${s.path ?? ""}`
  try {
    const u = new URL(s.conn_string)
    return `postgres://${u.host}${u.pathname}`
  } catch {
    return "postgres"
  }
}

export const describeNats = (n: NatsConfig | undefined): string => {
  if (n === undefined) return "in-process"
  try {
    const u = new URL(n.url)
    return `nats://${u.host}`
  } catch {
    return "nats"
  }
}
