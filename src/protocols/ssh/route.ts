/**
 * The routing preamble of ALPN `remoteler-ssh` on the proxy's web port. Inside TLS (the user's
 * client certificate already checked), the client names the node in one line and the proxy
 * answers in one line; after that the connection carries the raw SSH stream to the node, which
 * the proxy never decrypts.
 *
 *     client → proxy    "<host>:<port>\n"          host: node name, `<node>.<cluster>` or host id
 *     proxy  → client   "OK\n"                      the node's stream follows
 *                       "ERR <message>\n"           refused (message for the user); closed
 *
 * Why a line inside TLS and not the TLS SNI: SNI travels in clear before the handshake (it would
 * show which node a user reaches), must be a DNS name (node names need not be), carries no port,
 * and is also the name the client checks the proxy's certificate against. And only a reply can
 * give the user a reason ("no node named x") instead of a dropped connection. The client may send
 * its SSH banner right after its line without waiting for `OK`, so routing costs no round trip.
 */

/** Longest preamble line accepted, newline included. */
export const MAX_LINE = 512

export interface Target {
  readonly host: string
  readonly port: number
}

export type ParsedLine<A> =
  | { readonly _tag: "Pending" }
  | { readonly _tag: "Invalid"; readonly message: string }
  | { readonly _tag: "Line"; readonly value: A; readonly rest: Buffer }

const NAME = /^[A-Za-z0-9._-]{1,253}$/

/** Splits `host[:port]` (port 0 when absent); undefined when it is not one. */
export const parseTarget = (text: string): Target | undefined => {
  const m = /^([^:\s]+)(?::(\d{1,5}))?$/.exec(text)
  if (m === null || !NAME.test(m[1]!)) return undefined
  const port = m[2] === undefined ? 0 : Number(m[2])
  return port > 65535 ? undefined : { host: m[1]!, port }
}

export const encodeTarget = (t: Target): Buffer => Buffer.from(`${t.host}:${t.port}\n`, "utf8")

const takeLine = (buf: Buffer): ParsedLine<string> => {
  const nl = buf.indexOf(0x0a)
  if (nl < 0) return buf.length >= MAX_LINE ? { _tag: "Invalid", message: "no routing line" } : { _tag: "Pending" }
  if (nl + 1 > MAX_LINE) return { _tag: "Invalid", message: "routing line too long" }
  return { _tag: "Line", value: buf.subarray(0, nl).toString("utf8").replace(/\r$/, ""), rest: buf.subarray(nl + 1) }
}

/** The client's target line, once it has arrived whole. */
export const parseTargetLine = (buf: Buffer): ParsedLine<Target> => {
  const line = takeLine(buf)
  if (line._tag !== "Line") return line
  const t = parseTarget(line.value)
  return t === undefined ? { _tag: "Invalid", message: "the routing line is not HOST:PORT" } : { ...line, value: t }
}

export const OK = Buffer.from("OK\n")

/** An `ERR` line; the message is kept to one line. */
export const encodeError = (message: string): Buffer => Buffer.from(`ERR ${message.replace(/[\r\n]+/g, " ").slice(0, MAX_LINE - 8)}\n`, "utf8")

/** The proxy's reply: `undefined` for OK, else its error message. */
export const parseReply = (buf: Buffer): ParsedLine<string | undefined> => {
  const line = takeLine(buf)
  if (line._tag !== "Line") return line
  if (line.value === "OK") return { ...line, value: undefined }
  if (line.value.startsWith("ERR ")) return { ...line, value: line.value.slice(4) }
  return { _tag: "Invalid", message: "the proxy did not answer the routing line (is it a Remoteler proxy?)" }
}
