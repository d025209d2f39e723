/**
 * An agent's tunnels to every proxy of the cluster (Teleport's default "agent mesh"): the agent
 * dials the proxy it was given, asks it for the cluster's proxies (`GET /v1/webapi/agent/proxies`,
 * which each proxy learns from its peers' heartbeats on the bus), and keeps one reverse tunnel to
 * each. A user connection landing on any proxy then finds the agent there, and losing a proxy
 * costs only the sessions that ran through it.
 *
 * The pool also keeps the agent's host certificate fresh: at half its life it asks the proxy for a
 * new one (fresh key, same host id and role), saves it in the data dir, and uses it for every
 * later connection; tunnels already up keep running, since TLS checks certificates only at the
 * handshake.
 *
 * Calls the agent makes to the proxy (audit uploads, certificates) go through `post`, which tries
 * the proxy it was given first and then the others, so a dead proxy does not stall the audit.
 */
import * as https from "node:https"
import { X509Certificate } from "node:crypto"
import { Duration, Effect, ExecutionStrategy, Exit, Ref, Schedule, Scope } from "effect"
import type { AgentIdentity } from "../adapters/AgentIdentity.ts"
import { AgentIdentityError, agentPost, parseProxy, save } from "../adapters/AgentIdentity.ts"
import * as X509 from "../adapters/x509.ts"
import type { Resources } from "../protocols/tunnel/wire.ts"
import * as TunnelAgent from "./TunnelAgent.ts"

export interface TunnelPoolOptions<R> extends Omit<TunnelAgent.TunnelAgentOptions<R>, "host" | "port" | "cert" | "key" | "ca"> {
  /** The proxy the agent was started with (`--proxy`). */
  readonly proxy: string
  readonly identity: AgentIdentity
  /** Where the identity lives, so a renewed certificate survives a restart. */
  readonly dataDir: string
  /** How often to ask for the cluster's proxies. Default 10 s. */
  readonly discoverEveryMs?: number
}

export interface TunnelPoolApi {
  /** The proxies this agent keeps a tunnel to (addresses), the one it was given first. */
  readonly proxies: Effect.Effect<ReadonlyArray<string>>
  /** The agent's identity now (renewed certificates replace it). */
  readonly identity: Effect.Effect<AgentIdentity>
  /** What the agent advertises now. */
  readonly resources: Effect.Effect<Resources>
  /** Advertises a new resource list on every tunnel. */
  readonly setResources: (resources: Resources) => Effect.Effect<void>
  /** The tunnel to the proxy the agent was given (for status and tests). */
  readonly primary: TunnelAgent.TunnelAgentApi
  /** A JSON POST to a proxy with the host certificate: the given proxy first, then the others. */
  readonly post: (urlPath: string, body: unknown) => Effect.Effect<unknown, AgentIdentityError>
}

/** A JSON GET to the proxy authenticated by the agent's host certificate. */
const agentGet = (proxy: string, identity: AgentIdentity, urlPath: string) =>
  Effect.async<unknown, AgentIdentityError>((resume) => {
    const p = parseProxy(proxy)
    const req = https.request(
      { host: p.host, port: p.port, method: "GET", path: urlPath, cert: identity.certPem, key: identity.keyPem, ca: [...identity.caPems], agent: false },
      (res) => {
        let text = ""
        res.on("data", (d: Buffer) => (text += d.toString()))
        res.on("end", () => {
          try {
            const json = JSON.parse(text) as unknown
            resume(res.statusCode === 200 ? Effect.succeed(json) : Effect.fail(new AgentIdentityError({ message: `HTTP ${res.statusCode}` })))
          } catch {
            resume(Effect.fail(new AgentIdentityError({ message: `HTTP ${res.statusCode}: not JSON` })))
          }
        })
      }
    )
    req.on("error", (e) => resume(Effect.fail(new AgentIdentityError({ message: `proxy unreachable: ${e.message}` }))))
    req.setTimeout(10_000, () => req.destroy(new Error("timed out")))
    req.end()
  })

/** When to renew: half-way between the certificate's notBefore and notAfter. */
export const renewAt = (certPem: string): number => {
  const cert = new X509Certificate(certPem)
  const from = Date.parse(cert.validFrom)
  const to = Date.parse(cert.validTo)
  return from + (to - from) / 2
}

