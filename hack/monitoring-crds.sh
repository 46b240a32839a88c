#!/usr/bin/env bash
# Generates the Prometheus Operator CRDs the monitoring component uses (ServiceMonitor, PodMonitor,
# PrometheusRule) from the Go types of the pinned API module, with controller-gen, into a
# versioned directory under bin/: the tests install them into the API server to apply
# config/prometheus and the chart's monitoring objects against the real schemas.
# Usage: hack/monitoring-crds.sh <target-dir> <controller-gen> <version>
set -euo pipefail
target=$1 controller_gen=$2 version=$3
[[ -f "$target/monitoring.coreos.com_prometheusrules.yaml" ]] && exit 0
echo "[tools] generating the monitoring.coreos.com CRDs $version" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
module=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring
cat > "$tmp/go.mod" <<MOD
module monitoringcrds

go 1.26.0

require $module $version
MOD
printf 'package monitoringcrds\n\nimport _ "%s/v1"\n' "$module" > "$tmp/crds.go"
(cd "$tmp" && go mod tidy >/dev/null && "$controller_gen" crd:crdVersions=v1,maxDescLen=0 paths="$module/v1" output:crd:dir="$tmp/out")
mkdir -p "$target"
for kind in servicemonitors podmonitors prometheusrules; do
  cp "$tmp/out/monitoring.coreos.com_$kind.yaml" "$target/"
done
echo "[tools] $target ready" >&2
