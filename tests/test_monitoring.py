"""The alerts and the dashboard against the real daemon's /metrics, checked with promtool.

promtool is Debian's, put in .venv-tools/promtool/ by `make unit-test` (or $PROMTOOL):
tests use only loopback, so they never fetch it themselves, and fail when it is missing.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import (
    Platform,
    free_port,
    signal_and_collect,
    start_sweeper,
    sweeper,
    wait_for,
    write_config,
)
from tests.fakes import record
from tests.markdown import anchors_of
from tests.tools import ROOT, load_render, prometheus_tool

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "sweeper.json"
RUNBOOK = ROOT / "docs" / "runbook.md"

#: PromQL words that are not metric names.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
#: Exposed by Prometheus itself (`up`), node_exporter (`node_*`) or the Pushgateway
#: (`push_time_seconds`), not by sweeper.
NOT_OURS = re.compile(r"up|node_\w+|push_time_seconds")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


render = load_render()


def promtool() -> str:
    return prometheus_tool("promtool", "PROMTOOL")


def check_metrics(text: str) -> None:
    done = subprocess.run(
        [promtool(), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(GROUPING, " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("(") or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def alert_expressions(text: str) -> dict[str, str]:
    """Alert name -> expr of a rules file as alerts.yaml writes them (one line, or a `|` block)."""
    found: dict[str, str] = {}
    lines = text.splitlines()
    alert = None
    for i, line in enumerate(lines):
        if m := re.match(r"\s*- alert: (\w+)$", line):
            alert = m.group(1)
        elif (m := re.match(r"(\s*)expr: (.*)$", line)) and alert is not None:
            indent, value = len(m.group(1)), m.group(2)
            if value == "|":
                block = []
                for following in lines[i + 1 :]:
                    if following.strip() and len(following) - len(following.lstrip()) <= indent:
                        break
                    block.append(following.strip())
                value = " ".join(block)
            found[alert] = value
            alert = None
    return found


def exposed_names(exposition: str) -> set[str]:
    """Every name a query can select in this exposition, families without samples included."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def referenced_names() -> dict[str, set[str]]:
    """Where each metric name is used, alerts and dashboard, minus `up` and node_exporter's."""
    uses: dict[str, set[str]] = {}
    exprs = [(f"alert {n}", e) for n, e in alert_expressions(ALERTS.read_text()).items()]
    exprs += render.dashboard_expressions(json.loads(DASHBOARD.read_text()))
    for where, expr in exprs:
        names = metric_names(expr)
        assert names, f"{where} selects no metric: {expr}"
        for name in names:
            if not NOT_OURS.fullmatch(name):
                uses.setdefault(name, set()).add(where)
    return uses


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job="sweeper"} == 0', {"up"}),
        ('absent(up{job="sweeper"})', {"up"}),
        (
            'time() - sweeper_last_success_timestamp_seconds{job="a"} > 900 and x_total > 0',
            {"sweeper_last_success_timestamp_seconds", "x_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{le=~'1|2'}[5m] offset 1h)))",
            {"a_bucket"},
        ),
        ("sum(rate(a_total[1m])) without (instance) / on(job) group_left(x) b", {"a_total", "b"}),
        ('count(a{s="by (x) sum(y) \\" z"}) > 1e3', {"a"}),
        ('label_replace(a, "dst", "$1", "src", "(.*)") unless b:c_ratio', {"a", "b:c_ratio"}),
    ],
)
def test_metric_names_are_found_in_promql(expr: str, names: set[str]) -> None:
    """The name extraction used below finds metrics, and nothing else, in PromQL."""
    assert metric_names(expr) == names


def test_every_alert_has_an_expression_severity_and_annotations() -> None:
    """Each alert: expr, a severity label, summary, description, and a runbook_url."""
    text = ALERTS.read_text()
    blocks = re.split(r"\n\s*- alert: ", text)[1:]
    assert len(blocks) == len(alert_expressions(text)) >= 10
    for block in blocks:
        for key in ("expr:", "severity:", "summary:", "description:", "runbook_url:"):
            assert key in block, f"{block.split()[0]} has no {key}"
        assert re.search(r"severity: (critical|warning)\n", block), block.split()[0]


def test_every_runbook_url_is_a_runbook_heading() -> None:
    """runbook_url anchors resolve to headings of docs/runbook.md (as a Git forge slugs them)."""
    anchors = anchors_of(RUNBOOK)
    urls = re.findall(r"runbook_url: (\S+)", ALERTS.read_text())
    assert urls
    for url in urls:
        base, _, anchor = url.partition("#")
        assert base.endswith("/docs/runbook.md"), url
        assert anchor in anchors, f"docs/runbook.md has no heading for #{anchor}"


@pytest.mark.parametrize(("mode", "groups"), sorted(render.OVERLAY_GROUPS.items()))
def test_each_overlays_prometheusrule_is_rendered_from_alerts_yaml(
    mode: str, groups: tuple[str, ...]
) -> None:
    """overlays/<mode>/prometheusrule.yaml is its mode's groups of alerts.yaml (one source)."""
    overlay = ROOT / "deploy" / "kubernetes" / "overlays" / mode
    expected = render.prometheusrule(ALERTS.read_text(), mode)
    assert (overlay / "prometheusrule.yaml").read_text() == expected, (
        f"prometheusrule.yaml is out of date: python3 deploy/prometheus/render.py "
        f"prometheusrule {mode} > deploy/kubernetes/overlays/{mode}/prometheusrule.yaml"
    )
    assert "\n  - prometheusrule.yaml\n" in (overlay / "kustomization.yaml").read_text()
    names = re.findall(r"^    - name: (\S+)$", expected, re.MULTILINE)
    assert tuple(names) == groups


