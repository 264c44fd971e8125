"""The drill's scratch stack: a whole `hivemind up` of its own, in a temporary home, on free
ports, with its own Redis, so that no fault ever touches a stack that matters.

Where this host lets it (root, and a kernel that mounts tmpfs), the home is a small tmpfs,
so that the drill can fill a disk without filling a real one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from hivemind import redis_client, stack
from hivemind.auth import signer_for
from hivemind.bootstrap import ADMIN_USERNAME
from hivemind.client import Client
from hivemind.config import Settings, load_settings
from hivemind.paths import HomeLayout, layout

#: Size of the tmpfs the home sits on, when one can be mounted: big enough that its free
#: space is above the doctor's disk thresholds until the drill fills it.
TMPFS_SIZE = "3g"
#: The scratch stack's heartbeat: short, so that a silent worker shows within seconds.
HEARTBEAT_INTERVAL = 0.5


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Scratch:
    root: Path
    settings: Settings
    #: Why the home is not on a tmpfs of its own ("" when it is).
    no_tmpfs: str

    @property
    def home(self) -> HomeLayout:
        return layout(self.settings.home)

    def redis(self) -> redis.Redis:
        return redis_client.connect(self.settings, decode_responses=True, socket_timeout=5)

    def pid(self, service: str) -> int:
        """The pid a pid file of ``run/`` names (``nodepool``, ``worker-w1``, ``redis``…)."""
        return int(json.loads((self.home.run / f"{service}.pid").read_text())["pid"])

    def worker_ids(self) -> list[str]:
        return sorted(p.stem.removeprefix("worker-") for p in self.home.run.glob("worker-*.pid"))

    def client(self) -> Client:
        """A client logged in as the stack's admin (a token signed here: nothing is saved)."""
        token, _ = signer_for(self.settings).issue(
            ADMIN_USERNAME, "user", "admin", self.settings.token_ttl
        )
        return Client(self.settings.client_address, token)


def _mount_tmpfs(path: Path) -> str:
    """Mount a tmpfs at ``path``; "" when mounted, else why not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        return f"mount -t tmpfs failed: {(done.stderr or done.stdout).strip() or done.returncode}"
    return ""


@contextlib.contextmanager
def scratch_stack(workers: int = 2, keep: bool = False) -> Iterator[Scratch]:
    """A started stack of its own; stopped and removed afterwards (``keep``: left on disk)."""
    root = Path(tempfile.mkdtemp(prefix="hivemind-drill-"))
    home = root / "home"
    home.mkdir()
    no_tmpfs = _mount_tmpfs(home)
    redis_port, grpc_port, master_port, *metrics = _free_ports(6)
    settings = load_settings(
        environ={},
        home=home,
        redis_url=f"redis://127.0.0.1:{redis_port}/0",  # nothing answers: `up` starts one
        grpc_host="127.0.0.1",
        grpc_port=grpc_port,
        master_host="127.0.0.1",
        master_port=master_port,
        doctor_metrics_port=metrics[0],
        nodepool_metrics_port=metrics[1],
        worker_metrics_port=metrics[2],
        heartbeat_interval=HEARTBEAT_INTERVAL,
        max_concurrent_tasks=2,
        shutdown_grace=3.0,
        tls="off",
    )
    # `up` logs the CLI in; that login goes to the scratch root, not the operator's.
    saved = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(root / "xdg")
    scratch = Scratch(root, settings, no_tmpfs)
    try:
        from hivemind.bootstrap import ensure_admin

        layout(home).ensure()
        ensure_admin(settings)
        stack.up(settings, workers=workers, timeout=60)
        yield scratch
    finally:
        with contextlib.suppress(Exception):
            stack.down(settings)
        if saved is None:
            os.environ.pop("XDG_CONFIG_HOME", None)
        else:
            os.environ["XDG_CONFIG_HOME"] = saved
        if not no_tmpfs:
            subprocess.run(["umount", "-l", str(home)], capture_output=True, check=False)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def wait_for(predicate: object, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(step)
    return bool(predicate())  # type: ignore[operator]
