/** RESP2/RESP3 codec: pure, both directions. */
export * from "./resp.ts"
export {
  DEFAULT_MAX_BULK_LENGTH,
  DEFAULT_MAX_DEPTH,
  DEFAULT_MAX_INLINE_LENGTH,
  DEFAULT_MAX_MULTIBULK_LENGTH,
  RespParser,
  splitArgs
} from "./parser.ts"
export type { ParseResult, ParserOptions, ProtocolError, ProtocolErrorReason } from "./parser.ts"
export { errorReply, protocolErrorReply, serialize, serializeCommand } from "./serializer.ts"
