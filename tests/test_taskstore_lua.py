"""The task scripts' own connections, on a real Redis: replies never cross, and connections
are reused, not leaked."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hivemind.taskstore.lua import LuaScript, NotReplicated, ScriptConnections

ECHO = "return ARGV[1]"
# Busy for ARGV[1] microseconds, then replies "late".
SLOW = """
local started = redis.call('TIME')
repeat
  local now = redis.call('TIME')
until (now[1] - started[1]) * 1000000 + (now[2] - started[2]) > tonumber(ARGV[1])
return 'late'
"""


def named_connections(admin: redis.Redis, name: str) -> int:
    return sum(1 for client in admin.client_list() if client["name"] == name)


def test_concurrent_calls_each_get_their_own_reply_and_reuse_connections(
    redis_url: str,
) -> None:
    name = f"lua-test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url, decode_responses=True, client_name=name)
    connections = ScriptConnections(client)
    echo = LuaScript(connections, ECHO)
    threads, calls = 8, 150
    wrong: list[tuple[str, str]] = []

    def caller(number: int) -> None:
        for call in range(calls):
            sent = f"{number}-{call}"
            if (got := echo([sent])) != sent:
                wrong.append((sent, got))

    running = [threading.Thread(target=caller, args=(n,)) for n in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    assert wrong == []
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    # One connection per call in flight at most, kept for the next calls.
    assert 1 <= named_connections(admin, name) <= threads
    connections.close()
    deadline = time.monotonic() + 5
    while named_connections(admin, name) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert named_connections(admin, name) == 0


def test_a_timed_out_call_leaves_no_late_reply_for_the_next_call(redis_url: str) -> None:
    client = redis.Redis.from_url(
        redis_url, decode_responses=True, socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    connections = ScriptConnections(client)
    slow, echo = LuaScript(connections, SLOW), LuaScript(connections, ECHO)
    assert echo(["warm"]) == "warm"  # the one connection now exists and is idle
    with pytest.raises(redis.TimeoutError):
        slow([600_000])
    time.sleep(0.7)  # the slow script has now finished and its reply has been sent
    assert echo(["fresh"]) == "fresh"
    connections.close()


def test_a_durable_write_no_replica_confirms_is_not_acknowledged(redis_url: str) -> None:
    """Through Sentinel, a submit or completion waits for a replica (WAIT). This Redis has
    none: the write is refused with NotReplicated (and would be retried across a failover)
    instead of being acknowledged as safe."""
    client = redis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 0))
    missing: list[int] = []
    durable = LuaScript(
        ScriptConnections(client), ECHO, durable=(1, 50), unreplicated=missing.append
    )
    began = time.monotonic()
    with pytest.raises(NotReplicated, match="no replica confirmed the write within 50 ms"):
        durable(["x"])
    assert missing == [0]
    assert time.monotonic() - began >= 0.05  # it did wait for WAIT's timeout
    assert LuaScript(ScriptConnections(client), ECHO)(["x"]) == b"x"  # not durable: no WAIT


def test_a_durable_write_a_primary_without_replicas_refuses_is_not_replicated(
    redis_url: str,
) -> None:
    """``min-replicas-to-write``: a primary with no replica refuses the script's first write
    (NOREPLICAS, wrapped in the script error); that is NotReplicated, so it is retried."""
    admin = redis.Redis.from_url(redis_url)
    client = redis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 0))
    write = "redis.call('SET', 'durable-probe', ARGV[1]) return 1"
    admin.config_set("min-replicas-to-write", 1)
    try:
        with pytest.raises(NotReplicated, match="NOREPLICAS"):
            LuaScript(ScriptConnections(client), write, durable=(1, 50))(["x"])
        with pytest.raises(redis.ResponseError, match="NOREPLICAS"):  # not durable: as it is
            LuaScript(ScriptConnections(client), write)(["x"])
    finally:
        admin.config_set("min-replicas-to-write", 0)
    assert admin.get("durable-probe") is None


def test_a_durable_scripts_wait_rides_with_it_and_its_replies_stay_in_step(
    redis_url: str,
) -> None:
    """The WAIT is sent with the script, not after its reply. A script error, or a Redis
    that forgot the script, must still leave both replies read: the next call on the same
    connection gets its own."""
    admin = redis.Redis.from_url(redis_url)
    client = redis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 0))
    connections = ScriptConnections(client)
    echo = LuaScript(connections, ECHO, durable=(0, 50))  # no replica needed: WAIT gives 0
    broken = "return redis.error_reply('BROKEN ' .. ARGV[1])"
    failing = LuaScript(connections, broken, durable=(0, 50))
    assert echo(["first"]) == b"first"
    with pytest.raises(redis.ResponseError, match="BROKEN x"):
        failing(["x"])
    assert echo(["second"]) == b"second"
    admin.script_flush()
    assert echo(["after flush"]) == b"after flush"
