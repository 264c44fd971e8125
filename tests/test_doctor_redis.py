"""The redis.* checks: their parsers on captured INFO/CONFIG/SLOWLOG replies, and their
verdicts (and fixes) on the session's real Redis put into each state."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from doctor.checks.redis_server import auth_finding
from doctor.context import Context
from doctor.engine import run_doctor
from doctor.fixes import actions_log, apply_fixes, plan_fixes
from doctor.model import Status
from doctor.probes import redis_info as probe
from hivemind.config import Settings
from tests.helpers import RedisServer, free_port, wait_until

FIXTURES = Path(__file__).parent / "fixtures" / "doctor"
#: Every CONFIG parameter a test here changes; restored after each test (the server is shared).
TOUCHED = (
    "maxmemory-policy",
    "maxmemory",
    "appendonly",
    "save",
    "dir",
    "latency-monitor-threshold",
    "slowlog-log-slower-than",
    "bind",
    "protected-mode",
)


def fixture_info(name: str) -> dict[str, str]:
    return probe.parse_info((FIXTURES / f"redis_info_{name}.txt").read_text())


def fixture_config(name: str) -> dict[str, str]:
    return probe.parse_config_reply(
        (FIXTURES / f"redis_config_{name}.txt").read_text().splitlines()
    )


@pytest.fixture
def live(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client to the session Redis; every CONFIG it changes is put back afterwards."""
    client = redis_server.client()
    saved = {name: client.config_get(name)[name] for name in TOUCHED}
    client.slowlog_reset()
    try:
        yield client
    finally:
        for name, value in saved.items():
            client.config_set(name, str(value))
        client.slowlog_reset()
        client.execute_command("LATENCY", "RESET")
        if client.info("persistence")["rdb_last_bgsave_status"] != "ok":
            # A failed save stays in INFO until one succeeds; later tests must not see it.
            client.bgsave()
            wait_until(lambda: client.info("persistence")["rdb_last_bgsave_status"] == "ok")
        client.close()


def verdict(settings: Settings, check_id: str) -> tuple[Status, str, dict[str, object]]:
    result = run_doctor(settings, only=[check_id]).result(check_id)
    return result.status, result.finding.summary, dict(result.finding.evidence)


# -- parsers on captured replies ---------------------------------------------------------------
def test_info_and_config_parsers_read_the_captured_replies() -> None:
    info, config = fixture_info("healthy"), fixture_config("healthy")
    assert info["redis_version"].startswith("6.") or info["redis_version"].startswith("7.")
    assert info["rdb_last_bgsave_status"] == "ok"
    assert config["maxmemory-policy"] == "noeviction"
    assert config["save"] == ""  # an empty value keeps its line, so pairs stay aligned
    assert config["appendonly"] == "yes"
    assert config["bind"] == "127.0.0.1"


def test_exposure_of_captured_configs() -> None:
    info = fixture_info("healthy")
    local = probe.exposure(fixture_config("healthy"), info)
    assert not local.beyond_loopback and not local.has_password
    open_ = probe.exposure(fixture_config("open_no_password"), info)
    assert open_.wildcard and open_.beyond_loopback
    assert not open_.protected_mode and not open_.protected_mode_guards
    # Before Redis 7 an explicit bind switches protected-mode off; from 7 it still guards.
    explicit = {"bind": "0.0.0.0", "protected-mode": "yes", "requirepass": ""}
    assert not probe.exposure(explicit, {"redis_version": "6.2.14"}).protected_mode_guards
    assert probe.exposure(explicit, {"redis_version": "7.2.4"}).protected_mode_guards
    assert probe.exposure({"bind": "* -::*"}, {"redis_version": "7.2.4"}).wildcard
    socket_only = probe.exposure({"bind": "0.0.0.0", "port": "0"}, info)
    assert not socket_only.beyond_loopback and not socket_only.wildcard


