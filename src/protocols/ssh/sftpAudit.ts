/**
 * A passive reader of the client's side of an SFTP session (draft-ietf-secsh-filexfer-02, what
 * OpenSSH speaks), for the audit: it reports every file the client opens, as a download (read) or
 * an upload (write). The bytes themselves go to `sftp-server` untouched; this only looks.
 *
 *     uint32  length          of what follows
 *     byte    type            SSH_FXP_OPEN = 3
 *     uint32  request id
 *     string  filename
 *     uint32  pflags          READ 0x01, WRITE 0x02, APPEND 0x04, CREAT 0x08, TRUNC 0x10, EXCL 0x20
 *     ATTRS   attrs
 *
 * Other packets (WRITE carries up to 256 KiB of data) are skipped without being buffered.
 * Malformed input is not this module's to refuse: sftp-server answers it; we stop looking.
 */

const SSH_FXP_OPEN = 3
const FXF_WRITE = 0x02
/** OpenSSH's own limit on one SFTP message. */
const MAX_PACKET = 256 * 1024 + 1024
/** Longest OPEN packet we parse: a path plus attributes. */
const MAX_OPEN = 64 * 1024

export interface SftpOpen {
  readonly path: string
  readonly action: "download" | "upload"
}

export const sftpAuditor = (onOpen: (e: SftpOpen) => void) => {
  let header = Buffer.alloc(0)
  let skip = 0
  let body: Buffer | undefined
  let need = 0
  let broken = false

  const parseOpen = (p: Buffer) => {
    // p: type, id, string filename, pflags
    if (p.length < 9) return
    const nameLen = p.readUInt32BE(5)
    if (9 + nameLen + 4 > p.length) return
    const path = p.subarray(9, 9 + nameLen).toString("utf8")
    const pflags = p.readUInt32BE(9 + nameLen)
    onOpen({ path, action: pflags & FXF_WRITE ? "upload" : "download" })
  }

  return (chunk: Buffer) => {
    let data = chunk
    while (!broken && data.length > 0) {
      if (skip > 0) {
        const n = Math.min(skip, data.length)
        skip -= n
        data = data.subarray(n)
        continue
      }
      if (body !== undefined) {
        const n = Math.min(need, data.length)
        body = Buffer.concat([body, data.subarray(0, n)])
        need -= n
        data = data.subarray(n)
        if (need === 0) {
          parseOpen(body)
          body = undefined
        }
        continue
      }
      // Five bytes: the length and the type.
      const take = Math.min(5 - header.length, data.length)
      header = Buffer.concat([header, data.subarray(0, take)])
      data = data.subarray(take)
      if (header.length < 5) continue
      const length = header.readUInt32BE(0)
      const type = header[4]!
      header = Buffer.alloc(0)
      if (length < 1 || length > MAX_PACKET) {
        broken = true
        continue
      }
      if (type === SSH_FXP_OPEN && length <= MAX_OPEN) {
        body = Buffer.from([type])
        need = length - 1
        if (need === 0) body = undefined
      } else skip = length - 1
    }
  }
}
