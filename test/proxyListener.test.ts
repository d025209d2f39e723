/**
 * The proxy's port sniffer with real sockets: a GSSENCRequest is refused with `N` and whatever
 * came in the same packet is read at once (psql may send its SSLRequest right behind it), a
 * plaintext StartupMessage is told that TLS is required, and garbage is closed without harming the
 * listener.
 */
import * as net from "node:net"
import { Effect, Scope, Exit } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as ProxyListener from "../src/adapters/ProxyListener.ts"
import * as X509 from "../src/adapters/x509.ts"

const exchange = (port: number, payload: Buffer, until: (got: Buffer) => boolean): Promise<Buffer> =>
  new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => socket.write(payload))
    let got = Buffer.alloc(0)
    const timer = setTimeout(() => {
      socket.destroy()
      resolve(got)
    }, 5_000)
    socket.on("data", (d: Buffer) => {
      got = Buffer.concat([got, d])
      if (until(got)) {
        clearTimeout(timer)
        socket.destroy()
        resolve(got)
      }
    })
    socket.on("close", () => {
      clearTimeout(timer)
      resolve(got)
    })
    socket.on("error", reject)
  })

const request = (code: number) => {
  const b = Buffer.alloc(8)
  b.writeUInt32BE(8, 0)
  b.writeUInt32BE(code, 4)
  return b
}

describe("ProxyListener sniffing", () => {
  const scope = Effect.runSync(Scope.make())
  let port = 0
  beforeAll(async () => {
    const ca = await Effect.runPromise(X509.generateCa("test", "main", 1))
    const listening = await Effect.runPromise(
      ProxyListener.listen("127.0.0.1:0", { key: ca.keyPem, cert: ca.certPem }, { http: (_req, res) => res.end("ok"), alpn: {} }).pipe(Scope.extend(scope))
    )
    port = listening.port
  })
  afterAll(async () => {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  it("answers a GSSENCRequest and the SSLRequest that follows it in the same packet", async () => {
    const got = await exchange(port, Buffer.concat([request(80877104), request(80877103)]), (g) => g.length >= 2)
    expect(got.subarray(0, 2).toString("latin1")).toBe("NS")
  })

  it("tells a plaintext StartupMessage that TLS is required, and closes garbage", async () => {
    const startup = Buffer.alloc(8)
    startup.writeUInt32BE(8, 0)
    startup.writeUInt32BE(196608, 4)
    const refused = await exchange(port, startup, () => false)
    expect(refused.toString("latin1")).toContain("accepts only TLS")
    const garbage = await exchange(port, Buffer.from("GET / HTTP/1.0\r\n\r\n"), () => false)
    expect(garbage.length).toBe(0)
    // The listener still serves.
    const again = await exchange(port, request(80877104), (g) => g.length >= 1)
    expect(again.toString("latin1")).toBe("N")
  })
})
