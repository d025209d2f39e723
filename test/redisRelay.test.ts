/**
 * The Redis relay's ordering of its own replies (refused AUTH) against Redis's, on in-memory
 * streams: the fake Redis here is a byte script, written and read by the test.
 */
import { Duplex, PassThrough } from "node:stream"
import { describe, expect, it } from "vitest"
import { errorReply } from "../src/protocols/redis/index.ts"
import type { Decision, EndReason } from "../src/protocols/redis/relay.ts"
import { RedisRelay } from "../src/protocols/redis/relay.ts"

const pair = (): [Duplex, Duplex] => {
  const aToB = new PassThrough()
  const bToA = new PassThrough()
  return [Duplex.from({ readable: bToA, writable: aToB }), Duplex.from({ readable: aToB, writable: bToA })]
}

/** Collects what a stream emits, as latin1 text. */
const reader = (s: Duplex) => {
  let text = ""
  s.on("data", (d: Buffer) => (text += d.toString("latin1")))
  return {
    text: () => text,
    until: async (re: RegExp) => {
      const deadline = Date.now() + 2_000
      while (!re.test(text) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
      return text
    }
  }
}

const setup = () => {
  const [clientApp, clientSide] = pair()
  const [upstreamSide, redis] = pair()
  const ends: Array<EndReason> = []
  const decide = (cmd: { name: string; args: ReadonlyArray<Uint8Array> }): Decision =>
    cmd.name === "AUTH" && Buffer.from(cmd.args[0]!).toString() === "bob" ? { reply: errorReply("no", "NOPERM") } : { forward: cmd }
  const relay = new RedisRelay(clientSide, upstreamSide, { decide, onEnd: (r) => ends.push(r), lost: () => errorReply("lost") })
  relay.start()
  return { client: clientApp, fromRedis: reader(redis), toClient: reader(clientApp), redis, ends }
}

describe("RedisRelay", () => {
  it("a refusal waits for the replies to the commands before it; the commands after it wait for the refusal", async () => {
    const t = setup()
    t.client.write("SET a 1\r\nAUTH bob x\r\nGET a\r\n")
    expect(await t.fromRedis.until(/SET/)).toBe("*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n")
    await new Promise((r) => setTimeout(r, 30))
    expect(t.toClient.text()).toBe("")
    expect(t.fromRedis.text()).not.toMatch(/GET/)
    t.redis.write("+OK\r\n")
    expect(await t.toClient.until(/NOPERM/)).toBe("+OK\r\n-NOPERM no\r\n")
    expect(await t.fromRedis.until(/GET/)).toMatch(/\*2\r\n\$3\r\nGET\r\n\$1\r\na\r\n$/)
    t.redis.write("$1\r\n1\r\n")
    expect(await t.toClient.until(/\$1\r\n1\r\n$/)).toBe("+OK\r\n-NOPERM no\r\n$1\r\n1\r\n")
  })

  it("pub/sub messages are not answers; RESP3 subscribe confirmations are", async () => {
    const t = setup()
    t.client.write("*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\nAUTH bob x\r\nPING\r\n")
    await t.fromRedis.until(/SUBSCRIBE/)
    t.redis.write(">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n")
    expect(await t.toClient.until(/NOPERM/)).toMatch(/:1\r\n>3\r\n\$7\r\nmessage\r\n\$1\r\nc\r\n\$2\r\nhi\r\n-NOPERM no\r\n$/)
    expect(await t.fromRedis.until(/PING/)).toMatch(/PING\r\n$/)
  })

  it("RESP2 pub/sub messages arriving before the confirmation are not counted either", async () => {
    const t = setup()
    t.client.write("SUBSCRIBE c d\r\nAUTH bob x\r\n")
    await t.fromRedis.until(/SUBSCRIBE/)
    t.redis.write("*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n")
    await new Promise((r) => setTimeout(r, 30))
    expect(t.toClient.text()).not.toMatch(/NOPERM/)
    t.redis.write("*3\r\n$9\r\nsubscribe\r\n$1\r\nd\r\n:2\r\n")
    expect(await t.toClient.until(/NOPERM/)).toMatch(/:2\r\n-NOPERM no\r\n$/)
  })

  it("under CLIENT REPLY OFF a refusal is silent, as Redis's own errors are", async () => {
    const t = setup()
    t.client.write("CLIENT REPLY OFF\r\nAUTH bob x\r\nPING\r\n")
    expect(await t.fromRedis.until(/PING/)).toMatch(/REPLY\r\n\$3\r\nOFF\r\n\*1\r\n\$4\r\nPING\r\n$/)
    await new Promise((r) => setTimeout(r, 30))
    expect(t.toClient.text()).toBe("")
  })

  it("a protocol error is answered after the earlier replies, then the session ends", async () => {
    const t = setup()
    t.client.write("GET a\r\n*1\r\n$1099511627776\r\n")
    await t.fromRedis.until(/GET/)
    t.redis.write("$-1\r\n")
    expect(await t.toClient.until(/Protocol error/)).toBe("$-1\r\n-ERR Protocol error: invalid bulk length\r\n")
    expect(t.ends.map((e) => e.kind)).toEqual(["client-protocol"])
  })

  it("Redis going away mid-session gives the client an error between replies", async () => {
    const t = setup()
    t.client.write("GET a\r\n")
    await t.fromRedis.until(/GET/)
    t.redis.end("$-1\r\n")
    expect(await t.toClient.until(/lost/)).toBe("$-1\r\n-ERR lost\r\n")
    expect(t.ends.map((e) => e.kind)).toEqual(["upstream-closed"])
  })
})
