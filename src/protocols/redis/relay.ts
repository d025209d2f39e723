/**
 * The byte relay of one Redis session, between the client (a tunnel stream) and Redis (TLS).
 *
 *     client ──▶ request parser ──▶ decide (audit, AUTH/HELLO rewrite or refusal)
 *                                   ──▶ re-encoded as multibulk, a whole chunk's commands in one write ──▶ Redis
 *     client ◀── raw bytes, as they come ◀── reply counter (parses, never re-encodes) ◀── Redis
 *
 * Commands are re-encoded rather than relayed raw: what Redis executes is exactly what was parsed
 * and audited (an inline command, or bytes our parser and Redis's might read differently, cannot
 * slip past the audit). Replies go back untouched, but are parsed to count them: a reply the relay
 * makes itself (a refused AUTH) must reach the client after the replies to the commands before it,
 * so it waits until Redis has answered everything it was sent (the commands after it wait too).
 * Pub/sub messages and other pushes are not answers and are not counted.
 */
import type { Duplex } from "node:stream"
import type { ProtocolError } from "./parser.ts"
import { RespParser } from "./parser.ts"
import { commandOf } from "./resp.ts"
import type { RedisCommand, RespValue } from "./resp.ts"
import { protocolErrorReply } from "./serializer.ts"
import { isSubscribeFamily, repliesOwed } from "./commands.ts"
import type { ReplyMode } from "./commands.ts"

/** What the engine does with one command. */
export type Decision =
  | { readonly forward: RedisCommand }
  /** Answer with `reply` instead; with `end`, the session then ends for that reason. */
  | { readonly reply: Uint8Array; readonly end?: string }

export type EndReason =
  | { readonly kind: "client-closed" }
  | { readonly kind: "client-protocol"; readonly error: ProtocolError }
  | { readonly kind: "upstream-closed"; readonly message: string }
  | { readonly kind: "terminated"; readonly message: string }

export interface RelayHooks {
  /** Audits `cmd` and decides; called in command order, before anything of it goes upstream. */
  readonly decide: (cmd: RedisCommand) => Decision
  readonly onEnd: (reason: EndReason) => void
  /** The error the client reads when Redis goes away, e.g. `connection to database cache1 lost`. */
  readonly lost: () => Uint8Array
}

const toBytes = (chunk: unknown): Uint8Array => (typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Uint8Array))

/** `*N\r\n$len\r\narg\r\n...` for many commands, in one buffer. */
export const encodeCommands = (cmds: ReadonlyArray<RedisCommand>): Buffer => {
  let size = 0
  for (const c of cmds) {
    size += 16 + c.name.length + 16
    for (const a of c.args) size += 16 + a.length
  }
  const out = Buffer.allocUnsafe(size)
  let o = 0
  for (const c of cmds) {
    o += out.write(`*${c.args.length + 1}\r\n$${c.name.length}\r\n${c.name}\r\n`, o, "latin1")
    for (const a of c.args) {
      o += out.write(`$${a.length}\r\n`, o, "latin1")
      out.set(a, o)
      o += a.length
      out[o++] = 0x0d
      out[o++] = 0x0a
    }
  }
  return out.subarray(0, o)
}

const PUBSUB_MESSAGES = new Set(["message", "pmessage", "smessage"])
const latin1 = new TextDecoder("latin1")

const firstWord = (items: ReadonlyArray<RespValue>): string | undefined => {
  const f = items[0]
  return f?.kind === "bulk" && f.value !== null && f.value.length < 16 ? latin1.decode(f.value).toLowerCase() : f?.kind === "simple" ? f.value.toLowerCase() : undefined
}

export class RedisRelay {
  private readonly requests = new RespParser({ mode: "request" })
  private readonly replies = new RespParser({ mode: "reply" })
  /** Replies Redis still owes for what it was sent. */
  private outstanding = 0
  private replyMode: ReplyMode = "on"
  private subscribed = false
  private resp3 = false
  /** A reply of ours waiting for Redis to answer what came before it; then the connection may close. */
  private local: { readonly bytes: Uint8Array; readonly close: EndReason | undefined } | undefined
  /** Commands that arrived behind `local`. */
  private held: Array<RedisCommand> = []
  private readonly pauses = new Set<string>()
  private ended = false
  private clientEnded = false

  constructor(
    private readonly client: Duplex,
    private readonly upstream: Duplex,
    private readonly hooks: RelayHooks
  ) {}

  start(): void {
    const { client, upstream } = this
    client.on("data", this.onClientData)
    client.once("end", this.onClientEnd)
    client.once("close", this.onClientClose)
    upstream.on("data", this.onUpstreamData)
    upstream.once("end", this.onUpstreamEnd)
    upstream.once("close", this.onUpstreamEnd)
    upstream.resume()
    client.resume()
  }

  pauseClient(why: string): void {
    this.pauses.add(why)
    this.client.pause()
  }

  resumeClient(why: string): void {
    if (!this.pauses.delete(why) || this.pauses.size > 0 || this.ended) return
    this.client.resume()
  }

  /** Ends the session now: `error` reaches the client if it can be put between two replies. */
  terminate(error: Uint8Array, message: string): void {
    if (this.ended) return
    if (this.replies.idle) this.client.end(error)
    else this.client.end()
    this.finish({ kind: "terminated", message })
  }

