/** UTF-8 text helpers shared by the codecs. */

const decoder = new TextDecoder("utf-8")
const encoder = new TextEncoder()

/** UTF-8 decode; invalid sequences become U+FFFD rather than throwing. */
export const decodeText = (bytes: Uint8Array): string => decoder.decode(bytes)

/** UTF-8 bytes of `s`. */
export const encodeText = (s: string): Uint8Array => encoder.encode(s)
