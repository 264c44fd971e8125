"""`hivemind service install`: systemd units under the guide's names, so that its
`systemctl restart hivemind-*` works and the recovery engine controls the services through
systemd: `hivemind-nodepool`, `hivemind-master` and `hivemind-worker@<id>`.

Each unit runs as a service user, restarts on failure, and may open 65536 files (the
node pool holds a socket per worker and per client stream).
"""

from __future__ import annotations

import shlex
import shutil
import sys
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
