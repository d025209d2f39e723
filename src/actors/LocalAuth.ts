/**
 * Local users' credentials and certificates: invites, passwords (scrypt), TOTP devices, lockout
 * after failed logins, login itself, and the certificate API (`tctl auth sign`, CA rotation).
 *
 * Secrets (password hashes, TOTP seeds, invite tokens) are in the secrets table; the log only says
 * that they changed. Every refusal of a login looks the same to the client ("invalid
 * credentials") and is audited with its real reason.
 */
import { createHash, randomUUID } from "node:crypto"
import { isIP } from "node:net"
import { Effect, HashMap, Option } from "effect"
import type { EventDraft, EventStoreShape } from "../adapters/EventStore.ts"
import type { Handlers } from "../adapters/AuthApiHttp.ts"
import { checkPasswordPolicy, dummyVerify, generateTotpSecret, hashPassword, randomToken, verifyPassword } from "../adapters/Password.ts"
import type { CaInfo } from "../domain/AuthApi.ts"
import type { ApiError } from "../domain/Errors.ts"
import { BadParameter, Forbidden, NotFound, Unavailable } from "../domain/Errors.ts"
import * as Event from "../domain/Event.ts"
import type { CaType, JoinRole } from "../domain/Event.ts"
import { allowedLogins, maxSessionTtl } from "../domain/Rbac.ts"
import * as RbacView from "../domain/RbacView.ts"
import { otpauthUri, totpCounter, verifyTotp } from "../domain/Totp.ts"
import type { CertAuthorityShape } from "./CertAuthority.ts"
import type { ProjectorShape } from "./Projector.ts"

export const INVITE_TTL_MS = 60 * 60 * 1000
export const MAX_FAILED_LOGINS = 5
export const LOCKOUT_MS = 20 * 60 * 1000
const INVALID_CREDENTIALS = "invalid credentials"
const MAX_TTL_SECONDS = 30 * 24 * 3600

export interface LocalAuthSettings {
  /** How long agents' host certificates live (`auth_service.host_cert_ttl`); default 7 days. */
  readonly hostCertTtlMs?: number | undefined
  readonly clusterName: string
  readonly secondFactor: "otp" | "off"
  /** host:port that users reach the proxy on (invite links, `find`). */
  readonly proxyPublicAddr: string
  readonly sshPublicAddr?: string
  readonly mysqlPublicAddr?: string
  readonly version: string
}

export interface LocalAuthDeps {
  readonly store: EventStoreShape
  readonly projector: ProjectorShape<RbacView.RbacView>
  readonly ca: CertAuthorityShape
  readonly settings: LocalAuthSettings
  /** Appends audit records and credential changes to a stream (no version check) and waits for the view. */
  readonly write: (
    stream: string,
    actor: string,
    drafts: ReadonlyArray<Omit<EventDraft, "actor">>
  ) => Effect.Effect<void, ApiError>
}

interface InviteSecret {
  readonly user: string
  readonly expires: string
  readonly totp_secret: string
}

const enc = new TextEncoder()
const dec = new TextDecoder()
const tokenKey = (token: string) => `invite/${createHash("sha256").update(token).digest("hex")}`

type LocalHandlers = Pick<
  Handlers,
  | "users.reset"
  | "users.set_password"
  | "users.unlock"
  | "ca.list"
  | "ca.rotate"
  | "certs.sign"
  | "web.find"
  | "web.login"
  | "web.invite_info"
  | "web.invite_complete"
  | "web.proxy_cert"
  | "web.trusted_user_cas"
  | "web.cert_refused"
  | "tokens.create"
  | "tokens.list"
  | "tokens.delete"
  | "web.join"
  | "web.host_renew"
>

interface TokenSecret {
  readonly name: string
  readonly roles: ReadonlyArray<JoinRole>
  readonly expires: string
}

/** Agents' host certificates live this long; agents renew them before expiry. */
export const HOST_CERT_TTL_MS = 7 * 24 * 3600 * 1000

