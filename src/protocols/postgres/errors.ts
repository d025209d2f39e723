/**
 * The one place where Remoteler's own refusals become PostgreSQL ErrorResponse
 * bytes (cf. Teleport's `toErrorResponse` in lib/srv/db/postgres). Clients see
 * a normal server error with a SQLSTATE, never a stack trace.
 */
import type { ErrorResponse, NoticeFields } from "./messages.ts"
import type { ProtocolError } from "./parser.ts"
import { serializeBackend } from "./serializer.ts"

/** SQLSTATE codes the engine uses. https://www.postgresql.org/docs/current/errcodes-appendix.html */
export const SqlState = {
  /** Connection refused at authentication (e.g. RBAC denies this db user/db name). */
  InvalidAuthorizationSpecification: "28000",
  InvalidPassword: "28P01",
  /** Statement refused by policy inside an established session. */
  InsufficientPrivilege: "42501",
  ProtocolViolation: "08P01",
  ConnectionFailure: "08006",
  CannotConnectNow: "57P03",
  AdminShutdown: "57P01",
  FeatureNotSupported: "0A000",
  InternalError: "XX000"
} as const

/** ERROR aborts the statement; FATAL ends the session; PANIC is never ours to send. */
export type ErrorSeverity = "ERROR" | "FATAL" | "PANIC"

export interface ErrorResponseInput {
  readonly severity: ErrorSeverity
  /** Five-character SQLSTATE. */
  readonly code: string
  readonly message: string
  readonly detail?: string
  readonly hint?: string
}

/** The ErrorResponse message value; S and V both carry the severity, as PostgreSQL >= 9.6 sends. */
export const errorResponse = (input: ErrorResponseInput): ErrorResponse => {
  const fields: { -readonly [K in keyof NoticeFields]: NoticeFields[K] } = {
    severity: input.severity,
    severityNonLocalized: input.severity,
    code: input.code,
    message: input.message
  }
  if (input.detail !== undefined) fields.detail = input.detail
  if (input.hint !== undefined) fields.hint = input.hint
  return { kind: "errorResponse", fields }
}

/**
 * ErrorResponse bytes, e.g.
 * `toErrorResponse({ severity: "FATAL", code: SqlState.InvalidAuthorizationSpecification, message: "access to db pg-prod as db user postgres denied by role dev (deny.db_users)" })`.
 * NUL bytes would cut a field short on the wire, so they are replaced with U+FFFD.
 */
export const toErrorResponse = (input: ErrorResponseInput): Uint8Array => {
  const clean = (s: string): string => s.replaceAll("\0", "\uFFFD")
  if (!/^[0-9A-Z]{5}$/.test(input.code)) throw new RangeError(`invalid SQLSTATE ${JSON.stringify(input.code)}`)
  return serializeBackend(
    errorResponse({
      severity: input.severity,
      code: input.code,
      message: clean(input.message),
      ...(input.detail !== undefined ? { detail: clean(input.detail) } : {}),
      ...(input.hint !== undefined ? { hint: clean(input.hint) } : {})
    })
  )
}

/** A parser's protocol error as the FATAL 08P01 a PostgreSQL server would send before closing. */
export const protocolErrorResponse = (e: ProtocolError): Uint8Array =>
  toErrorResponse({
    severity: "FATAL",
    code: SqlState.ProtocolViolation,
    message: e.reason === "startup-too-large" ? "invalid length of startup packet" : `protocol violation: ${e.detail}`
  })
