/**
 * Message values to wire bytes, one function per direction.
 *
 * Layout of a typed frame: [code:1][length:int32][body], where length counts
 * itself and the body but not the code. Startup-family packets have no code:
 * [length:int32][request code:int32][body].
 */
import {
  AuthCode,
  BackendCode,
  CANCEL_REQUEST_CODE,
  FrontendCode,
  GSSENC_REQUEST_CODE,
  NOTICE_FIELD_CODES,
  SSL_REQUEST_CODE
} from "./messages.ts"
import type { AuthResponse, BackendMessage, FrontendMessage, NoticeFields } from "./messages.ts"
import { Writer } from "./writer.ts"

const typed = (code: number, body?: (w: Writer) => void, sizeHint = 64): Uint8Array => {
  const w = new Writer(sizeHint + 5)
  w.uint8(code).int32(0)
  body?.(w)
  return w.patchInt32(1, w.length - 1).finish()
}

const untyped = (requestCode: number, body?: (w: Writer) => void, sizeHint = 64): Uint8Array => {
  const w = new Writer(sizeHint + 8)
  w.int32(0).int32(requestCode)
  body?.(w)
  return w.patchInt32(0, w.length).finish()
}

const int16s = (w: Writer, xs: ReadonlyArray<number>): void => {
  w.int16(xs.length)
  for (const x of xs) w.int16(x)
}

const sizeOf = (xs: ReadonlyArray<Uint8Array | null>): number => {
  let n = 0
  for (const x of xs) n += 4 + (x?.length ?? 0)
  return n
}

/** Encodes a client-to-server message. Throws RangeError on values that do not fit their wire types. */
export const serializeFrontend = (msg: FrontendMessage): Uint8Array => {
  switch (msg.kind) {
    case "startup":
      return untyped(msg.protocolVersion, (w) => {
        for (const [k, v] of msg.parameters) {
          if (k === "") throw new RangeError("startup parameter name must not be empty")
          w.cstring(k).cstring(v)
        }
        w.uint8(0)
      })
    case "sslRequest":
      return untyped(SSL_REQUEST_CODE)
    case "gssEncRequest":
      return untyped(GSSENC_REQUEST_CODE)
    case "cancelRequest":
      return untyped(CANCEL_REQUEST_CODE, (w) => w.int32(msg.processId).bytes(msg.secretKey))
    case "unknownRequest":
      return untyped(msg.code, (w) => w.bytes(msg.body), msg.body.length)
    case "query":
      return typed(FrontendCode.Query, (w) => w.cstring(msg.text))
    case "parse":
      return typed(FrontendCode.Parse, (w) => {
        w.cstring(msg.name).cstring(msg.text).int16(msg.paramTypes.length)
        for (const oid of msg.paramTypes) w.uint32(oid)
      })
    case "bind":
      return typed(
        FrontendCode.Bind,
        (w) => {
          w.cstring(msg.portal).cstring(msg.statement)
          int16s(w, msg.paramFormats)
          w.int16(msg.values.length)
          for (const v of msg.values) w.nullableBytes(v)
          int16s(w, msg.resultFormats)
        },
        sizeOf(msg.values) + 64
      )
    case "describe":
      return typed(FrontendCode.Describe, (w) => w.string(msg.target).cstring(msg.name))
    case "execute":
      return typed(FrontendCode.Execute, (w) => w.cstring(msg.portal).uint32(msg.maxRows))
    case "sync":
      return typed(FrontendCode.Sync)
    case "flush":
      return typed(FrontendCode.Flush)
    case "close":
      return typed(FrontendCode.Close, (w) => w.string(msg.target).cstring(msg.name))
    case "terminate":
      return typed(FrontendCode.Terminate)
    case "copyData":
      return typed(FrontendCode.CopyData, (w) => w.bytes(msg.data), msg.data.length)
    case "copyDone":
      return typed(FrontendCode.CopyDone)
    case "copyFail":
      return typed(FrontendCode.CopyFail, (w) => w.cstring(msg.message))
    case "functionCall":
      return typed(
        FrontendCode.FunctionCall,
        (w) => {
          w.uint32(msg.functionOid)
          int16s(w, msg.argFormats)
          w.int16(msg.args.length)
          for (const a of msg.args) w.nullableBytes(a)
          w.int16(msg.resultFormat)
        },
        sizeOf(msg.args) + 16
      )
    case "authResponse":
      return typed(FrontendCode.AuthResponse, (w) => w.bytes(msg.data), msg.data.length)
    case "unknown":
      return typed(msg.code, (w) => w.bytes(msg.body), msg.body.length)
  }
}

const noticeBody = (fields: NoticeFields) => (w: Writer): void => {
  for (const [name, code] of NOTICE_FIELD_CODES) {
    const v = fields[name]
    if (v !== undefined) w.string(code).cstring(v)
  }
  for (const [code, v] of fields.other ?? []) {
    if (code.length !== 1 || code === "\0") throw new RangeError(`bad notice field code ${JSON.stringify(code)}`)
    w.string(code).cstring(v)
  }
  w.uint8(0)
}

const auth = (code: number, body?: (w: Writer) => void, sizeHint?: number): Uint8Array =>
  typed(
    BackendCode.Authentication,
    (w) => {
      w.int32(code)
      body?.(w)
    },
    sizeHint
  )

