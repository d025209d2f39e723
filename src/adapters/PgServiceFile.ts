/**
 * libpq's connection service file (`~/.pg_service.conf`, or `$PGSERVICEFILE`), where `tsh db login`
 * keeps one `[<cluster>-<db>]` section per database so that `psql "service=<cluster>-<db>"` works.
 *
 * The format is libpq's: `[name]` lines open a section, `key=value` lines fill it, `#` starts a
 * comment. We rewrite only our own section and keep every other line byte for byte, so a file the
 * user maintains by hand survives any number of logins and logouts.
 */
import * as os from "node:os"
import * as path from "node:path"
import { readIfExists, updateFile } from "./internal/optionFile.ts"

/** `$PGSERVICEFILE`, else `$HOME/.pg_service.conf` (libpq's own rule). */
export const defaultPath = (env: NodeJS.ProcessEnv = process.env): string => {
  const file = env["PGSERVICEFILE"]
  if (file !== undefined && file !== "") return file
  const home = env["HOME"] !== undefined && env["HOME"] !== "" ? env["HOME"] : os.homedir()
  return path.join(home, ".pg_service.conf")
}

/** The keys of one section, in the order they are written. */
export type Entries = ReadonlyArray<readonly [key: string, value: string]>

export interface Section {
  readonly name: string
  readonly entries: Readonly<Record<string, string>>
}

const headerOf = (line: string): string | undefined => {
  const m = /^\s*\[([^\]]*)\]\s*$/.exec(line)
  return m === null ? undefined : m[1]!.trim()
}
const isFiller = (line: string) => line.trim() === "" || /^\s*[#;]/.test(line)

interface Block {
  readonly name: string
  /** Index of the `[name]` line. */
  readonly start: number
  /** One past the block's last key line: trailing comments and blank lines stay with what follows. */
  readonly end: number
}

const splitLines = (text: string): Array<string> => {
  const lines = text.split("\n")
  if (lines.at(-1) === "") lines.pop()
  return lines
}
const joinLines = (lines: ReadonlyArray<string>) => (lines.length === 0 ? "" : `${lines.join("\n")}\n`)

const blocksOf = (lines: ReadonlyArray<string>): Array<Block> => {
  const starts: Array<number> = []
  lines.forEach((l, i) => {
    if (headerOf(l) !== undefined) starts.push(i)
  })
  return starts.map((start, k) => {
    let end = starts[k + 1] ?? lines.length
    while (end > start + 1 && isFiller(lines[end - 1]!)) end--
    return { name: headerOf(lines[start]!)!, start, end }
  })
}

const entriesOf = (lines: ReadonlyArray<string>, b: Block): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const l of lines.slice(b.start + 1, b.end)) {
    if (isFiller(l)) continue
    const eq = l.indexOf("=")
    if (eq > 0) out[l.slice(0, eq).trim()] = l.slice(eq + 1).trim()
  }
  return out
}

/** Every section of a service file, in file order. */
export const parse = (text: string): ReadonlyArray<Section> => {
  const lines = splitLines(text)
  return blocksOf(lines).map((b) => ({ name: b.name, entries: entriesOf(lines, b) }))
}

const sectionLines = (name: string, entries: Entries) => [`[${name}]`, ...entries.map(([k, v]) => `${k}=${v}`)]

/**
 * Puts section `name` in place of the existing one (where it stands) or appends it after a blank
 * line. Idempotent: applying it twice gives the text of applying it once.
 */
export const upsert = (text: string, name: string, entries: Entries): string => {
  for (const [k, v] of entries) {
    if (/[\r\n]/.test(k + v) || k.includes("=")) throw new Error(`cannot write ${k}=${v} to a service file`)
  }
  const lines = splitLines(text)
  const blocks = blocksOf(lines).filter((b) => b.name === name)
  const fresh = sectionLines(name, entries)
  if (blocks.length === 0) {
    return joinLines([...lines, ...(lines.length > 0 && lines.at(-1)!.trim() !== "" ? [""] : []), ...fresh])
  }
  // the first stays where it is; a duplicate (libpq would read the first anyway) goes
  const out = [...lines]
  for (const b of [...blocks].reverse()) out.splice(b.start, b.end - b.start, ...(b === blocks[0] ? fresh : []))
  return joinLines(out)
}

/** Removes the sections `drop` selects, each with the blank line that separated it from the one before. */
export const removeWhere = (text: string, drop: (s: Section) => boolean): string => {
  const lines = splitLines(text)
  const out = [...lines]
  for (const b of blocksOf(lines).reverse()) {
    if (!drop({ name: b.name, entries: entriesOf(lines, b) })) continue
    out.splice(b.start, b.end - b.start)
    const next = out[b.start]
    if (b.start > 0 && out[b.start - 1]!.trim() === "" && (next === undefined || next.trim() === "" || headerOf(next) !== undefined)) {
      out.splice(b.start - 1, 1)
    }
  }
  return joinLines(out)
}

/** Writes (or rewrites) section `name` of the service file. Throws on I/O errors. */
export const writeSection = (file: string, name: string, entries: Entries): void => {
  updateFile(file, (text) => upsert(text, name, entries))
}

/** Removes the sections `drop` selects; true when the file changed. Throws on I/O errors. */
export const removeSections = (file: string, drop: (s: Section) => boolean): boolean =>
  readIfExists(file) === undefined ? false : updateFile(file, (text) => removeWhere(text, drop))

/** The sections of the service file (none when it does not exist). */
export const readSections = (file: string): ReadonlyArray<Section> => parse(readIfExists(file) ?? "")
