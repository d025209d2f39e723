#!/usr/bin/env bash
# Installs the Debian packages whose real servers and clients the test suite drives, when missing.
# Run as root (CI and the development machines are root); otherwise it only reports what is missing.
set -euo pipefail

# command -> Debian package
declare -A need=(
  [/usr/lib/postgresql/15/bin/initdb]=postgresql-15
  [psql]=postgresql-client-15
  [pgbench]=postgresql-contrib
  [nats-server]=nats-server
  [ssh]=openssh-client
  [ssh-keygen]=openssh-client
  [/usr/sbin/sshd]=openssh-server
  [openssl]=openssl
  [mariadbd]=mariadb-server
  [mysql]=mariadb-client
  [redis-server]=redis-server
  [redis-cli]=redis-tools
  [tsql]=freetds-bin
  [pgbouncer]=pgbouncer
  [runuser]=util-linux
  [tmux]=tmux
  # The SSH node agent: its PTY/privilege helper (openpty, termios, initgroups) and SFTP for scp/sftp.
  [/usr/bin/python3]=python3
  [/usr/lib/openssh/sftp-server]=openssh-sftp-server
  [useradd]=passwd
  [getent]=libc-bin
)

missing=()
for cmd in "${!need[@]}"; do
  if [[ "$cmd" == /* ]]; then [[ -x "$cmd" ]] && continue
  else command -v "$cmd" >/dev/null 2>&1 && continue
  fi
  missing+=("${need[$cmd]}")
done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')

if ((${#missing[@]} == 0)); then
  echo "install-deps: all Debian packages present"
  exit 0
fi
echo "install-deps: missing ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: not root; install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Packages that ship a service must not start it here: tests start their own on free ports.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: installed ${missing[*]}"
