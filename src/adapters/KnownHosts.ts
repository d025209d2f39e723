/**
 * The known_hosts file tsh keeps for OpenSSH (`UserKnownHostsFile` in `tsh config`): one line per
 * node the user may reach, under both names users type, pinning the host key the node reported to
 * the cluster's inventory:
 *
 *     node-a.main,node-a ssh-ed25519 AAAA...
 *
 * It lives beside the login's keys (`keys/<proxy>/known_hosts`), so `tsh logout` removes it with
 * them, and is rewritten whole from the inventory by `tsh ls`, `tsh ssh` and `tsh proxy ssh`, so a
 * node whose key changed or that left the cluster is not trusted from a stale line.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Either } from "effect"
import { parsePublicKeyLine } from "../protocols/ssh/cert.ts"
import { writeFileAtomic } from "./TshProfile.ts"

export interface PinnedNode {
  readonly name: string
  readonly host_key?: string | undefined
}

/** The file beside a login's keys. */
export const knownHostsPath = (keyDir: string): string => path.join(keyDir, "known_hosts")

/** The host key blob of an inventory line, or undefined when it has none or it is not a key. */
export const hostKeyBlob = (line: string | undefined): Uint8Array | undefined => {
  if (line === undefined) return undefined
  const k = parsePublicKeyLine(line)
  return Either.isRight(k) ? k.right.blob : undefined
}

/** The file's text for these nodes: `<name>.<cluster>,<name> <type> <base64>`, sorted by name. */
export const render = (nodes: ReadonlyArray<PinnedNode>, cluster: string): string =>
  [...nodes]
    .sort((a, b) => a.name.localeCompare(b.name))
    .flatMap((n) => {
      const k = n.host_key === undefined ? undefined : parsePublicKeyLine(n.host_key)
      if (k === undefined || Either.isLeft(k)) return []
      return [`${n.name}.${cluster},${n.name} ${k.right.keyType} ${Buffer.from(k.right.blob).toString("base64")}\n`]
    })
    .join("")

/** Rewrites the file (0600, atomically) when its content changes. */
export const write = (file: string, nodes: ReadonlyArray<PinnedNode>, cluster: string): void => {
  const text = render(nodes, cluster)
  let old: string | undefined
  try {
    old = fs.readFileSync(file, "utf8")
  } catch {
    old = undefined
  }
  if (old !== text) writeFileAtomic(file, text)
}
