/**
 * Trait templates in role values, as Teleport writes them: `{{internal.logins}}`,
 * `{{external.groups}}`, `{{external["full name"]}}`, with an optional literal prefix and suffix
 * around the one template (`db-{{internal.db_users}}-ro`).
 *
 * Following Teleport's `lib/utils/parse`: a value without braces is a literal; a value with braces
 * that does not parse, or names a trait the user does not have, expands to nothing, so a broken
 * template can never widen access. Teleport's functions (`email.local`, `regexp.replace`) are not
 * supported and are treated as unparsable.
 */
import type { Traits } from "./Role.ts"

/** `internal.X` names trait key X, for these X only (Teleport rejects other internal names). */
export const INTERNAL_TRAITS: ReadonlyArray<string> = ["logins", "db_users", "db_names"]

/** A parsed role value. */
export type Template =
  | { readonly _tag: "Literal"; readonly value: string }
  | {
      readonly _tag: "Variable"
      readonly namespace: "internal" | "external"
      readonly name: string
      readonly prefix: string
      readonly suffix: string
    }
  | { readonly _tag: "Invalid"; readonly value: string; readonly reason: string }

// Teleport's reVariable: a prefix and suffix without braces around exactly one `{{...}}`.
const VARIABLE = /^([^{}]*)\{\{([^{}]+)\}\}([^{}]*)$/
// `internal.logins`, `external.name`, `external["any name"]`, with spaces allowed around.
const EXPRESSION = /^\s*(internal|external)\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*"((?:[^"\\]|\\.)*)"\s*\])\s*$/

/** Parses one role value into a literal, a trait variable, or an invalid template. */
export const parseTemplate = (value: string): Template => {
  if (!value.includes("{{") && !value.includes("}}")) return { _tag: "Literal", value }
  const v = VARIABLE.exec(value)
  if (v === null) return { _tag: "Invalid", value, reason: "expected one {{namespace.name}} with an optional prefix and suffix" }
  const e = EXPRESSION.exec(v[2]!)
  if (e === null) return { _tag: "Invalid", value, reason: "expected internal.NAME, external.NAME or external[\"NAME\"]" }
  const namespace = e[1] as "internal" | "external"
  const name = e[2] ?? unescapeQuoted(e[3]!)
  if (namespace === "internal" && !INTERNAL_TRAITS.includes(name)) {
    return { _tag: "Invalid", value, reason: `unknown internal trait ${name}` }
  }
  return { _tag: "Variable", namespace, name, prefix: v[1]!, suffix: v[3]! }
}

const unescapeQuoted = (s: string): string => s.replace(/\\(.)/g, "$1")

/** Expands one value: a literal to itself, a variable to prefix+v+suffix per non-empty trait value. */
export const expandValue = (value: string, traits: Traits): ReadonlyArray<string> => {
  const t = parseTemplate(value)
  switch (t._tag) {
    case "Literal":
      return [t.value]
    case "Invalid":
      return []
    case "Variable": {
      // Own-property lookup only: a trait named `constructor` must not reach Object.prototype.
      const values = Object.prototype.hasOwnProperty.call(traits, t.name) ? traits[t.name] ?? [] : []
      // Teleport skips empty trait values, so `{{external.x}}` never yields "" (or a bare prefix).
      return values.filter((v) => v.length > 0).map((v) => t.prefix + v + t.suffix)
    }
  }
}

/** Expands every value and removes duplicates, keeping first-seen order. */
export const expandValues = (values: ReadonlyArray<string> | undefined, traits: Traits): Array<string> => {
  const out = new Set<string>()
  for (const value of values ?? []) for (const v of expandValue(value, traits)) out.add(v)
  return [...out]
}
