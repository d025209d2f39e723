/**
 * Agentless OpenSSH nodes on the auth side: registration (`tctl create node.yaml`, `tctl get
 * nodes`, `tctl rm node/NAME`) as `node.created` / `node.deleted` events folded into the RBAC view,
 * and the proxy's request to open a session on one (`web.agentless_session`): the RBAC decision
 * (node_labels and logins, deny wins) and, when allowed, a short user certificate for that one
 * login, which the proxy presents to the sshd. A refusal is audited (T3007W).
 *
 * Each node also gets a host key of its own for the proxy's side (`proxy_host_key`), which users'
 * clients pin; its private half is a secret that proxies fetch (`web.agentless_host_key`) over the
 * bus, which only proxies may call, so that every proxy presents the same key for the node.
 */
import { Effect, Either, HashMap, Option } from "effect"
import type { Handlers } from "../adapters/AuthApiHttp.ts"
import { generateKeyPairSync } from "node:crypto"
import type { EventDraft, EventStoreShape } from "../adapters/EventStore.ts"
import type { AgentlessNodeFields, NodeResource } from "../domain/AgentlessNode.ts"
import { agentlessHostKeyId } from "../domain/AgentlessNode.ts"
import type { ApiError } from "../domain/Errors.ts"
import { AlreadyExists, BadParameter, Forbidden, NotFound, Unavailable } from "../domain/Errors.ts"
import * as Event from "../domain/Event.ts"
import { checkNodeAccess } from "../domain/Rbac.ts"
import * as RbacView from "../domain/RbacView.ts"
import { decodeCertificate, parsePublicKeyLine, privateKeyToOpenSsh, publicKeyBlob, publicKeyLine, verifyCertificate } from "../protocols/ssh/cert.ts"
import type { CertAuthorityShape } from "./CertAuthority.ts"
import type { ProjectorShape } from "./Projector.ts"

type NodeHandlers = Pick<Handlers, "nodes.upsert" | "nodes.delete" | "nodes.list" | "web.agentless_session" | "web.agentless_host_key">

/** How long the certificate the proxy presents to an sshd lives: it is used once, at once. */
export const UPSTREAM_CERT_TTL_MS = 2 * 60_000

const CERT_TYPE = /-cert-v01@openssh\.com$/

