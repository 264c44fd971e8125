"""The faults `hivemind doctor drill` injects, each with the checks that must catch it.

A fault knows how to make itself on the scratch stack (``inject``), how to take itself back
(``undo``, also run after a repair, so it must be harmless when there is nothing left to
undo), which repair should mend it (``fix``: the doctor's ``--fix``; ``recover``: `hivemind
recover`; ``none``: nothing automatic mends it, the drill undoes it) and, where it cannot
be made on this host, why not (``unavailable``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from doctor.drill.scratch import Scratch, wait_for
from hivemind import keys, tuning
from hivemind.bootstrap import ADMIN_USERNAME
from hivemind.taskstore import NewTask, TaskStore
from hivemind.worker_records import WorkerCaps, worker_summary

Step = Callable[[Scratch, dict[str, Any]], None]


def _nothing(_scratch: Scratch, _state: dict[str, Any]) -> None:
    return None


def _available(_scratch: Scratch) -> str:
    return ""


@dataclass(frozen=True)
class Fault:
    name: str
    description: str
    #: Check ids, any of which getting worse than before the fault counts as caught.
    expects: tuple[str, ...]
    inject: Step
    undo: Step = _nothing
    repair: str = "none"  # fix, recover or none
    unavailable: Callable[[Scratch], str] = field(default=_available)


# -- helpers ---------------------------------------------------------------------------------
def _stop(pid: int, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie of ours is gone too
            return os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:
            return False

    wait_for(gone, timeout)


def _config(scratch: Scratch, name: str) -> str:
    return str(scratch.redis().config_get(name).get(name, ""))


FAKE_CAPS = WorkerCaps(cpu=1, memory_mb=512, gpu=0, labels=("drill-only",))


def _fake_worker(scratch: Scratch, node_id: str, heartbeat_at: float) -> None:
    """A worker record no process stands behind, its heartbeat stamped ``heartbeat_at``."""
    r = scratch.redis()
    summary = worker_summary(FAKE_CAPS, "online", 0, hostname="drill")
    summary["last_heartbeat"] = heartbeat_at
    store = TaskStore(r)
    store.heartbeat(node_id, {"hostname": "drill", "cpu": 1}, summary, [], 60)
    r.hset(keys.worker_key(node_id), "last_heartbeat", heartbeat_at)
    r.hset(keys.WORKER_NODES, node_id, json.dumps(summary))
    store.close()


def _forget_worker(scratch: Scratch, node_id: str) -> None:
    r = scratch.redis()
    r.delete(keys.worker_key(node_id), keys.worker_tasks_key(node_id))
    r.hdel(keys.WORKER_NODES, node_id)


# -- Redis -----------------------------------------------------------------------------------
def _eviction(scratch: Scratch, state: dict[str, Any]) -> None:
    state["policy"] = _config(scratch, "maxmemory-policy")
    scratch.redis().config_set("maxmemory-policy", "allkeys-lru")


def _eviction_undo(scratch: Scratch, state: dict[str, Any]) -> None:
    scratch.redis().config_set("maxmemory-policy", state.get("policy") or "noeviction")


def _persistence_off(scratch: Scratch, state: dict[str, Any]) -> None:
    state["appendonly"], state["save"] = _config(scratch, "appendonly"), _config(scratch, "save")
    r = scratch.redis()
    r.config_set("appendonly", "no")
    r.config_set("save", "")


def _persistence_undo(scratch: Scratch, state: dict[str, Any]) -> None:
    r = scratch.redis()
    if "save" in state:
        r.config_set("save", state["save"])
        r.config_set("appendonly", state["appendonly"])


def _nearly_full(scratch: Scratch, state: dict[str, Any]) -> None:
    r = scratch.redis()
    state["maxmemory"] = _config(scratch, "maxmemory")
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", str(int(used / 0.97)))


def _nearly_full_undo(scratch: Scratch, state: dict[str, Any]) -> None:
    scratch.redis().config_set("maxmemory", state.get("maxmemory") or "0")


# -- services --------------------------------------------------------------------------------
def _stopped(service: str) -> Step:
    def inject(scratch: Scratch, _state: dict[str, Any]) -> None:
        _stop(scratch.pid(service))

    return inject


def _killed_worker(scratch: Scratch, state: dict[str, Any]) -> None:
    node = scratch.worker_ids()[-1]
    state["node"] = node
    _stop(scratch.pid(f"worker-{node}"), signal.SIGKILL)


def _sleeping_task(scratch: Scratch, state: dict[str, Any]) -> str:
    from hivemind.client import function_spec

    with scratch.client() as client:
        [task_id] = client.submit([function_spec("hivemind.examples:sleep", [120])])
        if not wait_for(lambda: client.get(task_id).status == "RUNNING", 30):
            raise RuntimeError("the drill's task did not start")
        state["task"], state["node"] = task_id, client.get(task_id).worker
    return task_id


def _cancel_task(scratch: Scratch, state: dict[str, Any]) -> None:
    if "task" in state:
        with contextlib.suppress(Exception), scratch.client() as client:
            client.cancel(state["task"])


def _frozen_worker(scratch: Scratch, state: dict[str, Any]) -> None:
    _sleeping_task(scratch, state)
    state["pid"] = scratch.pid(f"worker-{state['node']}")
    os.kill(state["pid"], signal.SIGSTOP)


def _frozen_worker_undo(scratch: Scratch, state: dict[str, Any]) -> None:
    if "pid" in state:
        with contextlib.suppress(ProcessLookupError):
            os.kill(state["pid"], signal.SIGCONT)
    _cancel_task(scratch, state)


# -- tasks -----------------------------------------------------------------------------------
def _stuck_task(scratch: Scratch, state: dict[str, Any]) -> None:
    """A task whose worker went silent a minute ago, with the node pool's reaper stopped (its
    process frozen): only the doctor can see it and requeue it."""
    state["nodepool"] = scratch.pid("nodepool")
    os.kill(state["nodepool"], signal.SIGSTOP)
    r = scratch.redis()
    store = TaskStore(r)
    node = "drill-silent"
    _fake_worker(scratch, node, time.time() - 60)
    # Owned by the stack's admin: a task of an owner users.db lacks is a fault of its own.
    noop = {"function": "hivemind.examples:noop"}
    task = NewTask(ADMIN_USERNAME, "stuck", "function", noop, 300, 2, 0)
    [task_id] = store.submit([task])
    leases = store.lease(node, FAKE_CAPS, 1, scratch.settings.effective_lease_timeout)
    minute_ago = time.time() - 60
    r.hset(keys.task_key(task_id), mapping={"last_update": minute_ago, "start_time": minute_ago})
    expiry = (minute_ago + scratch.settings.effective_lease_timeout) * 1000
    r.zadd(keys.LEASES, {task_id: expiry})
    state["task"], state["fake"] = task_id, node
    store.close()
    if not leases:
        raise RuntimeError("the drill's stuck task was not leased to its silent worker")


def _stuck_task_undo(scratch: Scratch, state: dict[str, Any]) -> None:
    if "nodepool" in state:
        with contextlib.suppress(ProcessLookupError):
            os.kill(state["nodepool"], signal.SIGCONT)
    if "fake" in state:
        _forget_worker(scratch, state["fake"])
    _cancel_task(scratch, state)


def _orphan_entry(scratch: Scratch, _state: dict[str, Any]) -> None:
    scratch.redis().rpush(keys.TASK_QUEUE, "drill0000orphan0")


def _orphan_undo(scratch: Scratch, _state: dict[str, Any]) -> None:
    scratch.redis().lrem(keys.TASK_QUEUE, 0, "drill0000orphan0")


def _skewed_clock(scratch: Scratch, state: dict[str, Any]) -> None:
    state["fake"] = "drill-skewed"
    _fake_worker(scratch, state["fake"], time.time() + 300)


def _skewed_undo(scratch: Scratch, state: dict[str, Any]) -> None:
    if "fake" in state:
        _forget_worker(scratch, state["fake"])


# -- files -----------------------------------------------------------------------------------
def _users_db_mode(scratch: Scratch, state: dict[str, Any]) -> None:
    path = scratch.home.users_db
    state["mode"] = path.stat().st_mode & 0o777
    path.chmod(0o666)


def _users_db_undo(scratch: Scratch, state: dict[str, Any]) -> None:
    if "mode" in state:
        scratch.home.users_db.chmod(state["mode"])


def _error_burst(scratch: Scratch, state: dict[str, Any]) -> None:
    log = scratch.home.nodepool_log
    state["size"] = log.stat().st_size
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    lines = "".join(
        f"{stamp},000 ERROR hivemind.nodepool: drill: connection refused to redis ({n})\n"
        for n in range(150)
    )
    with log.open("a") as out:
        out.write(lines)


def _error_burst_undo(scratch: Scratch, state: dict[str, Any]) -> None:
    if "size" in state:
        with scratch.home.nodepool_log.open("r+") as log:
            log.truncate(state["size"])


def _stale_pidfile(scratch: Scratch, _state: dict[str, Any]) -> None:
    import subprocess
    import sys

    from hivemind.supervisor import PidRecord, write_pidfile

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = PidRecord("worker", dead.pid, (sys.executable, "-m", "hivemind"), time.time() - 5)
    write_pidfile(scratch.home.run / "worker-drill-ghost.pid", record)


def _stale_pidfile_undo(scratch: Scratch, _state: dict[str, Any]) -> None:
    (scratch.home.run / "worker-drill-ghost.pid").unlink(missing_ok=True)


def _disk_unavailable(scratch: Scratch) -> str:
    return f"the home is not on a tmpfs of its own: {scratch.no_tmpfs}" if scratch.no_tmpfs else ""


def _disk_full(scratch: Scratch, state: dict[str, Any]) -> None:
    import shutil

    path = scratch.home.root / "drill-fill"
    free = shutil.disk_usage(scratch.home.root).free
    with path.open("wb") as out:
        os.posix_fallocate(out.fileno(), 0, max(0, free - 200 * 1024 * 1024))
    state["fill"] = str(path)


def _disk_full_undo(scratch: Scratch, _state: dict[str, Any]) -> None:
    (scratch.home.root / "drill-fill").unlink(missing_ok=True)


def _corrupt_backup(scratch: Scratch, state: dict[str, Any]) -> None:
    [newest] = sorted(scratch.home.backups.glob("hivemind-backup-*.tar.gz"))[-1:]
    data = bytearray(newest.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    time.sleep(1.1)  # the archive's mtime must move past its verification's second
    newest.write_bytes(bytes(data))
    state["archive"] = str(newest)


def _fresh_backup(scratch: Scratch, _state: dict[str, Any]) -> None:
    make_verified_backup(scratch)


def make_verified_backup(scratch: Scratch) -> None:
    """What backup.recent wants: a backup, verified (the drill's baseline has one)."""
    from recovery.backup import create_backup
    from recovery.verify import verify_archive

    made = create_backup(scratch.settings, keep=2)
    verify_archive(made.archive)


FAULTS: tuple[Fault, ...] = (
    Fault(
        "redis-eviction",
        "Redis evicts keys (maxmemory-policy allkeys-lru)",
        ("redis.eviction_policy",),
        _eviction,
        _eviction_undo,
        "fix",
    ),
    Fault(
        "redis-persistence-off",
        "Redis persistence off (appendonly no, no save rules)",
        ("redis.persistence",),
        _persistence_off,
        _persistence_undo,
        "fix",
    ),
    Fault(
        "redis-nearly-full",
        "Redis maxmemory set just above what it uses",
        ("redis.memory",),
        _nearly_full,
        _nearly_full_undo,
    ),
    Fault("redis-stopped", "Redis stopped", ("ports.redis",), _stopped("redis"), repair="fix"),
    Fault(
        "nodepool-stopped",
        "the node pool stopped",
        ("ports.nodepool",),
        _stopped("nodepool"),
        repair="fix",
    ),
    Fault(
        "master-stopped", "the master stopped", ("ports.master",), _stopped("master"), repair="fix"
    ),
    Fault(
        "worker-killed",
        "a worker killed (kill -9), its pid file left behind",
        ("process.services",),
        _killed_worker,
        repair="recover",
    ),
    Fault(
        "worker-frozen",
        "a worker frozen (SIGSTOP) while it holds a task",
        ("workers.heartbeat", "workers.count"),
        _frozen_worker,
        _frozen_worker_undo,
    ),
    Fault(
        "stuck-task",
        "a task whose worker went silent, with the node pool's reaper stopped",
        ("tasks.stuck",),
        _stuck_task,
        _stuck_task_undo,
        "fix",
    ),
    Fault(
        "orphaned-queue-entry",
        "a queue entry naming no task",
        ("tasks.orphaned",),
        _orphan_entry,
        _orphan_undo,
        "fix",
    ),
    Fault(
        "clock-skew",
        "a heartbeat stamped five minutes in the future",
        ("workers.heartbeat",),
        _skewed_clock,
        _skewed_undo,
    ),
    Fault(
        "users-db-mode",
        "users.db readable and writable by everyone (0666)",
        ("sqlite.file",),
        _users_db_mode,
        _users_db_undo,
        "fix",
    ),
    Fault(
        "log-error-burst",
        "150 error lines in the node pool's log within a minute",
        ("logs.errors",),
        _error_burst,
        _error_burst_undo,
    ),
    Fault(
        "stale-pid-file",
        "a pid file naming a process that has exited",
        ("process.services",),
        _stale_pidfile,
        _stale_pidfile_undo,
        "fix",
    ),
    Fault(
        "disk-full",
        "the home's filesystem filled to 200 MiB free",
        ("resources.disk",),
        _disk_full,
        _disk_full_undo,
        unavailable=_disk_unavailable,
    ),
    Fault(
        "corrupt-backup",
        "the newest backup altered after it was verified",
        ("backup.recent",),
        _corrupt_backup,
        _fresh_backup,
    ),
)

#: Seconds the drill waits for the node pool's housekeeping to have seen a change.
SETTLE = tuning.REAPER_INTERVAL
