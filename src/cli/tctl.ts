/**
 * `tctl`: administers a running auth service through its API (the admin socket in the data dir),
 * never by opening the store file. With no auth service running it says so and exits 1.
 */
import "reflect-metadata"
import * as fs from "node:fs"
import * as path from "node:path"
import { Args, Command, Options } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Either, Option, Schema } from "effect"
import { VERSION } from "../actors/AuthServer.ts"
import { call } from "../adapters/AuthApiHttp.ts"
import { caPin } from "../adapters/AgentIdentity.ts"
import { adminSocketPath } from "../adapters/DataDir.ts"
import type { AuthMethod, RequestOf, User } from "../domain/AuthApi.ts"
import { BadParameter } from "../domain/Errors.ts"
import { parseDurationOption } from "../domain/Rbac.ts"
import { Role } from "../domain/Role.ts"
import { parseRoles, renderRoles } from "../domain/RoleYaml.ts"
import { documentKinds, parseNodes, toResource } from "../domain/AgentlessNode.ts"
import { DEFAULT_DATA_DIR, readConfigFile } from "./config.ts"
import { runCli } from "./run.ts"

// ---------------------------------------------------------------------------------------------
// Reaching auth

const dataDirOpt = Options.text("data-dir").pipe(
  Options.withDescription("data dir of the auth service on this host (default /var/lib/remoteler)"),
  Options.optional
)
const configOpt = Options.file("config").pipe(
  Options.withAlias("c"),
  Options.withDescription("the auth service's config file (its remoteler.data_dir is used)"),
  Options.optional
)

const root = Command.make("tctl", { dataDir: dataDirOpt, config: configOpt })

/** Finds the admin socket from --data-dir, or the config file, or the default data dir. */
const socketPath = Effect.gen(function* () {
  const { config, dataDir } = yield* root
  if (Option.isSome(dataDir)) return adminSocketPath(path.resolve(dataDir.value))
  if (Option.isSome(config)) {
    const file = yield* readConfigFile(config.value)
    return adminSocketPath(path.resolve(file.remoteler?.data_dir ?? DEFAULT_DATA_DIR))
  }
  return adminSocketPath(DEFAULT_DATA_DIR)
})

const auth = <M extends AuthMethod>(method: M, request: RequestOf<M>) =>
  Effect.flatMap(socketPath, (sock) => call(sock, method, request))

// ---------------------------------------------------------------------------------------------
// Output helpers

const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) => cells.map((c, i) => c.padEnd(widths[i]!)).join(" ").trimEnd()
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n")
}

const list = (s: Option.Option<string>): Array<string> =>
  Option.match(s, { onNone: () => [], onSome: (v) => v.split(",").map((x) => x.trim()).filter((x) => x !== "") })

const formatOpt = (choices: ReadonlyArray<string>, dflt: string) =>
  Options.choice("format", choices as [string, ...Array<string>]).pipe(
    Options.withDescription(`output format: ${choices.join(", ")}`),
    Options.withDefault(dflt)
  )

const userRows = (users: ReadonlyArray<User>) =>
  table(
    ["User", "Roles", "Logins", "Created By"],
    users.map((u) => [u.name, u.roles.join(","), (u.traits["logins"] ?? []).join(","), u.created_by ?? ""])
  )

const encodeRole = Schema.encodeSync(Role)

