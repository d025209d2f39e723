/**
 * Roles as YAML files, the way `tctl create role.yaml` reads them: one role per YAML document,
 * Teleport's `kind: role` / `version: v7` shape, unknown fields rejected.
 *
 * Errors point at the source: every issue names its 1-based line and the field path
 * (`line 7: spec.allow.db_users: expected an array of strings`), using the positions the `yaml`
 * parser keeps, so an operator can fix a file without guessing.
 */
import type { SchemaAST } from "effect"
import { Either, ParseResult, Schema } from "effect"
import type { Document } from "yaml"
import { isMap, isPair, isScalar, isSeq, LineCounter, parseAllDocuments, stringify } from "yaml"
import { Role } from "./Role.ts"

/** One problem in a role file. `path` is `spec.allow.rules[0].verbs[1]`, or "" for the document. */
export const RoleIssue = Schema.Struct({
  line: Schema.Int,
  path: Schema.String,
  message: Schema.String
})
export type RoleIssue = typeof RoleIssue.Type

/** A role file that does not parse or does not decode; `message` lists every issue, one a line. */
export class RoleParseError extends Schema.TaggedError<RoleParseError>()("RoleParseError", {
  message: Schema.String,
  issues: Schema.Array(RoleIssue)
}) {}

const formatIssue = (i: RoleIssue): string => `line ${i.line}: ${i.path === "" ? "" : `${i.path}: `}${i.message}`

const errorOf = (issues: ReadonlyArray<RoleIssue>): RoleParseError => {
  const sorted = [...issues].sort((a, b) => a.line - b.line)
  return new RoleParseError({ message: sorted.map(formatIssue).join("\n"), issues: sorted })
}

// ---------------------------------------------------------------------------------------------
// Source positions

type PathKey = string | number

const renderPath = (path: ReadonlyArray<PathKey>): string =>
  path.reduce<string>((acc, k) => (typeof k === "number" ? `${acc}[${k}]` : acc === "" ? k : `${acc}.${k}`), "")

const rangeStart = (node: unknown): number | undefined => {
  const range = (node as { range?: readonly [number, number, number] } | null)?.range
  return range?.[0]
}

/**
 * The offset that best names `path`: the key of the deepest mapping entry on the path (so an
 * error about `db_users:` points at that line even when its list starts below), or the element
 * of a sequence; where the path leaves the document (a missing field) its deepest existing node.
 */
const offsetOf = (doc: Document, path: ReadonlyArray<PathKey>): number => {
  let node: unknown = doc.contents
  let offset = rangeStart(node) ?? 0
  for (const key of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && String(isScalar(p.key) ? p.key.value : p.key) === String(key))
      if (pair === undefined) break
      offset = rangeStart(pair.key) ?? offset
      node = pair.value
    } else if (isSeq(node) && typeof key === "number") {
      const item = node.items[key]
      if (item === undefined) break
      offset = rangeStart(item) ?? offset
      node = item
    } else break
  }
  return offset
}

const lineAt = (lc: LineCounter, offset: number): number => Math.max(1, lc.linePos(offset).line)

// ---------------------------------------------------------------------------------------------
// Schema issues, rewritten in the words of the file

const isUndefined = (ast: SchemaAST.AST): boolean => ast._tag === "UndefinedKeyword"

const describe = (ast: SchemaAST.AST): string => {
  switch (ast._tag) {
    case "Union": {
      const members = ast.types.filter((t) => !isUndefined(t))
      if (members.length > 1 && members.every((m) => m._tag === "Literal")) {
        return `one of ${members.map((m) => JSON.stringify((m as SchemaAST.Literal).literal)).join(", ")}`
      }
      return members.map(describe).join(" or ")
    }
    case "Literal":
      return JSON.stringify(ast.literal)
    case "StringKeyword":
      return "a string"
    case "NumberKeyword":
      return "a number"
    case "BooleanKeyword":
      return "true or false"
    case "UndefinedKeyword":
      return "nothing"
    case "TupleType":
      return ast.rest[0] === undefined ? "an empty array" : `an array of ${plural(ast.rest[0].type)}`
    case "Refinement":
      return describe(ast.from)
    case "Transformation":
      return describe(ast.from)
    case "TypeLiteral":
    case "Declaration":
      return "a mapping"
    default:
      return "a different value"
  }
}

const plural = (ast: SchemaAST.AST): string => {
  switch (ast._tag) {
    case "StringKeyword":
      return "strings"
    case "Refinement":
    case "Transformation":
      return plural(ast.from)
    case "Union":
      return `values, each ${describe(ast)}`
    case "TypeLiteral":
    case "Declaration":
      return "mappings"
    default:
      return "values"
  }
}

/** The message a refinement declares (`expected a duration such as 8h`), else the formatter's. */
const refinementMessage = (issue: ParseResult.Refinement): string => {
  const formatted = ParseResult.ArrayFormatter.formatIssueSync(issue)[0]?.message
  return formatted ?? `expected ${describe(issue.ast)}`
}

interface Found {
  readonly path: ReadonlyArray<PathKey>
  readonly message: string
}