def test_every_group_of_alerts_yaml_belongs_to_a_mode() -> None:
    """The daemon's, the timer's (textfile) and the CronJob's (Pushgateway) groups."""
    names = re.findall(r"^  - name: (\S+)$", ALERTS.read_text(), re.MULTILINE)
    assert names == ["sweeper-daemon", "sweeper-oneshot", "sweeper-pushgateway"]
    in_overlays = {g for groups in render.OVERLAY_GROUPS.values() for g in groups}
    assert in_overlays == {"sweeper-daemon", "sweeper-pushgateway"}  # no textfile on Kubernetes


def test_dashboard_has_a_datasource_variable_used_by_every_panel() -> None:
    """Every panel and target queries the ${datasource} the importer picks."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.fixture(name="daemon_scrape")
def _daemon_scrape(stand_in: Platform, tmp_path: Path) -> Iterator[str]:
    """/metrics of a real `sweeper run` after its first sweep, on a free loopback port."""
    for i in range(3):
        stand_in.state.add(record(f"z{i}", started=timedelta(hours=5), now=datetime.now(UTC)))
    port = free_port()
    extra = f'[schedule]\ninterval = "1h"\n[server]\nlisten = "127.0.0.1:{port}"\n'
    proc = start_sweeper("--config", str(write_config(tmp_path, stand_in.base_url, extra)), "run")
    url = f"http://127.0.0.1:{port}/metrics"
    scraped: list[str] = []

    def swept() -> bool:
        try:
            text = httpx.get(url).text
        except httpx.TransportError:
            return False
        scraped[:] = [text]
        return 'sweeper_sweeps_total{result="completed"} 1.0' in text

    try:
        wait_for(swept)
        yield scraped[0]
    finally:
        result = signal_and_collect(proc)
    assert result.code == 0, result.stderr


def test_alerts_and_dashboard_name_only_metrics_the_daemon_exposes(daemon_scrape: str) -> None:
    """Every metric the alerts or the dashboard select is in the real daemon's /metrics."""
    exposed = exposed_names(daemon_scrape) | leader_names()
    uses = referenced_names()
    missing = {name: sorted(where) for name, where in uses.items() if name not in exposed}
    assert not missing, f"selected but not exposed by `sweeper run`: {missing}"
    # The new metrics are selected, the retries one with HELP/TYPE but no sample yet.
    for name in (
        "sweeper_http_retries_total",
        "sweeper_detection_lag_seconds_bucket",
        "sweeper_config_last_reload_successful",
        "sweeper_timers_armed",
    ):
        assert name in uses, name
    assert "sweeper_http_retries_total" not in {
        s.name for f in text_string_to_metric_families(daemon_scrape) for s in f.samples
    }


def test_the_daemon_exposes_its_version_and_process_metrics(daemon_scrape: str) -> None:
    """sweeper_build_info{version} and the process_* family are on the daemon's /metrics."""
    from sweeper import __version__

    assert f'sweeper_build_info{{version="{__version__}"}} 1.0' in daemon_scrape
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert f"\n{name} " in daemon_scrape, name


def leader_names() -> set[str]:
    """What only a copy with [leader] adds (no engine here: the daemon's own Metrics)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from sweeper.ops import Metrics

    metrics = Metrics(CollectorRegistry())
    metrics.enable_leader("copy-a")
    metrics.set_leading(True)
    names = exposed_names(generate_latest(metrics.registry).decode())
    assert {"sweeper_leader", "sweeper_leader_identity_info"} <= names
    return names


def test_a_name_the_daemon_does_not_expose_is_caught(daemon_scrape: str) -> None:
    """The check above fails on a misspelt or missing name (it is not vacuous)."""
    exposed = exposed_names(daemon_scrape)
    assert metric_names("rate(sweeper_sweep_total[5m])") - exposed == {"sweeper_sweep_total"}
    assert "sweeper_http_retries" in exposed and "sweeper_http_retries_total" in exposed


@pytest.mark.tools
def test_promtool_check_metrics_passes_on_the_daemon_scrape(daemon_scrape: str) -> None:
    """promtool's linter accepts the real /metrics exposition."""
    assert "# TYPE sweeper_http_retries_total counter" in daemon_scrape
    check_metrics(daemon_scrape)


@pytest.mark.tools
def test_promtool_check_metrics_passes_on_a_metrics_file(
    stand_in: Platform, tmp_path: Path
) -> None:
    """promtool's linter accepts `run --once --metrics-file` output, as node_exporter reads it."""
    stand_in.state.add(record("z0", started=timedelta(hours=5), now=datetime.now(UTC)))
    target = tmp_path / "sweeper.prom"
    config = write_config(tmp_path, stand_in.base_url)
    result = sweeper("--config", str(config), "run", "--once", "--metrics-file", str(target))
    assert result.code == 0, result.stderr
    text = target.read_text()
    assert 'sweeper_steps_total{outcome="marked",status="FAILED"} 1.0' in text
    check_metrics(text)


@pytest.mark.tools
def test_promtool_check_metrics_is_not_a_rubber_stamp() -> None:
    """The linter does reject a bad exposition (a counter without _total)."""
    bad = "# HELP sweeper_bad Bad.\n# TYPE sweeper_bad counter\nsweeper_bad 1\n"
    with pytest.raises(AssertionError):
        check_metrics(bad)
