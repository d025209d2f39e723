/**
 * `node --import ./bench/cpuProfile.mjs`: a CPU profile of the whole process, written to
 * `$REMOTELER_CPU_PROFILE_DIR/<pid>.cpuprofile` when it exits. Node refuses `--cpu-prof` in
 * NODE_OPTIONS, and the benchmarks start their servers through helpers that pass only the
 * environment on, so this is how `bench/postgres.ts --cpu-prof=DIR` profiles the proxy and agent.
 */
import * as fs from "node:fs"
import * as inspector from "node:inspector"
import * as path from "node:path"
import process from "node:process"

const dir = process.env["REMOTELER_CPU_PROFILE_DIR"]
if (dir !== undefined && dir !== "") {
  const session = new inspector.Session()
  session.connect()
  session.post("Profiler.enable")
  session.post("Profiler.setSamplingInterval", { interval: 200 })
  session.post("Profiler.start")
  // A main-thread session answers synchronously, so the profile can still be written on exit.
  process.once("exit", () => {
    session.post("Profiler.stop", (err, result) => {
      if (err === null) fs.writeFileSync(path.join(dir, `${process.pid}.cpuprofile`), JSON.stringify(result.profile))
    })
  })
}
