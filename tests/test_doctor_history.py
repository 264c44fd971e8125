"""`hivemind doctor --since-healthy`: the last healthy findings kept per check, and what got
worse since (pure logic on reports, then the command against a stack with its own Redis)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from doctor.history import changes_since, healthy_path, load_healthy, record_if_healthy
from doctor.model import CheckResult, Finding, Report, Status
from tests.cluster import Cluster, make_cluster
from tests.helpers import free_port


def result(check_id: str, status: Status, **evidence: object) -> CheckResult:
    return CheckResult(
        check_id, check_id, "guide", Finding(status, f"{check_id} is {status.value}", evidence)
    )


def report(started_at: str, *results: CheckResult) -> Report:
    return Report("host", started_at, 0.1, list(results))


def test_only_runs_without_a_fail_or_error_are_kept(tmp_path: Path) -> None:
    assert load_healthy(tmp_path) is None
    bad = report("t0", result("a.one", Status.OK), result("a.two", Status.FAIL))
    assert not record_if_healthy(bad, tmp_path)
    assert load_healthy(tmp_path) is None
    good = report("t1", result("a.one", Status.OK), result("a.two", Status.WARN, n=1))
    assert record_if_healthy(good, tmp_path)
    # A later healthy run of some checks updates those and keeps the rest.
    assert record_if_healthy(report("t2", result("a.one", Status.OK, n=5)), tmp_path)
    kept = load_healthy(tmp_path)
    assert kept is not None
    assert kept.started_at == {"a.one": "t2", "a.two": "t1"}
    assert kept.results["a.two"].status is Status.WARN


def test_changes_are_the_checks_that_got_worse_with_their_evidence(tmp_path: Path) -> None:
    record_if_healthy(
        report(
            "t1",
            result("a.same", Status.OK, n=1),
            result("a.worse", Status.OK, policy="noeviction", kept=1),
            result("a.warned", Status.WARN),
            result("a.skipped", Status.SKIP),
        ),
        tmp_path,
    )
    kept = load_healthy(tmp_path)
    assert kept is not None
    now = report(
        "t2",
        result("a.same", Status.OK, n=2),  # other evidence, same status: not a change
        result("a.worse", Status.FAIL, policy="allkeys-lru", kept=1),
        result("a.warned", Status.OK),  # better
        result("a.skipped", Status.WARN),
        result("a.new", Status.FAIL),  # no healthy finding to compare with
    )
    changes = changes_since(kept, now)
    assert [c.id for c in changes] == ["a.worse", "a.skipped"]
    worse = changes[0]
    assert (worse.before, worse.after, worse.healthy_at) == (Status.OK, Status.FAIL, "t1")
    assert worse.evidence == {"policy": ("noeviction", "allkeys-lru")}


def test_an_unreadable_file_is_no_healthy_run(tmp_path: Path) -> None:
    path = healthy_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert load_healthy(tmp_path) is None
    assert record_if_healthy(report("t1", result("a.one", Status.OK)), tmp_path)
    assert load_healthy(tmp_path) is not None


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Cluster]:
    # Its own Redis (nothing answers on this port, so `up` starts one): the fault below
    # changes that server's configuration.
    cluster = make_cluster(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    cluster.up(workers=1)
    try:
        yield cluster
    finally:
        cluster.down()


# Checks whose verdict does not move with the machine's load (redis.latency does).
STEADY = ("--only", "redis", "--skip", "redis.latency")


@pytest.mark.slow
def test_after_one_fault_it_lists_exactly_that_check(stack: Cluster) -> None:
    first = stack.cli("doctor", "--since-healthy", "--json", *STEADY, check=False)
    assert json.loads(first.stdout)["since_healthy"] == {"recorded": False, "changes": []}
    assert first.returncode == 0, first.stdout  # healthy: recorded
    stack.redis().config_set("maxmemory-policy", "allkeys-lru")
    after = stack.cli("doctor", "--since-healthy", "--json", *STEADY, check=False)
    assert after.returncode == 1
    since = json.loads(after.stdout)["since_healthy"]
    assert [c["id"] for c in since["changes"]] == ["redis.eviction_policy"]
    change = since["changes"][0]
    assert (change["before"], change["after"]) == ("ok", "fail")
    table = stack.cli("doctor", "--since-healthy", *STEADY, check=False).stdout
    assert "redis.eviction_policy" in table and "ok → fail" in table
    assert "redis.persistence" not in table


def test_a_home_that_cannot_be_written_keeps_nothing_and_raises_nothing(tmp_path: Path) -> None:
    (tmp_path / "doctor").write_text("a file where the folder should be")
    assert not record_if_healthy(report("t1", result("a.one", Status.OK)), tmp_path)
    assert load_healthy(tmp_path) is None
