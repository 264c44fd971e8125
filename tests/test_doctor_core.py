"""The doctor's engine and report: concurrency under one timeout, broken checks, selection,
the JSON schema and the renderings. Pure logic: the checks here are small stand-ins."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from doctor import CheckSpec, Context, Finding, Report, Status, Unavailable, run_checks, select
from doctor.model import CheckResult
from doctor.registry import all_checks
from doctor.report import to_markdown
from hivemind.config import Settings
from hivemind.errors import UsageError

CATALOG_IDS = {
    "ports.nodepool", "ports.master", "ports.redis", "process.services", "ports.listen_address",
    "firewall.ports", "redis.config_exposure", "redis.auth", "redis.persistence", "redis.memory",
    "redis.eviction_policy", "redis.latency", "resources.cpu", "resources.load",
    "resources.memory", "resources.swap", "resources.top_processes", "resources.oom",
    "resources.disk", "resources.fd_limit", "workers.count", "workers.heartbeat", "tasks.queue",
    "tasks.failed", "tasks.stuck", "tasks.orphaned", "tasks.timeout_config", "deps.python",
    "network.latency", "network.grpc_keepalive", "network.vpn", "sqlite.file",
    "sqlite.integrity", "sqlite.users", "data.consistency", "logs.present", "logs.errors",
    "security.secrets", "backup.recent", "remote.ssh",
}  # fmt: skip


def spec(check_id: str, function) -> CheckSpec:  # type: ignore[no-untyped-def]
    return CheckSpec(check_id, check_id.title(), "test", function)


def test_hung_checks_cost_one_timeout_and_the_others_still_report(tmp_path) -> None:
    release = threading.Event()

    def hangs(_ctx: Context) -> Finding:
        release.wait(30)
        return Finding.ok("never seen")

    specs = [spec(f"slow.hang{i}", hangs) for i in range(5)]
    specs.append(spec("fast.ok", lambda _ctx: Finding.ok("fine", value=1)))
    context = Context(Settings(home=tmp_path), timeout=0.5)
    began = time.monotonic()
    results = run_checks(specs, context)
    took = time.monotonic() - began
    release.set()
    assert took < 1.0, f"five hung checks took {took:.2f}s; they must share one 0.5s timeout"
    by_id = {r.id: r for r in results}
    assert by_id["fast.ok"].status is Status.OK
    assert all(by_id[f"slow.hang{i}"].status is Status.ERROR for i in range(5))
    assert "did not finish within 0.5s" in by_id["slow.hang0"].finding.summary


def test_a_raising_check_is_an_error_row_and_a_missing_source_a_skip(tmp_path) -> None:
    def raises(_ctx: Context) -> Finding:
        raise KeyError("worker:7")

    def missing(_ctx: Context) -> Finding:
        raise Unavailable("ufw is not installed on this host")

    results = run_checks(
        [spec("a.raises", raises), spec("b.missing", missing), spec("c.wrong", lambda _c: 42)],
        Context(Settings(home=tmp_path)),
    )
    raised, skipped, wrong = results
    assert raised.status is Status.ERROR and "KeyError" in raised.finding.summary
    assert skipped.status is Status.SKIP
    assert skipped.finding.summary == "ufw is not installed on this host"
    assert wrong.status is Status.ERROR and "not a Finding" in wrong.finding.summary


def test_every_catalog_id_is_implemented_once() -> None:
    ids = [s.id for s in all_checks()]
    assert len(ids) == len(set(ids))
    assert set(ids) >= CATALOG_IDS, f"missing: {sorted(CATALOG_IDS - set(ids))}"


def test_selection_by_id_and_category_and_typos_are_usage_errors() -> None:
    specs = all_checks()
    chosen = select(specs, only=["tasks", "ports.redis"], skip=["tasks.failed"])
    ids = {s.id for s in chosen}
    assert "ports.redis" in ids and "tasks.stuck" in ids
    assert "tasks.failed" not in ids and "ports.nodepool" not in ids
    with pytest.raises(UsageError, match=r"unknown doctor check or category: task\.stuck"):
        select(specs, only=["task.stuck"])


def _report() -> Report:
    return Report(
        host="node-1",
        started_at="2026-11-28T01:00:00+00:00",
        duration_s=0.4213,
        results=[
            CheckResult("ports.redis", "Redis answers PING", "快速診斷", Finding.ok("PONG")),
            CheckResult(
                "redis.eviction_policy",
                "Eviction policy",
                "2 記憶體使用過高",
                Finding.fail(
                    "maxmemory-policy is allkeys-lru | evicts queued tasks",
                    "redis-cli CONFIG SET maxmemory-policy noeviction",
                    policy="allkeys-lru",
                ),
                fixable=True,
            ),
            CheckResult("network.vpn", "VPN", "4 使用 VPN", Finding.skip("no VPN configured")),
        ],
    )


def test_json_report_has_exactly_the_documented_schema() -> None:
    document = json.loads(json.dumps(_report().to_dict()))
    assert set(document) == {"schema", "host", "started_at", "duration_s", "summary", "checks"}
    assert document["schema"] == 1
    assert document["summary"] == {"ok": 1, "warn": 0, "fail": 1, "skip": 1, "error": 0}
    row = document["checks"][1]
    assert set(row) == {
        "id", "category", "title", "status", "summary", "evidence", "fix", "fixable", "guide",
    }  # fmt: skip
    assert row["category"] == "redis" and row["status"] == "fail" and row["fixable"] is True
    assert row["evidence"] == {"policy": "allkeys-lru"}
    assert document["checks"][0]["fixable"] is False  # nothing to fix on an ok row
    assert Report.from_dict(document).to_dict() == document


def test_exit_status_follows_fail_error_and_strict_warn() -> None:
    report = _report()
    assert report.failed()
    healthy = Report("h", "t", 0.1, [report.results[0]])
    assert not healthy.failed()
    warned = Report("h", "t", 0.1, [CheckResult("x.y", "t", "g", Finding.warn("hm"))])
    assert not warned.failed() and warned.failed(strict=True)


def test_markdown_lists_each_problem_with_its_evidence_and_fix() -> None:
    text = to_markdown(_report())
    assert text.startswith("## hivemind doctor: node-1")
    assert "| ✘ fail | `redis.eviction_policy` |" in text
    assert "allkeys-lru \\| evicts" in text  # a pipe in a finding does not break the table
    assert "fix: `redis-cli CONFIG SET maxmemory-policy noeviction`" in text
    assert "1 ok, 0 warn, 1 fail, 1 skip, 0 error" in text


def test_the_catalog_doc_lists_every_check() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "doctor.md").read_text()
    missing = [s.id for s in all_checks() if f"| `{s.id}` |" not in doc]
    assert missing == [], f"add a row to docs/doctor.md for {missing}"
