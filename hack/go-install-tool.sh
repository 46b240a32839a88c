#!/usr/bin/env bash
# Builds one Go tool at a pinned version into a versioned path under bin/.
# Usage: hack/go-install-tool.sh <target-path> <package> <version>
set -euo pipefail
target=$1 package=$2 version=$3
[[ -x "$target" ]] && exit 0
dir=$(dirname "$target")
mkdir -p "$dir"
echo "[tools] building $package@$version" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp" CGO_ENABLED=0 go install "$package@$version"
mv "$tmp/$(basename "$package" | sed 's#/v[0-9]*$##')" "$target" 2>/dev/null || mv "$tmp"/* "$target"
echo "[tools] $target ready" >&2
