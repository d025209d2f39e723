/**
 * Example-based tests for the PostgreSQL wire codec, with byte fixtures written
 * by hand from the protocol documentation rather than produced by our serializer.
 */
import { describe, expect, it } from "vitest"
import {
  BackendParser,
  FrameSplitter,
  FrontendParser,
  PROTOCOL_3_0,
  SqlState,
  passwordMessage,
  protocolErrorResponse,
  readPasswordMessage,
  readSASLInitialResponse,
  saslInitialResponse,
  secretKeyToInt32,
  serializeBackend,
  serializeFrontend,
  startupParameters,
  toErrorResponse
} from "../src/protocols/postgres/index.ts"

const hex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s.replace(/\s+/g, ""), "hex"))
const ascii = (s: string): string => Buffer.from(s, "latin1").toString("hex")

const startupBytes = serializeFrontend({
  kind: "startup",
  protocolVersion: PROTOCOL_3_0,
  parameters: [
    ["user", "alice"],
    ["database", "prod"]
  ]
})

describe("fixtures", () => {
  // Lengths below count themselves and the body, not the type byte.
  it("SSLRequest, GSSENCRequest and CancelRequest have their documented bytes", () => {
    expect(serializeFrontend({ kind: "sslRequest" })).toEqual(hex("00000008 04d2162f"))
    expect(serializeFrontend({ kind: "gssEncRequest" })).toEqual(hex("00000008 04d21630"))
    const cancel = hex("00000010 04d2162e 00003039 deadbeef")
    const [m] = new FrontendParser().push(cancel)
    expect(m).toMatchObject({ kind: "cancelRequest", processId: 12345 })
    expect(m?.kind === "cancelRequest" && secretKeyToInt32(m.secretKey)).toBe(0xdeadbeef | 0)
  })

  it("a StartupMessage decodes to ordered parameters", () => {
    const bytes = hex(`00000022 00030000 ${ascii("user\0alice\0database\0prod\0\0")}`)
    expect(bytes).toEqual(startupBytes)
    const [m] = new FrontendParser().push(bytes)
    expect(m).toEqual({ kind: "startup", protocolVersion: PROTOCOL_3_0, parameters: [["user", "alice"], ["database", "prod"]] })
    expect(m?.kind === "startup" && startupParameters(m)).toEqual({ user: "alice", database: "prod" })
  })

  it("toErrorResponse builds the ErrorResponse a PostgreSQL client expects", () => {
    const bytes = toErrorResponse({
      severity: "FATAL",
      code: SqlState.InvalidAuthorizationSpecification,
      message: "access denied",
      hint: "ask for a role"
    })
    const body = ascii("SFATAL\0VFATAL\0C28000\0Maccess denied\0Hask for a role\0\0")
    expect(bytes).toEqual(hex(`45 ${(4 + body.length / 2).toString(16).padStart(8, "0")} ${body}`))
    expect(new BackendParser().push(bytes)).toEqual([
      {
        kind: "errorResponse",
        fields: { severity: "FATAL", severityNonLocalized: "FATAL", code: "28000", message: "access denied", hint: "ask for a role" }
      }
    ])
    expect(() => toErrorResponse({ severity: "ERROR", code: "bad", message: "x" })).toThrow(RangeError)
  })

  it("AuthenticationMD5Password and ReadyForQuery", () => {
    const out = new BackendParser().push(hex("52 0000000c 00000005 01020304  5a 00000005 49"))
    expect(out).toEqual([
      { kind: "authenticationMD5Password", salt: hex("01020304") },
      { kind: "readyForQuery", status: "I" }
    ])
  })

  it("a RowDescription and DataRow with a NULL", () => {
    const row = hex(`54 0000001b 0001 ${ascii("id\0")} 00004001 0001 00000017 0004 ffffffff 0000`)
    const data = hex("44 00000014 0003 00000002 3432 ffffffff 00000000")
    expect(new BackendParser().push(new Uint8Array(Buffer.concat([row, data])))).toEqual([
      {
        kind: "rowDescription",
        fields: [{ name: "id", tableOID: 16385, columnAttr: 1, typeOID: 23, typeSize: 4, typeModifier: -1, format: 0 }]
      },
      { kind: "dataRow", columns: [hex("3432"), null, new Uint8Array(0)] }
    ])
  })
})