def test_auth_of_captured_replies() -> None:
    info = fixture_info("healthy")
    acl = json.loads((FIXTURES / "redis_acl_getuser_default.json").read_text())
    assert probe.acl_default_user_needs_password(acl["password"]) is True
    assert probe.acl_default_user_needs_password(acl["nopass"]) is False
    # The raw reply, as RESP2 sends it without redis-py's parsing.
    raw = ["flags", ["on", "nopass"], "passwords", [], "commands", "+@all"]
    assert probe.acl_default_user_needs_password(raw) is False
    assert probe.acl_default_user_needs_password(["flags", ["off"]]) is True
    assert probe.acl_default_user_needs_password("ERR unknown command") is None
    assert probe.acl_default_user_needs_password(None) is None

    with_password = probe.auth(fixture_config("requirepass"), info)
    assert with_password.has_password and with_password.source == "requirepass"
    local = probe.auth(fixture_config("healthy"), info, acl["nopass"])
    assert not local.has_password and local.exposure and not local.exposure.beyond_loopback
    open_ = probe.auth(fixture_config("open_no_password"), info, acl["nopass"])
    assert not open_.has_password and open_.exposure and open_.exposure.beyond_loopback
    # A password set through ACL only, with requirepass empty, still counts.
    assert probe.auth(fixture_config("healthy"), info, acl["password"]).source == "ACL"
    # CONFIG renamed away and ACL refused: our own connection tells.
    # (a password we sent proves nothing: a nopass default user accepts any)
    assert probe.auth(None, info, None, sent_password=True) == probe.Auth(None, "", None)
    assert probe.auth(None, info, None) == probe.Auth(False, "no AUTH", None)


def test_auth_verdicts() -> None:
    info, nopass = fixture_info("healthy"), {"flags": ["on", "nopass"]}
    cli = "redis-cli -p 6390"
    ok = auth_finding(probe.auth(fixture_config("requirepass"), info), False, "/h/pw", cli)
    assert ok.status is Status.OK and "requires a password" in ok.summary
    assert "fixture-only-password" not in json.dumps(dict(ok.evidence)) + ok.summary
    local = probe.auth(fixture_config("healthy"), info, nopass)
    warned = auth_finding(local, False, "/h/redis/redis.password", cli)
    assert warned.status is Status.WARN and "a running task included" in warned.summary
    assert "REDIS_PASSWORD" in (warned.fix or "") and "config set requirepass" in (warned.fix or "")
    ours = auth_finding(local, True, "/h/redis/redis.password", cli)
    assert ours.status is Status.WARN
    assert "`hivemind down`, then `hivemind up`" in (ours.fix or "")
    assert "/h/redis/redis.password" in (ours.fix or "")
    open_ = probe.auth(fixture_config("open_no_password"), info, nopass)
    failed = auth_finding(open_, False, "/h/pw", cli)
    assert failed.status is Status.FAIL and "beyond loopback (0.0.0.0)" in failed.summary
    blind = auth_finding(probe.auth(None, info), False, "/h/pw", cli)
    assert blind.status is Status.WARN
    assert blind.evidence["bind"] == "unknown (CONFIG GET refused)"
    unknown = auth_finding(probe.auth(None, info, None, sent_password=True), False, "/p", cli)
    assert unknown.status is Status.SKIP and unknown.evidence["password"] == "unknown"


def test_persistence_of_captured_states() -> None:
    healthy = probe.persistence(fixture_config("healthy"), fixture_info("healthy"))
    assert healthy.any and healthy.aof_enabled and not healthy.failures()
    off = probe.persistence(
        fixture_config("allkeys_lru_no_persistence"), fixture_info("allkeys_lru_no_persistence")
    )
    assert not off.any
    failed = probe.persistence({}, fixture_info("bgsave_failed"))
    assert failed.failures() == ["the last RDB background save failed (rdb_last_bgsave_status:err)"]


def test_memory_and_eviction_of_captured_states() -> None:
    tight = probe.memory(
        fixture_config("allkeys_lru_no_persistence"), fixture_info("allkeys_lru_no_persistence")
    )
    assert tight.maxmemory == 1024 * 1024
    assert tight.fraction_of_max is not None and tight.fraction_of_max > 0.9
    assert probe.evicts_any_key(tight.policy)
    roomy = probe.memory(fixture_config("healthy"), fixture_info("healthy"))
    assert roomy.fraction_of_max is None and roomy.used > 0 and roomy.system_total > 0
    assert probe.keeps_persistent_keys(roomy.policy)
    assert probe.keeps_persistent_keys("volatile-lru") and not probe.evicts_any_key("volatile-lru")


