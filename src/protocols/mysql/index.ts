/** MySQL/MariaDB client/server protocol codec: pure, both directions. */
export * from "./messages.ts"
export { Reader, MalformedPacket, decodeText } from "./reader.ts"
export { Writer, encodeText } from "./writer.ts"
export { DEFAULT_MAX_PACKET_SIZE, PacketFramer, PacketSplitter, framePacket, protocolError, wirePacketCount } from "./packet.ts"
export type { FramingOptions, LogicalPacket, ProtocolError, ProtocolErrorReason } from "./packet.ts"
export {
  ClientPacketParser,
  ServerPacketParser,
  decodeAuthResponse,
  decodeColumnDefinition,
  decodeCommand,
  decodeEof,
  decodeErr,
  decodeHandshake,
  decodeHandshakeResponse,
  decodeOk,
  decodeStmtPrepareOk,
  decodeTextRow,
  readBinaryValue
} from "./parser.ts"
export type {
  ClientParseResult,
  ClientPhase,
  CommandContext,
  ParamType,
  Parsed,
  ParserOptions,
  ServerParseResult,
  ServerPhase,
  StatementInfo
} from "./parser.ts"
export {
  ErrorCode,
  encodeClient,
  encodeServer,
  errPacket,
  errPacketBytes,
  protocolErrPacket,
  serializeClient,
  serializeServer,
  writeBinaryValue
} from "./serializer.ts"
export type { SerializeOptions } from "./serializer.ts"
export { cachingSha2Scramble, nativePasswordScramble, nonceOf, scrambleOf } from "./auth.ts"
