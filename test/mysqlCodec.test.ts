/** Example tests for the MySQL codec's phase handling (the property tests cover the layouts). */
import { describe, expect, it } from "vitest"
import { Capability, ClientPacketParser, ServerPacketParser, ServerStatus, framePacket, serializeClient, serializeServer } from "../src/protocols/mysql/index.ts"
import type { BoundParam, ClientMessage, ServerMessage } from "../src/protocols/mysql/index.ts"
import { ColumnType } from "../src/protocols/mysql/index.ts"
import { formatParameter, useTargets } from "../src/protocols/mysql/engine.ts"

const CAPS = (Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH | Capability.DEPRECATE_EOF) >>> 0
const hello: ClientMessage = { kind: "handshakeResponse41", capabilities: CAPS, maxPacketSize: 1 << 24, charset: 45, mariadbCapabilities: 0, username: "alice", authResponse: new Uint8Array(20), authPluginName: "mysql_native_password" }
const ok = (statusFlags = 0, header: 0 | 0xfe = 0): ServerMessage => ({ kind: "ok", header, affectedRows: 0n, lastInsertId: 0n, statusFlags, warnings: 0, info: "" })
const kinds = (rs: ReadonlyArray<{ kind: string; message?: { kind: string }; reason?: string }>) => rs.map((r) => r.message?.kind ?? `error:${r.reason}`)

describe("ClientPacketParser phases", () => {
  it("handshake → auth data → commands → LOCAL INFILE data → commands → quit", () => {
    const p = new ClientPacketParser()
    expect(kinds(p.push(serializeClient(hello, { sequenceId: 1 })))).toEqual(["handshakeResponse41"])
    expect(kinds(p.push(framePacket(new Uint8Array([1, 2, 3]), 3)))).toEqual(["authData"])
    p.authenticated()
    expect(kinds(p.push(serializeClient({ kind: "query", text: "LOAD DATA LOCAL INFILE 'x' INTO TABLE t" }, { capabilities: CAPS })))).toEqual(["query"])
    p.expectLocalInfile()
    expect(kinds(p.push(new Uint8Array([...framePacket(new Uint8Array([0x03, 0x61]), 2), ...framePacket(new Uint8Array(0), 3)])))).toEqual(["localInfileData", "localInfileData"])
    expect(p.phase).toBe("command")
    expect(kinds(p.push(serializeClient({ kind: "quit" })))).toEqual(["quit"])
    expect(kinds(p.push(serializeClient({ kind: "ping" })))).toEqual(["error:unexpected-packet"])
  })
})

describe("ServerPacketParser", () => {
  const connected = (): ServerPacketParser => {
    const p = new ServerPacketParser()
    p.expect(hello)
    p.push(serializeServer({ kind: "handshakeV10", protocolVersion: 10, serverVersion: "8.4.0", connectionId: 7, authPluginDataPart1: new Uint8Array(8), capabilities: 0xffffffff, charset: 45, statusFlags: 2, authPluginDataLength: 21, mariadbCapabilities: 0, authPluginDataPart2: new Uint8Array(13), authPluginName: "caching_sha2_password" }))
    p.push(serializeServer(ok(), { sequenceId: 2 }))
    return p
  }

  it("multi-result COM_QUERY under DEPRECATE_EOF, then COM_STMT_FETCH rows", () => {
    const p = connected()
    expect(p.phase).toBe("command")
    p.expect({ kind: "query", text: "CALL p()" })
    p.expect({ kind: "stmtFetch", statementId: 1, rows: 10 })
    const col: ServerMessage = { kind: "columnDefinition", catalog: "def", schema: "s", table: "t", orgTable: "t", name: "a", orgName: "a", charset: 45, columnLength: 11, type: 3, flags: 0, decimals: 0 }
    const more = ServerStatus.MORE_RESULTS_EXISTS
    const msgs: Array<ServerMessage> = [
      { kind: "columnCount", count: 1 },
      col,
      { kind: "row", payload: new Uint8Array([1, 0x31]) },
      ok(more, 0xfe),
      ok(0),
      { kind: "row", payload: new Uint8Array([0, 0, 1, 0, 0, 0]) },
      ok(0, 0xfe)
    ]
    const bytes = new Uint8Array(Buffer.concat(msgs.map((m, i) => serializeServer(m, { capabilities: CAPS, sequenceId: i + 1 }))))
    expect(kinds(p.push(bytes))).toEqual(["columnCount", "columnDefinition", "row", "ok", "ok", "row", "ok"])
    // Nothing outstanding: an ERR (the server closing on us) still decodes; anything else is unexpected.
    expect(kinds(p.push(serializeServer({ kind: "err", code: 4031, sqlState: "HY000", message: "timeout" }, { sequenceId: 1 })))).toEqual(["err"])
    expect(kinds(p.push(serializeServer(ok(), { sequenceId: 1 })))).toEqual(["error:unexpected-packet"])
  })

  it("COM_CHANGE_USER goes through an auth exchange before the next command's response", () => {
    const p = connected()
    p.expect({ kind: "changeUser", username: "bob", authResponse: new Uint8Array(0), database: "" })
    p.expect({ kind: "ping" })
    const msgs: Array<ServerMessage> = [{ kind: "authSwitchRequest", pluginName: "mysql_native_password", pluginData: new Uint8Array(21) }, ok(), ok()]
    const bytes = new Uint8Array(Buffer.concat(msgs.map((m) => serializeServer(m, { capabilities: CAPS }))))
    expect(kinds(p.push(bytes))).toEqual(["authSwitchRequest", "ok", "ok"])
  })
})

