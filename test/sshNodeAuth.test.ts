/**
 * The node's decision on a publickey attempt (protocols/ssh/serverAuth.ts), with real keys and
 * certificates signed by a CA made here: every check sshd makes for TrustedUserCAKeys, the ones
 * ssh2 leaves to us (proof of the certificate's key, critical options), the cluster, a CA
 * rotation seen by the node, and RBAC with the roles the certificate names.
 */
import { generateKeyPairSync, sign, type KeyObject } from "node:crypto"
import { Schema } from "effect"
import { describe, expect, it } from "vitest"
import { Role } from "../src/domain/Role.ts"
import { publicKeyBlob, signCertificate, userCertFields } from "../src/protocols/ssh/cert.ts"
import type { LocalUser } from "../src/protocols/ssh/launcher.ts"
import type { AuthDeps, AuthOutcome } from "../src/protocols/ssh/serverAuth.ts"
import { checkAttempt } from "../src/protocols/ssh/serverAuth.ts"
import { SshWriter } from "../src/protocols/ssh/wire.ts"

const role = (name: string, spec: unknown) => Schema.decodeUnknownSync(Role)({ kind: "role", version: "v7", metadata: { name }, spec })
const dev = role("dev", { allow: { logins: ["{{internal.logins}}"], node_labels: { env: "dev" } }, deny: { logins: ["nobody"], node_labels: { "*": "*" } } })
const prod = role("prod", { allow: { logins: ["alice"], node_labels: { env: "prod" } } })

const ca = generateKeyPairSync("ed25519")
const rotatedCa = generateKeyPairSync("ed25519")
const userKey = generateKeyPairSync("ed25519")
const alice: LocalUser = { name: "alice", uid: 1000, gid: 1000, home: "/home/alice", shell: "/bin/bash" }

const certFor = (
  opts: {
    caKey?: KeyObject
    logins?: ReadonlyArray<string>
    roles?: ReadonlyArray<string>
    cluster?: string
    expires?: Date
    criticalOptions?: Record<string, string>
  } = {}
) =>
  signCertificate(
    userCertFields({
      publicKey: publicKeyBlob(userKey.publicKey),
      username: "alice",
      logins: opts.logins ?? ["alice", "nobody", "ghost"],
      roles: opts.roles ?? ["dev"],
      traits: { logins: ["alice", "nobody", "ghost"] },
      routeToCluster: opts.cluster ?? "main",
      expires: opts.expires ?? new Date(Date.now() + 3600_000),
      ...(opts.criticalOptions === undefined ? {} : { criticalOptions: opts.criticalOptions })
    }),
    opts.caKey ?? ca.privateKey
  ).blob

const deps = (over: Partial<AuthDeps> = {}): AuthDeps => ({
  node: { name: "node-a", hostId: "h-1", labels: { env: "dev" }, clusterName: "main" },
  trustedCaKeys: async () => [publicKeyBlob(ca.publicKey)],
  userAccess: async () => ({ roles: [dev, prod], traits: { logins: ["alice", "nobody", "ghost"] } }),
  lookupUser: async (login) => (login === "alice" || login === "nobody" ? { ...alice, name: login } : undefined),
  ...over
})

/** A signed attempt, as OpenSSH sends it: the signature over the session data with the certificate's key. */
const attempt = (cert: Uint8Array, login = "alice", opts: { signer?: KeyObject; remote?: string; algo?: string } = {}) => {
  const signedData = new Uint8Array(Buffer.from(`session-id-and-request-${login}`))
  const signature = new SshWriter().string("ssh-ed25519").string(sign(null, signedData, opts.signer ?? userKey.privateKey)).finish()
  return { login, keyAlgo: opts.algo ?? "ssh-ed25519-cert-v01@openssh.com", keyData: cert, signature, signedData, remoteAddress: opts.remote ?? "127.0.0.1" }
}

const reason = (o: AuthOutcome) => (o._tag === "Refused" ? o.reason : `not refused: ${o._tag}`)

