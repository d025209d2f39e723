/**
 * The Redis engine of the database agent: one call to `handleSession` per user connection
 * (cf. Teleport's lib/srv/db/redis/engine.go).
 *
 *     client (after TLS at the proxy)          agent                                  Redis
 *                                              route, expiry, RBAC (db_users)
 *                                              TLS, client cert (CN=db user, db CA) ──▶ tls-auth-clients
 *                                              AUTH <db user> <placeholder> ─────────▶ +OK (nopass ACL user)
 *                                              db.session.start
 *     commands (pipelined, inline, MULTI…) ──▶ parsed, audited in order, AUTH/HELLO rewritten
 *                                              or refused, re-encoded ───────────────▶
 *     replies, pushes, pub/sub messages    ◀── raw bytes (counted, never re-encoded) ◀──
 *
 * Every command is audited as `db.session.redis.command` (our TRD00I: Teleport records Redis
 * commands as db.session.query/TDB02I with the command as text, which we keep in `db_query`), with
 * the command name, its arguments (each cut at 1 KiB with its length noted, passwords masked).
 * Audit records go through one queue, written in order without a round trip per command; reads
 * from the client pause while the audit sink is far behind, so nothing is dropped. Refusals reach
 * the client as RESP errors (`-NOPERM ...`, `-ERR ...`), never as a bare close.
 */
import type { Duplex } from "node:stream"
import { Clock, Deferred, Effect, Either, Exit, Queue } from "effect"
import type { Scope } from "effect"
import { AccessDenied, checkDatabaseAccess, disconnectExpiredCert } from "../../domain/Rbac.ts"
import { EngineError } from "../engine.ts"
import type { AuditRecord, Engine, SessionContext } from "../engine.ts"
import { auditArgs, authDecision, queryText } from "./commands.ts"
import { RespParser } from "./parser.ts"
import { RedisRelay } from "./relay.ts"
import type { Decision, EndReason } from "./relay.ts"
import type { RedisCommand } from "./resp.ts"
import { errorReply } from "./serializer.ts"
import { authenticate, connectTls } from "./upstream.ts"

/** How long connecting, TLS and AUTH with Redis may take. */
const UPSTREAM_TIMEOUT_MS = 30_000
/** How long a refused client has to send its first command (the refusal is its reply). */
const FIRST_COMMAND_TIMEOUT_MS = 10_000
/** Audit records queued before the client's reads pause until the audit sink catches up. */
const AUDIT_HIGH_WATER = 8192
const AUDIT_LOW_WATER = 2048

/** The audit event of one command, and its code (ours: Teleport has none for Redis). */
export const REDIS_COMMAND_EVENT = "db.session.redis.command"
export const REDIS_COMMAND_CODE = "TRD00I"

/** The database user of a Redis session: the certificate's, else Redis's own `default`. */
export const sessionUser = (routeUser: string): string => (routeUser === "" ? "default" : routeUser)

/** Any failure as the RESP error a client prints; access denials as NOPERM, like Redis's ACL errors. */
export const errorFor = (err: unknown): Uint8Array => {
  if (err instanceof AccessDenied) return errorReply(err.message, "NOPERM")
  if (err instanceof EngineError) return errorReply(err.message, err.reason === "RouteMismatch" ? "NOPERM" : "ERR")
  return errorReply("internal error in the database agent")
}

const messageOf = (err: unknown): string => (err instanceof AccessDenied || err instanceof EngineError ? err.message : "internal error")

/**
 * Redis speaks only when asked, so a refusal waits for the client's first command and is its
 * reply: a client that reads only after writing (redis-cli does) then prints it.
 */
export const refuseAfterFirstCommand = (client: Duplex, error: Uint8Array): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    const parser = new RespParser({ mode: "request" })
    let done = false
    const finish = () => {
      if (done) return
      done = true
      clearTimeout(timer)
      client.off("data", onData)
      client.off("close", finish)
      if (!client.destroyed && !client.writableEnded) client.end(error, () => resume(Effect.void))
      else resume(Effect.void)
      // A peer that never reads must not hold the session.
      setTimeout(() => client.destroy(), 5_000).unref()
    }
    const onData = (chunk: Buffer) => {
      if (parser.push(chunk).length > 0) finish()
    }
    const timer = setTimeout(finish, FIRST_COMMAND_TIMEOUT_MS)
    client.on("data", onData)
    client.once("close", finish)
    client.resume()
    return Effect.sync(() => {
      done = true
      clearTimeout(timer)
      client.off("data", onData)
      client.off("close", finish)
    })
  })

