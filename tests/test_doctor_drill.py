"""`hivemind doctor drill`: every fault it knows is caught by the check named for it on a
scratch stack, repaired where the catalog says, and the stack is doctor-clean after; a
check made blind turns into a miss and exit status 1."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from doctor import registry
from doctor.drill import FAULTS
from doctor.drill import engine as drill_engine
from doctor.model import Finding
from hivemind.cli.app import app
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.slow


def test_every_fault_is_caught_by_its_check_and_the_stack_ends_clean() -> None:
    assert len(FAULTS) >= 15
    proc = subprocess.run(
        [sys.executable, "-m", "hivemind", "doctor", "drill", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
    )
    report = json.loads(proc.stdout)
    rows = {row["name"]: row for row in report["faults"]}
    assert set(rows) == {f.name for f in FAULTS}
    problems = {n: r for n, r in rows.items() if r["outcome"] not in ("detected", "not run")}
    assert problems == {}, json.dumps(problems, indent=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for fault in FAULTS:
        row = rows[fault.name]
        if row["outcome"] == "not run":
            assert row["reason"], f"{fault.name} not run without a reason"
            continue
        caught = {entry.split(":")[0] for entry in row["detected_by"]}
        assert caught & set(fault.expects), (fault.name, row)
        assert row["detect_s"] is not None and row["detect_s"] < 30
        if fault.repair != "none":
            assert row["repaired"] is True, (fault.name, row)
        assert row["clean"] is True, (fault.name, row["still_worse"])
    assert sum(row["outcome"] == "detected" for row in rows.values()) >= 15


def test_a_check_made_blind_is_a_miss_and_exit_status_1(monkeypatch: pytest.MonkeyPatch) -> None:
    registry.all_checks()  # the catalog is filled on first use
    spec = registry._CATALOG["redis.eviction_policy"]
    blind = replace(spec, function=lambda _ctx: Finding.ok("sees nothing"))
    monkeypatch.setitem(registry._CATALOG, "redis.eviction_policy", blind)
    # A blind check never sees it: no need to wait the whole detection time to know.
    monkeypatch.setattr(drill_engine, "DETECT_TIMEOUT", 3.0)
    result = CliRunner().invoke(
        app, ["doctor", "drill", "--json", "--fault", "redis-eviction", "--fault", "users-db-mode"]
    )
    assert result.exit_code == 1, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)["faults"]}
    assert rows["redis-eviction"]["outcome"] == "missed"
    assert rows["redis-eviction"]["detected_by"] == []
    assert rows["users-db-mode"]["outcome"] == "detected"  # the other checks still see
