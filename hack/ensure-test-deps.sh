#!/usr/bin/env bash
# Makes sure the system packages the tests and the demo use are installed: the PostgreSQL server
# binaries (they start their own throw-away clusters), openssl (a test verifies issued
# certificates with it), a C compiler (the race detector needs cgo) and the CA bundle the images
# carry. Installs Debian's packages
# for what is missing.
#
# With --cluster: also containerd and runc, the runtime of the test cluster (make e2e-cluster),
# which starts them itself with their own root, state and socket, never as a system service.
set -euo pipefail
missing=()
if [[ "${1:-}" == "--cluster" ]]; then
  command -v containerd >/dev/null 2>&1 || missing+=(containerd)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
fi
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && [[ -z "${PG_BIN:-}" ]]; then
  missing+=(postgresql)
fi
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
# The images carry Debian's CA bundle (make images).
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
[[ ${#missing[@]} -eq 0 ]] && exit 0
echo "[deps] installing Debian packages: ${missing[*]}" >&2
if [[ $(id -u) -ne 0 ]]; then
  echo "[deps] run as root, or install them yourself (apt-get install ${missing[*]}; or set PG_BIN)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Install without starting anything: on a host with an init system, containerd's package would
# otherwise start a system daemon.
policy=/usr/sbin/policy-rc.d
made_policy=
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
  trap '[[ -n $made_policy ]] && rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
echo "[deps] installed" >&2