const roleRows = (roles: ReadonlyArray<Role>) =>
  table(
    ["Role", "Allowed to login as", "Node Labels", "Database Users"],
    roles.map((r) => [
      r.metadata.name,
      (r.spec.allow?.logins ?? []).join(","),
      Object.entries(r.spec.allow?.node_labels ?? {})
        .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join("|") : String(v)}`)
        .join(","),
      (r.spec.allow?.db_users ?? []).join(",")
    ])
  )

// ---------------------------------------------------------------------------------------------
// Commands

const status = Command.make("status", {}, () =>
  Effect.gen(function* () {
    const s = yield* auth("status", {})
    const lines = [
      `Cluster      ${s.cluster_name}`,
      `Version      ${s.version}`,
      `Storage      ${s.storage}`,
      `Bus          ${s.bus}`,
      `Events       ${s.head_seq}`,
      `Projector    at seq ${s.projector.position} (audit index ${s.projector.audit_checkpoint})${s.projector.error === undefined ? "" : `; STOPPED: ${s.projector.error}`}`,
      `Outbox       at seq ${s.outbox.position}${s.outbox.error === undefined ? "" : `; retrying: ${s.outbox.error}`}`,
      `Users        ${s.users}`,
      `Roles        ${s.roles}`
    ]
    yield* Console.log(lines.join("\n"))
  })
).pipe(Command.withDescription("Show the cluster's status: event log head, projector and outbox positions."))

const userName = Args.text({ name: "name" }).pipe(Args.withDescription("user name"))

const usersAdd = Command.make(
  "add",
  {
    name: userName,
    roles: Options.text("roles").pipe(Options.withDescription("comma-separated roles (required)")),
    logins: Options.text("logins").pipe(Options.withDescription("comma-separated OS logins"), Options.optional),
    dbUsers: Options.text("db-users").pipe(Options.withDescription("comma-separated database users"), Options.optional),
    dbNames: Options.text("db-names").pipe(Options.withDescription("comma-separated database names"), Options.optional)
  },
  (o) =>
    Effect.gen(function* () {
      const traits: Record<string, Array<string>> = {}
      if (Option.isSome(o.logins)) traits["logins"] = list(o.logins)
      if (Option.isSome(o.dbUsers)) traits["db_users"] = list(o.dbUsers)
      if (Option.isSome(o.dbNames)) traits["db_names"] = list(o.dbNames)
      const { user: u, invite } = yield* auth("users.create", { name: o.name, roles: list(Option.some(o.roles)), traits })
      yield* Console.log(
        [
          `User "${u.name}" has been created with roles ${u.roles.join(", ")}, but requires a password.`,
          `Share this URL with the user to complete user setup, link is valid until ${invite.expires}:`,
          invite.url,
          "",
          "NOTE: Make sure the proxy address in the URL points at your Remoteler proxy."
        ].join("\n")
      )
    })
).pipe(Command.withDescription("Add a user with the given roles and traits."))

const usersLs = Command.make("ls", { format: formatOpt(["text", "json"], "text") }, (o) =>
  Effect.gen(function* () {
    const users = yield* auth("users.list", {})
    yield* Console.log(o.format === "json" ? JSON.stringify(users, null, 2) : userRows(users))
  })
).pipe(Command.withDescription("List users."))

const usersRm = Command.make("rm", { name: userName }, (o) =>
  Effect.gen(function* () {
    yield* auth("users.delete", { name: o.name })
    yield* Console.log(`User "${o.name}" has been deleted.`)
  })
).pipe(Command.withDescription("Delete a user."))

const usersUpdate = Command.make(
  "update",
  {
    name: userName,
    setRoles: Options.text("set-roles").pipe(Options.withDescription("replace the user's roles"), Options.optional),
    setLogins: Options.text("set-logins").pipe(Options.withDescription("replace the user's logins"), Options.optional),
    setDbUsers: Options.text("set-db-users").pipe(Options.withDescription("replace the user's database users"), Options.optional),
    setDbNames: Options.text("set-db-names").pipe(Options.withDescription("replace the user's database names"), Options.optional)
  },
  (o) =>
    Effect.gen(function* () {
      const current = yield* auth("users.get", { name: o.name })
      const traits: Record<string, ReadonlyArray<string>> = { ...current.traits }
      if (Option.isSome(o.setLogins)) traits["logins"] = list(o.setLogins)
      if (Option.isSome(o.setDbUsers)) traits["db_users"] = list(o.setDbUsers)
      if (Option.isSome(o.setDbNames)) traits["db_names"] = list(o.setDbNames)
      if (Option.isNone(o.setRoles) && Option.isNone(o.setLogins) && Option.isNone(o.setDbUsers) && Option.isNone(o.setDbNames)) {
        return yield* new BadParameter({ message: "nothing to update: give --set-roles, --set-logins, --set-db-users or --set-db-names" })
      }
      const u = yield* auth("users.update", {
        name: o.name,
        ...(Option.isSome(o.setRoles) ? { roles: list(o.setRoles) } : {}),
        traits
      })
      yield* Console.log(`User "${u.name}" has been updated (roles ${u.roles.join(", ")}).`)
    })
).pipe(Command.withDescription("Update a user's roles or traits."))

const usersReset = Command.make("reset", { name: userName }, (o) =>
  Effect.gen(function* () {
    const invite = yield* auth("users.reset", { name: o.name })
    yield* Console.log(
      `User "${o.name}" has been reset. Share this URL with the user to set a new password and device, valid until ${invite.expires}:\n${invite.url}`
    )
  })
).pipe(Command.withDescription("Issue a new invite link (password and one-time password device) for a user."))

const readStdin = () =>
  Effect.async<string>((resume) => {
    const chunks: Array<Buffer> = []
    process.stdin.on("data", (c: Buffer) => chunks.push(c))
    process.stdin.on("end", () => resume(Effect.succeed(Buffer.concat(chunks).toString("utf8"))))
    process.stdin.resume()
  })

const usersSetPassword = Command.make("set-password", { name: userName }, (o) =>
  Effect.gen(function* () {
    if (process.stdin.isTTY) yield* Console.error("Enter the new password, then press Ctrl-D:")
    const text = yield* readStdin()
    const password = text.split(/\r?\n/)[0] ?? ""
    if (password === "") return yield* new BadParameter({ message: "no password on standard input" })
    yield* auth("users.set_password", { name: o.name, password })
    yield* Console.log(`Password of user "${o.name}" has been set.`)
  })
).pipe(Command.withDescription("Set a user's password from the first line of standard input (for automation)."))

const usersUnlock = Command.make("unlock", { name: userName }, (o) =>
  Effect.gen(function* () {
    yield* auth("users.unlock", { name: o.name })
    yield* Console.log(`User "${o.name}" has been unlocked.`)
  })
).pipe(Command.withDescription("Lift the lock placed on a user after repeated failed logins."))

const users = Command.make("users").pipe(
  Command.withDescription("Manage users."),
  Command.withSubcommands([usersAdd, usersLs, usersRm, usersUpdate, usersReset, usersSetPassword, usersUnlock])
)

const create = Command.make(
  "create",
  {
    force: Options.boolean("force").pipe(Options.withAlias("f"), Options.withDescription("overwrite an existing resource")),
    file: Args.file({ name: "file", exists: "yes" }).pipe(Args.withDescription("YAML file with one or more roles, or agentless nodes (kind: node)"))
  },
  (o) =>
    Effect.gen(function* () {
      const text = yield* Effect.try({
        try: () => fs.readFileSync(o.file, "utf8"),
        catch: (e) => new BadParameter({ message: `cannot read ${o.file}: ${(e as Error).message}` })
      })
      const kinds = yield* yamlKinds(text)
      if (kinds.includes("node")) {
        // Agentless OpenSSH nodes (docs/agentless-nodes.md); a file holds nodes or roles, not both.
        if (kinds.some((k) => k !== "node")) return yield* new BadParameter({ message: `${o.file}: put nodes and roles in separate files` })
        const nodes = parseNodes(text, o.file)
        if (Either.isLeft(nodes)) return yield* new BadParameter({ message: nodes.left.message })
        for (const node of nodes.right) {
          const r = yield* auth("nodes.upsert", { node, force: o.force })
          yield* Console.log(`node "${r.name}" has been ${r.created ? "created" : "updated"}`)
        }
        return
      }
      const parsed = parseRoles(text)
      if (Either.isLeft(parsed)) return yield* new BadParameter({ message: `${o.file}: ${parsed.left.message}` })
      for (const role of parsed.right) {
        const r = yield* auth("roles.upsert", { role, force: o.force })
        yield* Console.log(`role "${r.name}" has been ${r.created ? "created" : "updated"}`)
      }
    })
).pipe(Command.withDescription("Create resources (roles) from a YAML file."))

/** The `kind` of each YAML document in a file. */
const yamlKinds = (text: string) =>
  Effect.map(
    Effect.promise(() => import("yaml")),
    ({ parseAllDocuments }) => documentKinds(parseAllDocuments(text).flatMap((d) => ("toJS" in d ? [d.toJS() as unknown] : [])))
  )

/** `tctl get nodes|node/NAME`: registered agentless nodes. */
const getNodes = (name: string | undefined, format: string) =>
  Effect.gen(function* () {
    const all = yield* auth("nodes.list", {})
    const nodes = name === undefined ? all : all.filter((n) => n.name === name)
    if (name !== undefined && nodes.length === 0) return yield* new BadParameter({ message: `node ${JSON.stringify(name)} not found` })
    const { stringify } = yield* Effect.promise(() => import("yaml"))
    yield* Console.log(
      format === "json"
        ? JSON.stringify(nodes.map(toResource), null, 2)
        : format === "text"
          ? table(
              ["Node", "Address", "Labels", "Host key"],
              nodes.map((n) => [n.name, n.addr, Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(","), n.host_key.slice(0, 40) + "..."])
            )
          : nodes.map((n) => stringify(toResource(n))).join("---\n").trimEnd()
    )
  })

/** `roles`, `users`, `role/NAME`, `user/NAME`. */
const parseRef = (ref: string) => {
  const m = /^(roles?|users?)(?:\/(.+))?$/.exec(ref)
  if (m === null) return Either.left(`unknown resource ${JSON.stringify(ref)}; expected roles, users, role/NAME or user/NAME`)
  return Either.right({ kind: m[1]!.startsWith("role") ? ("role" as const) : ("user" as const), name: m[2] })
}

const get = Command.make(
  "get",
  {
    ref: Args.text({ name: "resource" }).pipe(Args.withDescription("roles, users, nodes, role/NAME, user/NAME, node/NAME or cert_authorities")),
    format: formatOpt(["yaml", "json", "text"], "yaml")
  },
  (o) =>
    Effect.gen(function* () {
      if (o.ref === "cert_authorities" || o.ref === "cas") {
        const cas = yield* auth("ca.list", {})
        const { stringify } = yield* Effect.promise(() => import("yaml"))
        const docs = cas.map((c) => ({ kind: "cert_authority", version: "v2", metadata: { name: `${c.cluster_name}/${c.type}` }, spec: c }))
        return yield* Console.log(
          o.format === "json"
            ? JSON.stringify(docs, null, 2)
            : o.format === "text"
              ? table(["Type", "Cluster", "Phase", "Signing key", "Trusted keys"], cas.map((c) => [c.type, c.cluster_name, c.phase, c.signing_key_id, c.trusted_key_ids.join(",")]))
              : docs.map((d) => stringify(d)).join("---\n").trimEnd()
        )
      }
      const nodeRef = /^nodes?(?:\/(.+))?$/.exec(o.ref)
      if (nodeRef !== null) return yield* getNodes(nodeRef[1], o.format)
      const ref = parseRef(o.ref)
      if (Either.isLeft(ref)) return yield* new BadParameter({ message: ref.left })
      const { kind, name } = ref.right
      if (kind === "role") {
        const roles = name === undefined ? yield* auth("roles.list", {}) : [yield* auth("roles.get", { name })]
        yield* Console.log(
          o.format === "json"
            ? JSON.stringify(roles.map((r) => encodeRole(r)), null, 2)
            : o.format === "text"
              ? roleRows(roles)
              : renderRoles(roles).trimEnd()
        )
      } else {
        const us = name === undefined ? yield* auth("users.list", {}) : [yield* auth("users.get", { name })]
        const docs = us.map((u) => ({
          kind: "user",
          version: "v2",
          metadata: { name: u.name },
          spec: { roles: u.roles, traits: u.traits, ...(u.created_by === undefined ? {} : { created_by: { user: { name: u.created_by }, time: u.created_at } }) }
        }))
        const { stringify } = yield* Effect.promise(() => import("yaml"))
        yield* Console.log(
          o.format === "json" ? JSON.stringify(docs, null, 2) : o.format === "text" ? userRows(us) : docs.map((d) => stringify(d)).join("---\n").trimEnd()
        )
      }
    })
).pipe(Command.withDescription("Print resources: roles, users, role/NAME, user/NAME."))

const rm = Command.make("rm", { ref: Args.text({ name: "resource" }).pipe(Args.withDescription("role/NAME, user/NAME or node/NAME")) }, (o) =>
  Effect.gen(function* () {
    const nodeRef = /^node\/(.+)$/.exec(o.ref)
    if (nodeRef !== null) {
      yield* auth("nodes.delete", { name: nodeRef[1]! })
      return yield* Console.log(`node "${nodeRef[1]}" has been deleted`)
    }
    const ref = parseRef(o.ref)
    if (Either.isLeft(ref) || ref.right.name === undefined) {
      return yield* new BadParameter({ message: `expected role/NAME or user/NAME, got ${JSON.stringify(o.ref)}` })
    }
    const { kind, name } = ref.right
    yield* kind === "role" ? auth("roles.delete", { name }) : auth("users.delete", { name })
    yield* Console.log(`${kind} "${name}" has been deleted`)
  })
).pipe(Command.withDescription("Delete a resource."))

// --- audit

const rfc3339 = (flag: string, s: string) =>
  Number.isNaN(Date.parse(s))
    ? Effect.fail(new BadParameter({ message: `--${flag}: ${JSON.stringify(s)} is not an RFC 3339 time` }))
    : Effect.succeed(new Date(s).toISOString())

const auditSearch = Command.make(
  "search",
  {
    since: Options.text("since").pipe(Options.withDescription("events newer than this duration, e.g. 1h, 30m"), Options.optional),
    from: Options.text("from").pipe(Options.withDescription("start time, RFC 3339"), Options.optional),
    to: Options.text("to").pipe(Options.withDescription("end time, RFC 3339"), Options.optional),
    type: Options.text("type").pipe(Options.withDescription("event types, comma-separated (e.g. user.create)"), Options.optional),
    user: Options.text("user").pipe(Options.withDescription("only events of this user"), Options.optional),
    sid: Options.text("sid").pipe(Options.withDescription("only events of this session"), Options.optional),
    limit: Options.integer("limit").pipe(Options.withDescription("at most this many events (default 1000)"), Options.withDefault(1000)),
    format: formatOpt(["text", "json"], "text")
  },
  (o) =>
    Effect.gen(function* () {
      if (Option.isSome(o.since) && (Option.isSome(o.from) || Option.isSome(o.to))) {
        return yield* new BadParameter({ message: "use either --since or --from/--to" })
      }
      let from: string | undefined
      if (Option.isSome(o.since)) {
        const ms = parseDurationOption(o.since.value)
        if (Option.isNone(ms)) return yield* new BadParameter({ message: `--since: ${JSON.stringify(o.since.value)} is not a duration such as 1h or 30m` })
        from = new Date(Date.now() - ms.value).toISOString()
      }
      if (Option.isSome(o.from)) from = yield* rfc3339("from", o.from.value)
      const to = Option.isSome(o.to) ? yield* rfc3339("to", o.to.value) : undefined
      if (o.limit < 1 || o.limit > 100_000) return yield* new BadParameter({ message: "--limit must be between 1 and 100000" })
      const events = yield* auth("audit.search", {
        ...(from === undefined ? {} : { from }),
        ...(to === undefined ? {} : { to }),
        ...(Option.isSome(o.type) ? { types: list(o.type) } : {}),
        ...(Option.isSome(o.user) ? { user: o.user.value } : {}),
        ...(Option.isSome(o.sid) ? { sid: o.sid.value } : {}),
        limit: o.limit,
        order: "asc"
      })
      if (o.format === "json") {
        for (const e of events) yield* Console.log(JSON.stringify(e))
      } else {
        yield* Console.log(
          table(
            ["Seq", "Time", "Event", "Code", "User", "Details"],
            events.map((e) => {
              const { seq, time, event, code, user, uid: _uid, hash: _hash, cluster_name: _c, ...rest } = e
              return [String(seq), String(time), String(event), String(code), String(user ?? ""), JSON.stringify(rest)]
            })
          )
        )
      }
    })
).pipe(Command.withDescription("Search the audit log by time, type, user or session."))

const auditVerify = Command.make("verify", {}, () =>
  Effect.gen(function* () {
    const r = yield* auth("audit.verify", {})
    if (r.ok) return yield* Console.log(`chain intact: ${r.count} events`)
    yield* Console.error(`chain broken at seq ${r.broken_at}: ${r.reason} (${r.count} events before it verify)`)
    process.exitCode = 1
  })
).pipe(Command.withDescription("Verify the hash chain of the whole event log (exit 1 naming the first broken seq)."))

const auditStream = Command.make(
  "stream",
  {
    fromSeq: Options.integer("from-seq").pipe(Options.withDescription("start at this seq (default: only events from now on)"), Options.optional),
    type: Options.text("type").pipe(Options.withDescription("event types, comma-separated"), Options.optional)
  },
  (o) =>
    Effect.gen(function* () {
      const sock = yield* socketPath
      const query = new URLSearchParams()
      if (Option.isSome(o.fromSeq)) query.set("from_seq", String(o.fromSeq.value))
      for (const t of list(o.type)) query.append("type", t)
      const { request } = yield* Effect.promise(() => import("node:http"))
      // One JSON object per line, as auth commits them, until interrupted (like tail -f).
      yield* Effect.async<void, BadParameter>((resume) => {
        const req = request({ socketPath: sock, path: `/v1/stream/audit?${query.toString()}`, method: "GET" }, (res) => {
          if (res.statusCode !== 200) {
            let text = ""
            res.on("data", (d: Buffer) => (text += d.toString()))
            res.on("end", () => resume(Effect.fail(new BadParameter({ message: `audit stream refused: ${text}` }))))
            return
          }
          res.on("data", (d: Buffer) => process.stdout.write(d))
          res.on("end", () => resume(Effect.void))
        })
        req.on("error", (e: NodeJS.ErrnoException) =>
          resume(Effect.fail(new BadParameter({ message: e.code === "ENOENT" || e.code === "ECONNREFUSED" ? `no auth service is running at ${sock}` : e.message })))
        )
        req.end()
        return Effect.sync(() => req.destroy())
      })
    })
).pipe(Command.withDescription("Follow the audit log like tail -f: one JSON object per line."))

const audit = Command.make("audit").pipe(
  Command.withDescription("Search, verify and follow the audit log."),
  Command.withSubcommands([auditSearch, auditVerify, auditStream])
)

const eventsReplay = Command.make("replay", {}, () =>
  Effect.gen(function* () {
    yield* Console.error("replaying the event log into the RBAC view and the audit index...")
    const r = yield* auth("events.replay", {})
    yield* Console.log(`replayed ${r.events} events in ${r.millis} ms`)
  })
).pipe(Command.withDescription("Rebuild the projections (RBAC view, audit index) from seq 1."))

const events = Command.make("events").pipe(
  Command.withDescription("Operate on the event log."),
  Command.withSubcommands([eventsReplay])
)

// --- auth: certificates and certificate authorities

const writeFile = (file: string, data: string, mode = 0o600) =>
  Effect.try({
    try: () => {
      fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true })
      fs.writeFileSync(file, data, { mode })
      fs.chmodSync(file, mode)
    },
    catch: (e) => new BadParameter({ message: `cannot write ${file}: ${(e as Error).message}` })
  })

const durationSeconds = (flag: string, text: string) =>
  Option.match(parseDurationOption(text), {
    onNone: () => Effect.fail(new BadParameter({ message: `--${flag}: ${JSON.stringify(text)} is not a duration such as 12h or 30m` })),
    onSome: (ms) =>
      ms < 1000 ? Effect.fail(new BadParameter({ message: `--${flag} must be at least 1s` })) : Effect.succeed(Math.floor(ms / 1000))
  })

const authSign = Command.make(
  "sign",
  {
    user: Options.text("user").pipe(Options.withDescription("sign a user certificate for this user"), Options.optional),
    host: Options.text("host").pipe(Options.withDescription("sign a host certificate for these comma-separated names (IP addresses become IP SANs)"), Options.optional),
    out: Options.text("out").pipe(Options.withAlias("o"), Options.withDescription("output path (base name for formats that write several files)")),
    format: Options.choice("format", ["file", "openssh", "tls", "db"]).pipe(
      Options.withDescription("file: identity file for tsh -i; openssh: key + -cert.pub; tls: .key/.crt/.cas; db: .key/.crt/.cas for a database server"),
      Options.withDefault("file")
    ),
    ttl: Options.text("ttl").pipe(Options.withDescription("certificate lifetime, e.g. 12h (default 12h)"), Options.withDefault("12h"))
  },
  (o) =>
    Effect.gen(function* () {
      if (Option.isSome(o.user) === Option.isSome(o.host)) return yield* new BadParameter({ message: "give exactly one of --user or --host" })
      if (Option.isSome(o.user) && o.format === "db") return yield* new BadParameter({ message: "--format=db is for database servers: use --host" })
      if (Option.isSome(o.host) && o.format === "file") return yield* new BadParameter({ message: "--format=file is for users: use --format=openssh, tls or db with --host" })
      const ttl = yield* durationSeconds("ttl", o.ttl)
      const { generateKeyPairSync } = yield* Effect.promise(() => import("node:crypto"))
      const X509 = yield* Effect.promise(() => import("../adapters/x509.ts"))
      const ssh = yield* Effect.promise(() => import("../protocols/ssh/cert.ts"))
      const tlsKeys = yield* X509.generateEcdsaKeyPair().pipe(Effect.mapError((e) => new BadParameter({ message: e.message })))
      const sshKeys = generateKeyPairSync("ed25519")
      const sshPub = ssh.publicKeyLine(ssh.publicKeyBlob(sshKeys.publicKey))
      const wantSsh = o.format === "file" || o.format === "openssh"
      const wantTls = o.format !== "openssh"
      const r = yield* auth("certs.sign", {
        kind: Option.isSome(o.user) ? "user" : o.format === "db" ? "db" : "host",
        ...(Option.isSome(o.user) ? { user: o.user.value } : { hosts: list(o.host) }),
        ttl_seconds: ttl,
        ...(wantSsh ? { ssh_pub_key: sshPub } : {}),
        ...(wantTls ? { tls_pub_key: tlsKeys.publicKeyPem } : {})
      })
      const written: Array<string> = []
      const put = (file: string, data: string, mode = 0o600) => Effect.tap(writeFile(file, data, mode), () => written.push(file))
      if (o.format === "file") {
        const { writeIdentityFile } = yield* Effect.promise(() => import("../adapters/IdentityFile.ts"))
        yield* writeIdentityFile(o.out, {
          tlsPrivateKeyPem: tlsKeys.privateKeyPem,
          sshPrivateKey: ssh.privateKeyToOpenSsh(sshKeys.privateKey),
          sshCert: r.ssh_cert ?? "",
          tlsCert: r.tls_cert ?? "",
          caCerts: r.tls_ca_certs,
          knownHosts: r.host_ca_ssh_keys.map((k) => `@cert-authority * ${k}`)
        }).pipe(Effect.mapError((e) => new BadParameter({ message: e.message })))
        written.push(o.out)
      } else if (o.format === "openssh") {
        yield* put(o.out, ssh.privateKeyToOpenSsh(sshKeys.privateKey))
        yield* put(`${o.out}.pub`, `${sshPub}\n`, 0o644)
        yield* put(`${o.out}-cert.pub`, `${r.ssh_cert}\n`, 0o644)
      } else {
        yield* put(`${o.out}.key`, tlsKeys.privateKeyPem)
        yield* put(`${o.out}.crt`, r.tls_cert ?? "", 0o644)
        yield* put(`${o.out}.cas`, r.tls_ca_certs.join(""), 0o644)
      }
      yield* Console.log(`The credentials have been written to ${written.join(", ")} (valid until ${r.expires})`)
    })
).pipe(Command.withDescription("Sign long-lived credentials for a user (identity file, OpenSSH, TLS) or a host/database server."))

const caType = Options.choice("type", ["user", "host", "db"]).pipe(Options.withDescription("certificate authority: user, host or db"))

const authExport = Command.make(
  "export",
  { type: caType, format: Options.choice("format", ["openssh", "tls"]).pipe(Options.withDescription("openssh (default) or tls (PEM)"), Options.withDefault("openssh")) },
  (o) =>
    Effect.gen(function* () {
      const cas = yield* auth("ca.list", {})
      const ca = cas.find((c) => c.type === o.type)
      if (ca === undefined) return yield* new BadParameter({ message: `no ${o.type} CA` })
      const trusted = [ca.active, ...(ca.next === undefined ? [] : [ca.next])].filter((k) => ca.trusted_key_ids.includes(k.key_id))
      if (o.format === "tls") return yield* Console.log(trusted.map((k) => k.tls_cert.trimEnd()).join("\n"))
      // user: lines for sshd's TrustedUserCAKeys; host: @cert-authority lines for known_hosts.
      yield* Console.log(
        trusted
          .map((k) => (o.type === "host" ? `@cert-authority * ${k.ssh_public_key} type=host` : k.ssh_public_key))
          .join("\n")
      )
    })
).pipe(Command.withDescription("Export a CA's public keys: a TrustedUserCAKeys line (user), a known_hosts @cert-authority line (host), or PEM (--format=tls)."))

const authRotate = Command.make(
  "rotate",
  {
    type: caType,
    phase: Options.choice("phase", ["init", "update_clients", "update_servers", "standby", "rollback"]).pipe(
      Options.withDescription("go to this rotation phase (manual rotation)"),
      Options.optional
    ),
    manual: Options.boolean("manual").pipe(Options.withDescription("manual rotation: move one phase at a time with --phase"))
  },
  (o) =>
    Effect.gen(function* () {
      const phases = Option.isSome(o.phase)
        ? [o.phase.value]
        : o.manual
          ? yield* new BadParameter({ message: "--manual needs --phase" })
          : // Without a phase: the whole rotation now, with no grace period.
            ["init", "update_clients", "update_servers", "standby"]
      for (const phase of phases) {
        const ca = yield* auth("ca.rotate", { type: o.type as "user" | "host" | "db", phase: phase as "init" })
        yield* Console.log(`${o.type} CA: phase ${phase} (signing with ${ca.signing_key_id}; trusted: ${ca.trusted_key_ids.join(", ")})`)
      }
    })
).pipe(Command.withDescription("Rotate a certificate authority through Teleport's phases (init, update_clients, update_servers, standby; or rollback)."))

// --- join tokens

const tokensAdd = Command.make(
  "add",
  {
    type: Options.text("type").pipe(Options.withDescription("comma-separated roles the token may join as: db, node, proxy")),
    ttl: Options.text("ttl").pipe(Options.withDescription("how long the token is valid (default 30m)"), Options.withDefault("30m"))
  },
  (o) =>
    Effect.gen(function* () {
      const roles = list(Option.some(o.type))
      const bad = roles.filter((r) => r !== "db" && r !== "node" && r !== "proxy")
      if (roles.length === 0 || bad.length > 0) return yield* new BadParameter({ message: `--type: expected db, node or proxy, got ${JSON.stringify(o.type)}` })
      const ttl = yield* durationSeconds("ttl", o.ttl)
      const t = yield* auth("tokens.create", { roles: roles as ["db" | "node" | "proxy"], ttl_seconds: ttl })
      const role = roles[0]
      const hostCa = (yield* auth("ca.list", {})).find((c) => c.type === "host")
      const pin = hostCa === undefined ? "" : ` --ca-pin=${caPin(hostCa.active.tls_cert)}`
      const example =
        role === "db"
          ? `remoteler start --roles=db --proxy=${t.proxy} --token=${t.token}${pin} --data-dir=/var/lib/remoteler-db --db=name=pg1,protocol=postgres,uri=127.0.0.1:5432`
          : role === "proxy"
            ? `remoteler start --roles=proxy --nats=nats://USER:PASS@NATS:4222 --token=${t.token} --data-dir=/var/lib/remoteler-proxy`
            : `remoteler start --roles=node --proxy=${t.proxy} --token=${t.token}${pin} --data-dir=/var/lib/remoteler-node`
      yield* Console.log(
        [
          `The invite token: ${t.token}`,
          `This token will expire at ${t.expires} (token name ${t.name}; only its name is kept in the audit log).`,
          "",
          `Run this on the new ${roles.join("/")} agent to join the cluster:`,
          "",
          `> ${example}`
        ].join("\n")
      )
    })
).pipe(Command.withDescription("Create a join token for db or node agents."))

