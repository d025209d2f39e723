/**
 * Errors that cross a wire (the auth API over HTTP or the bus), classified as Teleport does
 * (`trace.BadParameter`, `trace.NotFound`, ...) and re-encoded once, at the edge.
 */
import { Schema } from "effect"

export class BadParameter extends Schema.TaggedError<BadParameter>()("BadParameter", {
  message: Schema.String
}) {}

export class NotFound extends Schema.TaggedError<NotFound>()("NotFound", {
  message: Schema.String
}) {}

export class AlreadyExists extends Schema.TaggedError<AlreadyExists>()("AlreadyExists", {
  message: Schema.String
}) {}

/** A write lost a race with another writer (optimistic concurrency); retrying may succeed. */
export class CompareFailed extends Schema.TaggedError<CompareFailed>()("CompareFailed", {
  message: Schema.String
}) {}

export class Forbidden extends Schema.TaggedError<Forbidden>()("Forbidden", {
  message: Schema.String
}) {}

/** The service cannot answer now (store or bus down, projection stopped); the caller may retry. */
export class Unavailable extends Schema.TaggedError<Unavailable>()("Unavailable", {
  message: Schema.String
}) {}

export const ApiError = Schema.Union(BadParameter, NotFound, AlreadyExists, CompareFailed, Forbidden, Unavailable)
export type ApiError = typeof ApiError.Type

export const httpStatusOf = (e: ApiError): number => {
  switch (e._tag) {
    case "BadParameter":
      return 400
    case "Forbidden":
      return 403
    case "NotFound":
      return 404
    case "AlreadyExists":
    case "CompareFailed":
      return 409
    case "Unavailable":
      return 503
  }
}
