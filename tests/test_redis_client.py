"""Where every component finds Redis and the node pools: the Sentinel URL forms, the address
lists and the clear errors for malformed ones (pure parsing; tests/test_ha.py runs them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hivemind.addresses import SentinelTarget, parse_addresses, parse_sentinel_url
from hivemind.client import channel_target
from hivemind.config import Settings, effective_redis_url, load_settings
from hivemind.errors import ConfigError, NodePoolError
from hivemind.redis_client import replica_wait, sentinel_target


def test_a_sentinel_url_names_the_sentinels_the_master_the_db_and_the_password() -> None:
    target = parse_sentinel_url("redis+sentinel://:s%40cret@h1:26380,h2,[::1]:26381/mymaster/3")
    assert target == SentinelTarget(
        (("h1", 26380), ("h2", 26379), ("::1", 26381)), "mymaster", 3, "s@cret"
    )
    assert "s@cret" not in target.describe() and "h2:26379" in target.describe()
    assert parse_sentinel_url("redis+sentinel://h1/m").db == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h1:26379", "names no master"),
        ("redis+sentinel://h1:26379/m/x", "/MASTER_NAME[/DB]"),
        ("redis+sentinel://h1:port/m", "'h1:port' is not host:port"),
        ("redis+sentinel://h1:70000/m", "port 70000"),
        ("redis+sentinel:///m", "names no address"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_at_load_saying_why(
    url: str, says: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HIVEMIND_REDIS_URL", url)
    monkeypatch.setenv("HIVEMIND_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_settings()


def test_sentinels_given_apart_take_the_db_and_password_from_redis_url() -> None:
    settings = Settings(
        redis_url="redis://:pw@ignored:6379/2", redis_sentinels="a:1,b:2", redis_master_name="m"
    )
    assert sentinel_target(settings) == SentinelTarget((("a", 1), ("b", 2)), "m", 2, "pw")
    assert replica_wait(settings) == (1, 1000)
    assert replica_wait(settings.replace(redis_wait_ms=0)) is None
    assert replica_wait(Settings(redis_url="redis://localhost:6379/0")) is None


def test_the_local_password_goes_to_local_sentinels_only(tmp_path: Path) -> None:
    home = tmp_path
    (home / "redis").mkdir(parents=True)
    (home / "redis" / "redis.password").write_text("local-secret\n")
    local = Settings(home=home, redis_url="redis+sentinel://127.0.0.1:1,localhost:2/hivemind/0")
    assert ":local-secret@" in effective_redis_url(local)
    remote = local.replace(redis_url="redis+sentinel://127.0.0.1:1,db.example:2/hivemind/0")
    assert "local-secret" not in effective_redis_url(remote)


def test_a_node_pool_list_becomes_one_target_tried_in_order() -> None:
    target, options = channel_target("localhost:50051,127.0.0.1:50053")
    assert target == "ipv4:127.0.0.1:50051,127.0.0.1:50053"
    assert ("grpc.default_authority", "localhost:50051") in options
    assert channel_target("localhost:50051") == ("localhost:50051", [])


def test_a_node_pool_list_that_does_not_parse_or_resolve_says_so() -> None:
    with pytest.raises(NodePoolError, match="'b:x' is not host:port"):
        channel_target("a:1,b:x")
    with pytest.raises(NodePoolError, match="none of the node pools"):
        channel_target("no-such-host.invalid:1,also-not.invalid:2")
    with pytest.raises(ValueError, match="names no address"):
        parse_addresses(" , ", 1, "NODEPOOL_ADDRESS")
