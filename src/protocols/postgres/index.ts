/** PostgreSQL v3 wire codec: pure, both directions. */
export * from "./messages.ts"
export { Reader, MalformedMessage, decodeText } from "./reader.ts"
export { Writer } from "./writer.ts"
export { serializeFrontend, serializeBackend, passwordMessage, saslInitialResponse, saslResponse } from "./serializer.ts"
export {
  BackendParser,
  DEFAULT_MAX_MESSAGE_SIZE,
  FrameSplitter,
  FrontendParser,
  MAX_STARTUP_PACKET_SIZE,
  decodeBackend,
  decodeFrontend,
  decodeStartup,
  readPasswordMessage,
  readSASLInitialResponse,
  readSASLResponse
} from "./parser.ts"
export type {
  BackendParseResult,
  Frame,
  FrontendParseResult,
  FrontendParserState,
  ParserOptions,
  ProtocolError,
  ProtocolErrorReason
} from "./parser.ts"
export { SqlState, errorResponse, protocolErrorResponse, toErrorResponse } from "./errors.ts"
export type { ErrorResponseInput, ErrorSeverity } from "./errors.ts"
