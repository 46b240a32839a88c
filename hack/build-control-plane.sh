#!/usr/bin/env bash
# Builds the two control-plane binaries envtest needs (kube-apiserver and etcd)
# from the Go module proxy and caches them under bin/, keyed by version.
#
# Usage: hack/build-control-plane.sh <kubernetes-version> <etcd-version> <dest-dir> [--node]
#   e.g. hack/build-control-plane.sh v1.37.2 v3.6.16 bin/k8s/v1.37.2
#
# With --node it also builds what a real single-node cluster needs beside them
# (kube-controller-manager, kube-scheduler, kubelet: make e2e-cluster), from the same
# module and replace lines, so every component is the same version.
#
# kube-apiserver lives in module k8s.io/kubernetes, whose go.mod replaces every
# k8s.io staging repository with a relative path that does not exist in the
# published module. We build it from a throw-away module whose replace lines pin
# each staging repository to the matching published v0.X.Y release instead.
# kubectl is built from the same throw-away module (cheap once kube-apiserver is
# built) so demos and tests do not depend on whatever kubectl the machine has.
set -euo pipefail

K8S_VERSION=${1:?kubernetes version, e.g. v1.37.2}
ETCD_VERSION=${2:?etcd version, e.g. v3.6.16}
DEST=${3:?destination directory}
NODE=${4:-}

mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
STAGING_VERSION="v0.${K8S_VERSION#v1.}"

log() { printf '[control-plane] %s\n' "$*" >&2; }

have() { [[ -x "$DEST/$1" ]] && [[ -f "$DEST/.$1.ok" ]]; }

K8S_CMDS=(kube-apiserver kubectl)
[[ "$NODE" == "--node" ]] && K8S_CMDS+=(kube-controller-manager kube-scheduler kubelet)
missing_k8s=()
for c in "${K8S_CMDS[@]}"; do have "$c" || missing_k8s+=("$c"); done

if have etcd && [[ ${#missing_k8s[@]} -eq 0 ]]; then
  log "${K8S_CMDS[*]} $K8S_VERSION and etcd $ETCD_VERSION already built in $DEST"
  exit 0
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Progress ticker: the first kube-apiserver build takes minutes on 2 cores.
ticker() {
  local what=$1 start=$SECONDS
  while sleep 20; do log "still building $what ($((SECONDS - start))s)…"; done
}
with_ticker() {
  local what=$1; shift
  ticker "$what" & local tpid=$!
  local rc=0
  "$@" || rc=$?
  kill "$tpid" 2>/dev/null || true
  wait "$tpid" 2>/dev/null || true
  return $rc
}

if ! have etcd; then
  log "building etcd $ETCD_VERSION from go.etcd.io/etcd/server/v3 (about 20s)"
  mkdir -p "$WORK/etcd"
  (
    cd "$WORK/etcd"
    go mod init local/build-etcd >/dev/null 2>&1
    with_ticker etcd go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1
    CGO_ENABLED=0 with_ticker etcd go build -trimpath -o "$DEST/etcd" go.etcd.io/etcd/server/v3
  )
  touch "$DEST/.etcd.ok"
  log "etcd ready: $DEST/etcd"
fi

if [[ ${#missing_k8s[@]} -gt 0 ]]; then
  log "building ${missing_k8s[*]} $K8S_VERSION from k8s.io/kubernetes (first time: several minutes)"
  mkdir -p "$WORK/k8s"
  cd "$WORK/k8s"
  go mod init local/build-kube-apiserver >/dev/null 2>&1
  modfile=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f "$modfile" ]] || { log "could not download k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
  # Every "k8s.io/x => ./staging/src/k8s.io/x" line becomes a pin to the published release.
  sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$modfile" | while read -r repo; do
    go mod edit -replace "$repo=$repo@$STAGING_VERSION"
  done
  go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for c in "${missing_k8s[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
    printf ')\n'
  } > tools.go
  log "resolving dependencies"
  with_ticker "module graph" go mod tidy >/dev/null 2>&1 || with_ticker "module graph" go mod tidy
  ldflags="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  for c in "${missing_k8s[@]}"; do
    CGO_ENABLED=0 with_ticker "$c" go build -trimpath -ldflags "$ldflags" -o "$DEST/$c" "k8s.io/kubernetes/cmd/$c"
    touch "$DEST/.$c.ok"
    log "$c ready: $DEST/$c"
  done
fi
log "control plane ready in $DEST"
