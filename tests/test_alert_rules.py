"""docs/prometheus/alerts.yml and docs/grafana/hivemind.json: valid for promtool, firing on
the series they are for, and naming only metrics that HiveMind exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from doctor.exporter import LiveChecks, metric_families
from hivemind.config import Settings
from hivemind.metrics import NodePoolMetrics, WorkerMetrics
from tests.helpers import REPO_ROOT

PROMETHEUS_DOCS = REPO_ROOT / "docs" / "prometheus"
DASHBOARD = REPO_ROOT / "docs" / "grafana" / "hivemind.json"
METRIC = re.compile(r"\bhivemind_[a-z_]+\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every sample name the node pool, a worker and `doctor serve` can export."""
    nodepool = NodePoolMetrics()
    nodepool.watch_queue(lambda: {"queued": 0, "running": 0})
    families = [
        *nodepool.registry.collect(),
        *WorkerMetrics("w1", lambda: 0, lambda: []).registry.collect(),
        *metric_families(LiveChecks(Settings(), [], 1.0)),
    ]
    return {
        family.name + suffix  # type: ignore[attr-defined]
        for family in families
        for suffix in SUFFIXES[family.type]  # type: ignore[attr-defined]
    }


def test_alerts_and_dashboard_name_only_exported_metrics() -> None:
    exported = exported_names()
    rules = yaml.safe_load((PROMETHEUS_DOCS / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    named = {name for expr in exprs for name in METRIC.findall(expr)}
    assert named, "no metric is named at all"
    assert named - exported == set()
    # Every daemon metric has a use: in an alert or on the dashboard.
    assert {n for n in exported if n.startswith("hivemind_nodepool")} - named <= {
        "hivemind_nodepool_rpc_duration_seconds_count",
        "hivemind_nodepool_rpc_duration_seconds_sum",
        "hivemind_nodepool_task_duration_seconds_count",
        "hivemind_nodepool_task_duration_seconds_sum",
        "hivemind_nodepool_redis_duration_seconds_count",
        "hivemind_nodepool_redis_duration_seconds_sum",
    }


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run has it)")
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS_DOCS, capture_output=True, text=True, timeout=60
    )


def test_promtool_accepts_the_rules() -> None:
    checked = _promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_the_rules_fire_on_the_series_they_are_for() -> None:
    tested = _promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_broken_rule_is_refused(tmp_path: Path) -> None:
    # promtool's verdict means something: a rule with a bad expression fails the check.
    broken = tmp_path / "broken.yml"
    rule = "      - alert: X\n        expr: hivemind_check_status ==\n"
    broken.write_text("groups:\n  - name: x\n    rules:\n" + rule)
    checked = _promtool("check", "rules", str(broken))
    assert checked.returncode != 0
