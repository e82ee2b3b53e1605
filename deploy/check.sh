#!/usr/bin/env bash
# Static checks of everything in deploy/: systemd units, Kubernetes manifests and
# the Dockerfile. Usage: deploy/check.sh TOOLS_BIN SWEEPER_BIN
# (TOOLS_BIN holds checkov, kubernetes-validate and hadolint; see requirements/tools.lock).
set -euo pipefail
tools=$1
sweeper_bin=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== systemd: verify (ExecStart pointed at this build's sweeper)"
command -v systemd-analyze >/dev/null || { echo "systemd-analyze is required" >&2; exit 1; }
for unit in sweeper.service sweeper-once.service sweeper.timer; do
    sed "s|/usr/local/bin/sweeper|$sweeper_bin|" "$here/systemd/$unit" > "$work/$unit"
done
(cd "$work" && systemd-analyze verify ./sweeper.service ./sweeper-once.service ./sweeper.timer)

echo "== systemd: security exposure (must be 2.0 or less)"
for unit in sweeper.service sweeper-once.service; do
    systemd-analyze security --offline=true --threshold=20 "$work/$unit" | tail -n 1
done

echo "== kubernetes-validate --strict, Kubernetes 1.31"
manifests=$(ls "$here"/kubernetes/*.yaml | grep -v kustomization.yaml)
# shellcheck disable=SC2086
"$tools/kubernetes-validate" --strict --quiet -k 1.31.0 $manifests

echo "== checkov: Kubernetes"
"$tools/checkov" -d "$here/kubernetes" --framework kubernetes --skip-download --compact --quiet

echo "== hadolint + checkov: Dockerfile"
"$tools/hadolint" "$here/docker/Dockerfile"
"$tools/checkov" -f "$here/docker/Dockerfile" --framework dockerfile --skip-download --compact --quiet
echo "deploy/: all checks passed"
