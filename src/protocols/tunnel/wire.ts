/**
 * The reverse tunnel's wire contract: HTTP/2 over the TLS connection the agent dialed, with the
 * proxy as the HTTP/2 client and the agent as the HTTP/2 server.
 *
 * Why HTTP/2 and not ssh2 channels (Teleport's choice): node:http2 is nghttp2 in C++, so framing,
 * stream multiplexing and per-stream plus per-connection flow control come for free and run off the
 * JavaScript hot path; a slow database session backs up its own stream window and never stalls the
 * others. PING frames give heartbeats without an extra protocol, and each dial is an ordinary
 * request whose headers carry the target and the user's identity. ssh2 would add a second key
 * exchange and a second encryption layer inside TLS, its channel windows are managed in JavaScript,
 * and we would still need our own request framing. The orientation is reversed because the agent
 * is behind NAT: it dials out, and the side that opens streams (the proxy) must be the HTTP/2
 * client, so the agent serves HTTP/2 on the socket it dialed.
 *
 * Requests (proxy → agent):
 *
 *     POST /dial                  open a stream to a target; the stream's body is the connection
 *       remoteler-target-kind       "db" | "ssh"
 *       remoteler-target-name       database service name or node name
 *       remoteler-meta              base64url(JSON of Record<string, string>), e.g. the user identity
 *     → 200                       accepted: the agent's handler now owns the stream
 *     → 400 | 404 | 503           refused before any byte flows; `remoteler-error` says why
 *
 *     GET /resources?since=<v>    long poll: answers at once when the agent's resource version is
 *                                 greater than v, else when it changes or after the agent's poll
 *                                 timeout, with `ResourcesReply` as JSON. The proxy asks with since=0
 *                                 on connect and then keeps one such request outstanding, so a change
 *                                 reaches it within one round trip without server push (which
 *                                 node:http2 clients must opt into and cannot carry state for).
 *
 * Heartbeats are HTTP/2 PING frames sent by the proxy; the agent treats their absence as a dead
 * proxy, the proxy treats missing PING acks as a dead agent.
 */
import { Either, Schema } from "effect"

/** The ALPN protocol the agent offers and the proxy's listener routes on. */
export const ALPN = "remoteler-tunnel"

/** The db dial target that carries a PostgreSQL CancelRequest (it has no certificate, so no route). */
export const CANCEL_TARGET = "__cancel__"

export const Path = {
  dial: "/dial",
  resources: "/resources"
} as const

export const Header = {
  targetKind: "remoteler-target-kind",
  targetName: "remoteler-target-name",
  meta: "remoteler-meta",
  error: "remoteler-error"
} as const

/**
 * Flow-control windows. node:http2 hands connection-level window back as soon as bytes arrive
 * (stream windows are what bound buffering), so the connection window only limits how much can be
 * in flight on the socket in each direction. It must stay within what the TCP buffers can absorb:
 * node's http2 session stops reading its socket while one of its own writes is stuck, so when both
 * ends have more in flight than the kernel will buffer (32 MiB windows, 40+ streams echoing on
 * loopback here), each waits for the other to read and the whole tunnel wedges.
 *
 * Within that, larger is faster, and much faster on a busy machine: a process that is not scheduled
 * for a few tens of milliseconds stalls its peer once a window's worth is in flight, so the window
 * bounds throughput at window / stall (2 MiB per 25 ms is 80 MB/s; a COPY out measured 30 MB/s with
 * 2 MiB windows on a loaded 2-core machine, 50 MB/s with 8 MiB). 8 MiB stays within Linux's default
 * 4 MiB send buffer plus a receive buffer that autotunes up to 32 MiB, and the 50-stream echo test
 * in test/tunnel.test.ts keeps more than that in flight both ways without wedging.
 */
export const DEFAULT_STREAM_WINDOW = 8 * 1024 * 1024
/** The connection window, shared by all streams of one tunnel; see above for why it is not larger. */
export const DEFAULT_CONNECTION_WINDOW = 8 * 1024 * 1024
/**
 * SETTINGS_MAX_FRAME_SIZE each side advertises (HTTP/2's largest, 16 MiB - 1, against the 16 KiB
 * default): node:http2 hands a stream's reader one chunk per DATA frame, so large frames mean fewer
 * chunks, fewer JavaScript callbacks and fewer, larger socket writes on the far side of each hop.
 * The sender still cuts frames to what it has queued and to the flow-control window.
 */