def test_slowlog_and_latency_parsers_on_captured_replies() -> None:
    slow = probe.parse_slowlog(json.loads((FIXTURES / "redis_slowlog.json").read_text()))
    assert len(slow) == 1
    assert slow[0].command.startswith("EVAL local i=0")
    assert slow[0].duration_us > 10_000
    events = probe.parse_latency_latest(
        json.loads((FIXTURES / "redis_latency_latest.json").read_text())
    )
    assert [(e.event, e.max_ms >= e.latest_ms) for e in events] == [("command", True)]
    assert probe.parse_slowlog([["garbage"], None]) == []


def test_percentile_is_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert probe.percentile(samples, 0.99) == 99.0
    assert probe.percentile(samples, 0.5) == 50.0
    assert probe.percentile([], 0.99) == 0.0


# -- verdicts on the real Redis ----------------------------------------------------------------
def test_allkeys_policy_fails_and_fix_sets_noeviction(
    settings: Settings, live: redis.Redis, redis_server: RedisServer
) -> None:
    live.config_set("maxmemory-policy", "allkeys-lru")
    conf = redis_server.data_dir / "redis.conf"
    conf_before = conf.read_bytes()
    report = run_doctor(settings, only=["redis.eviction_policy"])
    result = report.result("redis.eviction_policy")
    assert result.status is Status.FAIL
    assert "allkeys-lru" in result.finding.summary and result.can_fix

    context = Context(settings)
    actions = plan_fixes(report, context)
    assert [a.command.split()[-4:] for a in actions] == [
        ["config", "set", "maxmemory-policy", "noeviction"]
    ]
    run = apply_fixes(report, actions, context)

    assert live.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert conf.read_bytes() == conf_before  # live only: no CONFIG REWRITE of redis.conf
    assert run.before["redis.eviction_policy"].status is Status.FAIL
    assert run.after["redis.eviction_policy"].status is Status.OK
    logged = [json.loads(line) for line in actions_log(context).read_text().splitlines()]
    assert logged[-1]["check"] == "redis.eviction_policy" and logged[-1]["applied"]


def test_volatile_policy_is_ok(settings: Settings, live: redis.Redis) -> None:
    live.config_set("maxmemory-policy", "volatile-ttl")
    status, summary, _ = verdict(settings, "redis.eviction_policy")
    assert (status, summary) == (Status.OK, "maxmemory-policy is volatile-ttl")


def test_no_persistence_warns_and_fix_turns_on_aof(settings: Settings, live: redis.Redis) -> None:
    live.config_set("appendonly", "no")
    live.config_set("save", "")
    report = run_doctor(settings, only=["redis.persistence"])
    assert report.result("redis.persistence").status is Status.WARN

    context = Context(settings)
    run = apply_fixes(report, plan_fixes(report, context), context)

    assert live.config_get("appendonly")["appendonly"] == "yes"
    assert run.after["redis.persistence"].status is Status.OK
    assert "AOF" in run.after["redis.persistence"].finding.summary


def test_failed_background_save_fails_and_is_not_auto_fixed(
    settings: Settings, live: redis.Redis, tmp_path: Path
) -> None:
    # A real failed BGSAVE: Redis's dir disappears under it.
    vanishing = tmp_path / "redis-dir"
    vanishing.mkdir()
    live.config_set("dir", str(vanishing))
    os.rmdir(vanishing)
    live.bgsave()
    deadline = time.monotonic() + 10
    while live.info("persistence")["rdb_last_bgsave_status"] != "err":
        assert time.monotonic() < deadline, "BGSAVE did not fail"
        time.sleep(0.05)
    report = run_doctor(settings, only=["redis.persistence"])
    result = report.result("redis.persistence")
    assert result.status is Status.FAIL
    assert "rdb_last_bgsave_status:err" in result.finding.summary
    assert plan_fixes(report, Context(settings)) == []


