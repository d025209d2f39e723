/**
 * Decoding YAML text with a Schema, with errors that name the line and the key path, so that a user
 * can go straight to the mistake: `remoteler.yaml: line 4: auth_service.listen_adr: unknown key`.
 */
import { Data, Either, ParseResult, Schema } from "effect"
import { isMap, isScalar, LineCounter, parseAllDocuments, type Document } from "yaml"

export class YamlDecodeError extends Data.TaggedError("YamlDecodeError")<{
  readonly source: string
  readonly line: number | undefined
  readonly path: string
  readonly reason: string
}> {
  override get message() {
    const where = this.line === undefined ? "" : `line ${this.line}: `
    const path = this.path === "" ? "" : `${this.path}: `
    return `${this.source}: ${where}${path}${this.reason}`
  }
}

type PathKey = PropertyKey

const lineAt = (lc: LineCounter, offset: number | undefined) =>
  offset === undefined ? undefined : lc.linePos(offset).line

/** The line of the node at `path`, or of the key itself when the key is the problem (unknown key). */
const lineOf = (doc: Document, lc: LineCounter, path: ReadonlyArray<PathKey>, keyItself: boolean) => {
  let node: unknown = doc.contents
  let line = lineAt(lc, (doc.contents as { range?: [number] } | null)?.range?.[0])
  for (let i = 0; i < path.length; i++) {
    const key = path[i]
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(key))
      if (pair === undefined) break
      const keyLine = lineAt(lc, (pair.key as { range?: [number] }).range?.[0])
      if (i === path.length - 1 && keyItself) return keyLine
      node = pair.value
      line = lineAt(lc, (pair.value as { range?: [number] } | null)?.range?.[0]) ?? keyLine
    } else if (node !== null && typeof node === "object" && "items" in node && typeof key === "number") {
      node = (node as { items: Array<unknown> }).items[key]
      line = lineAt(lc, (node as { range?: [number] } | null)?.range?.[0]) ?? line
    } else break
  }
  return line
}

const formatPath = (path: ReadonlyArray<PathKey>) =>
  path.map((k, i) => (typeof k === "number" ? `[${k}]` : i === 0 ? String(k) : `.${String(k)}`)).join("")

/**
 * Parses every YAML document in `text` and decodes each with `schema`, rejecting unknown keys.
 * An empty file decodes as `{}`.
 */
export const decodeYamlDocuments = <A, I>(
  schema: Schema.Schema<A, I>,
  text: string,
  source: string
): Either.Either<ReadonlyArray<A>, YamlDecodeError> => {
  const lc = new LineCounter()
  const docs = parseAllDocuments(text, { lineCounter: lc, prettyErrors: false })
  if (!Array.isArray(docs)) return Either.right([])
  const out: Array<A> = []
  for (const doc of docs) {
    const err = doc.errors[0]
    if (err !== undefined) {
      return Either.left(
        new YamlDecodeError({ source, line: lineAt(lc, err.pos[0]), path: "", reason: err.message.split("\n")[0] ?? err.message })
      )
    }
    const value = doc.toJS({ maxAliasCount: 50 }) ?? {}
    const decoded = Schema.decodeUnknownEither(schema, { onExcessProperty: "error", errors: "first" })(value)
    if (Either.isLeft(decoded)) {
      const issues = ParseResult.ArrayFormatter.formatErrorSync(decoded.left)
      const first = issues[0]
      const path = first?.path ?? []
      const unknownKey = first?._tag === "Unexpected"
      const reason = unknownKey ? "unknown key" : (first?.message ?? "invalid value")
      return Either.left(
        new YamlDecodeError({ source, line: lineOf(doc, lc, path, unknownKey), path: formatPath(path), reason })
      )
    }
    out.push(decoded.right)
  }
  return Either.right(out)
}

/** Like `decodeYamlDocuments`, for a file that must hold exactly one document. */
export const decodeYaml = <A, I>(
  schema: Schema.Schema<A, I>,
  text: string,
  source: string
): Either.Either<A, YamlDecodeError> =>
  Either.flatMap(decodeYamlDocuments(schema, text, source), (docs) =>
    docs.length === 1 && docs[0] !== undefined
      ? Either.right(docs[0])
      : docs.length === 0
        ? Schema.decodeUnknownEither(schema)({}).pipe(
            Either.mapLeft(() => new YamlDecodeError({ source, line: undefined, path: "", reason: "the file is empty" }))
          )
        : Either.left(new YamlDecodeError({ source, line: undefined, path: "", reason: "expected one YAML document" }))
  )
