/**
 * Session recordings on the auth side: uploads from nodes (through the proxy, which stamps the
 * node's verified host id) and from the proxy itself for agentless nodes, and reads by users.
 *
 * Who may read a recording: the user whose session it was, or a user whose roles allow
 * `read` (`list` to list) on `session` in their rules (the `auditor` and `editor` presets). A
 * role whose deny side matches `session` refuses even the user's own sessions: deny wins.
 *
 * A recording knows only its session id and the host that uploaded it; who the session belonged
 * to comes from the session's `session.start` event in the audit log, and the SHA-256 that the
 * chain vouches for from its `session.end` (`session_recording_sha256`).
 */
import { Effect, Either, Option } from "effect"
import type { EventStoreShape, StoredEvent } from "../adapters/EventStore.ts"
import type { Handlers } from "../adapters/AuthApiHttp.ts"
import type { RecordingInfo, RecordingStoreShape } from "../adapters/RecordingStore.ts"
import { MAX_READ_BYTES, MAX_UPLOAD_BYTES } from "../adapters/RecordingStore.ts"
import { BadParameter, CompareFailed, Forbidden, NotFound, Unavailable } from "../domain/Errors.ts"
import { checkRule } from "../domain/Rbac.ts"
import * as RbacView from "../domain/RbacView.ts"
import type { ProjectorShape } from "./Projector.ts"

type RecordingHandlers = Pick<Handlers, "web.recording_upload" | "web.recordings_list" | "web.recording_get">

/** Recordings listed at most, newest first. */
const MAX_LISTED = 1000

const SESSION_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/

/** What the audit log says about one session. */
interface SessionFacts {
  readonly user: string | undefined
  readonly login: string | undefined
  readonly server: string | undefined
  readonly start: string | undefined
  readonly end: string | undefined
  readonly endSha256: string | undefined
}

const field = (e: StoredEvent | undefined, name: string): string | undefined => {
  const p = e?.payload
  if (p === null || typeof p !== "object") return undefined
  const v = (p as Record<string, unknown>)[name]
  return typeof v === "string" ? v : undefined
}

const base64 = /^[A-Za-z0-9+/]*={0,2}$/

