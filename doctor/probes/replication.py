"""Readers of Redis's replication and Sentinel replies, for the doctor's HA checks.

Pure functions: they take redis-py's parsed replies (RESP2 flat lists or RESP3 maps) or
``redis-cli`` text, so fixtures can test them without a server.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from doctor.probes.redis_info import as_int, parse_info
from hivemind.redis_client import NODEPOOL_CLIENT_PREFIX

Address = tuple[str, int]


def reply_text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def reply_fields(reply: Any) -> dict[str, str]:
    """One Sentinel record (``SENTINEL MASTER``, an entry of ``SENTINEL REPLICAS`` …): a flat
    ``[name, value, …]`` list (RESP2) or a map (RESP3), as strings."""
    if isinstance(reply, Mapping):
        return {reply_text(key): reply_text(value) for key, value in reply.items()}
    items = list(reply or [])
    return {reply_text(items[i]): reply_text(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def reply_records(reply: Any) -> list[dict[str, str]]:
    """A list of Sentinel records (``SENTINEL REPLICAS``, ``SENTINELS``, ``MASTERS``)."""
    return [reply_fields(item) for item in reply or []]


def record_address(record: Mapping[str, str]) -> Address | None:
    port = as_int(record.get("port"), 0)
    return (record["ip"], port) if record.get("ip") and port else None


def record_flags(record: Mapping[str, str]) -> set[str]:
    return set(filter(None, record.get("flags", "").split(",")))


@dataclass(frozen=True)
class LinkedReplica:
    """A replica as its primary's INFO replication lists it (``slaveN:``)."""

    address: Address
    state: str
    offset: int
    lag: int


@dataclass(frozen=True)
class Replication:
    """A data node's INFO replication: its role and, by role, its replicas or its link."""

    role: str
    #: Its replication offset (a primary's ``master_repl_offset``, a replica's own).
    offset: int
    replicas: tuple[LinkedReplica, ...] = ()
    master: Address | None = None
    link_up: bool = True
    link_down_seconds: int = 0

    @property
    def is_primary(self) -> bool:
        return self.role == "master"


def _linked(value: Any) -> LinkedReplica | None:
    """A ``slaveN`` value: redis-py's dict, or ``ip=…,port=…,state=…,offset=…,lag=…``."""
    if not isinstance(value, Mapping):
        value = dict(part.partition("=")[::2] for part in reply_text(value).split(","))
    port = as_int(value.get("port"), 0)
    if not value.get("ip") or not port:
        return None
    return LinkedReplica(
        (reply_text(value["ip"]), port),
        reply_text(value.get("state", "")),
        as_int(value.get("offset"), 0),
        as_int(value.get("lag"), -1),
    )


def read_replication(info: Mapping[str, Any] | str) -> Replication:
    """INFO replication, as text (``redis-cli info replication``) or redis-py's dict."""
    fields: Mapping[str, Any] = parse_info(info) if isinstance(info, str) else info
    role = reply_text(fields.get("role", ""))
    if role != "slave":
        linked = (
            _linked(v) for k, v in fields.items() if k.startswith("slave") and k[5:].isdigit()
        )
        return Replication(
            role, as_int(fields.get("master_repl_offset")), tuple(r for r in linked if r)
        )
    port = as_int(fields.get("master_port"), 0)
    host = reply_text(fields.get("master_host", ""))
    return Replication(
        role,
        as_int(fields.get("slave_repl_offset")),
        master=(host, port) if host and port else None,
        link_up=reply_text(fields.get("master_link_status", "")) == "up",
        link_down_seconds=as_int(fields.get("master_link_down_since_seconds"), 0),
    )


# -- probes -------------------------------------------------------------------------------------


def show(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def pools_on_primary(
    pools: Sequence[Address], client_names: Iterable[str], this_host: str
) -> dict[str, bool]:
    """Which node pools have a connection to the Redis that gave ``client_names`` (its
    CLIENT LIST names; node pools name theirs ``hivemind-nodepool:<hostname>:<port>``).

    A node pool is matched by its port when no other address of the list has that port,
    else by host name too (loopback counting as ``this_host``)."""
    named: set[tuple[str, int]] = set()
    for name in client_names:
        if name.startswith(NODEPOOL_CLIENT_PREFIX):
            host, _, port = name.removeprefix(NODEPOOL_CLIENT_PREFIX).rpartition(":")
            if port.isdigit():
                named.add((host, int(port)))
    ports = Counter(port for _, port in pools)
    found = {}
    for host, port in pools:
        if ports[port] == 1:
            found[show((host, port))] = any(p == port for _, p in named)
        else:
            local = this_host if host in ("127.0.0.1", "localhost", "::1") else host
            found[show((host, port))] = (local, port) in named
    return found