describe("engine helpers", () => {
  it("finds the databases USE statements switch to, wherever a statement starts", () => {
    expect(useTargets("USE app")).toEqual(["app"])
    expect(useTargets("use `my db`;")).toEqual(["my db"])
    expect(useTargets("/* c */ USE `a``b`")).toEqual(["a`b"])
    expect(useTargets("SELECT 1; use other ; SELECT 2")).toEqual(["other"])
    expect(useTargets("-- note\nUSE x")).toEqual(["x"])
    // Not a USE statement: inside a string, a comment, or another statement.
    expect(useTargets("SELECT 'x; USE other'")).toEqual([])
    expect(useTargets("SELECT 1 -- ; USE other")).toEqual([])
    expect(useTargets("SELECT * FROM used")).toEqual([])
    expect(useTargets("UPDATE t SET use_count = 1")).toEqual([])
  })

  it("formats bound parameters as audited", () => {
    const p = (type: number, value: BoundParam["value"], unsigned = false): BoundParam => ({ type, unsigned, value })
    expect(formatParameter(p(ColumnType.LONGLONG, 42n))).toBe("42")
    expect(formatParameter(p(ColumnType.VAR_STRING, new TextEncoder().encode("héllo")))).toBe("héllo")
    expect(formatParameter(p(ColumnType.BLOB, Uint8Array.of(0xff, 0x00)))).toBe("\\xff00")
    expect(formatParameter(p(ColumnType.BLOB, new Uint8Array(100).fill(0xff)))).toBe("$binary(100)")
    expect(formatParameter(p(ColumnType.NULL, null))).toBeNull()
    expect(formatParameter(p(ColumnType.DATETIME, { kind: "datetime", year: 2024, month: 1, day: 2, hour: 3, minute: 4, second: 5, microsecond: 6 }))).toBe("2024-01-02 03:04:05.000006")
    expect(formatParameter(p(ColumnType.TIME, { kind: "time", negative: true, days: 1, hours: 2, minutes: 3, seconds: 4, microseconds: 0 }))).toBe("-26:03:04")
  })

  it("a server parser joined after authentication counts what is still owed", () => {
    const p = new ServerPacketParser({ capabilities: CAPS, established: { serverCapabilities: CAPS } })
    expect(p.phase).toBe("command")
    p.expect({ kind: "ping" })
    p.expect({ kind: "query", text: "SELECT 1" })
    expect(p.outstanding).toBe(2)
    p.push(serializeServer(ok(), { sequenceId: 1 }))
    expect(p.outstanding).toBe(1)
    const msgs: Array<ServerMessage> = [{ kind: "columnCount", count: 1 }, { kind: "columnDefinition", catalog: "def", schema: "", table: "", orgTable: "", name: "1", orgName: "", charset: 63, columnLength: 1, type: 8, flags: 0, decimals: 0 }, { kind: "row", payload: Uint8Array.of(1, 0x31) }, ok(0, 0xfe)]
    p.push(new Uint8Array(Buffer.concat(msgs.map((m, i) => serializeServer(m, { capabilities: CAPS, sequenceId: i + 1 })))))
    expect(p.outstanding).toBe(0)
  })
})
