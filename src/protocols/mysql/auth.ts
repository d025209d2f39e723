/**
 * Client-side scrambles for upstream authentication (the agent logs in to the
 * real server). Both plugins hash the password against the 20-byte nonce the
 * server sent in HandshakeV10 or AuthSwitchRequest.
 */
import { createHash } from "node:crypto"
import type { HandshakeV10 } from "./messages.ts"

const hash = (alg: "sha1" | "sha256", ...parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  const h = createHash(alg)
  for (const p of parts) h.update(p)
  return new Uint8Array(h.digest())
}

const toBytes = (password: string | Uint8Array): Uint8Array =>
  typeof password === "string" ? new TextEncoder().encode(password) : password

const xor = (a: Uint8Array, b: Uint8Array): Uint8Array => a.map((x, i) => x ^ b[i]!)

/**
 * The nonce without the NUL servers append to it (21 bytes on the wire for a
 * 20-byte nonce). A 20-byte nonce is taken as is: its last byte may be 0.
 */
export const nonceOf = (pluginData: Uint8Array): Uint8Array =>
  pluginData.length > 20 && pluginData[pluginData.length - 1] === 0 ? pluginData.subarray(0, pluginData.length - 1) : pluginData

/** auth-plugin-data parts 1 and 2 of a greeting joined, trailing NUL dropped (20 bytes from MySQL/MariaDB). */
export const scrambleOf = (h: HandshakeV10): Uint8Array => {
  const out = new Uint8Array(h.authPluginDataPart1.length + h.authPluginDataPart2.length)
  out.set(h.authPluginDataPart1)
  out.set(h.authPluginDataPart2, h.authPluginDataPart1.length)
  return nonceOf(out)
}

/** mysql_native_password: SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw))); empty for an empty password. */
export const nativePasswordScramble = (password: string | Uint8Array, nonce: Uint8Array): Uint8Array => {
  const pw = toBytes(password)
  if (pw.length === 0) return new Uint8Array(0)
  const stage1 = hash("sha1", pw)
  const stage2 = hash("sha1", stage1)
  return xor(stage1, hash("sha1", nonceOf(nonce), stage2))
}

/** caching_sha2_password fast auth: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce); empty for an empty password. */
export const cachingSha2Scramble = (password: string | Uint8Array, nonce: Uint8Array): Uint8Array => {
  const pw = toBytes(password)
  if (pw.length === 0) return new Uint8Array(0)
  const stage1 = hash("sha256", pw)
  const stage2 = hash("sha256", stage1)
  return xor(stage1, hash("sha256", stage2, nonceOf(nonce)))
}