export const make = (deps: {
  readonly store: EventStoreShape
  readonly projector: ProjectorShape<RbacView.RbacView>
  readonly ca: CertAuthorityShape
  readonly clusterName: string
  readonly write: (stream: string, actor: string, drafts: ReadonlyArray<Omit<EventDraft, "actor">>, expected?: "current" | "any") => Effect.Effect<void, ApiError>
}) => {
  const { store, projector, ca, clusterName, write } = deps
  const unavailable = (e: { readonly message: string }) => new Unavailable({ message: `event store: ${e.message}` })

  /** The key the proxy presents for this node: made once, kept across updates of the node. */
  const proxyHostKey = (name: string) =>
    Effect.gen(function* () {
      const known = Option.getOrUndefined(HashMap.get((yield* projector.state).agentlessNodes, name))
      const id = agentlessHostKeyId(name)
      if (known?.proxy_host_key !== undefined && (yield* store.getSecret(id).pipe(Effect.mapError(unavailable))) !== undefined) {
        return known.proxy_host_key
      }
      const pair = generateKeyPairSync("ed25519")
      yield* store.putSecret(id, new TextEncoder().encode(privateKeyToOpenSsh(pair.privateKey, `remoteler-proxy-${name}`))).pipe(Effect.mapError(unavailable))
      return publicKeyLine(publicKeyBlob(pair.publicKey))
    })

  /** The key to pin: the plain key given, or the key inside a host certificate the host CA signed for this node. */
  const pinnedKey = (node: NodeResource) =>
    Effect.gen(function* () {
      const line = node.spec.host_key.trim()
      const type = line.split(/\s+/)[0] ?? ""
      if (!CERT_TYPE.test(type)) {
        const key = parsePublicKeyLine(line)
        if (Either.isLeft(key)) return yield* new BadParameter({ message: `spec.host_key is not an OpenSSH public key or host certificate: ${key.left.message}` })
        return { host_key: publicKeyLine(key.right.blob) }
      }
      const cert = decodeCertificate(line)
      if (Either.isLeft(cert)) return yield* new BadParameter({ message: `spec.host_key: malformed certificate: ${cert.left.message}` })
      const caKeys = (yield* ca.trustedSshKeys("host")).flatMap((l) => Either.match(parsePublicKeyLine(l), { onLeft: () => [], onRight: (k) => [k.blob] }))
      const addrHost = node.spec.addr.slice(0, node.spec.addr.lastIndexOf(":")).replace(/^\[|\]$/g, "")
      const names = [node.metadata.name, node.spec.hostname ?? node.metadata.name, addrHost]
      const checks = names.map((principal) => verifyCertificate(cert.right, { trustedCaKeys: caKeys, now: new Date(), principal, certType: "host" }))
      const ok = checks.find(Either.isRight)
      if (ok === undefined) {
        const why = checks.map((c) => (Either.isLeft(c) ? c.left.message : "")).find((m) => m !== "") ?? "refused"
        return yield* new BadParameter({
          message: `spec.host_key: the host certificate does not hold for ${names.join(", ")}: ${why} (sign one with tctl auth sign --host=${node.metadata.name} --format=openssh)`
        })
      }
      return { host_key: publicKeyLine(cert.right.publicKey), host_cert: line }
    })

  const handlers: NodeHandlers = {
    "nodes.upsert": (req) =>
      Effect.gen(function* () {
        const n = req.node
        const exists = HashMap.has((yield* projector.state).agentlessNodes, n.metadata.name)
        if (exists && !req.force) {
          return yield* new AlreadyExists({ message: `node ${JSON.stringify(n.metadata.name)} already exists; use --force to overwrite it` })
        }
        const pin = yield* pinnedKey(n)
        const fields: AgentlessNodeFields = {
          name: n.metadata.name,
          addr: n.spec.addr,
          hostname: n.spec.hostname ?? n.metadata.name,
          labels: { ...n.metadata.labels },
          ...pin,
          proxy_host_key: yield* proxyHostKey(n.metadata.name)
        }
        yield* write(`node/${n.metadata.name}`, "admin", [Event.make("node.created", fields)])
        return { name: n.metadata.name, created: !exists }
      }),

    "nodes.delete": (req) =>
      Effect.gen(function* () {
        if (!HashMap.has((yield* projector.state).agentlessNodes, req.name)) {
          return yield* new NotFound({ message: `node ${JSON.stringify(req.name)} not found; see 'tctl get nodes'` })
        }
        yield* write(`node/${req.name}`, "admin", [Event.make("node.deleted", { name: req.name })])
        return {}
      }),

    "nodes.list": () =>
      Effect.map(projector.state, (v) => [...HashMap.values(v.agentlessNodes)].sort((a, b) => a.name.localeCompare(b.name))),

    "web.agentless_host_key": (req) =>
      Effect.gen(function* () {
        if (!HashMap.has((yield* projector.state).agentlessNodes, req.node)) return yield* new NotFound({ message: `no agentless node named ${req.node}` })
        const key = yield* store.getSecret(agentlessHostKeyId(req.node)).pipe(Effect.mapError(unavailable))
        if (key === undefined) return yield* new Unavailable({ message: `the proxy host key of node ${req.node} is missing; run tctl create --force on the node again` })
        return { private_key: new TextDecoder().decode(key) }
      }),

    "web.agentless_session": (req) =>
      Effect.gen(function* () {
        const v = yield* projector.state
        const user = Option.getOrUndefined(RbacView.userOf(v, req.user))
        if (user === undefined) return yield* new Forbidden({ message: `user ${JSON.stringify(req.user)} does not exist` })
        const node = Option.getOrUndefined(HashMap.get(v.agentlessNodes, req.node))
        if (node === undefined) return yield* new NotFound({ message: `no agentless node named ${req.node}` })
        // The certificate the user logged in with bounds the roles: one added since needs a new login.
        const roles = RbacView.resolveRoles(v, user.roles).filter((r) => req.cert_roles === undefined || req.cert_roles.includes(r.metadata.name))
        const decision = checkNodeAccess(roles, user.traits, { name: node.name, labels: node.labels }, req.login)
        if (Either.isLeft(decision)) {
          yield* write(`auth/${user.name}`, user.name, [
            Event.make(
              "auth",
              { user: user.name, success: false, error: decision.left.message, ...(req.remote_addr === undefined ? {} : { "addr.remote": req.remote_addr }) },
              "T3007W"
            )
          ], "any")
          return yield* new Forbidden({ message: decision.left.message })
        }
        const expires = new Date(Date.now() + UPSTREAM_CERT_TTL_MS)
        const issued = yield* ca.signUser({
          username: user.name,
          roles: user.roles,
          logins: [req.login],
          traits: user.traits,
          sshPublicKey: req.ssh_pub_key,
          expires
        })
        yield* write(`user/${user.name}`, "system", [
          Event.make("cert.create", {
            cert_type: "user",
            user: user.name,
            identity: { user: user.name, roles: user.roles, logins: [req.login], expires: expires.toISOString(), route_to_cluster: clusterName }
          })
        ], "any")
        return { node, ssh_cert: issued.sshCert!, expires: expires.toISOString() }
      })
  }
  return handlers
}