/** Ends a stream, waiting (at most 5 s) until what was written is flushed. */
const endStream = (stream: Duplex): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (stream.destroyed || stream.writableFinished) return resume(Effect.void)
    const done = () => resume(Effect.void)
    stream.once("finish", done)
    stream.once("close", done)
    const timer = setTimeout(done, 5_000)
    if (!stream.writableEnded) stream.end()
    return Effect.sync(() => {
      clearTimeout(timer)
      stream.off("finish", done)
      stream.off("close", done)
    })
  })

const handleSession = (ctx: SessionContext): Effect.Effect<void, never, Scope.Scope> => {
  const { client, identity, database } = ctx
  const route = identity.routeToDatabase
  return Effect.gen(function* () {
    client.on("error", () => undefined)
    yield* Effect.addFinalizer(() => Effect.sync(() => client.destroy()))
    const dbUser = sessionUser(route.username)
    let ei = 0
    const fields = {
      user: identity.username,
      sid: ctx.sessionId,
      cluster_name: ctx.clusterName,
      server_id: ctx.hostId,
      db_service: database.name,
      db_protocol: "redis",
      db_uri: database.uri,
      db_user: dbUser
    }
    const record = (type: string, code: string, extra: Record<string, unknown>): AuditRecord => ({ type, code, fields: { ...fields, ei: ei++, ...extra } })

    const established = yield* Effect.gen(function* () {
      if (route.serviceName !== database.name) {
        return yield* new EngineError({ reason: "RouteMismatch", message: `the certificate routes to db ${route.serviceName}, not to db ${database.name}` })
      }
      const nowMs = ctx.now !== undefined ? ctx.now().getTime() : yield* Clock.currentTimeMillis
      if (identity.expires.getTime() <= nowMs) {
        return yield* new EngineError({ reason: "CertificateExpired", message: `certificate expired at ${identity.expires.toISOString()}` })
      }
      const decision = checkDatabaseAccess(ctx.roles, identity.traits, { name: database.name, labels: database.labels }, dbUser, undefined)
      if (Either.isLeft(decision)) return yield* decision.left
      const creds = yield* ctx.issueClientCert(dbUser)
      const upstream = yield* Effect.acquireRelease(connectTls(database.uri, database.name, database.tls, creds), (s) => Effect.sync(() => s.destroy()))
      yield* authenticate(upstream, database.name, dbUser)
      return upstream
    }).pipe(
      Effect.timeoutFail({
        duration: UPSTREAM_TIMEOUT_MS,
        onTimeout: () => new EngineError({ reason: "Timeout", message: `timeout connecting to database ${database.name}` })
      }),
      Effect.tapError((e) =>
        Effect.zipRight(ctx.audit(record("db.session.start", "TDB00W", { success: false, error: messageOf(e) })), refuseAfterFirstCommand(client, errorFor(e)))
      ),
      Effect.either
    )
    if (Either.isLeft(established)) return
    const upstream = established.right
    yield* ctx.audit(record("db.session.start", "TDB00I", { success: true }))

    // One queue, consumed in order; everything queued is written at once (its records share the
    // buffer's group fsync), and reads from the client pause while the sink is far behind.
    const audits = yield* Queue.unbounded<{ readonly record: AuditRecord } | { readonly flushed: Deferred.Deferred<void> }>()
    let backlog = 0
    const done = yield* Deferred.make<EndReason>()
    const lost = () => errorReply(`connection to database ${database.name} lost`)
    const relay: RedisRelay = new RedisRelay(client, upstream, {
      decide: (cmd) => decide(cmd),
      onEnd: (reason) => Deferred.unsafeDone(done, Exit.succeed(reason)),
      lost
    })
    yield* Effect.forkScoped(
      Effect.forever(
        Effect.flatMap(Queue.takeBetween(audits, 1, Number.MAX_SAFE_INTEGER), (items) =>
          Effect.forEach(
            items,
            (item) =>
              "flushed" in item
                ? Deferred.succeed(item.flushed, undefined)
                : Effect.zipRight(
                    ctx.audit(item.record),
                    Effect.sync(() => {
                      backlog--
                      if (backlog <= AUDIT_LOW_WATER) relay.resumeClient("audit")
                    })
                  ),
            { concurrency: "unbounded", discard: true }
          )
        )
      )
    )
    /**
     * Records one command's audit event; false when it could not be written. With the agent's
     * buffer (`appendAudit`) the record is in the file before the command goes upstream, so even
     * killing the agent loses nothing that reached Redis; otherwise it goes through the queue.
     */
    const emit = (r: AuditRecord): boolean => {
      if (ctx.appendAudit !== undefined) {
        try {
          ctx.appendAudit(r)
          return true
        } catch (e) {
          auditFailure = e instanceof Error ? e.message : String(e)
          return false
        }
      }
      backlog++
      Queue.unsafeOffer(audits, { record: r })
      if (backlog >= AUDIT_HIGH_WATER) relay.pauseClient("audit")
      return true
    }
    let auditFailure: string | undefined

    const audited = (cmd: RedisCommand, extra: Record<string, unknown> = {}): boolean => {
      const args = auditArgs(cmd)
      return emit(record(REDIS_COMMAND_EVENT, REDIS_COMMAND_CODE, { command: cmd.name, args, db_query: queryText(cmd.name, args), success: true, ...extra }))
    }
    const decide = (cmd: RedisCommand): Decision => {
      const decision = decideAudited(cmd)
      if (auditFailure === undefined) return decision
      // Nothing runs that is not in the audit log: the command is refused and the session ends.
      const message = `the database agent cannot write its audit log (${auditFailure}); session ended`
      return { reply: errorReply(message), end: message }
    }
    const decideAudited = (cmd: RedisCommand): Decision => {
      const auth = authDecision(cmd, dbUser)
      switch (auth.kind) {
        case "pass":
          audited(cmd)
          return { forward: cmd }
        case "forward":
          audited(cmd)
          return { forward: auth.command }
        case "other-user": {
          const check = checkDatabaseAccess(ctx.roles, identity.traits, { name: database.name, labels: database.labels }, auth.user, undefined)
          const message = Either.isLeft(check)
            ? check.left.message
            : `this session runs as db user ${dbUser} (the certificate's); to use db user ${auth.user}, run 'tsh db login ${database.name} --db-user=${auth.user}' and connect again`
          audited(cmd, { success: false, error: message })
          return { reply: errorReply(message, "NOPERM") }
        }
      }
    }

    relay.start()
    yield* Effect.addFinalizer(() => Effect.sync(() => relay.stop()))

    if (disconnectExpiredCert(ctx.roles)) {
      const nowMs = ctx.now !== undefined ? ctx.now().getTime() : yield* Clock.currentTimeMillis
      yield* Effect.forkScoped(
        Effect.sleep(Math.max(0, identity.expires.getTime() - nowMs)).pipe(
          Effect.andThen(
            Effect.sync(() => {
              const message = `certificate expired at ${identity.expires.toISOString()}; session ended`
              relay.terminate(errorReply(message), message)
            })
          )
        )
      )
    }

    const endSession = (reason: EndReason | undefined) =>
      Effect.gen(function* () {
        const flushed = yield* Deferred.make<void>()
        yield* Queue.offer(audits, { flushed })
        yield* Deferred.await(flushed)
        const why =
          reason === undefined
            ? "session interrupted"
            : reason.kind === "client-closed"
              ? undefined
              : reason.kind === "client-protocol"
                ? `protocol error: ${reason.error.detail}`
                : reason.message
        yield* ctx.audit(record("db.session.end", "TDB01I", why === undefined ? {} : { reason: why }))
      })

    const reason = yield* Deferred.await(done).pipe(Effect.onInterrupt(() => endSession(undefined)))
    // What the relay wrote last (an error before a close) must leave before the scope destroys the stream.
    yield* endStream(client)
    yield* endSession(reason)
  }).pipe(Effect.catchAllDefect((defect) => Effect.zipRight(Effect.logError("redis session failed", defect), Effect.sync(() => client.end(errorFor(defect))))))
}

/** Writes `err` as a RESP error (without closing the connection). */
const sendError = (client: Duplex, err: unknown): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (client.destroyed || client.writableEnded) return resume(Effect.void)
    client.write(errorFor(err), () => resume(Effect.void))
  })

/** The Redis engine. */
export const RedisEngine: Engine = {
  protocol: "redis",
  handleSession,
  sendError
}
