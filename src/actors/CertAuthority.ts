/**
 * The certificate authorities (user, host, db): created at first start, rotated in Teleport's
 * phases, and used to sign. Events carry only public parts (the CA certificate and SSH public
 * key); private keys live in the secrets table under the key set's id and are cached in memory.
 *
 * Any auth instance can sign for any request: the key material comes from the shared store, and a
 * key set is looked up by the id the log names.
 */
import { createPrivateKey, generateKeyPairSync, randomUUID } from "node:crypto"
import type { KeyObject, webcrypto } from "node:crypto"
import type * as x509lib from "@peculiar/x509"
import { Context, Effect, Either, HashMap, Layer, Option } from "effect"
import { EventStore } from "../adapters/EventStore.ts"
import type { X509Error } from "../adapters/x509.ts"
import * as X509 from "../adapters/x509.ts"
import { BadParameter, CompareFailed, Unavailable } from "../domain/Errors.ts"
import type { ApiError } from "../domain/Errors.ts"
import * as Event from "../domain/Event.ts"
import type { CaKeySet, CaType, RotationPhase } from "../domain/Event.ts"
import type { RouteToDatabase } from "../domain/Identity.ts"
import * as RbacView from "../domain/RbacView.ts"
import type { CaState } from "../domain/RbacView.ts"
import type { Traits } from "../domain/Role.ts"
import {
  hostCertFields,
  parsePublicKeyLine,
  privateKeyToOpenSsh,
  publicKeyBlob,
  publicKeyLine,
  signCertificate,
  userCertFields
} from "../protocols/ssh/cert.ts"
import type { ProjectorShape } from "./Projector.ts"

export const CA_TYPES: ReadonlyArray<CaType> = ["user", "host", "db"]
const CA_TTL_DAYS = 3650

type CryptoKey = webcrypto.CryptoKey

interface PrivateKeySet {
  readonly tlsCert: x509lib.X509Certificate
  readonly tlsCertPem: string
  readonly tlsKey: CryptoKey
  readonly sshKey: KeyObject
}

export interface UserCertRequest {
  readonly username: string
  readonly roles: ReadonlyArray<string>
  readonly logins: ReadonlyArray<string>
  readonly traits: Traits
  /** OpenSSH public key line; no SSH certificate when absent. */
  readonly sshPublicKey?: string
  /** SPKI PEM; no X.509 certificate when absent. */
  readonly tlsPublicKey?: string
  readonly expires: Date
  readonly routeToDatabase?: RouteToDatabase
}

export interface HostCertRequest {
  readonly hostId: string
  readonly nodeName: string
  readonly systemRole: "Node" | "Db" | "Proxy" | "Auth"
  readonly principals: ReadonlyArray<string>
  readonly dnsNames: ReadonlyArray<string>
  readonly ipAddresses: ReadonlyArray<string>
  readonly sshPublicKey?: string
  readonly tlsPublicKey?: string
  readonly expires: Date
  /** Which CA signs the X.509 certificate: host (agents, proxy) or db (database servers). */
  readonly ca: "host" | "db"
}

export interface Issued {
  readonly sshCert: string | undefined
  readonly tlsCert: string | undefined
}

export interface CertAuthorityShape {
  /** The CA's public state (throws Unavailable when the CAs are not created yet). */
  readonly get: (type: CaType) => Effect.Effect<CaState, ApiError>
  readonly signUser: (req: UserCertRequest) => Effect.Effect<Issued, ApiError>
  readonly signHost: (req: HostCertRequest) => Effect.Effect<Issued, ApiError>
  /** PEM certificates of the key sets that are trusted now. */
  readonly trustedTlsCerts: (type: CaType) => Effect.Effect<ReadonlyArray<string>, ApiError>
  /** OpenSSH public key lines of the key sets that are trusted now. */
  readonly trustedSshKeys: (type: CaType) => Effect.Effect<ReadonlyArray<string>, ApiError>
  readonly rotate: (type: CaType, phase: RotationPhase, actor: string) => Effect.Effect<CaState, ApiError>
}

export class CertAuthority extends Context.Tag("remoteler/CertAuthority")<CertAuthority, CertAuthorityShape>() {}

const cryptoFailure = (e: X509Error) => new Unavailable({ message: `certificate authority: ${e.message}` })

/** Generates a key set: an X.509 CA (ECDSA P-256) and an SSH CA key (Ed25519). */
const generateKeySet = (type: CaType, clusterName: string) =>
  Effect.gen(function* () {
    const keyId = `${type}-${randomUUID()}`
    const ca = yield* X509.generateCa(`${clusterName} ${type} CA`, clusterName, CA_TTL_DAYS).pipe(Effect.mapError(cryptoFailure))
    const ssh = generateKeyPairSync("ed25519")
    const publicSet: CaKeySet = {
      key_id: keyId,
      tls_cert: ca.certPem,
      ssh_public_key: publicKeyLine(publicKeyBlob(ssh.publicKey), `${clusterName}-${type}-ca`)
    }
    const secrets = {
      tls: ca.keyPem,
      ssh: ssh.privateKey.export({ format: "pem", type: "pkcs8" }).toString()
    }
    return { publicSet, secrets }
  })

