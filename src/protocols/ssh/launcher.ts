/**
 * Starts a session's process as the requested login: with a pseudo-terminal for shells and
 * `ssh -t`, without one for exec and subsystems.
 *
 * Why a Python helper: Node can set uid/gid on a child but cannot allocate a PTY (node-pty is a
 * native addon we do not ship), and it drops supplementary groups instead of calling initgroups
 * as sshd does. `script -q -c` allocates a PTY but can only size it from its own terminal, so
 * window changes could not reach the session. Debian's python3 has openpty, setsid, TIOCSCTTY,
 * TIOCSWINSZ and initgroups in its standard library, so a 100-line helper does what sshd's session
 * code does, and needs no compiler or addon. It runs as `/usr/bin/python3 -I -S` (isolated: no
 * PYTHON* variables, no site packages), with an empty environment: the session's environment
 * (which holds what the client sent) is applied only in the child, after privileges are dropped.
 *
 * The helper's file descriptors:
 *
 *     0, 1, 2   the session's stdin, stdout, stderr (without a PTY the command gets them as is)
 *     3         control, node → helper: first line the JSON spec, then (PTY only) lines
 *               "resize COLS ROWS" and "signal NAME"; the spec never appears in argv (`ps`)
 *     4         status, helper → node (PTY only): "exit CODE" or "signal NAME CORE" once the
 *               session's process has ended and its output is drained
 *
 * Without a PTY the helper drops privileges and execs the command itself, so the session's bytes
 * never pass through Python and exit status and signals are the command's own.
 */
import { spawn, type ChildProcess } from "node:child_process"
import { execFile } from "node:child_process"

/** Debian's interpreter, not whatever `python3` is first on PATH (pyenv shims, virtualenvs). */
export const PYTHON = "/usr/bin/python3"

const HELPER = String.raw`
import os, sys, json, struct, fcntl, termios, select, signal, errno

def read_spec():
    buf = b""
    while b"\n" not in buf:
        chunk = os.read(3, 65536)
        if not chunk:
            sys.exit(111)
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    return json.loads(line), rest

spec, ctl_buf = read_spec()

def drop_privileges():
    if os.getuid() == 0:
        os.initgroups(spec["user"], spec["gid"])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
    try:
        os.chdir(spec["home"])
    except OSError:
        os.chdir("/")

def start():
    try:
        drop_privileges()
        env = spec["env"]
        shell = spec["shell"]
        if spec.get("argv"):
            os.execve(spec["argv"][0], spec["argv"], env)
        elif spec.get("command") is not None:
            os.execve(shell, [os.path.basename(shell), "-c", spec["command"]], env)
        else:
            os.execve(shell, ["-" + os.path.basename(shell)], env)
    except Exception as e:
        os.write(2, ("remoteler: cannot start the session: %s\r\n" % e).encode())
    os._exit(127)

if not spec.get("pty"):
    os.close(3)
    os.close(4)
    start()

pty = spec["pty"]
master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", pty["rows"], pty["cols"], 0, 0))
if os.getuid() == 0:
    # As sshd does: the terminal belongs to the login (group tty, mode 0620).
    try:
        import grp
        tty_gid = grp.getgrnam("tty").gr_gid
    except Exception:
        tty_gid = spec["gid"]
    os.fchown(slave, spec["uid"], tty_gid)
    os.fchmod(slave, 0o620)

wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *a: None)

pid = os.fork()
if pid == 0:
    os.close(master)
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.closerange(3, 65536)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    start()

os.close(slave)
os.set_blocking(master, False)

def write_all(fd, data):
    while data:
        try:
            n = os.write(fd, data)
            data = data[n:]
        except BlockingIOError:
            select.select([], [fd], [])

def deliver(name):
    try:
        sig = getattr(signal, "SIG" + name)
    except AttributeError:
        return
    try:
        os.killpg(os.tcgetpgrp(master), sig)
    except OSError:
        try:
            os.killpg(pid, sig)
        except OSError:
            pass

def control(line):
    parts = line.decode("utf-8", "replace").split()
    if len(parts) == 3 and parts[0] == "resize":
        cols, rows = int(parts[1]), int(parts[2])
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    elif len(parts) == 2 and parts[0] == "signal":
        deliver(parts[1])

stdin_open = True
ctl_open = True
pending = b""
status = None
while True:
    if ctl_buf:
        while b"\n" in ctl_buf:
            line, ctl_buf = ctl_buf.split(b"\n", 1)
            control(line)
    rl = [master, wake_r]
    if stdin_open and not pending:
        rl.append(0)
    if ctl_open:
        rl.append(3)
    wl = [master] if pending else []
    try:
        r, w, _ = select.select(rl, wl, [])
    except InterruptedError:
        continue
    if master in w and pending:
        try:
            n = os.write(master, pending)
            pending = pending[n:]
        except BlockingIOError:
            pass
        except OSError:
            pending = b""
    if master in r:
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            data = None
        except OSError:
            data = b""
        if data == b"":
            break
        if data:
            write_all(1, data)
    if 0 in r:
        data = os.read(0, 65536)
        if not data:
            # As sshd: EOF from the client cannot be passed to a terminal; the shell ends on its own.
            stdin_open = False
        else:
            pending += data
    if 3 in r:
        data = os.read(3, 65536)
        if not data:
            ctl_open = False
        ctl_buf += data
    if wake_r in r:
        os.read(wake_r, 4096)
        p, s = os.waitpid(pid, os.WNOHANG)
        if p == pid:
            status = s
            # Drain what the process wrote before it ended; background jobs holding the terminal
            # do not keep the session open (as with sshd).
            while True:
                rr, _, _ = select.select([master], [], [], 0.05)
                if not rr:
                    break
                try:
                    data = os.read(master, 65536)
                except (BlockingIOError, OSError):
                    break
                if not data:
                    break
                write_all(1, data)
            break

if status is None:
    _, status = os.waitpid(pid, 0)
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    name = signal.Signals(sig).name[3:] if sig in signal.Signals._value2member_map_ else str(sig)
    report = "signal %s %d\n" % (name, 1 if os.WCOREDUMP(status) else 0)
else:
    report = "exit %d\n" % os.WEXITSTATUS(status)
os.write(4, report.encode())
sys.exit(0)
`

