#!/usr/bin/env bash
# Static checks of everything in deploy/: systemd units, Kubernetes manifests, the
# Dockerfile, the Prometheus rules and the Grafana dashboard.
# Usage: deploy/check.sh TOOLS_BIN SWEEPER_BIN
# (TOOLS_BIN holds checkov, kubernetes-validate and hadolint; see requirements/tools.lock;
# promtool is put beside it, in TOOLS_BIN/../promtool, by prometheus/install-promtool.sh).
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
# prometheusrule.yaml is a custom resource (prometheus-operator's CRD): kubernetes-validate
# has no schema for it and would only warn. Its rules are alerts.yaml's, which promtool
# checks below, also in this file's own copy.
manifests=$(ls "$here"/kubernetes/*.yaml | grep -v -e kustomization.yaml -e prometheusrule.yaml)
# shellcheck disable=SC2086
"$tools/kubernetes-validate" --strict --quiet -k 1.31.0 $manifests

echo "== checkov: Kubernetes"
"$tools/checkov" -d "$here/kubernetes" --framework kubernetes --skip-download --compact --quiet

echo "== hadolint + checkov: Dockerfile"
"$tools/hadolint" "$here/docker/Dockerfile"
"$tools/checkov" -f "$here/docker/Dockerfile" --framework dockerfile --skip-download --compact --quiet
echo "== promtool: alerting rules, their unit tests, the dashboard's queries"
promtool=$("$here/prometheus/install-promtool.sh" "$(dirname "$tools")/promtool")
"$promtool" --version 2>&1 | head -n 1
"$promtool" check rules "$here/prometheus/alerts.yaml"
"$promtool" test rules "$here/prometheus/alerts_test.yaml"
# The PrometheusRule's spec, as Kubernetes would hand it to the operator.
"$tools/python" -c 'import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))["spec"]))' \
    "$here/kubernetes/prometheusrule.yaml" > "$work/prometheusrule-spec.json"
"$promtool" check rules "$work/prometheusrule-spec.json"
python3 "$here/prometheus/render.py" dashboard-rules > "$work/dashboard-rules.json"
"$promtool" check rules "$work/dashboard-rules.json"
echo "deploy/: all checks passed"
