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

echo "== kubernetes: render each overlay (one deploy mode each)"
# kustomize as kubectl ships it, or a standalone kustomize binary.
if command -v kubectl >/dev/null; then
    render() { kubectl kustomize "$1"; }
elif command -v kustomize >/dev/null; then
    render() { kustomize build "$1"; }
else
    echo "kubectl (kubectl kustomize) or kustomize is required" >&2; exit 1
fi
for mode in cronjob daemon; do
    render "$here/kubernetes/overlays/$mode" > "$work/k8s-$mode.yaml"
    # Exactly one workload per overlay: two modes at once would sweep every step twice.
    "$tools/python" - "$work/k8s-$mode.yaml" "$mode" <<'PY'
import json, sys, yaml
path, mode = sys.argv[1], sys.argv[2]
workloads = {"CronJob", "Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod"}
docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
found = [f"{d['kind']}/{d['metadata']['name']}" for d in docs if d.get("kind") in workloads]
expected = {"cronjob": "CronJob", "daemon": "Deployment"}[mode]
if len(found) != 1 or not found[0].startswith(expected + "/"):
    sys.exit(f"overlays/{mode}: expected one {expected}, found {found or 'no workload'}")
print(f"overlays/{mode}: {len(docs)} objects, one workload: {found[0]}")
# Core objects only for kubernetes-validate: it has no schema for the operator's
# PrometheusRule (whose rules promtool checks below) and ServiceMonitor.
operator = {"PrometheusRule", "ServiceMonitor"}
core = [d for d in docs if d.get("kind") not in operator]
rules = [d["spec"] for d in docs if d.get("kind") == "PrometheusRule"]
with open(path.replace(".yaml", ".rules.json"), "w", encoding="utf-8") as out:
    json.dump(rules[0] if rules else {"groups": []}, out)
with open(path.replace(".yaml", ".core.yaml"), "w", encoding="utf-8") as out:
    yaml.safe_dump_all(core, out)
PY
done

echo "== kubernetes-validate --strict, Kubernetes 1.31 (rendered overlays)"
"$tools/kubernetes-validate" --strict --quiet -k 1.31.0 "$work/k8s-cronjob.core.yaml" "$work/k8s-daemon.core.yaml"

echo "== checkov: Kubernetes (rendered overlays)"
for mode in cronjob daemon; do
    "$tools/checkov" -f "$work/k8s-$mode.yaml" --framework kubernetes --skip-download --compact --quiet
done

echo "== hadolint + checkov: Dockerfile"
"$tools/hadolint" "$here/docker/Dockerfile"
"$tools/checkov" -f "$here/docker/Dockerfile" --framework dockerfile --skip-download --compact --quiet
echo "== promtool: alerting rules, their unit tests, the dashboard's queries"
promtool=$("$here/prometheus/install-promtool.sh" "$(dirname "$tools")/promtool")
"$promtool" --version 2>&1 | head -n 1
"$promtool" check rules "$here/prometheus/alerts.yaml"
"$promtool" test rules "$here/prometheus/alerts_test.yaml"
# Each overlay's PrometheusRule spec, as Kubernetes would hand it to the operator.
for mode in cronjob daemon; do
    "$promtool" check rules "$work/k8s-$mode.rules.json"
done
python3 "$here/prometheus/render.py" dashboard-rules > "$work/dashboard-rules.json"
"$promtool" check rules "$work/dashboard-rules.json"
echo "deploy/: all checks passed"