  /** Removes our listeners (the sockets are destroyed by the session's scope). */
  stop(): void {
    this.ended = true
    const { client, upstream } = this
    client.off("data", this.onClientData)
    client.off("end", this.onClientEnd)
    client.off("close", this.onClientClose)
    upstream.off("data", this.onUpstreamData)
    upstream.off("end", this.onUpstreamEnd)
    upstream.off("close", this.onUpstreamEnd)
  }

  private finish(reason: EndReason): void {
    if (this.ended) return
    this.stop()
    this.hooks.onEnd(reason)
  }

  private readonly onClientData = (chunk: unknown): void => {
    if (this.ended || this.pauses.has("stopped")) return
    const cmds: Array<RedisCommand> = []
    for (const r of this.requests.push(toBytes(chunk))) {
      if (r.kind === "error" && "reason" in r) {
        this.process(cmds)
        this.pauseClient("stopped")
        this.reply(protocolErrorReply(r), { kind: "client-protocol", error: r })
        return
      }
      const cmd = commandOf(r as RespValue)
      if (cmd !== undefined) cmds.push(cmd)
    }
    this.process(cmds)
  }

  /** Decides and forwards commands in order; stops at a reply of ours that must wait. */
  private process(cmds: ReadonlyArray<RedisCommand>): void {
    let out: Array<RedisCommand> = []
    for (let i = 0; i < cmds.length; i++) {
      const cmd = cmds[i]!
      if (this.local !== undefined) {
        this.held.push(cmd)
        continue
      }
      const d = this.hooks.decide(cmd)
      if ("forward" in d) {
        out.push(d.forward)
        const owed = repliesOwed(d.forward, this.replyMode)
        this.outstanding += owed.owed
        this.replyMode = owed.mode
        if (isSubscribeFamily(d.forward.name)) this.subscribed = true
      } else {
        this.send(out)
        out = []
        // Under CLIENT REPLY OFF|SKIP Redis would not answer this command either: neither do we.
        const silent = this.replyMode !== "on"
        if (this.replyMode === "skip") this.replyMode = "on"
        if (d.end !== undefined) {
          this.pauseClient("stopped")
          this.reply(d.reply, { kind: "terminated", message: d.end })
          return
        }
        if (!silent) this.reply(d.reply, undefined)
      }
    }
    this.send(out)
  }

  private send(cmds: ReadonlyArray<RedisCommand>): void {
    if (cmds.length === 0) return
    if (!this.upstream.write(encodeCommands(cmds))) {
      this.pauseClient("upstream")
      this.upstream.once("drain", () => this.resumeClient("upstream"))
    }
  }

  /** Our own reply, after Redis has answered everything before it; then maybe the end. */
  private reply(bytes: Uint8Array, close: EndReason | undefined): void {
    if (this.outstanding === 0 && this.local === undefined) {
      this.deliver(bytes, close)
      return
    }
    this.local = { bytes, close }
    this.pauseClient("local")
  }

  private deliver(bytes: Uint8Array, close: EndReason | undefined): void {
    if (close !== undefined) {
      this.client.end(bytes)
      this.upstream.end()
      this.finish(close)
      return
    }
    this.client.write(bytes)
  }

  /** Counts the answers in a chunk of replies; pushes and pub/sub messages are not answers. */
  private count(chunk: Uint8Array): void {
    for (const r of this.replies.push(chunk)) {
      if (r.kind === "error" && "reason" in r) {
        // Redis sent what we cannot read: stop counting, never wait for an answer again.
        this.outstanding = 0
        return
      }
      const v = r as RespValue
      if (v.kind === "push") {
        this.resp3 = true
        const w = firstWord(v.value)
        // RESP3 subscription confirmations come as pushes, but they answer (P|S)(UN)SUBSCRIBE.
        if (w === undefined || !w.includes("subscribe")) continue
      } else if (v.kind === "array" && v.value !== null && this.subscribed && !this.resp3) {
        const w = firstWord(v.value)
        if (w !== undefined && PUBSUB_MESSAGES.has(w)) continue
      } else if (v.kind === "map" || v.kind === "attribute" || v.kind === "null" || v.kind === "set") {
        this.resp3 = true
      }
      if (this.outstanding > 0) this.outstanding--
    }
  }

  private readonly onUpstreamData = (chunk: unknown): void => {
    if (this.ended) return
    const bytes = toBytes(chunk)
    this.count(bytes)
    if (!this.client.write(bytes)) {
      this.upstream.pause()
      this.client.once("drain", () => {
        if (!this.ended) this.upstream.resume()
      })
    }
    if (this.local !== undefined && this.outstanding === 0) {
      const { bytes: ours, close } = this.local
      this.local = undefined
      this.deliver(ours, close)
      if (this.ended) return
      const held = this.held
      this.held = []
      this.process(held)
      if (this.local === undefined) this.resumeClient("local")
    }
  }

  /** The client half-closed: Redis still answers what it was sent, then we close. */
  private readonly onClientEnd = (): void => {
    if (this.ended) return
    this.clientEnded = true
    this.upstream.end()
  }

  private readonly onClientClose = (): void => {
    if (this.ended) return
    this.upstream.destroy()
    this.finish({ kind: "client-closed" })
  }

  private readonly onUpstreamEnd = (): void => {
    if (this.ended) return
    if (this.clientEnded) {
      this.client.end()
      this.finish({ kind: "client-closed" })
      return
    }
    const lost = this.hooks.lost()
    // Mid-reply, an error would corrupt the stream; the client only sees the close then.
    if (this.replies.idle) this.client.end(lost)
    else this.client.end()
    this.finish({ kind: "upstream-closed", message: new TextDecoder().decode(lost.subarray(1)).trim() })
  }
}
