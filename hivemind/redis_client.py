"""The one way every HiveMind process connects to Redis: one server, or through Sentinel.

``REDIS_URL`` names either one Redis (``redis://``, ``rediss://``, ``unix://``) or a set of
Redis Sentinels and the master they watch::

    redis+sentinel://[:PASSWORD@]host1:26379,host2:26379/MASTER_NAME[/DB]

``REDIS_SENTINELS`` (``host1:26379,host2:26379``) with ``REDIS_MASTER_NAME`` says the same
while ``REDIS_URL`` keeps giving the db and the password. The password (the URL's, else
REDIS_PASSWORD, else the local one `hivemind up` generated, see
:func:`hivemind.config.effective_redis_url`) is sent to the Sentinels and to the data nodes.

Through Sentinel, redis-py asks the Sentinels for the primary on every new connection and
drops a connection whose server turned replica (``READONLY``), so a failover is followed by
itself; commands that fail meanwhile are retried for up to
:data:`hivemind.tuning.REDIS_FAILOVER_SECONDS`. Writes that must survive the primary's death
(submit, complete) then wait for one replica (``WAIT 1 REDIS_WAIT_MS``):
:func:`replica_wait`.
"""

from __future__ import annotations

import socket
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

from hivemind import tuning
from hivemind.addresses import (
    DEFAULT_SENTINEL_PORT,
    SENTINEL_SCHEME,
    SentinelTarget,
    parse_addresses,
    parse_sentinel_url,
)
from hivemind.config import Settings, effective_redis_url, redact_url
from hivemind.errors import HivemindError


class RedisUnreachable(HivemindError):
    """No Redis primary can be found or reached; the message says which part failed."""


def sentinel_target(settings: Settings) -> SentinelTarget | None:
    """Where Sentinel is configured, whom to ask; None for a single Redis."""
    url = effective_redis_url(settings)
    if url.startswith(f"{SENTINEL_SCHEME}://"):
        return parse_sentinel_url(url)
    if not settings.redis_sentinels:
        return None
    data = redis.connection.parse_url(url) if "://" in url else {}
    sentinels = parse_addresses(settings.redis_sentinels, DEFAULT_SENTINEL_PORT, "REDIS_SENTINELS")
    return SentinelTarget(
        sentinels, settings.redis_master_name, int(data.get("db") or 0), data.get("password")
    )


#: Every Redis connection of a node pool is named ``hivemind-nodepool:<hostname>:<port>``
#: (CLIENT SETNAME), so that the doctor can tell, on the primary, which node pools use it.
NODEPOOL_CLIENT_PREFIX = "hivemind-nodepool:"


def nodepool_client_name(settings: Settings) -> str:
    return f"{NODEPOOL_CLIENT_PREFIX}{socket.gethostname()}:{settings.grpc_port}"


def connect_nodepool(settings: Settings) -> redis.Redis:
    """The node pool's client: named for ``nodepool.peers``, decoding replies, with room for
    every call thread's script connection."""
    return connect(
        settings,
        client_name=nodepool_client_name(settings),
        decode_responses=True,
        socket_timeout=30,
        socket_connect_timeout=5,
        health_check_interval=30,
        max_connections=512,
    )


def describe_redis(settings: Settings) -> str:
    """Where this host's Redis is, for messages (no password)."""
    target = sentinel_target(settings)
    return target.describe() if target else redact_url(settings.redis_url)


def connect(
    settings: Settings,
    *,
    socket_timeout: float | None = 5.0,
    socket_connect_timeout: float | None = 5.0,
    **options: Any,
) -> redis.Redis:
    """A client of this host's Redis (the primary, through Sentinel where configured).

    ``options`` go to redis-py (``decode_responses``, ``max_connections`` …). Nothing is
    sent until the first command.
    """
    target = sentinel_target(settings)
    if target is None:
        return redis.Redis.from_url(
            effective_redis_url(settings),
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            **options,
        )
    return sentinel_manager(target, socket_timeout or 5.0).master_for(
        target.master_name,
        db=target.db,
        password=target.password,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        retry=failover_retry(),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **options,
    )


def failover_retry() -> Retry:
    """Retries that outlast a Sentinel failover: backing off to 0.5 s, for about
    :data:`~hivemind.tuning.REDIS_FAILOVER_SECONDS` in all."""
    cap = 0.5
    return Retry(ExponentialBackoff(cap=cap, base=0.05), int(tuning.REDIS_FAILOVER_SECONDS / cap))


def sentinel_manager(target: SentinelTarget, timeout: float) -> Sentinel:
    """A redis-py Sentinel over ``target``'s Sentinels (each asked with ``timeout``)."""
    return Sentinel(
        list(target.sentinels),
        sentinel_kwargs={
            "password": target.password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        },
    )


def replica_wait(settings: Settings) -> tuple[int, int] | None:
    """``(replicas, milliseconds)`` for the WAIT after a write that must not be lost, or
    None: only through Sentinel (a single Redis has no replica to wait for)."""
    if settings.redis_wait_ms <= 0 or sentinel_target(settings) is None:
        return None
    return 1, settings.redis_wait_ms


def locate_primary(target: SentinelTarget, timeout: float = 2.0) -> tuple[str, int]:
    """The primary's address as the first answering Sentinel gives it, asked once each with
    no retries, so that a wrong name or dead Sentinels fail at once and say which."""
    unreachable: list[str] = []
    unaware: list[str] = []
    for host, port in target.sentinels:
        client = redis.Redis(
            host=host,
            port=port,
            password=target.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(ExponentialBackoff(), 0),
        )
        try:
            address = client.execute_command(
                "SENTINEL", "get-master-addr-by-name", target.master_name
            )
        except (redis.RedisError, OSError) as exc:
            unreachable.append(f"{host}:{port} ({exc})")
            continue
        finally:
            client.close()
        if address:
            primary, primary_port = (
                part.decode() if isinstance(part, bytes) else str(part) for part in address
            )
            return primary, int(primary_port)
        unaware.append(f"{host}:{port}")
    if unaware:
        raise RedisUnreachable(
            f"the Sentinels at {', '.join(unaware)} watch no master named "
            f"{target.master_name!r} (REDIS_MASTER_NAME, or the path of a redis+sentinel:// "
            "REDIS_URL)" + (f"; not answering: {'; '.join(unreachable)}" if unreachable else "")
        )
    raise RedisUnreachable(f"no Sentinel answers: {'; '.join(unreachable)}")


def primary_client(target: SentinelTarget, timeout: float = 2.0) -> redis.Redis:
    """A client of the primary the Sentinels name now, pinned to it (no failover): for
    probes, which must be quick and say which server they asked."""
    host, port = locate_primary(target, timeout)
    return redis.Redis(
        host=host,
        port=port,
        db=target.db,
        password=target.password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )


def check_reachable(settings: Settings, timeout: float = 2.0) -> None:
    """PING this host's Redis once; :class:`RedisUnreachable` saying what failed."""
    target = sentinel_target(settings)
    if target is not None:
        client = primary_client(target, timeout)
        named = client.connection_pool.connection_kwargs
        where = f"the primary {named['host']}:{named['port']} that {target.describe()} names"
    else:
        where = f"Redis at {redact_url(settings.redis_url)}"
        client = redis.Redis.from_url(
            effective_redis_url(settings),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise RedisUnreachable(f"cannot reach {where}: {exc}") from None
    finally:
        client.close()