/** Encodes a server-to-client message. Throws RangeError on values that do not fit their wire types. */
export const serializeBackend = (msg: BackendMessage): Uint8Array => {
  switch (msg.kind) {
    case "authenticationOk":
      return auth(AuthCode.Ok)
    case "authenticationKerberosV5":
      return auth(AuthCode.KerberosV5)
    case "authenticationCleartextPassword":
      return auth(AuthCode.CleartextPassword)
    case "authenticationMD5Password":
      if (msg.salt.length !== 4) throw new RangeError("MD5 salt must be 4 bytes")
      return auth(AuthCode.MD5Password, (w) => w.bytes(msg.salt))
    case "authenticationGSS":
      return auth(AuthCode.GSS)
    case "authenticationGSSContinue":
      return auth(AuthCode.GSSContinue, (w) => w.bytes(msg.data), msg.data.length + 4)
    case "authenticationSSPI":
      return auth(AuthCode.SSPI)
    case "authenticationSASL":
      return auth(AuthCode.SASL, (w) => {
        for (const m of msg.mechanisms) {
          if (m === "") throw new RangeError("SASL mechanism name must not be empty")
          w.cstring(m)
        }
        w.uint8(0)
      })
    case "authenticationSASLContinue":
      return auth(AuthCode.SASLContinue, (w) => w.bytes(msg.data), msg.data.length + 4)
    case "authenticationSASLFinal":
      return auth(AuthCode.SASLFinal, (w) => w.bytes(msg.data), msg.data.length + 4)
    case "backendKeyData":
      return typed(BackendCode.BackendKeyData, (w) => w.int32(msg.processId).bytes(msg.secretKey))
    case "bindComplete":
      return typed(BackendCode.BindComplete)
    case "closeComplete":
      return typed(BackendCode.CloseComplete)
    case "commandComplete":
      return typed(BackendCode.CommandComplete, (w) => w.cstring(msg.tag))
    case "copyData":
      return typed(BackendCode.CopyData, (w) => w.bytes(msg.data), msg.data.length)
    case "copyDone":
      return typed(BackendCode.CopyDone)
    case "copyInResponse":
    case "copyOutResponse":
    case "copyBothResponse": {
      const code =
        msg.kind === "copyInResponse"
          ? BackendCode.CopyInResponse
          : msg.kind === "copyOutResponse"
            ? BackendCode.CopyOutResponse
            : BackendCode.CopyBothResponse
      return typed(code, (w) => {
        w.uint8(msg.format)
        int16s(w, msg.columnFormats)
      })
    }
    case "dataRow":
      return typed(
        BackendCode.DataRow,
        (w) => {
          w.int16(msg.columns.length)
          for (const col of msg.columns) w.nullableBytes(col)
        },
        sizeOf(msg.columns) + 2
      )
    case "emptyQueryResponse":
      return typed(BackendCode.EmptyQueryResponse)
    case "errorResponse":
      return typed(BackendCode.ErrorResponse, noticeBody(msg.fields), 256)
    case "noticeResponse":
      return typed(BackendCode.NoticeResponse, noticeBody(msg.fields), 256)
    case "functionCallResponse":
      return typed(BackendCode.FunctionCallResponse, (w) => w.nullableBytes(msg.result), sizeOf([msg.result]))
    case "negotiateProtocolVersion":
      return typed(BackendCode.NegotiateProtocolVersion, (w) => {
        w.int32(msg.newestMinor).int32(msg.unrecognizedOptions.length)
        for (const o of msg.unrecognizedOptions) w.cstring(o)
      })
    case "noData":
      return typed(BackendCode.NoData)
    case "notificationResponse":
      return typed(BackendCode.NotificationResponse, (w) =>
        w.int32(msg.processId).cstring(msg.channel).cstring(msg.payload)
      )
    case "parameterDescription":
      return typed(BackendCode.ParameterDescription, (w) => {
        w.int16(msg.typeOids.length)
        for (const oid of msg.typeOids) w.uint32(oid)
      })
    case "parameterStatus":
      return typed(BackendCode.ParameterStatus, (w) => w.cstring(msg.name).cstring(msg.value))
    case "parseComplete":
      return typed(BackendCode.ParseComplete)
    case "portalSuspended":
      return typed(BackendCode.PortalSuspended)
    case "readyForQuery":
      return typed(BackendCode.ReadyForQuery, (w) => w.string(msg.status))
    case "rowDescription":
      return typed(
        BackendCode.RowDescription,
        (w) => {
          w.int16(msg.fields.length)
          for (const f of msg.fields) {
            w.cstring(f.name)
              .uint32(f.tableOID)
              .int16(f.columnAttr)
              .uint32(f.typeOID)
              .int16(f.typeSize)
              .int32(f.typeModifier)
              .int16(f.format)
          }
        },
        msg.fields.length * 40
      )
    case "unknown":
      return typed(msg.code, (w) => w.bytes(msg.body), msg.body.length)
  }
}

// ---------------------------------------------------------------------------
// AuthResponse builders: the 'p' message carries different layouts per auth method.
// ---------------------------------------------------------------------------

const encoder = new TextEncoder()

/** PasswordMessage: the cleartext or "md5..." hashed password as a cstring. */
export const passwordMessage = (password: string): AuthResponse => ({
  kind: "authResponse",
  data: new Writer(password.length + 8).cstring(password).finish()
})

/** SASLInitialResponse: mechanism cstring, then int32 length (-1 = none) and the client-first message. */
export const saslInitialResponse = (mechanism: string, response: Uint8Array | string | null): AuthResponse => ({
  kind: "authResponse",
  data: new Writer(64)
    .cstring(mechanism)
    .nullableBytes(typeof response === "string" ? encoder.encode(response) : response)
    .finish()
})

/** SASLResponse (and GSSResponse): the mechanism's bytes, unframed. */
export const saslResponse = (data: Uint8Array | string): AuthResponse => ({
  kind: "authResponse",
  data: typeof data === "string" ? encoder.encode(data) : data
})
