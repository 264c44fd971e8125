"""`hivemind service install`: systemd units under the guide's names, so that its
`systemctl restart hivemind-*` works and the recovery engine controls the services through
systemd: `hivemind-nodepool`, `hivemind-master` and `hivemind-worker@<id>`.

Each unit runs as a service user, restarts on failure, and may open 65536 files (the
node pool holds a socket per worker and per client stream).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hivemind.errors import UsageError

UNIT_DIR = Path("etc/systemd/system")
ENV_FILE = "/etc/hivemind/hivemind.env"


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
After=network-online.target {after}
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


def unit_texts(user: str, home: Path, command: str | None = None) -> dict[str, str]:
    """The unit files by name."""
    if not user or not all(c.isalnum() or c in "-_." for c in user):
        raise UsageError(f"not a user name: {user!r}")
    run = command or hivemind_command()
    return {
        "hivemind-nodepool.service": _unit(
            "HiveMind node pool", f"{run} nodepool", user, home, "redis-server.service"
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


def install_units(
    root: Path, user: str, home: Path, *, dry_run: bool = False, command: str | None = None
) -> list[UnitFile]:
    """Write the units under ``root``/etc/systemd/system (``root`` is / on a real host)."""
    folder = root / UNIT_DIR
    written = []
    for name, text in unit_texts(user, home, command).items():
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
