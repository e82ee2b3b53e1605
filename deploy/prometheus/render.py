"""Files derived from deploy/'s sources, so that each rule and query is written once.

  python3 deploy/prometheus/render.py prometheusrule > deploy/kubernetes/base/prometheusrule.yaml
      alerts.yaml as a prometheus-operator PrometheusRule (tests/test_monitoring.py
      fails when the committed file differs from this output);
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
# alerts.yaml, then run `python3 deploy/prometheus/render.py prometheusrule >
# deploy/kubernetes/base/prometheusrule.yaml`. Needs the prometheus-operator CRDs; the
# operator loads it when its ruleSelector matches these labels (README).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: sweeper
  namespace: sweeper
  labels:
    app.kubernetes.io/name: sweeper
    app.kubernetes.io/component: alerts
spec:
"""

#: What Grafana puts in place of its variables when it queries; any other
#: variable ($job, ${instance}) stands inside a label matcher's regex.
GRAFANA_BUILTINS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


def prometheusrule(alerts: str) -> str:
    """alerts.yaml under `spec:`: its comment header dropped, every line indented by two."""
    lines = alerts.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = [f"  {line}" if line else "" for line in lines[start:]]
    return PROMETHEUSRULE_HEAD + "\n".join(body) + "\n"


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
    if argv == ["prometheusrule"]:
        sys.stdout.write(prometheusrule(ALERTS.read_text(encoding="utf-8")))
        return 0
    if argv == ["dashboard-rules"]:
        print(dashboard_rules(json.loads(DASHBOARD.read_text(encoding="utf-8"))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
