/**
 * The NATS bus (cluster mode). Core NATS for publish/subscribe/request, JetStream for
 * `publishDurable` into the `REMOTELER_EVENTS` stream (created at layer build when missing), with
 * the outbox's event id as `Nats-Msg-Id` so the server drops duplicates.
 */
import { readFile } from "node:fs/promises"
import type { JetStreamClient, StreamConfig } from "@nats-io/jetstream"
import { JetStreamApiError, jetstream, jetstreamManager } from "@nats-io/jetstream"
import type { Authenticator, Msg, MsgHdrs, NatsConnection } from "@nats-io/nats-core"
import { errors, headers as natsHeaders, nanos, nkeyAuthenticator } from "@nats-io/nats-core"
import { connect } from "@nats-io/transport-node"
import { Effect, Layer, Option, Queue, Redacted, Stream, Take } from "effect"
import type { BusMessage, BusShape } from "./Bus.ts"
import { Bus, BusError, isValidSubject } from "./Bus.ts"

export interface NatsOptions {
  /** `nats://host:port`, possibly `nats://user:pass@host:port`; several may be comma-separated. */
  readonly url: string
  readonly user?: string
  readonly pass?: Redacted.Redacted<string>
  readonly token?: Redacted.Redacted<string>
  /** A file holding an nkey user seed (`SU...`). */
  readonly nkeySeedFile?: string
  readonly tls?: { readonly caFile?: string; readonly certFile?: string; readonly keyFile?: string }
  /** Client name shown by the server's monitoring. */
  readonly name?: string
  /** Default `REMOTELER_EVENTS`. */
  readonly streamName?: string
  /** Default `["remoteler.*.events.>"]`. */
  readonly streamSubjects?: ReadonlyArray<string>
  /** Stream retention; unlimited when absent. */
  readonly maxAgeMs?: number
  readonly maxBytes?: number
  /** `-1` (the default) retries forever. */
  readonly maxReconnectAttempts?: number
  /** Default 2000 ms (the client's default). */
  readonly reconnectTimeWaitMs?: number
  /**
   * Create the event stream at layer build when missing (default true). Off for clients whose
   * user has no JetStream API permission (a read-only SIEM account); `publishDurable` then needs the
   * stream to exist already.
   */
  readonly ensureStream?: boolean
  /** Timeout of JetStream API calls and publish acks; default 5000 ms. */
  readonly jetStreamTimeoutMs?: number
}

export const DEFAULT_STREAM_NAME = "REMOTELER_EVENTS"
export const DEFAULT_STREAM_SUBJECTS: ReadonlyArray<string> = ["remoteler.*.events.>"]
/** JetStream's default duplicate window, stated so the memory layer and NATS agree. */
const DUPLICATE_WINDOW_MS = 2 * 60 * 1000
const MSG_ID_HEADER = "Nats-Msg-Id"

/**
 * Splits credentials out of a `nats://user:pass@host:port` URL (or a `nats://token@host` one), so
 * they are held `Redacted` and the URL that remains is safe to log.
 */
export const parseNatsUrl = (url: string): NatsOptions => {
  let user: string | undefined
  let pass: string | undefined
  let token: string | undefined
  const servers = url.split(",").map((raw) => {
    const s = raw.trim()
    const withScheme = s.includes("://") ? s : `nats://${s}`
    const u = new URL(withScheme)
    if (u.username !== "" && u.password !== "") {
      user = decodeURIComponent(u.username)
      pass = decodeURIComponent(u.password)
    } else if (u.username !== "") {
      token = decodeURIComponent(u.username)
    }
    return `${u.protocol}//${u.host}`
  })
  return {
    url: servers.join(","),
    ...(user !== undefined ? { user } : {}),
    ...(pass !== undefined ? { pass: Redacted.make(pass) } : {}),
    ...(token !== undefined ? { token: Redacted.make(token) } : {})
  }
}

