"""Files derived from deploy/'s sources, so that each rule and query is written once.

  python3 deploy/prometheus/render.py prometheusrule MODE \
      > deploy/kubernetes/overlays/MODE/prometheusrule.yaml
      the groups of alerts.yaml for that deploy mode (daemon, cronjob) as a
      prometheus-operator PrometheusRule (tests/test_monitoring.py fails when a
      committed file differs from this output);
  python3 deploy/prometheus/render.py dashboard-rules > rules.json
      every PromQL expression of deploy/grafana/sweeper.json as a recording rule, for
      `promtool check rules` (deploy/check.sh).

Standard library only: deploy/check.sh runs it with the system's python3.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).resolve().parent.parent
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "sweeper.json"

PROMETHEUSRULE_HEAD = """\
# Generated from deploy/prometheus/alerts.yaml by deploy/prometheus/render.py: edit
# alerts.yaml, then run `python3 deploy/prometheus/render.py prometheusrule {mode} >
# deploy/kubernetes/overlays/{mode}/prometheusrule.yaml`. Only the alerts that can fire
# in this mode. Needs the prometheus-operator CRDs; the operator loads it when its
# ruleSelector matches these labels (docs/monitoring.md).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: sweeper-{mode}
  namespace: sweeper
  labels:
    app.kubernetes.io/name: sweeper
    app.kubernetes.io/component: alerts
spec:
  groups:
"""

#: The groups of alerts.yaml each Kubernetes overlay ships: the daemon is scraped
#: (ServiceMonitor); the CronJob pushes to a Pushgateway. No textfile on Kubernetes.
OVERLAY_GROUPS = {"daemon": ("sweeper-daemon",), "cronjob": ("sweeper-pushgateway",)}


#: What Grafana puts in place of its variables when it queries; any other
#: variable ($job, ${instance}) stands inside a label matcher's regex.
GRAFANA_BUILTINS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


def prometheusrule(alerts: str, mode: str) -> str:
    """The mode's groups of alerts.yaml under `spec: groups:`, every line indented by two."""
    lines = alerts.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    # A group is its "  - name:" line, the comment lines just above it (at the groups'
    # own indent) and everything below it up to the next group.
    blocks: list[tuple[str, list[str]]] = []
    comments: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("  #"):
            comments.append(line)
        elif line.startswith("  - name: "):
            blocks.append((line.removeprefix("  - name: ").strip(), [*comments, line]))
            comments = []
        elif blocks:
            blocks[-1][1].append(line)
    chosen: list[str] = []
    for name, block in blocks:
        if name in OVERLAY_GROUPS[mode]:
            chosen.extend(block)
    while chosen and not chosen[-1]:
        chosen.pop()
    body = [f"  {line}" if line else "" for line in chosen]
    return PROMETHEUSRULE_HEAD.format(mode=mode) + "\n".join(body) + "\n"


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable, in order."""
    found: list[tuple[str, str]] = []

    def panels(items: list[dict[str, Any]]) -> None:
        for panel in items:
            panels(panel.get("panels", []))
            for target in panel.get("targets", []):
                where = f"panel {panel.get('title')!r} target {target.get('refId')}"
                found.append((where, target["expr"]))

    panels(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        selector = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text)
        found.append((f"variable {variable['name']!r}", selector.group(1) if selector else text))
    return found


def as_promql(expr: str) -> str:
    """A dashboard expression as Prometheus would receive it from Grafana."""
    for name, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def dashboard_rules(dashboard: dict[str, Any]) -> str:
    """A rules file (JSON is YAML) with one recording rule per dashboard expression."""
    rules = [
        {"record": f"sweeper_dashboard:expression_{n}", "expr": as_promql(expr)}
        for n, (_, expr) in enumerate(dashboard_expressions(dashboard))
    ]
    return json.dumps({"groups": [{"name": "sweeper-dashboard", "rules": rules}]}, indent=2)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "prometheusrule" and argv[1] in OVERLAY_GROUPS:
        sys.stdout.write(prometheusrule(ALERTS.read_text(encoding="utf-8"), argv[1]))
        return 0
    if argv == ["dashboard-rules"]:
        print(dashboard_rules(json.loads(DASHBOARD.read_text(encoding="utf-8"))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