const tokensLs = Command.make("ls", { format: formatOpt(["text", "json"], "text") }, (o) =>
  Effect.gen(function* () {
    const tokens = yield* auth("tokens.list", {})
    yield* Console.log(
      o.format === "json" ? JSON.stringify(tokens, null, 2) : table(["Token name", "Type", "Expiry Time (UTC)"], tokens.map((t) => [t.name, t.roles.join(","), t.expires]))
    )
  })
).pipe(Command.withDescription("List join tokens that have not expired (names only; a token is shown once, when created)."))

const tokensRm = Command.make("rm", { name: Args.text({ name: "name" }).pipe(Args.withDescription("token name (from tctl tokens ls)")) }, (o) =>
  Effect.gen(function* () {
    yield* auth("tokens.delete", { name: o.name })
    yield* Console.log(`Token ${o.name} has been deleted.`)
  })
).pipe(Command.withDescription("Delete a join token."))

const tokens = Command.make("tokens").pipe(
  Command.withDescription("Join tokens for agents."),
  Command.withSubcommands([tokensAdd, tokensLs, tokensRm])
)

const authCmd = Command.make("auth").pipe(
  Command.withDescription("Certificates and certificate authorities."),
  Command.withSubcommands([authSign, authExport, authRotate])
)

const tctl = root.pipe(
  Command.withDescription("Administer a Remoteler cluster through its auth service."),
  Command.withSubcommands([status, users, create, get, rm, audit, events, authCmd, tokens])
)

runCli(Command.run(tctl, { name: "tctl", version: VERSION }), NodeContext.layer, NodeRuntime.runMain)
