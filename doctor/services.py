"""How services are controlled on this host: systemd units when installed, else `hivemind up`.

Fix hints name the exact command for this host, so they come from here.
"""

from __future__ import annotations

from pathlib import Path

#: The guide's unit names.
UNITS = {
    "nodepool": "hivemind-nodepool",
    "master": "hivemind-master",
    "redis": "redis-server",
}
SYSTEMD_UNIT_DIRS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"))


def systemd_unit(service: str) -> str | None:
    """The unit name when a systemd unit for ``service`` is installed here."""
    unit = UNITS.get(service)
    if unit is None:
        return None
    for folder in SYSTEMD_UNIT_DIRS:
        if (folder / f"{unit}.service").exists():
            return unit
    return None


def start_command(service: str) -> str:
    unit = systemd_unit(service)
    if unit and service == "redis":
        # `hivemind up` starts its own Redis when none answers; the distro's unit is an option.
        return f"hivemind up (or: sudo systemctl start {unit})"
    return f"sudo systemctl start {unit}" if unit else "hivemind up"


def restart_command(service: str) -> str:
    unit = systemd_unit(service)
    return f"sudo systemctl restart {unit}" if unit else "hivemind down && hivemind up"