def test_memory_near_maxmemory_fails(settings: Settings, live: redis.Redis) -> None:
    used = int(live.info("memory")["used_memory"])
    live.config_set("maxmemory", str(int(used / 0.97)))
    status, summary, evidence = verdict(settings, "redis.memory")
    assert status is Status.FAIL, summary
    assert float(evidence["used_percent"]) > 95  # type: ignore[arg-type]


def test_memory_with_headroom_is_ok(settings: Settings, live: redis.Redis) -> None:
    live.config_set("maxmemory", str(512 * 1024**2))
    status, summary, evidence = verdict(settings, "redis.memory")
    assert status is Status.OK, summary
    assert evidence["maxmemory"] == "512.0 MiB"


def test_loopback_redis_without_password_is_not_exposed(
    settings: Settings, live: redis.Redis
) -> None:
    status, summary, evidence = verdict(settings, "redis.config_exposure")
    assert status is Status.OK, summary
    assert evidence["bind"] == "127.0.0.1" and evidence["requirepass"] == "empty"


def test_redis_open_to_the_network_without_password_fails(
    settings: Settings, live: redis.Redis
) -> None:
    # Briefly what the guide's "bind 0.0.0.0 / protected-mode no" does (restored by `live`).
    live.config_set("bind", "0.0.0.0")
    live.config_set("protected-mode", "no")
    status, summary, evidence = verdict(settings, "redis.config_exposure")
    assert status is Status.FAIL
    assert "no password" in summary
    assert evidence["bind"] == "0.0.0.0" and evidence["protected-mode"] == "no"


def test_redis_without_password_warns_on_loopback_and_fails_on_the_network(
    settings: Settings, live: redis.Redis
) -> None:
    status, summary, evidence = verdict(settings, "redis.auth")
    assert status is Status.WARN, summary
    assert evidence["password"] == "none" and evidence["bind"] == "127.0.0.1"
    live.config_set("bind", "0.0.0.0")
    status, summary, evidence = verdict(settings, "redis.auth")
    assert status is Status.FAIL, summary
    assert "no password and listens beyond loopback" in summary


def test_slow_command_warns_and_names_it(settings: Settings, live: redis.Redis) -> None:
    live.config_set("slowlog-log-slower-than", "10000")
    live.eval("local i=0 while i<4000000 do i=i+1 end return i", 0)
    status, summary, evidence = verdict(settings, "redis.latency")
    assert status is Status.WARN
    assert "EVAL" in summary
    slow = evidence["slow_commands_last_hour"]
    assert isinstance(slow, list) and slow[0]["ms"] >= 10


def test_latency_monitor_events_are_shown(settings: Settings, live: redis.Redis) -> None:
    live.config_set("latency-monitor-threshold", "5")
    live.eval("local i=0 while i<4000000 do i=i+1 end return i", 0)
    status, _, evidence = verdict(settings, "redis.latency")
    assert status is Status.WARN
    assert evidence["latency_monitor_threshold_ms"] == 5
    assert "latency_doctor" in evidence and evidence["latency_events"]


def test_quiet_redis_has_good_latency(settings: Settings, live: redis.Redis) -> None:
    # An earlier test's background save or AOF rewrite forks and stalls Redis: let it end.
    assert wait_until(
        lambda: (
            not any(
                int(live.info("persistence")[flag])
                for flag in ("rdb_bgsave_in_progress", "aof_rewrite_in_progress")
            )
        ),
        timeout=10,
    )
    # PING times on a shared, loaded test host can spike; a quiet Redis passes within 5 tries.
    for _ in range(5):
        status, summary, evidence = verdict(settings, "redis.latency")
        if status is Status.OK:
            break
    assert status is Status.OK, summary
    assert evidence["pings"] == 100 and evidence["slow_commands_last_hour"] == []


def test_redis_down_skips_every_redis_check_naming_ports_redis(
    settings: Settings,
) -> None:
    down = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    report = run_doctor(down, only=["redis"], timeout=3)
    assert {r.id for r in report.results} == {
        "redis.config_exposure",
        "redis.auth",
        "redis.persistence",
        "redis.memory",
        "redis.eviction_policy",
        "redis.latency",
        "redis.replication",
        "redis.sentinel",
    }
    for result in report.results:
        assert result.status is Status.SKIP, result.id
        assert "ports.redis" in result.finding.summary