export const make = (deps: LocalAuthDeps) => {
  const { store, projector, ca, settings, write } = deps
  const storeFailure = (e: { message: string }) => new Unavailable({ message: `event store: ${e.message}` })
  const getSecret = (key: string) =>
    store.getSecret(key).pipe(
      Effect.map((v) => (v === undefined ? undefined : dec.decode(v))),
      Effect.mapError(storeFailure)
    )
  const putSecret = (key: string, value: string) => store.putSecret(key, enc.encode(value)).pipe(Effect.mapError(storeFailure))
  const deleteSecret = (key: string) => store.deleteSecret(key).pipe(Effect.mapError(storeFailure))

  const userOf = (name: string) => Effect.map(projector.state, (v) => Option.getOrUndefined(RbacView.userOf(v, name)))
  const requireUser = (name: string) =>
    Effect.flatMap(userOf(name), (u) => (u === undefined ? Effect.fail(new NotFound({ message: `user ${JSON.stringify(name)} not found` })) : Effect.succeed(u)))

  /** A new one-hour invite for `name`; an older invite of the same user stops working. */
  const createInvite = (name: string, actor: string) =>
    Effect.gen(function* () {
      const token = randomToken(32)
      const expires = new Date(Date.now() + INVITE_TTL_MS).toISOString()
      const previous = yield* getSecret(`invite-of/${name}`)
      if (previous !== undefined) yield* deleteSecret(previous)
      const secret: InviteSecret = { user: name, expires, totp_secret: generateTotpSecret() }
      yield* putSecret(tokenKey(token), JSON.stringify(secret))
      yield* putSecret(`invite-of/${name}`, tokenKey(token))
      yield* write(`user/${name}`, actor, [Event.make("reset_password_token.create", { name, user: actor, expires })])
      return { url: `https://${settings.proxyPublicAddr}/web/invite/${token}`, expires }
    })

  const readInvite = (token: string) =>
    Effect.gen(function* () {
      const gone = new NotFound({ message: "this invitation is not valid: it expired, was used, or was replaced by a newer one" })
      if (!/^[0-9a-f]{64}$/.test(token)) return yield* gone
      const raw = yield* getSecret(tokenKey(token))
      if (raw === undefined) return yield* gone
      const invite = JSON.parse(raw) as InviteSecret
      if (Date.parse(invite.expires) <= Date.now()) return yield* gone
      return invite
    })

  const setPassword = (name: string, password: string, actor: string) =>
    Effect.gen(function* () {
      const problem = checkPasswordPolicy(password)
      if (problem !== undefined) return yield* new BadParameter({ message: problem })
      yield* putSecret(`password/${name}`, yield* hashPassword(password))
      yield* write(`user/${name}`, actor, [Event.make("user.password_change", { name, user: actor })])
    })

  const caInfo = (type: CaType) =>
    Effect.map(
      ca.get(type),
      (c): CaInfo => ({
        type: c.type,
        cluster_name: c.clusterName,
        phase: c.phase,
        active: c.active,
        ...(c.next === undefined ? {} : { next: c.next }),
        signing_key_id: RbacView.signingKeys(c).key_id,
        trusted_key_ids: RbacView.trustedKeys(c).map((k) => k.key_id)
      })
    )

  const caMaterial = (peerCa: CaType) =>
    Effect.all({
      tls_ca_certs: ca.trustedTlsCerts(peerCa),
      user_ca_ssh_keys: ca.trustedSshKeys("user"),
      host_ca_ssh_keys: ca.trustedSshKeys("host")
    })

  const splitHosts = (hosts: ReadonlyArray<string>) => ({
    dnsNames: hosts.filter((h) => isIP(h) === 0),
    ipAddresses: hosts.filter((h) => isIP(h) !== 0)
  })

  /** Records one login attempt; the fifth failure in a row locks the user. */
  const recordLogin = (user: string, success: boolean, error: string | undefined, remoteAddr: string | undefined) =>
    Effect.gen(function* () {
      const event = Event.make(
        "user.login",
        {
          user,
          method: "local",
          success,
          ...(error === undefined ? {} : { error }),
          ...(remoteAddr === undefined ? {} : { "addr.remote": remoteAddr })
        },
        success ? "T1000I" : "T1000W"
      )
      // Logins of unknown users go to an audit stream of their own, so they cannot create users' streams.
      const known = (yield* userOf(user)) !== undefined
      yield* write(known ? `user/${user}` : `login/${user}`, user, [event])
      if (!success && known) {
        const state = Option.getOrUndefined(HashMap.get((yield* projector.state).logins, user))
        if (state !== undefined && state.failures >= MAX_FAILED_LOGINS && !isLocked(state.lockedUntil)) {
          const expires = new Date(Date.now() + LOCKOUT_MS).toISOString()
          yield* write(`user/${user}`, "system", [
            Event.make("lock.created", { name: user, expires, reason: `${MAX_FAILED_LOGINS} failed logins in a row` })
          ])
        }
      }
    })

  const isLocked = (until: string | undefined) => until !== undefined && Date.parse(until) > Date.now()

  const login: LocalHandlers["web.login"] = (req) =>
    Effect.gen(function* () {
      // Malformed input is refused before any credential is looked at: a 400, not a login failure.
      if (req.ttl_seconds !== undefined && req.ttl_seconds > MAX_TTL_SECONDS) {
        return yield* new BadParameter({ message: `ttl_seconds must be at most ${MAX_TTL_SECONDS}` })
      }
      if (!/^(ssh-ed25519|ecdsa-sha2-nistp256|ssh-rsa) [A-Za-z0-9+/=]+( .*)?$/.test(req.pub_key.trim())) {
        return yield* new BadParameter({ message: "pub_key: expected an OpenSSH public key line such as 'ssh-ed25519 AAAA...'" })
      }
      if (!req.tls_pub_key.includes("-----BEGIN PUBLIC KEY-----")) {
        return yield* new BadParameter({ message: "tls_pub_key: expected a PEM public key (-----BEGIN PUBLIC KEY-----)" })
      }
      const remote = req.remote_addr
      const fail = (reason: string) =>
        recordLogin(req.user, false, reason, remote).pipe(Effect.zipRight(Effect.fail(new Forbidden({ message: INVALID_CREDENTIALS }))))

      const view = yield* projector.state
      const user = Option.getOrUndefined(RbacView.userOf(view, req.user))
      const stored = user === undefined ? undefined : yield* getSecret(`password/${req.user}`)
      const passwordOk = stored === undefined ? yield* dummyVerify(req.password) : yield* verifyPassword(req.password, stored)
      if (user === undefined) return yield* fail("unknown user")
      const state = Option.getOrUndefined(HashMap.get(view.logins, req.user))
      if (isLocked(state?.lockedUntil)) return yield* fail(`user is locked until ${state?.lockedUntil}`)
      if (stored === undefined) return yield* fail("user has no password; use the invite link or 'tctl users set-password'")
      if (!passwordOk) return yield* fail("bad password")
      if (settings.secondFactor === "otp") {
        const secret = yield* getSecret(`totp/${req.user}`)
        if (secret === undefined) return yield* fail("user has no one-time password device")
        const counter = req.otp_token === undefined ? undefined : verifyTotp(secret, req.otp_token, Date.now())
        const lastUsed = Number((yield* getSecret(`totp-used/${req.user}`)) ?? "-1")
        if (counter === undefined) return yield* fail("bad one-time code")
        if (counter <= lastUsed) return yield* fail("one-time code already used")
        yield* putSecret(`totp-used/${req.user}`, String(counter))
      }

      const roles = RbacView.resolveRoles(view, user.roles)
      const maxTtl = maxSessionTtl(roles)
      const ttl = Math.min((req.ttl_seconds ?? 12 * 3600) * 1000, maxTtl)
      const expires = new Date(Date.now() + ttl)
      const logins = allowedLogins(roles, user.traits)
      const issued = yield* ca.signUser({
        username: user.name,
        roles: user.roles,
        logins,
        traits: user.traits,
        sshPublicKey: req.pub_key,
        tlsPublicKey: req.tls_pub_key,
        expires
      })
      yield* recordLogin(req.user, true, undefined, remote)
      yield* write(`user/${user.name}`, user.name, [
        Event.make("cert.create", {
          cert_type: "user",
          user: user.name,
          identity: { user: user.name, roles: user.roles, logins, expires: expires.toISOString(), route_to_cluster: settings.clusterName }
        })
      ])
      const hostCa = yield* ca.get("host")
      return {
        username: user.name,
        cluster_name: settings.clusterName,
        cert: issued.sshCert!,
        tls_cert: issued.tlsCert!,
        tls_ca_certs: yield* ca.trustedTlsCerts("host"),
        host_signers: RbacView.trustedKeys(hostCa).map((k) => `@cert-authority * ${k.ssh_public_key}`),
        expires: expires.toISOString(),
        roles: user.roles,
        logins
      }
    })

  /** A host certificate (host CA) for an agent or proxy, with the CA material it verifies peers with. */
  const issueHostCert = (
    hostId: string,
    req: { readonly node_name: string; readonly role: JoinRole; readonly tls_pub_key: string; readonly ssh_pub_key?: string | undefined }
  ) =>
    Effect.gen(function* () {
      const expires = new Date(Date.now() + (settings.hostCertTtlMs ?? HOST_CERT_TTL_MS))
      const issued = yield* ca.signHost({
        hostId,
        nodeName: req.node_name,
        systemRole: req.role === "db" ? "Db" : req.role === "proxy" ? "Proxy" : "Node",
        principals: [hostId, req.node_name],
        dnsNames: [req.node_name],
        ipAddresses: [],
        tlsPublicKey: req.tls_pub_key,
        ...(req.ssh_pub_key === undefined ? {} : { sshPublicKey: req.ssh_pub_key }),
        expires,
        ca: "host"
      })
      return {
        host_id: hostId,
        tls_cert: issued.tlsCert!,
        ...(issued.sshCert === undefined ? {} : { ssh_cert: issued.sshCert }),
        expires: expires.toISOString(),
        // Agents verify the proxy with the host CA, and (db agents) sign upstream with the db CA later.
        ...(yield* caMaterial("host"))
      }
    })

  const joinFailure = (req: { role: JoinRole; node_name: string; remote_addr?: string | undefined }, reason: string, tokenName?: string) =>
    write(`join/${req.node_name}`, "system", [
      Event.make(
        "instance.join",
        {
          host_id: "",
          node_name: req.node_name,
          role: req.role,
          ...(tokenName === undefined ? {} : { token_name: tokenName }),
          success: false,
          error: reason,
          ...(req.remote_addr === undefined ? {} : { "addr.remote": req.remote_addr })
        },
        "TJ001E"
      )
    ]).pipe(Effect.zipRight(Effect.fail(new Forbidden({ message: "invalid join token" }))))

  const handlers: LocalHandlers = {
    "tokens.create": (req) =>
      Effect.gen(function* () {
        const token = randomToken(16)
        const hash = createHash("sha256").update(token).digest("hex")
        const name = hash.slice(0, 12)
        const expires = new Date(Date.now() + req.ttl_seconds * 1000).toISOString()
        const secret: TokenSecret = { name, roles: req.roles, expires }
        yield* putSecret(`token/${hash}`, JSON.stringify(secret))
        yield* write(`token/${name}`, "admin", [Event.make("join_token.create", { name, roles: req.roles, expires, user: "admin" })])
        return { token, name, expires, proxy: settings.proxyPublicAddr }
      }),

    "tokens.list": () =>
      Effect.map(projector.state, (v) =>
        [...HashMap.values(v.tokens)]
          .filter((t) => Date.parse(t.expires) > Date.now())
          .sort((a, b) => a.expires.localeCompare(b.expires))
          .map((t) => ({ name: t.name, roles: t.roles, expires: t.expires }))
      ),

    "tokens.delete": (req) =>
      Effect.gen(function* () {
        const v = yield* projector.state
        if (!HashMap.has(v.tokens, req.name)) return yield* new NotFound({ message: `token ${JSON.stringify(req.name)} not found` })
        yield* write(`token/${req.name}`, "admin", [Event.make("join_token.delete", { name: req.name, user: "admin" })])
        return {}
      }),

    "web.join": (req) =>
      Effect.gen(function* () {
        if (!/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$/.test(req.node_name)) {
          return yield* new BadParameter({ message: "node_name: 1-64 letters, digits, '.', '_' or '-'" })
        }
        if (!/^[0-9a-f]{32}$/.test(req.token)) return yield* joinFailure(req, "malformed token")
        const hash = createHash("sha256").update(req.token).digest("hex")
        const raw = yield* getSecret(`token/${hash}`)
        if (raw === undefined) return yield* joinFailure(req, "unknown token")
        const token = JSON.parse(raw) as TokenSecret
        // Deleting a token in the log revokes it even though its secret row remains.
        const live = HashMap.has((yield* projector.state).tokens, token.name)
        if (!live) return yield* joinFailure(req, "token was deleted", token.name)
        if (Date.parse(token.expires) <= Date.now()) return yield* joinFailure(req, "token expired", token.name)
        if (!token.roles.includes(req.role)) return yield* joinFailure(req, `token does not allow role ${req.role}`, token.name)
        const hostId = randomUUID()
        const issued = yield* issueHostCert(hostId, req)
        yield* write(`host/${hostId}`, "system", [
          Event.make("instance.join", {
            host_id: hostId,
            node_name: req.node_name,
            role: req.role,
            token_name: token.name,
            success: true,
            ...(req.remote_addr === undefined ? {} : { "addr.remote": req.remote_addr })
          })
        ])
        return issued
      }),

    "web.host_renew": (req) =>
      Effect.gen(function* () {
        // The proxy checked the agent's current certificate (host CA, not expired) and filled in
        // host_id, node_name and role from it: the renewal keeps all three.
        const issued = yield* issueHostCert(req.host_id, req)
        yield* write(`host/${req.host_id}`, "system", [
          Event.make("instance.renew", { host_id: req.host_id, node_name: req.node_name, role: req.role, success: true })
        ])
        return issued
      }),

    "users.reset": (req) => Effect.zipRight(requireUser(req.name), createInvite(req.name, "admin")),

    "users.set_password": (req) =>
      Effect.gen(function* () {
        yield* requireUser(req.name)
        yield* setPassword(req.name, req.password, "admin")
        return {}
      }),

    "users.unlock": (req) =>
      Effect.gen(function* () {
        yield* requireUser(req.name)
        yield* write(`user/${req.name}`, "admin", [Event.make("lock.deleted", { name: req.name, user: "admin" })])
        return {}
      }),

    "ca.list": () => Effect.forEach(["user", "host", "db"] as const, caInfo),

    "ca.rotate": (req) => Effect.zipRight(ca.rotate(req.type, req.phase, "admin"), caInfo(req.type)),

    "certs.sign": (req) =>
      Effect.gen(function* () {
        if (req.ttl_seconds > 10 * 365 * 24 * 3600) return yield* new BadParameter({ message: "--ttl is longer than ten years" })
        const expires = new Date(Date.now() + req.ttl_seconds * 1000)
        if (req.kind === "user") {
          if (req.user === undefined) return yield* new BadParameter({ message: "--user is required" })
          const user = yield* requireUser(req.user)
          const view = yield* projector.state
          const logins = allowedLogins(RbacView.resolveRoles(view, user.roles), user.traits)
          const issued = yield* ca.signUser({
            username: user.name,
            roles: user.roles,
            logins,
            traits: user.traits,
            ...(req.ssh_pub_key === undefined ? {} : { sshPublicKey: req.ssh_pub_key }),
            ...(req.tls_pub_key === undefined ? {} : { tlsPublicKey: req.tls_pub_key }),
            expires
          })
          yield* write(`user/${user.name}`, "admin", [
            Event.make("cert.create", {
              cert_type: "user",
              user: "admin",
              identity: { user: user.name, roles: user.roles, logins, expires: expires.toISOString(), route_to_cluster: settings.clusterName }
            })
          ])
          return {
            ...(issued.sshCert === undefined ? {} : { ssh_cert: issued.sshCert }),
            ...(issued.tlsCert === undefined ? {} : { tls_cert: issued.tlsCert }),
            expires: expires.toISOString(),
            ...(yield* caMaterial("host"))
          }
        }
        const hosts = req.hosts ?? []
        if (hosts.length === 0) return yield* new BadParameter({ message: "--host needs at least one name" })
        const hostId = hosts[0]!
        const issued = yield* ca.signHost({
          hostId,
          nodeName: hostId,
          systemRole: req.kind === "db" ? "Db" : "Node",
          principals: hosts,
          ...splitHosts(hosts),
          ...(req.ssh_pub_key === undefined ? {} : { sshPublicKey: req.ssh_pub_key }),
          ...(req.tls_pub_key === undefined ? {} : { tlsPublicKey: req.tls_pub_key }),
          expires,
          ca: req.kind === "db" ? "db" : "host"
        })
        yield* write(`host/${hostId}`, "admin", [
          Event.make("cert.create", {
            cert_type: req.kind === "db" ? "db" : "host",
            user: "admin",
            identity: { user: hostId, roles: [], logins: [...hosts], expires: expires.toISOString(), route_to_cluster: settings.clusterName, host_id: hostId }
          })
        ])
        return {
          ...(issued.sshCert === undefined ? {} : { ssh_cert: issued.sshCert }),
          ...(issued.tlsCert === undefined ? {} : { tls_cert: issued.tlsCert }),
          expires: expires.toISOString(),
          ...(yield* caMaterial(req.kind === "db" ? "db" : "user"))
        }
      }),

    "web.find": () =>
      Effect.succeed({
        cluster_name: settings.clusterName,
        server_version: settings.version,
        auth: { type: "local" as const, second_factor: settings.secondFactor },
        proxy: {
          web_public_addr: settings.proxyPublicAddr,
          ...(settings.sshPublicAddr === undefined ? {} : { ssh_public_addr: settings.sshPublicAddr }),
          ...(settings.mysqlPublicAddr === undefined ? {} : { mysql_public_addr: settings.mysqlPublicAddr })
        }
      }),

    "web.login": login,

    "web.invite_info": (req) =>
      Effect.map(readInvite(req.token), (invite) => ({
        user: invite.user,
        expires: invite.expires,
        second_factor: settings.secondFactor,
        ...(settings.secondFactor === "otp"
          ? {
              totp_secret: invite.totp_secret,
              totp_uri: otpauthUri({ secret: invite.totp_secret, account: invite.user, issuer: `Remoteler ${settings.clusterName}` })
            }
          : {})
      })),

    "web.invite_complete": (req) =>
      Effect.gen(function* () {
        const invite = yield* readInvite(req.token)
        yield* requireUser(invite.user)
        if (settings.secondFactor === "otp") {
          const counter = req.otp_token === undefined ? undefined : verifyTotp(invite.totp_secret, req.otp_token, Date.now())
          if (counter === undefined) {
            return yield* new BadParameter({ message: "the one-time code does not match: check the authenticator app's clock and try the current code" })
          }
          yield* putSecret(`totp/${invite.user}`, invite.totp_secret)
          yield* putSecret(`totp-used/${invite.user}`, String(counter))
        }
        yield* setPassword(invite.user, req.password, invite.user)
        yield* deleteSecret(tokenKey(req.token))
        yield* deleteSecret(`invite-of/${invite.user}`)
        return { user: invite.user }
      }),

    "web.proxy_cert": (req) =>
      Effect.gen(function* () {
        const expires = new Date(Date.now() + 30 * 24 * 3600 * 1000)
        const issued = yield* ca.signHost({
          hostId: req.host_id,
          nodeName: req.host_id,
          systemRole: "Proxy",
          principals: [req.host_id, ...req.hosts],
          ...splitHosts(req.hosts),
          tlsPublicKey: req.tls_pub_key,
          expires,
          ca: "host"
        })
        return { tls_cert: issued.tlsCert!, expires: expires.toISOString(), ...(yield* caMaterial("user")) }
      }),

    "web.trusted_user_cas": () =>
      Effect.zipWith(ca.trustedTlsCerts("user"), ca.trustedSshKeys("user"), (tls_ca_certs, ssh_keys) => ({ tls_ca_certs, ssh_keys })),

    "web.cert_refused": (req) =>
      Effect.as(
        write(`auth/${req.user}`, req.user, [
          Event.make("auth", {
            user: req.user,
            success: false,
            error: `certificate refused: ${req.reason}`,
            ...(req.remote_addr === undefined ? {} : { "addr.remote": req.remote_addr })
          })
        ]),
        {}
      )
  }

  return { handlers, createInvite, totpCounter }
}
