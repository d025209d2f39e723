/**
 * Label selectors, matched as Teleport's `services.MatchLabels` does:
 *
 * - an empty or absent selector matches nothing;
 * - `'*': '*'` matches every resource, even one without labels;
 * - otherwise every selector key must be a label of the resource (AND over keys), and the
 *   resource's value must match one of the selector's values (OR over values);
 * - a value `*` matches any value of that key; a value written `^...$` is a regular expression
 *   matched against the whole label value; any other value must be equal.
 *
 * A regular expression that does not compile never matches (and never throws).
 */
import type { Labels, LabelValues } from "./Role.ts"
import { expandValues } from "./Template.ts"
import type { Traits } from "./Role.ts"

export const WILDCARD = "*"

/** A resource's labels: one value per key. */
export type ResourceLabels = Readonly<Record<string, string>>

const valuesOf = (v: LabelValues): ReadonlyArray<string> => (typeof v === "string" ? [v] : v)

const regexCache = new Map<string, RegExp | null>()
const compile = (expr: string): RegExp | null => {
  let re = regexCache.get(expr)
  if (re === undefined) {
    try {
      re = new RegExp(expr)
    } catch {
      re = null
    }
    // Selectors come from roles, so the set is small; the bound only guards against misuse.
    if (regexCache.size > 10_000) regexCache.clear()
    regexCache.set(expr, re)
  }
  return re
}

/** Does one selector value match a label value? */
export const matchValue = (selectorValue: string, value: string): boolean => {
  if (selectorValue === WILDCARD) return true
  if (selectorValue.length >= 2 && selectorValue.startsWith("^") && selectorValue.endsWith("$")) {
    const re = compile(selectorValue)
    return re !== null && re.test(value)
  }
  return selectorValue === value
}

const own = (o: object, key: string): boolean => Object.prototype.hasOwnProperty.call(o, key)

/** Does the selector match a resource with these labels? */
export const matchLabels = (selector: Labels | undefined, labels: ResourceLabels): boolean => {
  if (selector === undefined) return false
  const keys = Object.keys(selector)
  if (keys.length === 0) return false
  if (own(selector, WILDCARD)) {
    const all = valuesOf(selector[WILDCARD]!)
    if (all.length === 1 && all[0] === WILDCARD) return true
  }
  return keys.every((key) => {
    if (!own(labels, key)) return false
    const value = labels[key]!
    return valuesOf(selector[key]!).some((s) => matchValue(s, value))
  })
}

/**
 * Expands trait templates in a selector's values (`env: '{{external.env}}'`), as Teleport does
 * when it applies traits to a role. Keys are taken literally. A key whose values all expand to
 * nothing keeps an empty list, so it matches no resource (it never widens the selector).
 */
export const expandSelector = (selector: Labels | undefined, traits: Traits): Labels | undefined => {
  if (selector === undefined) return undefined
  const out: Record<string, ReadonlyArray<string>> = {}
  for (const key of Object.keys(selector)) out[key] = expandValues(valuesOf(selector[key]!), traits)
  return out
}