const PHASE_FROM: Record<RotationPhase, ReadonlyArray<CaState["phase"]>> = {
  init: ["standby"],
  update_clients: ["init"],
  update_servers: ["update_clients"],
  standby: ["update_servers"],
  rollback: ["init", "update_clients", "update_servers"]
}

export const make = (options: {
  readonly clusterName: string
  readonly projector: ProjectorShape<RbacView.RbacView>
}) =>
  Effect.gen(function* () {
    const store = yield* EventStore
    const { clusterName, projector } = options
    const keys = new Map<string, PrivateKeySet>()
    const storeFailure = (e: { message: string }) => new Unavailable({ message: `event store: ${e.message}` })
    const enc = new TextEncoder()
    const dec = new TextDecoder()

    const putSecrets = (keyId: string, secrets: { tls: string; ssh: string }) =>
      Effect.all([
        store.putSecret(`ca/${keyId}/tls`, enc.encode(secrets.tls)),
        store.putSecret(`ca/${keyId}/ssh`, enc.encode(secrets.ssh))
      ]).pipe(Effect.mapError(storeFailure))

    const loadKeys = (set: CaKeySet): Effect.Effect<PrivateKeySet, ApiError> =>
      Effect.gen(function* () {
        const cached = keys.get(set.key_id)
        if (cached !== undefined) return cached
        const tls = yield* store.getSecret(`ca/${set.key_id}/tls`).pipe(Effect.mapError(storeFailure))
        const ssh = yield* store.getSecret(`ca/${set.key_id}/ssh`).pipe(Effect.mapError(storeFailure))
        if (tls === undefined || ssh === undefined) {
          return yield* new Unavailable({ message: `private key of CA key set ${set.key_id} is missing from the secrets table` })
        }
        const tlsKey = yield* X509.importEcdsaPrivateKey(dec.decode(tls)).pipe(Effect.mapError(cryptoFailure))
        const tlsCert = yield* Either.match(X509.parseCertificate(set.tls_cert), {
          onLeft: (e) => Effect.fail(cryptoFailure(e)),
          onRight: Effect.succeed
        })
        const loaded: PrivateKeySet = { tlsCert, tlsCertPem: set.tls_cert, tlsKey, sshKey: createPrivateKey(dec.decode(ssh)) }
        keys.set(set.key_id, loaded)
        return loaded
      })

    const get = (type: CaType) =>
      Effect.flatMap(projector.state, (v) =>
        Option.match(HashMap.get(v.cas, type), {
          onNone: () => Effect.fail(new Unavailable({ message: `the ${type} CA does not exist yet` })),
          onSome: Effect.succeed
        })
      )

    /** Creates each missing CA. Two auth instances racing here: the stream version check lets one win. */
    const ensure = Effect.gen(function* () {
      yield* projector.awaitSeq(yield* store.head.pipe(Effect.mapError(storeFailure)), 60_000)
      for (const type of CA_TYPES) {
        const existing = HashMap.get((yield* projector.state).cas, type)
        if (Option.isSome(existing)) continue
        const { publicSet, secrets } = yield* generateKeySet(type, clusterName)
        yield* putSecrets(publicSet.key_id, secrets)
        const appended = yield* store
          .append({
            stream: `ca/${type}`,
            expectedVersion: 0,
            events: [{ ...Event.make("ca.create", { type, cluster_name: clusterName, active: publicSet }), actor: "system" }]
          })
          .pipe(
            Effect.map((es) => es[es.length - 1]!.seq),
            Effect.catchTag("VersionConflict", () => store.head)
          )
          .pipe(Effect.mapError(storeFailure))
        yield* projector.awaitSeq(appended)
        yield* Effect.logInfo(`created the ${type} certificate authority (${publicSet.key_id})`)
      }
    })
    yield* ensure

    const parseSshKey = (line: string) =>
      Either.match(parsePublicKeyLine(line), {
        onLeft: (e) => Effect.fail(new BadParameter({ message: `malformed SSH public key: ${e.message}` })),
        onRight: (k) => Effect.succeed(k.blob)
      })

    const signUser = (req: UserCertRequest) =>
      Effect.gen(function* () {
        const ca = yield* get("user")
        const k = yield* loadKeys(RbacView.signingKeys(ca))
        let sshCert: string | undefined
        if (req.sshPublicKey !== undefined) {
          const blob = yield* parseSshKey(req.sshPublicKey)
          sshCert = signCertificate(
            userCertFields({
              publicKey: blob,
              username: req.username,
              logins: req.logins,
              roles: req.roles,
              traits: req.traits,
              routeToCluster: clusterName,
              expires: req.expires
            }),
            k.sshKey
          ).line
        }
        let tlsCert: string | undefined
        if (req.tlsPublicKey !== undefined) {
          const issued = yield* X509.signUserCert({
            caCert: k.tlsCert,
            caKey: k.tlsKey,
            publicKey: req.tlsPublicKey,
            identity: {
              username: req.username,
              roles: req.roles,
              logins: req.logins,
              routeToCluster: clusterName,
              traits: req.traits,
              ...(req.routeToDatabase === undefined ? {} : { routeToDatabase: req.routeToDatabase })
            },
            notAfter: req.expires
          }).pipe(Effect.mapError((e) => new BadParameter({ message: `cannot sign the TLS public key: ${e.message}` })))
          tlsCert = issued.pem
        }
        return { sshCert, tlsCert }
      })

    const signHost = (req: HostCertRequest) =>
      Effect.gen(function* () {
        const sshCa = yield* loadKeys(RbacView.signingKeys(yield* get("host")))
        const tlsCa = yield* loadKeys(RbacView.signingKeys(yield* get(req.ca)))
        let sshCert: string | undefined
        if (req.sshPublicKey !== undefined) {
          const blob = yield* parseSshKey(req.sshPublicKey)
          sshCert = signCertificate(
            hostCertFields({ publicKey: blob, hostId: req.hostId, principals: req.principals, expires: req.expires }),
            sshCa.sshKey
          ).line
        }
        let tlsCert: string | undefined
        if (req.tlsPublicKey !== undefined) {
          const issued = yield* X509.signHostCert({
            caCert: tlsCa.tlsCert,
            caKey: tlsCa.tlsKey,
            publicKey: req.tlsPublicKey,
            identity: {
              username: req.hostId,
              roles: [req.systemRole],
              logins: [...req.principals],
              routeToCluster: clusterName,
              traits: {},
              hostId: req.hostId,
              nodeName: req.nodeName,
              systemRole: req.systemRole
            },
            notAfter: req.expires,
            dnsNames: req.dnsNames,
            ipAddresses: req.ipAddresses
          }).pipe(Effect.mapError((e) => new BadParameter({ message: `cannot sign the TLS public key: ${e.message}` })))
          tlsCert = issued.pem
        }
        return { sshCert, tlsCert }
      })

    const rotate = (type: CaType, phase: RotationPhase, actor: string) =>
      Effect.gen(function* () {
        const ca = yield* get(type)
        if (!PHASE_FROM[phase].includes(ca.phase)) {
          return yield* new BadParameter({
            message: `cannot go to phase ${phase} from ${ca.phase}; from ${ca.phase} the next phases are ${
              Object.entries(PHASE_FROM)
                .filter(([, from]) => from.includes(ca.phase))
                .map(([p]) => p)
                .join(", ") || "none"
            }`
          })
        }
        let next: CaKeySet | undefined
        if (phase === "init") {
          const generated = yield* generateKeySet(type, clusterName)
          yield* putSecrets(generated.publicSet.key_id, generated.secrets)
          next = generated.publicSet
        }
        const version = yield* store.streamVersion(`ca/${type}`).pipe(Effect.mapError(storeFailure))
        const appended = yield* store
          .append({
            stream: `ca/${type}`,
            expectedVersion: version,
            events: [
              {
                ...Event.make("ca.rotate", { type, cluster_name: clusterName, phase, ...(next === undefined ? {} : { next }) }),
                actor
              }
            ]
          })
          .pipe(
            Effect.mapError((e) =>
              e._tag === "VersionConflict"
                ? new CompareFailed({ message: `the ${type} CA changed at the same time; try again` })
                : storeFailure(e)
            )
          )
        yield* projector.awaitSeq(appended[appended.length - 1]!.seq)
        return yield* get(type)
      })

    return CertAuthority.of({
      get,
      signUser,
      signHost,
      trustedTlsCerts: (type) => Effect.map(get(type), (ca) => RbacView.trustedKeys(ca).map((k) => k.tls_cert)),
      trustedSshKeys: (type) => Effect.map(get(type), (ca) => RbacView.trustedKeys(ca).map((k) => k.ssh_public_key)),
      rotate
    })
  })

export const layer = <I>(
  projectorTag: Context.Tag<I, ProjectorShape<RbacView.RbacView>>,
  clusterName: string
) =>
  Layer.effect(
    CertAuthority,
    Effect.flatMap(projectorTag, (projector) => make({ clusterName, projector }))
  )

/** An OpenSSH private key file for an Ed25519 key, for `tctl auth sign --format=openssh`. */
export const openSshPrivateKey = (key: KeyObject) => privateKeyToOpenSsh(key)
