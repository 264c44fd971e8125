"""The high-availability layout: three Redis (a primary and two replicas), three Sentinels,
and several node pools, as `hivemind up --ha` starts it on one machine and `hivemind
service install --ha` writes it for real hosts.

Redis replication and Sentinel do the failover; HiveMind only lays them out:

- Each data node's config is written once and then left to Redis: Sentinel rewrites it
  (``CONFIG REWRITE``) when it turns a node into a replica, and a node that comes back
  after a failover must come back as what Sentinel made it, not as the primary it was.
- ``min-replicas-to-write 1``: a primary that has lost every replica refuses writes, so an
  old primary cut off from the rest (a split brain) cannot take writes that would be thrown
  away when Sentinel demotes it.
- Sentinels watch the master named :data:`MASTER_NAME` with quorum 2 of 3, and declare it
  down after :data:`~hivemind.tuning.SENTINEL_DOWN_AFTER_MS`.

The passwords are the same everywhere (the data nodes' ``requirepass``/``masterauth`` and
the Sentinels' own ``requirepass``): one secret, in ``$HIVEMIND_HOME/redis/redis.password``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hivemind import tuning
from hivemind.addresses import SENTINEL_SCHEME, parse_addresses, parse_sentinel_url
from hivemind.config import Settings

#: The name the Sentinels know the primary by.
MASTER_NAME = "hivemind"
#: Sentinels that must agree that the primary is down before one fails it over.
QUORUM = 2
LOCALHOST = "127.0.0.1"
#: Default ports of the local layout: data nodes, Sentinels, and the node pools' offsets
#: from GRPC_PORT (each node pool's enrolment port is its own + 1, hence the step of 2).
DATA_PORTS = (6379, 6380, 6381)
SENTINEL_PORTS = (26379, 26380, 26381)
NODEPOOL_PORT_STEP = 2
NODEPOOLS = 2
#: Each further node pool's metrics port is the first's plus this times its index.
NODEPOOL_METRICS_STEP = 10


@dataclass(frozen=True)
class Layout:
    """Where each part of a local HA stack listens."""

    data_ports: tuple[int, ...]
    sentinel_ports: tuple[int, ...]
    nodepool_ports: tuple[int, ...]
    nodepool_metrics_ports: tuple[int, ...]

    @property
    def redis_url(self) -> str:
        hosts = ",".join(f"{LOCALHOST}:{port}" for port in self.sentinel_ports)
        return f"{SENTINEL_SCHEME}://{hosts}/{MASTER_NAME}/0"

    @property
    def nodepool_address(self) -> str:
        return ",".join(f"{LOCALHOST}:{port}" for port in self.nodepool_ports)

    @property
    def ha_redis_ports(self) -> str:
        return ",".join(f"{LOCALHOST}:{port}" for port in self.data_ports)


def plan(settings: Settings) -> Layout:
    """The local layout ``settings`` ask for: a ``redis+sentinel://`` REDIS_URL on this
    machine gives the Sentinels' ports, HA_REDIS_PORTS the data nodes', a NODEPOOL_ADDRESS
    list the node pools'; anything not given takes the defaults above. ValueError when
    what is given cannot be a local layout."""
    data = parse_addresses(settings.ha_redis_ports, DATA_PORTS[0], "HA_REDIS_PORTS")
    sentinels: Sequence[tuple[str, int]] = [(LOCALHOST, port) for port in SENTINEL_PORTS]
    if settings.redis_url.startswith(f"{SENTINEL_SCHEME}://"):
        target = parse_sentinel_url(settings.redis_url)
        if target.master_name != MASTER_NAME:
            raise ValueError(
                f"`up --ha` names its master {MASTER_NAME!r}; "
                f"REDIS_URL names {target.master_name!r}"
            )
        sentinels = target.sentinels
    if "," in settings.nodepool_address:
        pools = parse_addresses(settings.nodepool_address, settings.grpc_port, "NODEPOOL_ADDRESS")
    else:
        step = NODEPOOL_PORT_STEP
        pools = tuple((LOCALHOST, settings.grpc_port + step * n) for n in range(NODEPOOLS))
    for host, _port in (*data, *sentinels, *pools):
        if host not in (LOCALHOST, "localhost"):
            raise ValueError(f"`up --ha` starts everything on this machine; {host} is not it")
    base = settings.nodepool_metrics_port
    metrics = tuple(base + NODEPOOL_METRICS_STEP * n if base else 0 for n in range(len(pools)))
    layout = Layout(
        tuple(port for _, port in data),
        tuple(port for _, port in sentinels),
        tuple(port for _, port in pools),
        metrics,
    )
    if len(layout.data_ports) < 2 or len(layout.sentinel_ports) < 3:
        raise ValueError("`up --ha` needs at least 2 Redis ports and 3 Sentinels")
    ports = [*layout.data_ports, *layout.sentinel_ports, *layout.nodepool_ports]
    if len(set(ports)) != len(ports):
        raise ValueError(f"`up --ha` needs distinct ports, got {sorted(ports)}")
    return layout


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def data_node_conf(port: int, password: str, primary: tuple[str, int] | None) -> str:
    """A data node's redis.conf (``primary``: whom it replicates at first; None: it is the
    primary). Durable, never evicting, and refusing writes without a replica."""
    lines = [
        "# Written once by HiveMind; from then on Redis and Sentinel keep it (CONFIG REWRITE).",
        f"port {port}",
        "protected-mode yes",
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        "maxmemory-policy noeviction",
        f"requirepass {_quoted(password)}",
        f"masterauth {_quoted(password)}",
        "min-replicas-to-write 1",
        f"min-replicas-max-lag {tuning.MIN_REPLICAS_MAX_LAG}",
        # A replica that lost its primary keeps answering reads, but HiveMind only writes.
        "replica-serve-stale-data yes",
    ]
    if primary is not None:
        lines.append(f"replicaof {primary[0]} {primary[1]}")
    return "\n".join(lines) + "\n"


def sentinel_conf(
    port: int, password: str, primary: tuple[str, int], down_after_ms: int, bind: str
) -> str:
    """A Sentinel's config; Sentinel rewrites it itself as it learns the layout."""
    host, primary_port = primary
    return (
        "\n".join(
            [
                "# Written once by HiveMind; from then on Sentinel keeps it.",
                f"port {port}",
                f"bind {bind}",
                "sentinel resolve-hostnames yes",
                f"sentinel monitor {MASTER_NAME} {host} {primary_port} {QUORUM}",
                f"sentinel auth-pass {MASTER_NAME} {_quoted(password)}",
                f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
                f"sentinel failover-timeout {MASTER_NAME} {tuning.SENTINEL_FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {MASTER_NAME} 1",
                f"requirepass {_quoted(password)}",
                # Sentinels talk to each other with the same password.
                f"sentinel sentinel-pass {_quoted(password)}",
            ]
        )
        + "\n"
    )


def write_once(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` (0600) unless the file exists; True when written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return True