describe("frontend parser states", () => {
  it("SSLRequest stops parsing until re-armed; bytes sent before our answer are refused", () => {
    const p = new FrontendParser()
    expect(p.push(serializeFrontend({ kind: "sslRequest" }))).toEqual([{ kind: "sslRequest" }])
    expect(p.state).toBe("encryptionRequested")
    p.rearmStartup()
    expect(p.push(startupBytes)).toMatchObject([{ kind: "startup" }])
    expect(p.state).toBe("normal")

    const injected = new FrontendParser().push(new Uint8Array(Buffer.concat([serializeFrontend({ kind: "sslRequest" }), startupBytes])))
    expect(injected).toMatchObject([{ kind: "sslRequest" }, { kind: "error", reason: "unexpected-data" }])
  })

  it("after CancelRequest the connection is over", () => {
    const p = new FrontendParser()
    p.push(hex("00000010 04d2162e 00000001 00000002"))
    expect(p.state).toBe("closed")
    expect(p.push(hex("00"))).toMatchObject([{ kind: "error", reason: "unexpected-data" }])
  })

  it("protocol 3.2 cancel keys may be longer than 4 bytes", () => {
    const key = new Uint8Array(32).fill(7)
    const bytes = serializeFrontend({ kind: "cancelRequest", processId: 9, secretKey: key })
    expect(new FrontendParser().push(bytes)).toEqual([{ kind: "cancelRequest", processId: 9, secretKey: key }])
  })

  it("protocol 2.0 startup comes back as an unknownRequest value", () => {
    const out = new FrontendParser().push(hex("0000000c 00020000 61626364"))
    expect(out).toEqual([{ kind: "unknownRequest", code: 0x20000, body: hex("61626364") }])
  })
})

describe("values, not exceptions", () => {
  it("an unknown message code comes back as a value", () => {
    expect(new BackendParser().push(hex("7a 00000006 0102"))).toEqual([{ kind: "unknown", code: 0x7a, body: hex("0102") }])
  })

  it("a body that does not match its layout is malformed-message, and the parser then refuses input", () => {
    const p = new BackendParser()
    const bad = p.push(hex("5a 00000005 58"))
    expect(bad).toMatchObject([{ kind: "error", reason: "malformed-message", code: 0x5a }])
    expect(p.push(hex("5a 00000005 49"))).toEqual(bad)
    expect(protocolErrorResponse(bad[0] as never)[0]).toBe(0x45)
  })

  it("auth responses are interpreted by the caller", () => {
    expect(readPasswordMessage(passwordMessage("s3cret"))).toBe("s3cret")
    expect(readSASLInitialResponse(saslInitialResponse("SCRAM-SHA-256", null))).toEqual({ mechanism: "SCRAM-SHA-256", response: null })
    expect(readPasswordMessage({ kind: "authResponse", data: hex("6100 62") })).toBeUndefined()
  })
})

describe("buffering", () => {
  it("frames cut from a whole chunk are zero-copy views of it", () => {
    const chunk = serializeBackend({ kind: "copyData", data: new Uint8Array(100).fill(1) })
    const [m] = new BackendParser().push(chunk)
    expect(m?.kind === "copyData" && m.data.buffer).toBe(chunk.buffer)
  })

  it("a 64 MiB COPY stream in 64 KiB socket chunks parses in linear time", () => {
    const row = serializeFrontend({ kind: "copyData", data: new Uint8Array(8191).fill(0x41) })
    const big = serializeFrontend({ kind: "copyData", data: new Uint8Array(16 * 1024 * 1024).fill(0x42) })
    const stream = Buffer.concat([...Array.from({ length: 6000 }, () => row), big, serializeFrontend({ kind: "copyDone" })])
    const p = new FrontendParser()
    p.push(startupBytes)
    const splitter = new FrameSplitter()
    const t0 = performance.now()
    let messages = 0
    let frames = 0
    let relayed = 0
    for (let off = 0; off < stream.length; off += 65536) {
      const chunk = new Uint8Array(stream.buffer, stream.byteOffset + off, Math.min(65536, stream.length - off))
      messages += p.push(chunk).length
      for (const f of splitter.push(chunk)) {
        frames++
        if (f.kind === "frame") relayed += f.bytes.length
      }
    }
    const ms = performance.now() - t0
    expect(messages).toBe(6002)
    expect(frames).toBe(6002)
    expect(relayed).toBe(stream.length)
    expect(p.pendingBytes).toBe(0)
    expect(ms).toBeLessThan(3000)
  })
})
