"""Starting and stopping HiveMind's services through what the host has: systemd units when
they are installed and systemd runs, otherwise the pid-file supervisor of `hivemind up`.

The units are the guide's (`hivemind-nodepool`, `hivemind-master`, `hivemind-worker@<id>`,
and the distribution's `redis-server`), so `systemctl restart hivemind-*` and a playbook act
on the same processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from hivemind import stack
from hivemind.config import Settings
from hivemind.errors import StackError
from hivemind.remote import Runner
from recovery.model import ActionFailed

#: Services a step may name, in start order; ``all`` means every one of them.
SERVICES = ("redis", "nodepool", "master", "workers")
UNIT_DIRS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"))
UNITS = {"redis": "redis-server", "nodepool": "hivemind-nodepool", "master": "hivemind-master"}
WORKER_UNIT = "hivemind-worker@"
#: The stack's own names (stack.status) for our service names.
_STATUS_NAMES = {"redis": "redis", "nodepool": "node pool", "master": "master"}
#: The names of an `up --ha` stack's parts of each service, before their port.
_HA_PARTS = {"redis": ("redis", "sentinel"), "nodepool": ("node pool",)}


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def installed_unit(service: str) -> str | None:
    """The systemd unit that runs ``service`` here, when one is installed and systemd runs."""
    if not systemd_running():
        return None
    name = UNITS.get(service, WORKER_UNIT if service == "workers" else "")
    suffix = ".service"
    for folder in UNIT_DIRS:
        if (folder / f"{name}{suffix}").exists():
            return name
    return None


def expand(name: str) -> list[str]:
    return list(SERVICES) if name == "all" else [name]


class ServiceControl:
    """One host's services. ``state()`` reads; ``start``/``stop`` change and report."""

    def __init__(
        self, settings: Settings, runner: Runner, emit: Callable[[str], None], timeout: float
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.emit = emit
        self.timeout = timeout

    # -- reading ------------------------------------------------------------------------
    def state(self, service: str) -> str:
        """``healthy``, ``running`` (not yet healthy), ``stopped`` or ``not-installed``."""
        unit = installed_unit(service)
        if unit is not None:
            return self._unit_state(unit, service)
        status = stack.status(self.settings)
        if service == "workers":
            workers = [s for s in status.services if s.name.startswith("worker ")]
            wanted = stack.recorded_shape(self.settings)["workers"]
            healthy = sum(1 for s in workers if s.healthy)
            if healthy >= wanted:
                return "healthy"
            return "running" if any(s.running for s in workers) else "stopped"
        # With `up --ha` a service is several: "redis 6380", "sentinel 26379", "node pool
        # 127.0.0.1:50053" …; it is healthy only when all of them are.
        parts = [
            svc
            for svc in status.services
            if svc.name == _STATUS_NAMES[service]
            or svc.name.startswith(tuple(f"{prefix} " for prefix in _HA_PARTS.get(service, ())))
        ]
        if not parts:
            return "stopped"
        if not all(svc.enabled for svc in parts):
            return "not-installed"
        if all(svc.healthy for svc in parts):
            return "healthy"
        return "running" if any(svc.running for svc in parts) else "stopped"

    def states(self, services: list[str]) -> dict[str, str]:
        return {service: self.state(service) for service in services}

    def _unit_state(self, unit: str, service: str) -> str:
        pattern = f"{unit}*" if service == "workers" else unit
        done = self.runner.run(["systemctl", "is-active", pattern], timeout=10)
        states = done.text.split()
        if states and all(s == "active" for s in states):
            return "healthy"
        return "running" if "activating" in states or "active" in states else "stopped"

    # -- changing -----------------------------------------------------------------------
    def start(self, service: str) -> bool:
        """Start ``service`` unless it is healthy; True when something was started."""
        before = self.state(service)
        if before in ("healthy", "not-installed"):
            return False
        unit = installed_unit(service)
        try:
            if unit is not None:
                self._systemctl("start", unit, service)
                self.wait_healthy(service, self.timeout)
            else:
                stack.start_named(self.settings, service, self.timeout, self.emit)
        except StackError as exc:
            raise ActionFailed(f"could not start {service}: {exc}") from None
        return True

    def stop(self, service: str) -> str | None:
        """Stop ``service`` if it runs, or clear its stale pid files: what was done, or None."""
        unit = installed_unit(service)
        if unit is not None:
            if self._unit_state(unit, service) == "stopped":
                return None
            self._systemctl("stop", unit, service)
            return f"stopped {service}"
        try:
            results = stack.stop_named(self.settings, service, self.emit)
        except StackError as exc:
            raise ActionFailed(f"could not stop {service}: {exc}") from None
        if not results:
            return None
        if any(r.stopped for r in results):
            return f"stopped {service}"
        return f"cleared the stale pid file(s) of {service}"

    def _systemctl(self, verb: str, unit: str, service: str) -> None:
        pattern = f"{unit}*" if service == "workers" else unit
        done = self.runner.run(["systemctl", verb, pattern], timeout=self.timeout, sudo=True)
        if not done.ok:
            why = done.stderr.decode(errors="replace").strip() or f"exit {done.exit_code}"
            raise ActionFailed(f"systemctl {verb} {pattern}: {why}")

    def wait_healthy(self, service: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(service)
            if state in ("healthy", "not-installed") or time.monotonic() >= deadline:
                return state
            time.sleep(0.25)