export const make = (deps: {
  readonly store: EventStoreShape
  readonly recordings: RecordingStoreShape
  readonly projector: ProjectorShape<RbacView.RbacView>
}) => {
  const { store, recordings, projector } = deps
  const unavailable = (e: { readonly message: string }) => new Unavailable({ message: `recording store: ${e.message}` })

  const facts = (sid: string) =>
    Effect.map(
      store.searchAudit({ sid, types: ["session.start", "session.end"], limit: 10 }).pipe(Effect.mapError(unavailable)),
      (events): SessionFacts => {
        const start = events.find((e) => e.type === "session.start")
        const end = events.find((e) => e.type === "session.end")
        return {
          user: field(start, "user") ?? field(end, "user"),
          login: field(start, "login") ?? field(end, "login"),
          server: field(start, "server_hostname") ?? field(start, "server_id") ?? field(end, "server_id"),
          start: start?.time,
          end: end?.time,
          endSha256: field(end, "session_recording_sha256")
        }
      }
    )

  /** Whether `user` may read sessions of others (`all`), only their own (`own`), or none. */
  type Scope = { readonly scope: "all" | "own" } | { readonly scope: "none"; readonly why: string }
  const readScope = (user: string, verb: "list" | "read"): Effect.Effect<Scope, Forbidden> =>
    Effect.flatMap(projector.state, (v) =>
      Option.match(RbacView.userOf(v, user), {
        onNone: () => Effect.fail(new Forbidden({ message: `user ${JSON.stringify(user)} does not exist` })),
        onSome: (u): Effect.Effect<Scope> => {
          const decision = checkRule(RbacView.resolveRoles(v, u.roles), "session", verb)
          if (Either.isRight(decision)) return Effect.succeed({ scope: "all" })
          return Effect.succeed(decision.left.side === "deny" ? { scope: "none", why: decision.left.message } : { scope: "own" })
        }
      })
    )

  const summary = (r: RecordingInfo, f: SessionFacts) => ({
    session_id: r.sessionId,
    ...(f.user === undefined ? {} : { user: f.user }),
    ...(f.login === undefined ? {} : { login: f.login }),
    ...(f.server === undefined ? {} : { server: f.server }),
    ...(f.start === undefined ? {} : { start: f.start }),
    ...(f.end === undefined ? {} : { end: f.end }),
    host_id: r.hostId,
    size: r.size,
    done: r.done,
    ...(r.sha256 === undefined ? {} : { sha256: r.sha256 }),
    ...(f.endSha256 === undefined ? {} : { session_end_sha256: f.endSha256 }),
    created: r.created,
    updated: r.updated
  })

  const handlers: RecordingHandlers = {
    "web.recording_upload": (req) =>
      Effect.gen(function* () {
        if (!SESSION_ID.test(req.session_id)) return yield* new BadParameter({ message: `bad session id ${JSON.stringify(req.session_id)}` })
        if (!base64.test(req.data)) return yield* new BadParameter({ message: "recording data is not base64" })
        const data = Buffer.from(req.data, "base64")
        if (data.length > MAX_UPLOAD_BYTES) {
          return yield* new BadParameter({ message: `a recording upload carries at most ${MAX_UPLOAD_BYTES} bytes, got ${data.length}; send it in parts` })
        }
        const r = yield* recordings
          .upload({ hostId: req.host_id, sessionId: req.session_id, offset: req.offset, data, done: req.done })
          .pipe(
            Effect.catchTags({
              RecordingConflict: (e) => Effect.fail(new CompareFailed({ message: e.message })),
              StoreError: (e) => Effect.fail(unavailable(e))
            })
          )
        if (r.gap) yield* Effect.logWarning(`recording ${req.session_id} from ${req.host_id}: upload at ${req.offset} past the ${r.stored} bytes held; asked to resend`)
        if (req.done && r.done && req.sha256 !== undefined && r.sha256 !== req.sha256) {
          // The bytes held are not the node's file: say so loudly; the chain keeps the node's hash.
          yield* Effect.logError(`recording ${req.session_id}: stored bytes hash to ${r.sha256}, the node's file to ${req.sha256}`)
          return yield* new CompareFailed({ message: `recording ${req.session_id} does not match its SHA-256 (${req.sha256}); auth holds ${r.sha256}` })
        }
        return { stored: r.stored, ...(r.sha256 === undefined ? {} : { sha256: r.sha256 }) }
      }),

    "web.recordings_list": (req) =>
      Effect.gen(function* () {
        const scope = yield* readScope(req.user, "list")
        if (scope.scope === "none") return yield* new Forbidden({ message: scope.why })
        const all = (yield* recordings.list.pipe(Effect.mapError(unavailable))).slice(0, MAX_LISTED)
        const withFacts = yield* Effect.forEach(all, (r) => Effect.map(facts(r.sessionId), (f) => ({ r, f })), { concurrency: 4 })
        return {
          recordings: withFacts.filter(({ f }) => scope.scope === "all" || f.user === req.user).map(({ r, f }) => summary(r, f))
        }
      }),

    "web.recording_get": (req) =>
      Effect.gen(function* () {
        const scope = yield* readScope(req.user, "read")
        if (scope.scope === "none") return yield* new Forbidden({ message: scope.why })
        const notFound = new NotFound({ message: `no recording of session ${req.session_id}; see 'tsh recordings ls'` })
        const info = yield* recordings.info(req.session_id).pipe(Effect.mapError(unavailable))
        if (info === undefined) return yield* notFound
        const f = yield* facts(req.session_id)
        // Someone else's session looks, to a user who may not read it, like no session at all.
        if (scope.scope === "own" && f.user !== req.user) return yield* notFound
        const offset = req.offset ?? 0
        const data = yield* recordings.read(req.session_id, offset, req.limit ?? MAX_READ_BYTES).pipe(Effect.mapError(unavailable))
        return { ...summary(info, f), offset, data: Buffer.from(data).toString("base64") }
      })
  }
  return handlers
}
