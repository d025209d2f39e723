/**
 * The node's decision on one publickey attempt: what sshd checks for a certificate from
 * `TrustedUserCAKeys`, then Remoteler's RBAC. ssh2's server hands the certificate over unchecked
 * (it treats the certificate blob as an opaque key), so every check is here:
 *
 *   1. a user certificate (plain keys, host certificates refused) that decodes,
 *   2. signed by a key of the cluster's user CA (as trusted now: during a rotation, old and new),
 *   3. inside its validity window, with the login among its principals,
 *   4. critical options we know (force-command, source-address (checked against the client's
 *      address), verify-required); any other critical option refuses the certificate,
 *   5. issued for this cluster,
 *   6. (signed attempts only) the client's signature over the session id verifies with the
 *      certificate's own key, so the client holds the certificate's private key,
 *   7. the user's roles (from auth, limited to those the certificate names) allow the login on this
 *      node's labels, deny first,
 *   8. the login exists on this host, and the node may run processes as it.
 */
import { Either } from "effect"
import type { Role, Traits } from "../../domain/Role.ts"
import { checkNodeAccess } from "../../domain/Rbac.ts"
import type { Certificate, VerifiedCertificate } from "./cert.ts"
import { certIdentityExtensions, decodeCertificate, verifyCertificate, verifySignature } from "./cert.ts"
import type { LocalUser } from "./launcher.ts"
import { SshWriter } from "./wire.ts"

export interface NodeIdentity {
  readonly name: string
  readonly hostId: string
  readonly labels: Readonly<Record<string, string>>
  readonly clusterName: string
}

/** Who is logged in on a connection, once every check passed. */
export interface SshIdentity {
  readonly user: string
  readonly login: string
  readonly roles: ReadonlyArray<Role>
  readonly traits: Traits
  readonly certificate: Certificate
  readonly forceCommand: string | undefined
  readonly permit: { readonly pty: boolean; readonly portForwarding: boolean }
  readonly localUser: LocalUser
}

export interface AuthAttempt {
  readonly login: string
  readonly keyAlgo: string
  readonly keyData: Uint8Array
  /** Absent on OpenSSH's first "would you accept this key?" query. */
  readonly signature?: Uint8Array | undefined
  /** The bytes the client signed (session id + request). */
  readonly signedData?: Uint8Array | undefined
  readonly remoteAddress: string | undefined
}

export interface AuthDeps {
  readonly node: NodeIdentity
  /** The user CA's trusted SSH public key blobs; `refresh` asks auth again (a CA may have rotated). */
  readonly trustedCaKeys: (refresh: boolean) => Promise<ReadonlyArray<Uint8Array>>
  /** The user's current roles and traits, from auth. */
  readonly userAccess: (user: string) => Promise<{ readonly roles: ReadonlyArray<Role>; readonly traits: Traits }>
  readonly lookupUser: (login: string) => Promise<LocalUser | undefined>
  readonly now?: () => Date
}

export type AuthOutcome =
  | { readonly _tag: "Query"; readonly user: string }
  | { readonly _tag: "Accepted"; readonly identity: SshIdentity }
  /** `user` is the certificate's key id when one was readable, else the SSH user name. */
  | { readonly _tag: "Refused"; readonly user: string; readonly reason: string }

const CERT_SUFFIX = "-cert-v01@openssh.com"

/** Whether a publickey algorithm names a certificate (ssh2 passes the certificate as the "key"). */
export const isCertificateAlgo = (algo: string): boolean => algo.endsWith(CERT_SUFFIX)

/**
 * ssh2 strips the algorithm header from signatures only when it equals the key algorithm, which a
 * certificate's never does; still, accept both shapes, rewrapping a bare one in the key's type.
 */
const signatureBlob = (sig: Uint8Array, keyAlgo: string): ReadonlyArray<Uint8Array> => {
  const base = keyAlgo.slice(0, -CERT_SUFFIX.length)
  return [sig, new SshWriter().string(base).string(sig).finish()]
}

export const checkAttempt = async (deps: AuthDeps, attempt: AuthAttempt): Promise<AuthOutcome> => {
  const refuse = (user: string, reason: string): AuthOutcome => ({ _tag: "Refused", user, reason })
  if (!isCertificateAlgo(attempt.keyAlgo)) {
    return refuse(attempt.login, "a Remoteler user certificate is required; plain keys are not accepted")
  }
  const decoded = decodeCertificate(attempt.keyData)
  if (Either.isLeft(decoded)) return refuse(attempt.login, `malformed certificate: ${decoded.left.message}`)
  const cert = decoded.right
  const user = cert.keyId === "" ? attempt.login : cert.keyId
  const now = (deps.now ?? (() => new Date()))()
  const verify = (keys: ReadonlyArray<Uint8Array>) =>
    verifyCertificate(cert, {
      trustedCaKeys: keys,
      now,
      principal: attempt.login,
      certType: "user",
      ...(attempt.remoteAddress === undefined ? {} : { remoteAddress: attempt.remoteAddress })
    })
  let verified: Either.Either<VerifiedCertificate, { readonly reason: string; readonly message: string }> = verify(await deps.trustedCaKeys(false))
  if (Either.isLeft(verified) && verified.left.reason === "UntrustedCa") verified = verify(await deps.trustedCaKeys(true))
  if (Either.isLeft(verified)) return refuse(user, `certificate refused: ${verified.left.message}`)
  const ext = certIdentityExtensions(cert)
  if (ext.routeToCluster !== deps.node.clusterName) {
    return refuse(user, `certificate is for cluster ${JSON.stringify(ext.routeToCluster)}, not ${deps.node.clusterName}`)
  }
  if (attempt.signature === undefined || attempt.signedData === undefined) return { _tag: "Query", user }

  const proved = signatureBlob(attempt.signature, attempt.keyAlgo).some((sig) =>
    Either.isRight(verifySignature(cert.publicKey, sig, attempt.signedData!))
  )
  if (!proved) return refuse(user, "the client's signature does not verify with the certificate's key")

  let access: { readonly roles: ReadonlyArray<Role>; readonly traits: Traits }
  try {
    access = await deps.userAccess(user)
  } catch (e) {
    return refuse(user, `cannot get the roles of ${user} from auth: ${(e as Error).message}`)
  }
  // The certificate bounds the roles: a role added since it was issued needs a new login, a role
  // removed since is gone at once.
  const roles = access.roles.filter((r) => ext.roles.includes(r.metadata.name))
  const decision = checkNodeAccess(roles, access.traits, { name: deps.node.name, labels: deps.node.labels }, attempt.login)
  if (Either.isLeft(decision)) return refuse(user, decision.left.message)

  const local = await deps.lookupUser(attempt.login).catch(() => undefined)
  if (local === undefined) return refuse(user, `login ${JSON.stringify(attempt.login)} does not exist on node ${deps.node.name}`)
  const uid = process.getuid?.() ?? 0
  if (uid !== 0 && local.uid !== uid) {
    return refuse(user, `the node runs unprivileged (uid ${uid}) and cannot start sessions as ${attempt.login}`)
  }
  return {
    _tag: "Accepted",
    identity: {
      user,
      login: attempt.login,
      roles,
      traits: access.traits,
      certificate: cert,
      forceCommand: Either.getOrThrow(verified).forceCommand,
      permit: {
        pty: Object.hasOwn(cert.extensions, "permit-pty"),
        portForwarding: Object.hasOwn(cert.extensions, "permit-port-forwarding")
      },
      localUser: local
    }
  }
}
