/**
 * An example SIEM consumer: a durable JetStream consumer on Remoteler's event stream.
 *
 * Every committed event of the cluster is published on `remoteler.<cluster>.events.<type>` and
 * kept by the JetStream stream REMOTELER_EVENTS. This consumer reads it with a *durable* consumer:
 * the server remembers the last event this consumer acknowledged, so after a restart (or a crash)
 * it resumes right after it — nothing is skipped, and an event is redelivered only if it was not
 * acknowledged. Each event is written as one JSON line to stdout (or appended to --out FILE) and
 * acknowledged after the write.
 *
 *   node --import tsx examples/siem/consumer.ts --server nats://siem:secret@nats:4222 \
 *     [--durable siem] [--subject 'remoteler.main.events.>'] [--out events.jsonl]
 *
 * See README.md beside this file.
 */
import * as fs from "node:fs"
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"

const arg = (name: string, dflt?: string): string | undefined => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? process.argv[i + 1] : dflt
}

const serverUrl = arg("server", "nats://127.0.0.1:4222")!
const durable = arg("durable", "siem")!
const subject = arg("subject", "remoteler.*.events.>")!
const out = arg("out")
const streamName = arg("stream", "REMOTELER_EVENTS")!

// Credentials come from the URL (nats://user:pass@host:port) and are never printed.
const url = new URL(serverUrl)
const nc = await connect({
  servers: `${url.protocol}//${url.host}`,
  ...(url.username === "" ? {} : { user: decodeURIComponent(url.username), pass: decodeURIComponent(url.password) }),
  name: `remoteler-siem-${durable}`,
  // A SIEM feed outlives NATS outages: keep reconnecting (every 2 s) instead of giving up after
  // the client's default ten attempts; the durable consumer resumes where it was.
  maxReconnectAttempts: -1,
  reconnectTimeWait: 2_000
})
void (async () => {
  for await (const s of nc.status()) {
    if (s.type === "disconnect" || s.type === "reconnect") console.error(`siem: NATS ${s.type}`)
  }
})()

const jsm = await jetstreamManager(nc)
// Creating a durable consumer that exists is a no-op when the configuration is the same.
await jsm.consumers.add(streamName, {
  durable_name: durable,
  ack_policy: AckPolicy.Explicit,
  deliver_policy: DeliverPolicy.All,
  filter_subject: subject
})
const consumer = await jetstream(nc).consumers.get(streamName, durable)
const sink = out === undefined ? undefined : fs.openSync(out, "a")
const messages = await consumer.consume()
console.error(`siem: consuming ${subject} from ${streamName} as durable ${durable}`)

let stopping = false
const stop = async () => {
  if (stopping) return
  stopping = true
  // Stop fetching; messages already written were acknowledged one by one.
  await messages.close()
  await nc.drain()
  if (sink !== undefined) fs.closeSync(sink)
  process.exit(0)
}
process.on("SIGTERM", () => void stop())
process.on("SIGINT", () => void stop())

for await (const m of messages) {
  const line = `${m.string()}\n`
  if (sink === undefined) process.stdout.write(line)
  else {
    fs.writeSync(sink, line)
    fs.fsyncSync(sink)
  }
  // Acknowledge only after the event is written: a crash before this redelivers it, never loses it.
  m.ack()
  if (stopping) break
}
