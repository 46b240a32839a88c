#!/usr/bin/env bash
# Makes sure the PostgreSQL server binaries are installed (the tests and the demo start their own
# throw-away clusters with them). Installs Debian's postgresql package when they are missing.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || [[ -n "${PG_BIN:-}" ]]; then
  exit 0
fi
echo "[postgres] PostgreSQL server binaries not found; installing Debian's postgresql package" >&2
if [[ $(id -u) -ne 0 ]]; then
  echo "[postgres] run as root, or install PostgreSQL yourself (apt-get install postgresql) or set PG_BIN" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
# The package may start a system cluster; the tests do not use it.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null
echo "[postgres] installed" >&2