describe("node certificate checks", () => {
  it("accepts a certificate from the user CA whose key signed the request, with the roles it names", async () => {
    const o = await checkAttempt(deps(), attempt(certFor()))
    expect(o._tag).toBe("Accepted")
    if (o._tag !== "Accepted") return
    expect(o.identity.user).toBe("alice")
    expect(o.identity.login).toBe("alice")
    expect(o.identity.roles.map((r) => r.metadata.name)).toEqual(["dev"])
    expect(o.identity.permit).toEqual({ pty: true, portForwarding: true })
    expect(o.identity.forceCommand).toBeUndefined()
  })

  it("answers OpenSSH's unsigned query after the certificate checks only", async () => {
    const { signature: _s, signedData: _d, ...query } = attempt(certFor())
    expect((await checkAttempt(deps(), query))._tag).toBe("Query")
    const { signature: _s2, signedData: _d2, ...badQuery } = attempt(certFor({ caKey: rotatedCa.privateKey }))
    expect(reason(await checkAttempt(deps(), badQuery))).toMatch(/untrusted CA/)
  })

  it("refuses plain keys, garbage, another CA, an expired certificate and a missing principal", async () => {
    expect(reason(await checkAttempt(deps(), attempt(publicKeyBlob(userKey.publicKey), "alice", { algo: "ssh-ed25519" })))).toMatch(/certificate is required/)
    expect(reason(await checkAttempt(deps(), attempt(new Uint8Array([0, 0, 0, 3, 1, 2]))))).toMatch(/malformed certificate/)
    expect(reason(await checkAttempt(deps(), attempt(certFor({ caKey: rotatedCa.privateKey }))))).toMatch(/untrusted CA/)
    expect(reason(await checkAttempt(deps(), attempt(certFor({ expires: new Date(Date.now() - 1000) }))))).toMatch(/expired/)
    expect(reason(await checkAttempt(deps(), attempt(certFor(), "root")))).toMatch(/principal "root" is not in the certificate/)
  })

  it("refuses a client that does not hold the certificate's private key", async () => {
    const other = generateKeyPairSync("ed25519")
    expect(reason(await checkAttempt(deps(), attempt(certFor(), "alice", { signer: other.privateKey })))).toMatch(/signature does not verify/)
  })

  it("refuses unknown critical options, enforces source-address and hands force-command on", async () => {
    expect(reason(await checkAttempt(deps(), attempt(certFor({ criticalOptions: { "no-such-option@example.com": "" } }))))).toMatch(/unsupported critical option/)
    const limited = certFor({ criticalOptions: { "source-address": "10.0.0.0/8" } })
    expect(reason(await checkAttempt(deps(), attempt(limited, "alice", { remote: "127.0.0.1" })))).toMatch(/source address 127\.0\.0\.1 is not allowed/)
    expect((await checkAttempt(deps(), attempt(limited, "alice", { remote: "10.1.2.3" })))._tag).toBe("Accepted")
    const forced = await checkAttempt(deps(), attempt(certFor({ criticalOptions: { "force-command": "uptime" } })))
    expect(forced._tag === "Accepted" && forced.identity.forceCommand).toBe("uptime")
  })

  it("refuses a certificate for another cluster", async () => {
    expect(reason(await checkAttempt(deps(), attempt(certFor({ cluster: "other" }))))).toMatch(/for cluster "other", not main/)
  })

  it("asks auth again when a certificate names a CA key it does not know yet (rotation)", async () => {
    const asked: Array<boolean> = []
    const rotating = deps({
      trustedCaKeys: async (refresh) => {
        asked.push(refresh)
        return refresh ? [publicKeyBlob(ca.publicKey), publicKeyBlob(rotatedCa.publicKey)] : [publicKeyBlob(ca.publicKey)]
      }
    })
    expect((await checkAttempt(rotating, attempt(certFor({ caKey: rotatedCa.privateKey }))))._tag).toBe("Accepted")
    expect(asked).toEqual([false, true])
  })

  it("decides with RBAC: deny wins, node labels, roles the certificate does not name do not count", async () => {
    expect(reason(await checkAttempt(deps(), attempt(certFor(), "nobody")))).toMatch(/denied by role dev \(deny\.logins\)/)
    const prodNode = deps({ node: { name: "node-p", hostId: "h-2", labels: { env: "prod" }, clusterName: "main" } })
    // auth says alice holds prod too, but her certificate names only dev.
    expect(reason(await checkAttempt(prodNode, attempt(certFor())))).toMatch(/access to node node-p as login alice/)
    expect((await checkAttempt(prodNode, attempt(certFor({ roles: ["dev", "prod"] }))))._tag).toBe("Accepted")
    const gone = deps({ userAccess: async () => Promise.reject(new Error('user "alice" does not exist')) })
    expect(reason(await checkAttempt(gone, attempt(certFor())))).toMatch(/cannot get the roles of alice/)
  })

  it("refuses a login the host does not have", async () => {
    expect(reason(await checkAttempt(deps(), attempt(certFor(), "ghost")))).toMatch(/login "ghost" does not exist on node node-a/)
  })
})