/** Classifies an error from the NATS client. */
export const toBusError = (what: string, cause: unknown): BusError => {
  const text = cause instanceof Error ? cause.message : String(cause)
  const reason = classify(cause)
  return new BusError({ reason, message: `${what}: ${text}`, cause })
}

const classify = (cause: unknown): BusError["reason"] => {
  if (cause instanceof errors.RequestError) {
    if (cause.isNoResponders()) return "NoResponders"
    if (cause.cause instanceof errors.TimeoutError) return "Timeout"
    return classify(cause.cause)
  }
  if (cause instanceof errors.NoRespondersError) return "NoResponders"
  if (cause instanceof errors.TimeoutError) return "Timeout"
  if (cause instanceof errors.InvalidSubjectError) return "BadSubject"
  if (
    cause instanceof errors.ConnectionError ||
    cause instanceof errors.ClosedConnectionError ||
    cause instanceof errors.DrainingConnectionError ||
    cause instanceof errors.AuthorizationError ||
    cause instanceof errors.UserAuthenticationExpiredError
  ) {
    return "Unavailable"
  }
  if (cause instanceof Error && cause.cause !== undefined && cause.cause !== cause) return classify(cause.cause)
  if (cause instanceof Error && "code" in cause) {
    const code = (cause as { code?: unknown }).code
    if (code === "ECONNREFUSED" || code === "ECONNRESET" || code === "ENOTFOUND") return "Unavailable"
  }
  return "Unknown"
}

const badSubject = (subject: string) =>
  new BusError({ reason: "BadSubject", message: `invalid subject ${JSON.stringify(subject)}` })

const checkSubject = (subject: string, allowWildcards: boolean) =>
  isValidSubject(subject, allowWildcards) ? Effect.void : Effect.fail(badSubject(subject))

const toHeaders = (h: Readonly<Record<string, string>> | undefined): MsgHdrs | undefined => {
  if (h === undefined) return undefined
  const out = natsHeaders()
  for (const [k, v] of Object.entries(h)) out.set(k, v)
  return out
}

const fromMsg = (m: Msg): BusMessage => {
  let hdrs: Record<string, string> | undefined
  if (m.headers) {
    hdrs = {}
    for (const k of m.headers.keys()) hdrs[k] = m.headers.get(k)
  }
  return {
    subject: m.subject,
    data: m.data,
    ...(m.reply ? { replyTo: m.reply } : {}),
    ...(hdrs ? { headers: hdrs } : {})
  }
}

const authenticators = (options: NatsOptions) =>
  Effect.gen(function* () {
    if (options.nkeySeedFile === undefined) return [] as Array<Authenticator>
    const file = options.nkeySeedFile
    const text = yield* Effect.tryPromise({
      try: () => readFile(file, "utf8"),
      catch: (cause) => new BusError({ reason: "Unavailable", message: `cannot read nkey seed file ${file}`, cause })
    })
    // A creds-style file may hold comments; the seed is the line that starts with `SU`.
    const seed = text.split(/\r?\n/).map((l) => l.trim()).find((l) => l.startsWith("SU"))
    if (seed === undefined) {
      return yield* Effect.fail(new BusError({ reason: "Unavailable", message: `no user nkey seed in ${file}` }))
    }
    return [nkeyAuthenticator(new TextEncoder().encode(seed))]
  })

const STREAM_NOT_FOUND = 10059

const ensureStream = async (
  nc: NatsConnection,
  config: Partial<StreamConfig> & { name: string },
  timeout: number
): Promise<void> => {
  const jsm = await jetstreamManager(nc, { timeout })
  try {
    await jsm.streams.info(config.name)
  } catch (err) {
    if (!(err instanceof JetStreamApiError && err.code === STREAM_NOT_FOUND)) throw err
    await jsm.streams.add(config)
  }
}

/**
 * Remembers recent `Nats-Msg-Id`s, bounded in count and age like JetStream's duplicate window.
 * JetStream drops a repeated id from the stream, but core subscribers still see every PUB, so each
 * subscription drops repeats itself.
 */
