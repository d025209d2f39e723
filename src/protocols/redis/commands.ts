/**
 * What the Redis engine decides per command, as pure functions: how a command is audited, whether
 * AUTH/HELLO may go upstream (and in what form), and how many replies a command owes, so the
 * engine knows when the database has answered everything it was sent.
 */
import { decodeText, encodeText } from "../internal/text.ts"
import type { RedisCommand } from "./resp.ts"

// ---------------------------------------------------------------------------------------------
// Audit form

/** Arguments longer than this are cut in the audit log, with their length noted. */
export const AUDIT_ARG_LIMIT = 1024

/** Audited in place of a password. Secrets never reach the audit log. */
export const MASK = "****"

/** One argument as audited: UTF-8 (lossy for binary), cut at 1 KiB with the full length noted. */
export const auditArg = (a: Uint8Array): string =>
  a.length <= AUDIT_ARG_LIMIT ? decodeText(a) : `${decodeText(a.subarray(0, AUDIT_ARG_LIMIT))}...(${a.length} bytes)`

const upper = (a: Uint8Array | undefined): string => (a === undefined ? "" : decodeText(a).toUpperCase())

/**
 * The arguments as audited: passwords of AUTH and of HELLO ... AUTH user pass masked, the rest
 * through `auditArg`.
 */
export const auditArgs = (cmd: RedisCommand): Array<string> => {
  const args = cmd.args.map(auditArg)
  if (cmd.name === "AUTH") {
    // AUTH password | AUTH username password: the last argument is the password.
    if (args.length > 0) args[args.length - 1] = MASK
  } else if (cmd.name === "HELLO") {
    for (let i = 1; i < cmd.args.length; i++) {
      if (upper(cmd.args[i]) === "SETNAME") i++
      else if (upper(cmd.args[i]) === "AUTH") {
        if (i + 2 < args.length) args[i + 2] = MASK
        break
      }
    }
  }
  return args
}

/** Teleport's query text for a command (`cmd.String()`): the name and arguments, space-separated. */
export const queryText = (name: string, args: ReadonlyArray<string>): string => (args.length === 0 ? name : `${name} ${args.join(" ")}`)

// ---------------------------------------------------------------------------------------------
// AUTH and HELLO

/**
 * What to do with a command that could change the user the connection runs as.
 *
 * - `pass`: not about users (or malformed: Redis answers it); forward as is.
 * - `forward`: send `command` upstream in its place (AUTH/HELLO rewritten to the session's user).
 * - `other-user`: the client asks for another database user: refused, after the engine has asked
 *   the roles which rule to name.
 */
export type AuthDecision =
  | { readonly kind: "pass" }
  | { readonly kind: "forward"; readonly command: RedisCommand }
  | { readonly kind: "other-user"; readonly user: string }

/**
 * AUTH and HELLO ... AUTH, for a session that runs as `sessionUser`.
 *
 * The session is authenticated upstream by the agent already (TLS client certificate from the db
 * CA, then `AUTH <db user>`), so a client's AUTH cannot choose the user: `AUTH password` (which
 * means the `default` user in Redis) and `AUTH <session user> password` are rewritten to
 * `AUTH <session user> password` and forwarded, so Redis answers in order; any other user is
 * refused by the engine, after the role check names the rule. Other commands `pass`.
 */
export const authDecision = (cmd: RedisCommand, sessionUser: string): AuthDecision => {
  if (cmd.name === "AUTH") {
    if (cmd.args.length === 0 || cmd.args.length > 2) return { kind: "pass" } // Redis answers the arity/syntax error itself.
    if (cmd.args.length === 2) {
      const user = decodeText(cmd.args[0]!)
      if (user !== sessionUser) return { kind: "other-user", user }
    }
    return { kind: "forward", command: { name: "AUTH", args: [encodeText(sessionUser), cmd.args[cmd.args.length - 1]!] } }
  }
  if (cmd.name === "HELLO") {
    // HELLO [protover [AUTH username password] [SETNAME clientname]]
    const args = cmd.args
    for (let i = 1; i < args.length; i++) {
      const opt = upper(args[i])
      if (opt === "AUTH") {
        // Missing user or password: Redis answers with a syntax error.
        if (i + 2 >= args.length) return { kind: "pass" }
        const user = decodeText(args[i + 1]!)
        if (user !== sessionUser) return { kind: "other-user", user }
        const rewritten = [...args]
        rewritten[i + 1] = encodeText(sessionUser)
        return { kind: "forward", command: { name: "HELLO", args: rewritten } }
      }
      if (opt === "SETNAME") i++
    }
    return { kind: "pass" }
  }
  return { kind: "pass" }
}

// ---------------------------------------------------------------------------------------------
// Replies owed

/** Whether the server sends replies (CLIENT REPLY ON|OFF|SKIP). */
export type ReplyMode = "on" | "off" | "skip"

const SUBSCRIBE = new Set(["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"])

/** True for the commands that enter or leave pub/sub (their confirmations are per channel). */
export const isSubscribeFamily = (name: string): boolean => SUBSCRIBE.has(name)

/**
 * How many replies the server will send for `cmd`, and the reply mode after it. SUBSCRIBE-like
 * commands confirm each channel; an UNSUBSCRIBE without channels confirms each subscription
 * (counted as one: the engine only needs "all answered" to be right outside pub/sub).
 */
export const repliesOwed = (cmd: RedisCommand, mode: ReplyMode): { readonly owed: number; readonly mode: ReplyMode } => {
  if (cmd.name === "CLIENT" && upper(cmd.args[0]) === "REPLY") {
    const m = upper(cmd.args[1])
    if (m === "ON") return { owed: 1, mode: "on" }
    if (m === "OFF") return { owed: 0, mode: "off" }
    if (m === "SKIP") return { owed: 0, mode: mode === "off" ? "off" : "skip" }
  }
  if (mode === "off") return { owed: 0, mode }
  if (mode === "skip") return { owed: 0, mode: "on" }
  if (SUBSCRIBE.has(cmd.name)) return { owed: Math.max(1, cmd.args.length), mode }
  return { owed: 1, mode }
}
