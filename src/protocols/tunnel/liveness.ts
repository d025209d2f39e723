/**
 * Deciding that the far end of a tunnel is dead. Both ends run this: the proxy hears PING acks, the
 * agent hears PINGs. Any byte read off the socket counts as well, because on a busy tunnel a PING
 * can wait behind megabytes of stream data and a live agent must not be dropped for it.
 */
import { Clock, Effect } from "effect"

export interface LivenessOptions {
  /** Silence longer than this means the far end is dead. */
  readonly deadAfterMs: number
  /** Plaintext bytes read so far (`tls.TLSSocket.bytesRead` counts them even under node:http2). */
  readonly bytesRead: () => number
  /** When (epoch ms) the last heartbeat was heard; 0 if never. */
  readonly lastHeartbeat: () => number
}

/**
 * Returns after `deadAfterMs` of silence, with how long it was silent. An event loop stall is
 * forgiven (the time this fiber could not run proves nothing about the peer), which can delay a
 * verdict by the length of the stall but never drops a live peer because this process was busy.
 */
export const awaitSilence = (options: LivenessOptions): Effect.Effect<number> =>
  Effect.gen(function* () {
    const step = Math.max(10, Math.min(1_000, Math.floor(options.deadAfterMs / 10)))
    let lastAlive = yield* Clock.currentTimeMillis
    let lastTick = lastAlive
    let lastBytes = options.bytesRead()
    for (;;) {
      yield* Effect.sleep(step)
      const now = yield* Clock.currentTimeMillis
      const bytes = options.bytesRead()
      const stalled = now - lastTick > 2 * step + 100
      if (bytes !== lastBytes || stalled) lastAlive = now
      lastBytes = bytes
      lastTick = now
      lastAlive = Math.max(lastAlive, options.lastHeartbeat())
      if (now - lastAlive > options.deadAfterMs) return now - lastAlive
    }
  })
