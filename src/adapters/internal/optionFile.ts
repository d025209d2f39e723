/**
 * Client option files (~/.pg_service.conf, ~/.my.cnf) edited in place, safely: tsh rewrites them
 * through a temp file and a rename, keeping their mode (0600 for a new one) and following a
 * symbolic link; an edit that leaves nothing but blank lines removes the file.
 */
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"

export const readIfExists = (file: string): string | undefined => {
  try {
    return fs.readFileSync(file, "utf8")
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined
    throw e
  }
}

/** Applies `f` to the file's text and writes the result if it changed; true when it did. */
export const updateFile = (file: string, f: (text: string) => string): boolean => {
  const real = (() => {
    try {
      return fs.realpathSync(file)
    } catch {
      return file
    }
  })()
  const before = readIfExists(real)
  const after = f(before ?? "")
  if (after === (before ?? "")) return false
  if (after.trim() === "") {
    fs.rmSync(real, { force: true })
    return true
  }
  const mode = before === undefined ? 0o600 : fs.statSync(real).mode & 0o777
  fs.mkdirSync(path.dirname(real), { recursive: true, mode: 0o700 })
  const tmp = path.join(path.dirname(real), `.${path.basename(real)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`)
  try {
    fs.writeFileSync(tmp, after, { mode, flag: "wx" })
    fs.chmodSync(tmp, mode)
    fs.renameSync(tmp, real)
  } catch (e) {
    fs.rmSync(tmp, { force: true })
    throw e
  }
  return true
}
