/** Reads an HTTP request body up to `maxBytes`; a larger one is refused and the request destroyed. */
import type * as http from "node:http"

export const readBody = (req: http.IncomingMessage, maxBytes: number): Promise<string> =>
  new Promise<string>((resolve, reject) => {
    const chunks: Array<Buffer> = []
    let size = 0
    req.on("data", (c: Buffer) => {
      size += c.length
      if (size > maxBytes) {
        reject(new Error("request body too large"))
        req.destroy()
      } else chunks.push(c)
    })
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")))
    req.on("error", reject)
  })
