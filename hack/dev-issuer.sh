#!/usr/bin/env bash
# Creates a development fleet issuer (CA) and a receiver server certificate signed by it, and a
# Secret manifest for the issuer. Development only.
#
# Usage: hack/dev-issuer.sh [-out DIR] [-receiver-hosts h1,h2] [-namespace NS] [-name NAME]
# Then:  kubectl apply -f DIR/issuer-secret.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./hack/devpki "$@"
