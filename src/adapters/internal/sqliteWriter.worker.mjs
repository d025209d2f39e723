// Entry of the SQLite writer thread. A worker does not inherit the loader hooks of the thread
// that starts it, so the TypeScript is loaded through tsx here, as bin/*.mjs do for the main one.
import { register } from "tsx/esm/api"

register()
await import("./sqliteWriterWorker.ts")