export const make = <R = never>(options: TunnelPoolOptions<R>): Effect.Effect<TunnelPoolApi, never, Scope.Scope | R> =>
  Effect.gen(function* () {
    const current = yield* Ref.make(options.identity)
    // TunnelAgent reads the certificate at every (re)connect, so a renewal reaches new tunnels.
    let identityNow = options.identity
    const tunnels = new Map<string, { readonly api: TunnelAgent.TunnelAgentApi; readonly scope: Scope.CloseableScope }>()
    const outer = yield* Effect.scope

    const open = (addr: string) =>
      Effect.gen(function* () {
        const target = parseProxy(addr)
        const scope = yield* Scope.fork(outer, ExecutionStrategy.sequential)
        const resources = tunnels.size === 0 ? options.resources : yield* [...tunnels.values()][0]!.api.resources
        const api = yield* TunnelAgent.make<R>({
          ...options,
          resources,
          host: target.host,
          port: target.port,
          cert: () => identityNow.certPem,
          key: () => identityNow.keyPem,
          ca: identityNow.caPems
        }).pipe(Scope.extend(scope))
        tunnels.set(addr, { api, scope })
        return api
      })

    const primary = yield* open(options.proxy)

    const addresses = () => [options.proxy, ...[...tunnels.keys()].filter((a) => a !== options.proxy)]

    const post = (urlPath: string, body: unknown): Effect.Effect<unknown, AgentIdentityError> =>
      Effect.gen(function* () {
        let last: AgentIdentityError | undefined
        for (const addr of addresses()) {
          const r = yield* Effect.either(agentPost(addr, identityNow, urlPath, body))
          if (r._tag === "Right") return r.right
          last = r.left
          // The proxy answered with an error of its own (not a network failure): do not ask the others.
          if (!/proxy unreachable|timed out/.test(r.left.message)) break
        }
        return yield* Effect.fail(last ?? new AgentIdentityError({ message: "no proxy is reachable" }))
      })

    // Discovery: one tunnel per proxy the cluster knows; the given proxy is always kept.
    const discover = Effect.gen(function* () {
      for (const addr of addresses()) {
        const r = yield* Effect.either(agentGet(addr, identityNow, "/v1/webapi/agent/proxies"))
        if (r._tag === "Left") continue
        const listed = ((r.right as { proxies?: ReadonlyArray<{ id?: unknown; addr?: unknown }> }).proxies ?? [])
          .map((p) => p.addr)
          .filter((a): a is string => typeof a === "string")
        // The answering proxy lists itself under its advertised address, which may not be the one
        // the agent dials it by: it is already covered by `addr`.
        const self = (r.right as { self?: unknown }).self
        const others = listed.filter((a) => a !== addr && a !== self)
        for (const a of others) if (!tunnels.has(a)) yield* open(a).pipe(Effect.tap(() => Effect.logInfo(`tunnel to proxy ${a} opened`)))
        for (const [a, t] of tunnels) {
          if (a !== options.proxy && a !== addr && !others.includes(a)) {
            tunnels.delete(a)
            yield* Scope.close(t.scope, Exit.void)
            yield* Effect.logInfo(`proxy ${a} left the cluster; its tunnel is closed`)
          }
        }
        return
      }
    })
    yield* discover.pipe(
      Effect.repeat(Schedule.spaced(Duration.millis(options.discoverEveryMs ?? 10_000))),
      Effect.catchAllCause((c) => Effect.logWarning("proxy discovery stopped", c)),
      Effect.forkScoped
    )

    // Renewal at half the certificate's life; a failure is retried every 10 s until it works.
    const renew = Effect.gen(function* () {
      const keys = yield* X509.generateEcdsaKeyPair().pipe(Effect.mapError((e) => new AgentIdentityError({ message: e.message })))
      const r = (yield* post("/v1/webapi/agent/renew", { tls_pub_key: keys.publicKeyPem })) as {
        tls_cert: string
        tls_ca_certs: ReadonlyArray<string>
        expires: string
      }
      const renewed: AgentIdentity = { ...identityNow, certPem: r.tls_cert, keyPem: keys.privateKeyPem, caPems: r.tls_ca_certs, expires: r.expires }
      yield* Effect.try({
        try: () => save(options.dataDir, renewed),
        catch: (e) => new AgentIdentityError({ message: `cannot save the renewed identity: ${(e as Error).message}` })
      })
      identityNow = renewed
      yield* Ref.set(current, renewed)
      yield* Effect.logInfo(`host certificate renewed; it expires ${renewed.expires}`)
    })
    yield* Effect.forkScoped(
      Effect.forever(
        Effect.gen(function* () {
          const wait = Math.max(0, renewAt(identityNow.certPem) - Date.now())
          yield* Effect.sleep(Duration.millis(Math.min(wait, 24 * 3600_000)))
          if (Date.now() < renewAt(identityNow.certPem)) return
          yield* renew.pipe(
            Effect.tapError((e) => Effect.logWarning(`host certificate renewal failed, retrying in 10 s: ${e.message}`)),
            Effect.retry(Schedule.spaced(Duration.seconds(10)))
          )
        })
      )
    )

    return {
      proxies: Effect.sync(() => addresses()),
      identity: Ref.get(current),
      resources: primary.resources,
      setResources: (resources) => Effect.forEach([...tunnels.values()], (t) => t.api.setResources(resources), { discard: true }),
      primary,
      post
    } satisfies TunnelPoolApi
  })