const recentIds = (maxIds: number, windowMs: number) => {
  const seen = new Map<string, number>()
  return (id: string, now: number): boolean => {
    for (const [k, at] of seen) {
      if (seen.size <= maxIds && now - at < windowMs) break
      seen.delete(k)
    }
    if (seen.has(id)) return true
    seen.set(id, now)
    return false
  }
}

/** Connects and ensures the event stream exists; drains the connection when the scope closes. */
export const make = (options: NatsOptions) =>
  Effect.gen(function* () {
    const fromUrl = parseNatsUrl(options.url)
    const user = options.user ?? fromUrl.user
    const pass = options.pass ?? fromUrl.pass
    const token = options.token ?? fromUrl.token
    const auth = yield* authenticators(options)
    const jsTimeout = options.jetStreamTimeoutMs ?? 5_000
    // `fromUrl.url` carries no credentials, so it is safe in messages.
    const where = fromUrl.url

    const nc: NatsConnection = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () =>
          connect({
            servers: where.split(","),
            ...(user !== undefined ? { user } : {}),
            ...(pass !== undefined ? { pass: Redacted.value(pass) } : {}),
            ...(token !== undefined ? { token: Redacted.value(token) } : {}),
            ...(auth.length > 0 ? { authenticator: auth } : {}),
            ...(options.tls ? { tls: { ...options.tls } } : {}),
            ...(options.name !== undefined ? { name: options.name } : {}),
            maxReconnectAttempts: options.maxReconnectAttempts ?? -1,
            reconnectTimeWait: options.reconnectTimeWaitMs ?? 2_000
          }),
        catch: (cause) => toBusError(`cannot connect to NATS at ${where}`, cause)
      }).pipe(
        // A refused or unauthorized first connection is the server being unavailable to us.
        Effect.mapError((e) =>
          e.reason === "Unknown" ? new BusError({ reason: "Unavailable", message: e.message, cause: e.cause }) : e
        )
      ),
      (nc) =>
        Effect.promise(() => nc.drain().catch(() => undefined)).pipe(
          Effect.timeout("5 seconds"),
          Effect.ignore,
          Effect.andThen(Effect.promise(() => nc.close().catch(() => undefined)))
        )
    )

    const streamName = options.streamName ?? DEFAULT_STREAM_NAME
    if (options.ensureStream ?? true) {
      const config: Partial<StreamConfig> & { name: string } = {
        name: streamName,
        subjects: [...(options.streamSubjects ?? DEFAULT_STREAM_SUBJECTS)],
        duplicate_window: nanos(DUPLICATE_WINDOW_MS),
        ...(options.maxAgeMs !== undefined ? { max_age: nanos(options.maxAgeMs) } : {}),
        ...(options.maxBytes !== undefined ? { max_bytes: options.maxBytes } : {})
      }
      yield* Effect.tryPromise({
        try: () => ensureStream(nc, config, jsTimeout),
        catch: (cause) => toBusError(`cannot ensure JetStream stream ${streamName}`, cause)
      })
    }
    const js: JetStreamClient = jetstream(nc, { timeout: jsTimeout })

    const publish: BusShape["publish"] = (subject, data, headers) =>
      checkSubject(subject, false).pipe(
        Effect.andThen(
          Effect.try({
            try: () => {
              const h = toHeaders(headers)
              nc.publish(subject, data, h ? { headers: h } : undefined)
            },
            catch: (cause) => toBusError(`publish to ${subject}`, cause)
          })
        )
      )

    const subscribe: BusShape["subscribe"] = (subject, subOptions) =>
      Effect.gen(function* () {
        yield* checkSubject(subject, true)
        const queue = subOptions?.queue
        if (queue !== undefined && (queue.length === 0 || /\s/.test(queue))) {
          return yield* Effect.fail(
            new BusError({ reason: "BadSubject", message: `invalid queue group ${JSON.stringify(queue)}` })
          )
        }
        const mailbox = yield* Queue.unbounded<Take.Take<BusMessage, BusError>>()
        const seenBefore = recentIds(100_000, DUPLICATE_WINDOW_MS)
        const failed = (cause: Error): void =>
          void mailbox.unsafeOffer(
            Take.fail(
              cause instanceof errors.PermissionViolationError
                ? new BusError({ reason: "Unknown", message: `subscribe to ${subject}: ${cause.message}`, cause })
                : toBusError(`subscription to ${subject}`, cause)
            )
          )
        const sub = yield* Effect.acquireRelease(
          Effect.try({
            try: () =>
              nc.subscribe(subject, {
                ...(queue !== undefined ? { queue } : {}),
                callback: (err, msg) => {
                  if (err) return failed(err)
                  const id = msg.headers?.get(MSG_ID_HEADER)
                  if (id && seenBefore(id, Date.now())) return
                  mailbox.unsafeOffer(Take.of(fromMsg(msg)))
                }
              }),
            catch: (cause) => toBusError(`subscribe to ${subject}`, cause)
          }),
          (sub) =>
            Effect.sync(() => {
              try {
                if (!sub.isClosed() && !nc.isClosed()) sub.unsubscribe()
              } catch {
                // Already gone with the connection.
              }
            }).pipe(Effect.andThen(Queue.shutdown(mailbox)))
        )
        // Closed by the server (e.g. a permission violation) or with the connection: end the stream.
        void sub.closed.then((err) => {
          if (err instanceof Error) failed(err)
          mailbox.unsafeOffer(Take.end)
        })
        // One round trip: once the server answered the PING, it has registered the SUB, so a
        // publish from any connection after this effect completes is delivered.
        yield* Effect.tryPromise({
          try: () => nc.flush(),
          catch: (cause) => toBusError(`subscribe to ${subject}`, cause)
        }).pipe(Effect.timeout("5 seconds"), Effect.ignore)
        return Stream.fromQueue(mailbox).pipe(Stream.flattenTake)
      })

    const request: BusShape["request"] = (subject, data, timeoutMs, headers) =>
      checkSubject(subject, false).pipe(
        Effect.andThen(
          Effect.tryPromise({
            try: () => {
              const h = toHeaders(headers)
              return nc.request(subject, data, { timeout: timeoutMs, ...(h ? { headers: h } : {}) })
            },
            catch: (cause) => toBusError(`request on ${subject}`, cause)
          })
        ),
        Effect.map(fromMsg)
      )

    const reply: BusShape["reply"] = (msg, data, headers) =>
      msg.replyTo === undefined
        ? Effect.fail(new BusError({ reason: "BadSubject", message: `message on ${msg.subject} has no reply subject` }))
        : publish(msg.replyTo, data, headers)

    const publishDurable: BusShape["publishDurable"] = (subject, data, msgId) =>
      checkSubject(subject, false).pipe(
        Effect.andThen(
          Effect.tryPromise({
            try: () => js.publish(subject, data, { msgID: msgId, timeout: jsTimeout }),
            catch: (cause) => toBusError(`durable publish to ${subject}`, cause)
          })
        ),
        Effect.asVoid
      )

    return Bus.of({ publish, subscribe, request, reply, publishDurable })
  })

/** The NATS bus; fails with `Unavailable` when the first connection cannot be made. */
export const layer = (options: NatsOptions): Layer.Layer<Bus, BusError> => Layer.scoped(Bus, make(options))

/** The NATS bus from a URL alone, credentials (if any) inside it. */
export const layerFromUrl = (url: string): Layer.Layer<Bus, BusError> => layer(parseNatsUrl(url))

/** `Some` of the user in the options or URL, for log lines that must not show a password. */
export const describeTarget = (options: NatsOptions): string => {
  const parsed = parseNatsUrl(options.url)
  const user = Option.fromNullable(options.user ?? parsed.user)
  return Option.match(user, { onNone: () => parsed.url, onSome: (u) => `${u}@${parsed.url}` })
}