/** A local account, as `getent passwd` gives it. */
export interface LocalUser {
  readonly name: string
  readonly uid: number
  readonly gid: number
  readonly home: string
  readonly shell: string
}

/** Login names as POSIX and useradd accept them; anything else is refused before any lookup. */
const LOGIN_NAME = /^[a-z_][a-z0-9_.-]{0,31}\$?$/i

/**
 * Looks a login up through NSS (`getent`, so LDAP/SSSD accounts count too); undefined when the
 * host has no such account.
 */
export const lookupUser = (login: string): Promise<LocalUser | undefined> =>
  LOGIN_NAME.test(login)
    ? new Promise((resolve, reject) =>
        execFile("getent", ["passwd", login], { timeout: 5_000 }, (error, stdout) => {
          if (error !== null) {
            // getent exits 2 when the key is not found.
            if ((error as { code?: unknown }).code === 2) return resolve(undefined)
            return reject(new Error(`getent passwd ${login}: ${error.message}`))
          }
          const f = stdout.trim().split("\n")[0]!.split(":")
          if (f.length < 7 || f[0] !== login) return resolve(undefined)
          resolve({ name: f[0], uid: Number(f[2]), gid: Number(f[3]), home: f[5] || "/", shell: f[6] || "/bin/sh" })
        })
      )
    : Promise.resolve(undefined)

export interface LaunchSpec {
  readonly user: LocalUser
  /** The full environment of the session's process. */
  readonly env: Readonly<Record<string, string>>
  /** Run through the login shell (`shell -c command`); undefined runs the login shell itself. */
  readonly command?: string | undefined
  /** Run this program directly (subsystems), instead of a shell. */
  readonly argv?: ReadonlyArray<string>
  readonly pty?: { readonly cols: number; readonly rows: number } | undefined
}

export interface Launched {
  readonly child: ChildProcess
  /** PTY only: resizes the terminal (the kernel sends SIGWINCH to its foreground job). */
  readonly resize: (cols: number, rows: number) => void
  /** Sends a signal (name without SIG) to the session's process (PTY: its foreground job). */
  readonly signal: (name: string) => void
  /** Resolves with how the session's process ended. */
  readonly exited: Promise<{ readonly code: number | null; readonly signal: string | null; readonly core: boolean }>
}

const SIGNALS = new Set(["ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL", "PIPE", "QUIT", "SEGV", "TERM", "USR1", "USR2"])

/** Whether `name` is a signal RFC 4254 lets a client send. */
export const isSshSignal = (name: string): boolean => SIGNALS.has(name)

/** Starts the session's process; see the module comment for the descriptors. */
export const launch = (spec: LaunchSpec): Launched => {
  const child = spawn(PYTHON, ["-I", "-S", "-c", HELPER], {
    stdio: ["pipe", "pipe", "pipe", "pipe", "pipe"],
    env: {},
    detached: false
  })
  const control = child.stdio[3] as NodeJS.WritableStream & { destroyed?: boolean }
  const status = child.stdio[4] as NodeJS.ReadableStream | null
  control.on("error", () => {})
  const send = (line: string) => {
    if (control.destroyed !== true) control.write(line + "\n")
  }
  send(
    JSON.stringify({
      user: spec.user.name,
      uid: spec.user.uid,
      gid: spec.user.gid,
      home: spec.user.home,
      shell: spec.user.shell,
      env: spec.env,
      command: spec.command ?? null,
      argv: spec.argv ?? null,
      pty: spec.pty === undefined ? null : { cols: clampSize(spec.pty.cols), rows: clampSize(spec.pty.rows) }
    })
  )
  let report = ""
  status?.on("data", (d: Buffer) => (report += d.toString("latin1")))
  status?.on("error", () => {})
  const exited = new Promise<{ code: number | null; signal: string | null; core: boolean }>((resolve) => {
    child.on("error", (e) => {
      resolve({ code: 127, signal: null, core: false })
      child.stderr?.emit("data", Buffer.from(`remoteler: cannot start the session: ${e.message}\r\n`))
    })
    // "close": every stdio stream has ended, so all output (and the status line) has been read.
    child.on("close", (code, sig) => {
      if (spec.pty !== undefined) {
        const m = /^(exit) (\d+)|^(signal) (\S+) ([01])/.exec(report)
        if (m?.[1] === "exit") return resolve({ code: Number(m[2]), signal: null, core: false })
        if (m?.[3] === "signal") return resolve({ code: null, signal: m[4]!, core: m[5] === "1" })
      }
      resolve({ code, signal: sig === null ? null : sig.replace(/^SIG/, ""), core: false })
    })
  })
  return {
    child,
    resize: (cols, rows) => {
      if (spec.pty !== undefined) send(`resize ${clampSize(cols)} ${clampSize(rows)}`)
    },
    signal: (name) => {
      if (!isSshSignal(name)) return
      if (spec.pty !== undefined) send(`signal ${name}`)
      else if (child.exitCode === null) child.kill(`SIG${name}` as NodeJS.Signals)
    },
    exited
  }
}

/** Terminal sizes the kernel's winsize holds; a client's 0 or huge values are clamped. */
const clampSize = (n: number): number => Math.min(Math.max(Math.floor(Number.isFinite(n) ? n : 80), 1), 4096)
