/**
 * Identity files (`tsh -i FILE`, `tctl auth sign --format=file`), in Teleport's format: one text
 * file that concatenates, each ending with a newline,
 *
 *     -----BEGIN PRIVATE KEY-----              the private key(s)
 *     ssh-ed25519-cert-v01@openssh.com AAAA    the SSH certificate line
 *     -----BEGIN CERTIFICATE-----              the X.509 certificate
 *     @cert-authority *.main ssh-ed25519 ...   host CA lines (known_hosts format)
 *     -----BEGIN CERTIFICATE-----              the trusted TLS CA certificates
 *
 * Teleport uses one key for both certificates; Remoteler has two (ECDSA P-256 for X.509, Ed25519
 * for SSH), so the file holds both private keys as separate PEM blocks: the PKCS#8 `PRIVATE KEY`
 * first, then the `OPENSSH PRIVATE KEY`. Readers tell them apart by their PEM label, as Teleport's
 * reader does (any block whose label ends in `PRIVATE KEY` is a key; the first `CERTIFICATE` is the
 * user's, the rest are CAs).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Data, Effect } from "effect"
import { writeFileAtomic } from "./TshProfile.ts"

export class IdentityFileError extends Data.TaggedError("IdentityFileError")<{
  readonly reason: "Io" | "Malformed"
  readonly message: string
  readonly cause?: unknown
}> {}

export interface IdentityFileContents {
  /** PKCS#8 PEM of the key the X.509 certificate certifies. */
  readonly tlsPrivateKeyPem: string
  /** OpenSSH-format private key the SSH certificate certifies ("" when the file has none). */
  readonly sshPrivateKey: string
  /** `*-cert-v01@openssh.com` line. */
  readonly sshCert: string
  /** PEM X.509 user certificate. */
  readonly tlsCert: string
  /** PEM CA certificates to trust. */
  readonly caCerts: ReadonlyArray<string>
  /** `@cert-authority` known_hosts lines. */
  readonly knownHosts: ReadonlyArray<string>
}

const nl = (s: string) => (s.endsWith("\n") ? s : `${s}\n`)

/** The identity file's text. */
export const encodeIdentityFile = (c: IdentityFileContents): string =>
  [
    c.tlsPrivateKeyPem,
    ...(c.sshPrivateKey.trim() === "" ? [] : [c.sshPrivateKey]),
    c.sshCert.trim(),
    c.tlsCert,
    ...c.knownHosts.map((l) => l.trim()),
    ...c.caCerts
  ]
    .map(nl)
    .join("")

/** Splits an identity file's text back into its parts. Never throws. */
export const decodeIdentityFile = (text: string): Effect.Effect<IdentityFileContents, IdentityFileError> =>
  Effect.suspend(() => {
    const bad = (message: string) => Effect.fail(new IdentityFileError({ reason: "Malformed", message }))
    const lines = text.split(/\r?\n/)
    let tlsKey = ""
    let sshKey = ""
    let sshCert = ""
    let tlsCert = ""
    const caCerts: Array<string> = []
    const knownHosts: Array<string> = []
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!.trim()
      if (line === "") continue
      const begin = /^-----BEGIN ([A-Z0-9 ]+)-----$/.exec(line)
      if (begin !== null) {
        const label = begin[1]!
        const end = `-----END ${label}-----`
        const j = lines.findIndex((l, k) => k > i && l.trim() === end)
        if (j < 0) return bad(`unterminated ${label} block`)
        const block = `${lines.slice(i, j + 1).map((l) => l.trim()).join("\n")}\n`
        i = j
        if (label === "OPENSSH PRIVATE KEY") {
          if (sshKey !== "") return bad("more than one OpenSSH private key")
          sshKey = block
        } else if (label.endsWith("PRIVATE KEY")) {
          if (tlsKey !== "") return bad("more than one PEM private key")
          tlsKey = block
        } else if (label === "CERTIFICATE") {
          if (tlsCert === "") tlsCert = block
          else caCerts.push(block)
        } else {
          return bad(`unexpected PEM block ${label}`)
        }
      } else if (line.startsWith("@cert-authority")) {
        knownHosts.push(line)
      } else if (/^\S+-cert-v01@openssh\.com\s/.test(line)) {
        if (sshCert !== "") return bad("more than one SSH certificate")
        sshCert = line
      } else {
        return bad(`unexpected line ${i + 1}`)
      }
    }
    if (tlsKey === "" && sshKey === "") return bad("no private key")
    if (sshCert === "") return bad("no SSH certificate")
    if (tlsCert === "") return bad("no TLS certificate")
    return Effect.succeed({ tlsPrivateKeyPem: tlsKey, sshPrivateKey: sshKey, sshCert, tlsCert, caCerts, knownHosts })
  })

/** Writes an identity file atomically, mode 0600. */
export const writeIdentityFile = (file: string, c: IdentityFileContents): Effect.Effect<void, IdentityFileError> =>
  Effect.try({
    try: () => writeFileAtomic(path.resolve(file), encodeIdentityFile(c), 0o600),
    catch: (cause) => new IdentityFileError({ reason: "Io", message: `cannot write identity file ${file}: ${(cause as Error).message}`, cause })
  })

/** Reads and splits an identity file. */
export const readIdentityFile = (file: string): Effect.Effect<IdentityFileContents, IdentityFileError> =>
  Effect.try({
    try: () => fs.readFileSync(file, "utf8"),
    catch: (cause) => new IdentityFileError({ reason: "Io", message: `cannot read identity file ${file}: ${(cause as Error).message}`, cause })
  }).pipe(
    Effect.flatMap(decodeIdentityFile),
    Effect.mapError((e) => (e.reason === "Malformed" ? new IdentityFileError({ reason: "Malformed", message: `identity file ${file}: ${e.message}` }) : e))
  )