const collect = (issue: ParseResult.ParseIssue, path: ReadonlyArray<PathKey>, out: Array<Found>): void => {
  switch (issue._tag) {
    case "Pointer": {
      const keys = (Array.isArray(issue.path) ? issue.path : [issue.path]) as ReadonlyArray<PropertyKey>
      collect(issue.issue, [...path, ...keys.map((k) => (typeof k === "symbol" ? String(k) : k))], out)
      return
    }
    case "Unexpected":
      out.push({ path, message: "unknown field" })
      return
    case "Missing":
      out.push({ path, message: "missing required field" })
      return
    case "Forbidden":
      out.push({ path, message: "not allowed here" })
      return
    case "Type":
      out.push({ path, message: `expected ${describe(issue.ast)}` })
      return
    case "Refinement":
      if (issue.kind === "From") collect(issue.issue, path, out)
      else out.push({ path, message: refinementMessage(issue) })
      return
    case "Transformation":
      collect(issue.issue, path, out)
      return
    case "Composite": {
      const subs = Array.isArray(issue.issues) ? issue.issues : [issue.issues as ParseResult.ParseIssue]
      if (issue.ast._tag === "Union") {
        // `Schema.optional` is a union with undefined: report the one real alternative in depth,
        // and otherwise say what the union accepts, not one line per member.
        const real = subs.filter((s) => !(s._tag === "Type" && isUndefined(s.ast)))
        if (real.length === 1 && real[0]!._tag !== "Type") collect(real[0]!, path, out)
        else out.push({ path, message: `expected ${describe(issue.ast)}` })
        return
      }
      for (const s of subs) collect(s, path, out)
      return
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding one document

const decodeRole = Schema.decodeUnknownEither(Role, { onExcessProperty: "error", errors: "all" })

const decodeDocument = (doc: Document, lc: LineCounter): Either.Either<Role, RoleParseError> => {
  const at = (path: ReadonlyArray<PathKey>, message: string): RoleIssue => ({
    line: lineAt(lc, offsetOf(doc, path)),
    path: renderPath(path),
    message
  })
  if (doc.errors.length > 0) {
    return Either.left(
      errorOf(
        doc.errors.map((e) => ({
          line: e.linePos?.[0].line ?? lineAt(lc, e.pos[0]),
          path: "",
          // The yaml parser's message ends with a source excerpt; the line number replaces it.
          message: `YAML syntax error: ${e.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "")}`
        }))
      )
    )
  }
  let value: unknown
  try {
    value = doc.toJS({ maxAliasCount: 100 })
  } catch (e) {
    return Either.left(errorOf([at([], `YAML error: ${e instanceof Error ? e.message : String(e)}`)]))
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return Either.left(errorOf([at([], "expected a mapping with kind, version, metadata and spec")]))
  }
  const record = value as Record<string, unknown>
  // Say plainly what is wrong with kind and version before the schema lists every other field.
  if (record["kind"] !== "role") {
    return Either.left(
      errorOf([at(["kind"], `expected kind role, got ${record["kind"] === undefined ? "none" : String(record["kind"])}`)])
    )
  }
  if (record["version"] !== "v7") {
    const v = record["version"]
    const message =
      v === undefined
        ? "missing required field: only version v7 is supported"
        : `unsupported role version ${typeof v === "string" ? v : JSON.stringify(v)}: only v7 is supported`
    return Either.left(errorOf([at(["version"], message)]))
  }
  const decoded = decodeRole(value)
  if (Either.isLeft(decoded)) {
    const found: Array<Found> = []
    collect(decoded.left.issue, [], found)
    return Either.left(errorOf(found.map((f) => at(f.path, f.message))))
  }
  const role = decoded.right
  // Teleport refuses a wildcard login on the allow side: it would let a user pick any login, root included.
  const logins = role.spec.allow?.logins ?? []
  const wild = logins.indexOf("*")
  if (wild >= 0) {
    return Either.left(errorOf([at(["spec", "allow", "logins", wild], "a wildcard (*) is not allowed in allow logins")]))
  }
  return Either.right(role)
}

// ---------------------------------------------------------------------------------------------
// Public API

/** Parses every role in a YAML stream (documents separated by `---`); empty documents are skipped. */
export const parseRoles = (text: string): Either.Either<ReadonlyArray<Role>, RoleParseError> => {
  const lc = new LineCounter()
  const docs = parseAllDocuments(text, { lineCounter: lc, prettyErrors: true, uniqueKeys: true })
  if (!Array.isArray(docs)) return Either.right([])
  const roles: Array<Role> = []
  const issues: Array<RoleIssue> = []
  for (const doc of docs) {
    if (doc.errors.length === 0 && (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null))) {
      continue
    }
    const r = decodeDocument(doc, lc)
    if (Either.isLeft(r)) issues.push(...r.left.issues)
    else roles.push(r.right)
  }
  return issues.length > 0 ? Either.left(errorOf(issues)) : Either.right(roles)
}

/** Parses a file that holds exactly one role. */
export const parseRole = (text: string): Either.Either<Role, RoleParseError> =>
  Either.flatMap(parseRoles(text), (roles) =>
    roles.length === 1
      ? Either.right(roles[0]!)
      : Either.left(
          errorOf([{ line: 1, path: "", message: `expected exactly one role document, found ${roles.length}` }])
        )
  )

/** Renders a role as a YAML document (fields in Teleport's order: kind, version, metadata, spec). */
export const renderRole = (role: Role): string => stringify(Schema.encodeSync(Role)(role))

/** Renders several roles as one YAML stream, a `---` between documents. */
export const renderRoles = (roles: ReadonlyArray<Role>): string => roles.map(renderRole).join("---\n")
