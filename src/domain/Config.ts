/**
 * The configuration file (`remoteler.yaml`), in the shape of Teleport's `teleport.yaml`: top-level
 * `version`, `remoteler`, `auth_service`, `proxy_service`, `db_service`, `ssh_service`. Every struct
 * rejects unknown keys, so a typo fails start instead of being silently ignored.
 */
import { Schema } from "effect"

export const HostPort = Schema.String.pipe(
  Schema.pattern(/^(\[[0-9a-fA-F:]+\]|[a-zA-Z0-9.-]*):\d{1,5}$/, {
    message: () => "expected HOST:PORT, such as 0.0.0.0:3080"
  })
)

export const ClusterName = Schema.String.pipe(
  Schema.pattern(/^[a-z0-9][a-z0-9-]{0,62}$/, {
    message: () => "a cluster name is lower-case letters, digits and '-', at most 63 characters"
  })
)

const StorageSqlite = Schema.Struct({ type: Schema.Literal("sqlite"), path: Schema.optional(Schema.String) })
const StoragePostgres = Schema.Struct({ type: Schema.Literal("postgres"), conn_string: Schema.String })
export const StorageConfig = Schema.Union(StorageSqlite, StoragePostgres)
export type StorageConfig = typeof StorageConfig.Type

export const NatsConfig = Schema.Struct({
  url: Schema.String,
  user: Schema.optional(Schema.String),
  password: Schema.optional(Schema.String),
  nkey_seed_file: Schema.optional(Schema.String),
  tls: Schema.optional(
    Schema.Struct({
      ca_file: Schema.optional(Schema.String),
      cert_file: Schema.optional(Schema.String),
      key_file: Schema.optional(Schema.String)
    })
  ),
  stream_max_age: Schema.optional(Schema.String)
})
export type NatsConfig = typeof NatsConfig.Type

export const SecondFactor = Schema.Literal("otp", "off")

export const AuthServiceConfig = Schema.Struct({
  enabled: Schema.optional(Schema.Boolean),
  cluster_name: Schema.optional(ClusterName),
  listen_addr: Schema.optional(HostPort),
  /** How long agents' host certificates live, a Go duration ("168h", the default); agents renew at half of it. */
  host_cert_ttl: Schema.optional(Schema.String),
  authentication: Schema.optional(
    Schema.Struct({
      type: Schema.optional(Schema.Literal("local")),
      second_factor: Schema.optional(SecondFactor)
    })
  )
})

export const ProxyServiceConfig = Schema.Struct({
  enabled: Schema.optional(Schema.Boolean),
  web_listen_addr: Schema.optional(HostPort),
  public_addr: Schema.optional(Schema.Union(HostPort, Schema.Array(HostPort))),
  mysql_listen_addr: Schema.optional(HostPort),
  ssh_listen_addr: Schema.optional(HostPort),
  https_keypairs: Schema.optional(
    Schema.Array(Schema.Struct({ key_file: Schema.String, cert_file: Schema.String }))
  )
})

export const DatabaseProtocol = Schema.Literal("postgres", "mysql", "redis", "sqlserver", "mongodb")

export const DatabaseConfig = Schema.Struct({
  name: Schema.String.pipe(Schema.pattern(/^[a-z0-9][a-z0-9-]{0,62}$/)),
  description: Schema.optional(Schema.String),
  protocol: DatabaseProtocol,
  uri: Schema.String,
  static_labels: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.String })),
  tls: Schema.optional(
    Schema.Struct({
      mode: Schema.optional(Schema.Literal("verify-full", "verify-ca", "insecure")),
      ca_cert_file: Schema.optional(Schema.String)
    })
  )
})

export const DbServiceConfig = Schema.Struct({
  enabled: Schema.optional(Schema.Boolean),
  databases: Schema.optional(Schema.Array(DatabaseConfig))
})

export const SshServiceConfig = Schema.Struct({
  enabled: Schema.optional(Schema.Boolean),
  listen_addr: Schema.optional(HostPort),
  labels: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.String }))
})

export const FileConfig = Schema.Struct({
  version: Schema.optional(Schema.Literal("v1")),
  remoteler: Schema.optional(
    Schema.Struct({
      data_dir: Schema.optional(Schema.String),
      nodename: Schema.optional(Schema.String),
      auth_token: Schema.optional(Schema.String),
      proxy_server: Schema.optional(HostPort),
      storage: Schema.optional(StorageConfig),
      nats: Schema.optional(NatsConfig)
    })
  ),
  auth_service: Schema.optional(AuthServiceConfig),
  proxy_service: Schema.optional(ProxyServiceConfig),
  db_service: Schema.optional(DbServiceConfig),
  ssh_service: Schema.optional(SshServiceConfig)
})
export type FileConfig = typeof FileConfig.Type

export type Role = "auth" | "proxy" | "db" | "node"

/** The resolved settings a process runs with: file, then flags, then defaults. */
export interface ResolvedConfig {
  readonly dataDir: string
  readonly roles: ReadonlySet<Role>
  readonly clusterName: string
  readonly storage: StorageConfig
  readonly nats: NatsConfig | undefined
  readonly authListenAddr: string
  readonly secondFactor: "otp" | "off"
  /** `auth_service.host_cert_ttl` in ms, when set. */
  readonly hostCertTtlMs: number | undefined
  readonly proxy: typeof ProxyServiceConfig.Type
  readonly db: typeof DbServiceConfig.Type
  readonly ssh: typeof SshServiceConfig.Type
  /** Agents: the proxy to join and tunnel to, and the join token. */
  readonly proxyServer: string | undefined
  readonly authToken: string | undefined
}
