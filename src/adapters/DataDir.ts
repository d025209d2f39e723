/**
 * The data directory: created with owner-only permissions, and locked so that two processes never
 * run on the same store. The lock is a file holding the owner's pid; a lock whose pid is gone is
 * stale (the process crashed) and is taken over.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, Schema } from "effect"
import type { Scope } from "effect"

export class DataDirError extends Schema.TaggedError<DataDirError>()("DataDirError", {
  message: Schema.String
}) {}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

export const lockPath = (dataDir: string) => path.join(dataDir, "remoteler.lock")
export const adminSocketPath = (dataDir: string) => path.join(dataDir, "auth.sock")

/** Creates the directory if needed and holds its lock for the life of the scope. */
export const acquire = (dataDir: string): Effect.Effect<string, DataDirError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        const dir = path.resolve(dataDir)
        fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
        const file = lockPath(dir)
        for (let attempt = 0; attempt < 2; attempt++) {
          try {
            fs.writeFileSync(file, `${process.pid}\n`, { flag: "wx", mode: 0o600 })
            return dir
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e
            const pid = Number.parseInt(fs.readFileSync(file, "utf8"), 10)
            if (Number.isInteger(pid) && pid !== process.pid && alive(pid)) {
              throw new DataDirError({
                message: `another remoteler process (pid ${pid}) is already running on data dir ${dir}; stop it first`
              })
            }
            fs.rmSync(file, { force: true })
          }
        }
        throw new DataDirError({ message: `could not lock data dir ${dir}` })
      },
      catch: (e) =>
        e instanceof DataDirError
          ? e
          : new DataDirError({ message: `cannot use data dir ${dataDir}: ${(e as Error).message}` })
    }),
    (dir) => Effect.sync(() => fs.rmSync(lockPath(dir), { force: true }))
  )