export const MAX_FRAME_SIZE = 16 * 1024 * 1024 - 1

export const TargetKind = Schema.Literal("db", "ssh")
export type TargetKind = typeof TargetKind.Type

/** What the proxy asks the agent to connect to. */
export class DialTarget extends Schema.Class<DialTarget>("DialTarget")({
  kind: TargetKind,
  name: Schema.String,
  meta: Schema.Record({ key: Schema.String, value: Schema.String })
}) {}

export const Labels = Schema.Record({ key: Schema.String, value: Schema.String })

/** A database an agent serves. */
export class DatabaseResource extends Schema.Class<DatabaseResource>("DatabaseResource")({
  name: Schema.String,
  protocol: Schema.String,
  labels: Labels,
  /**
   * MySQL only: what the server said in its greeting, learned by the agent. The proxy greets
   * clients first (MySQL servers speak first) with this version, since tools such as DBeaver
   * pick features by it, and with these capabilities, which the relay must share with the server.
   */
  mysql: Schema.optional(Schema.Struct({ server_version: Schema.String, capabilities: Schema.Number, charset: Schema.Number }))
}) {}

/** The SSH node an agent is. */
export class NodeResource extends Schema.Class<NodeResource>("NodeResource")({
  name: Schema.String,
  labels: Labels,
  /** The node's SSH host public key as one OpenSSH line; clients pin it in known_hosts. */
  host_key: Schema.optional(Schema.String)
}) {}

/** Everything an agent advertises through its tunnel. */
export class Resources extends Schema.Class<Resources>("Resources")({
  databases: Schema.Array(DatabaseResource),
  node: Schema.optional(NodeResource)
}) {
  static readonly empty = new Resources({ databases: [] })

  /** Whether `target` names something advertised here. */
  serves(kind: TargetKind, name: string): boolean {
    return kind === "db" ? this.databases.some((d) => d.name === name) : this.node?.name === name
  }
}

/** The body of a `GET /resources` answer. `version` grows by one with every change. */
export class ResourcesReply extends Schema.Class<ResourcesReply>("ResourcesReply")({
  version: Schema.Number,
  resources: Resources
}) {}

export const encodeResourcesReply = Schema.encodeSync(Schema.parseJson(ResourcesReply))
export const decodeResourcesReply = Schema.decodeUnknownEither(Schema.parseJson(ResourcesReply))

const Meta = Schema.parseJson(Schema.Record({ key: Schema.String, value: Schema.String }))
const encodeMetaJson = Schema.encodeSync(Meta)
const decodeMetaJson = Schema.decodeUnknownEither(Meta)

/** Header values must be visible ASCII; base64url keeps any JSON (names with UTF-8 in them) intact. */
export const encodeMeta = (meta: Readonly<Record<string, string>>): string =>
  Buffer.from(encodeMetaJson(meta), "utf8").toString("base64url")

/** The headers of a `POST /dial` for `target`. */
export const dialHeaders = (target: DialTarget): Record<string, string> => ({
  ":method": "POST",
  ":path": Path.dial,
  [Header.targetKind]: target.kind,
  [Header.targetName]: target.name,
  [Header.meta]: encodeMeta(target.meta)
})

/** Reads a dial target back from request headers, or says what is wrong with them. */
export const parseDialHeaders = (
  headers: Readonly<Record<string, string | ReadonlyArray<string> | undefined>>
): DialTarget | string => {
  const one = (name: string): string | undefined => {
    const v = headers[name]
    return typeof v === "string" ? v : undefined
  }
  const kind = one(Header.targetKind)
  const name = one(Header.targetName)
  if (kind !== "db" && kind !== "ssh") return `bad ${Header.targetKind}: ${String(kind)}`
  if (name === undefined || name === "") return `missing ${Header.targetName}`
  const raw = one(Header.meta) ?? ""
  if (raw === "") return new DialTarget({ kind, name, meta: {} })
  const meta = decodeMetaJson(Buffer.from(raw, "base64url").toString("utf8"))
  if (Either.isLeft(meta)) return `${Header.meta} is not base64url JSON of strings`
  return new DialTarget({ kind, name, meta: meta.right })
}
