"""What keeps a bundle task away from the platform, and how a task is started inside it.

A bundle task is somebody's code. It must not read the node pool's secrets, users.db, the
Redis files, the CLI's token or the worker's environment, and nothing it starts may outlive
it. Three well-kept mechanisms do that, each used where the host has it:

- **bubblewrap** (``bwrap``, Debian's ``bubblewrap``): a mount view where the platform's
  folders are empty tmpfs mounts, a private ``/tmp``, and a pid namespace, so ``/proc``
  shows the task's own processes only and killing its first process kills every other one,
  ``setsid`` children included.
- **a task user** (:data:`TASK_USER`), when the worker runs as root: the task runs without
  the worker's file permissions, and without any privilege (bubblewrap sets no_new_privs).
- **a cgroup v2** per task, where the worker may create one: ``memory.max`` and ``cpu.max``
  where those controllers are delegated, and ``cgroup.kill`` kills every descendant.

:func:`detect` probes what works by running it, once per worker; :attr:`Sandbox.missing`
says what does not, for the worker's start line and the doctor's ``security.sandbox``.
RLIMIT_AS is set in every case.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import hivemind
from hivemind.config import Settings, find_config_file
from hivemind.credentials import credentials_path
from hivemind.paths import layout

log = logging.getLogger(__name__)

#: The unprivileged user bundle tasks run as when the worker runs as root.
TASK_USER = "hivemind-task"
#: Seconds a probe run of the sandbox may take before it counts as not working.
PROBE_TIMEOUT = 15.0
#: Seconds to wait for a killed cgroup to empty.
CGROUP_KILL_TIMEOUT = 5.0
#: cgroup v2's cpu.max period, in microseconds.
CPU_PERIOD = 100_000
#: Folders that hold secrets on most hosts, hidden when they exist.
SYSTEM_SECRET_DIRS = ("/var/lib/redis", "/etc/redis", "/var/lib/hivemind", "/etc/hivemind")

# Started with -I -S, so it imports nothing from the task's or the worker's environment.
# argv[1] is a JSON object: "cgroup" (a cgroup.procs file to join), "rlimit_as" (bytes),
# "user" ([uid, gid] to switch to), "cwd" (entered as that user); the rest of argv is the
# command to exec.
LAUNCHER = """
import json, os, resource, sys
config = json.loads(sys.argv[1])
if config.get("cgroup"):
    with open(config["cgroup"], "w") as procs:
        procs.write("0")
if config.get("rlimit_as"):
    limit = config["rlimit_as"]
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
if config.get("user"):
    uid, gid = config["user"]
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
if config.get("cwd"):
    os.chdir(config["cwd"])
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write("cannot start %r: %s\\n" % (sys.argv[2], exc.strerror or exc))
    sys.exit(127)
"""


# -- parsing (pure) ------------------------------------------------------------------------------


def cgroup2_mount(mountinfo: str) -> str | None:
    """The mount point of the cgroup v2 hierarchy in a ``/proc/self/mountinfo`` text."""
    for line in mountinfo.splitlines():
        before, sep, after = line.partition(" - ")
        fields_before, fields_after = before.split(), after.split()
        if sep and fields_after and fields_after[0] == "cgroup2" and len(fields_before) > 4:
            return fields_before[4].replace("\\040", " ")
    return None


def unified_cgroup(proc_cgroup: str) -> str | None:
    """This process's cgroup v2 path in a ``/proc/self/cgroup`` text (the ``0::`` line)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def populated(events: str) -> bool:
    """Whether a ``cgroup.events`` text says processes are left."""
    for line in events.splitlines():
        key, _, value = line.partition(" ")
        if key == "populated":
            return value.strip() != "0"
    return False


# -- what this host has -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sandbox:
    #: A bubblewrap that ran the probe; None when there is none or it does not work here.
    bwrap: str | None = None
    #: (uid, gid) tasks run as; None means the worker's own user.
    task_user: tuple[int, int] | None = None
    #: A cgroup v2 folder this worker owns; each task gets a child of it.
    cgroup_parent: Path | None = None
    #: Controllers the tasks' cgroups have ("memory", "cpu").
    controllers: frozenset[str] = frozenset()
    #: Folders shown empty inside the sandbox, and files shown as /dev/null.
    hidden_dirs: tuple[str, ...] = ()
    hidden_files: tuple[str, ...] = ()
    #: What is missing, in words, for the worker's start line and the doctor.
    missing: tuple[str, ...] = ()
    #: Where work dirs go when the task user cannot reach the worker's own work root.
    work_base: Path | None = None

    @property
    def isolated(self) -> bool:
        """Whether a task is kept from the platform's files and the worker's /proc."""
        return self.bwrap is not None

    @property
    def kills_descendants(self) -> bool:
        return self.bwrap is not None or self.cgroup_parent is not None

    def describe(self) -> str:
        parts = []
        if self.bwrap:
            parts.append("bubblewrap mount view and pid namespace")
        if self.task_user:
            parts.append(f"user {TASK_USER} (uid {self.task_user[0]})")
        if self.cgroup_parent:
            limits = "/".join(sorted(self.controllers)) or "kill only"
            parts.append(f"cgroup v2 ({limits})")
        return ", ".join(parts) or "none"

    def command(
        self,
        command: Sequence[str],
        work_dir: Path,
        cwd: Path,
        memory_bytes: int = 0,
        cgroup: TaskCgroup | None = None,
    ) -> list[str]:
        """The argv that runs ``command`` for one task inside this sandbox."""
        outer: dict[str, object] = {"rlimit_as": memory_bytes}
        if cgroup is not None:
            outer["cgroup"] = str(cgroup.path / "cgroup.procs")
        if self.bwrap is None:
            if self.task_user:
                outer["user"] = list(self.task_user)
            return [*_launcher({**outer}), *command]
        inner = list(command)
        if self.task_user:
            # bwrap runs as root to build the mount view; the task drops to its user inside.
            inner = [*_launcher({"user": list(self.task_user), "cwd": str(cwd)}), *inner]
        return [*_launcher(outer), *self._bwrap_args(work_dir, cwd), *inner]

    def _bwrap_args(self, work_dir: Path, cwd: Path) -> list[str]:
        assert self.bwrap is not None
        args = [self.bwrap, "--die-with-parent", "--unshare-ipc", "--unshare-pid"]
        args += ["--unshare-uts", "--unshare-cgroup-try"]
        if self.task_user:
            args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            args += ["--unshare-user"]
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for folder in self.hidden_dirs:
            args += ["--tmpfs", folder]
        keep = [p for p in _runtime_paths() if not _contains_any(p, self.hidden_dirs)]
        for path in keep:
            args += [*self._passage(path), "--ro-bind", path, path]
        for path in self.hidden_files:
            args += ["--ro-bind", "/dev/null", path]
        # As root, bwrap has no right to enter the task user's folder: the launcher does.
        args += [*self._passage(str(work_dir)), "--bind", str(work_dir), str(work_dir)]
        return [*args, "--chdir", "/" if self.task_user else str(cwd)]

    def _passage(self, path: str) -> list[str]:
        """Searchable folders down to ``path`` inside a hidden one (bwrap makes them 0700)."""
        hidden = [d for d in self.hidden_dirs if path.startswith(d.rstrip("/") + "/")]
        if not hidden:
            return []
        top = max(hidden, key=len)
        parts = Path(path).relative_to(top).parts[:-1]
        args: list[str] = []
        for depth in range(1, len(parts) + 1):
            args += ["--perms", "0755", "--dir", str(Path(top, *parts[:depth]))]
        return args

    def work_root(self, default: Path) -> Path:
        return self.work_base if self.work_base is not None else default

    def hand_over(self, work_dir: Path) -> None:
        """Give the task user the work dir the worker prepared (links are not followed)."""
        if self.task_user is None:
            return
        uid, gid = self.task_user
        os.chown(work_dir, uid, gid)
        for dirpath, dirnames, filenames in os.walk(work_dir):
            for name in (*dirnames, *filenames):
                os.lchown(os.path.join(dirpath, name), uid, gid)

    def cgroup_for(self, name: str, memory_bytes: int, cpus: float) -> TaskCgroup | None:
        """A fresh cgroup for one task, with its limits; None where there are no cgroups."""
        if self.cgroup_parent is None:
            return None
        path = self.cgroup_parent / name
        try:
            path.mkdir()
            if "memory" in self.controllers and memory_bytes > 0:
                (path / "memory.max").write_text(str(memory_bytes))
            if "cpu" in self.controllers and cpus > 0:
                (path / "cpu.max").write_text(f"{int(cpus * CPU_PERIOD)} {CPU_PERIOD}")
        except OSError as exc:
            log.warning("no cgroup for task %s: %s", name, exc)
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return TaskCgroup(path)

    def close(self) -> None:
        """Remove this worker's cgroup folder (its task cgroups are gone by then)."""
        if self.cgroup_parent is not None:
            with contextlib.suppress(OSError):
                self.cgroup_parent.rmdir()


@dataclass
class TaskCgroup:
    path: Path
    _removed: bool = field(default=False, repr=False)

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def is_populated(self) -> bool:
        try:
            return populated((self.path / "cgroup.events").read_text())
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, wait until it is empty, and remove it."""
        if self._removed:
            return
        deadline = time.monotonic() + CGROUP_KILL_TIMEOUT
        kill_file = self.path / "cgroup.kill"
        while self.is_populated():
            try:
                kill_file.write_text("1")
            except OSError:  # kernels before 5.14: one process at a time
                for pid in self.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                log.warning("processes are left in %s after SIGKILL", self.path)
                return
            time.sleep(0.01)
        try:
            self.path.rmdir()
            self._removed = True
        except OSError as exc:
            log.warning("cannot remove %s: %s", self.path, exc)


def _launcher(config: dict[str, object]) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", LAUNCHER, json.dumps(config)]


def _contains_any(path: str, folders: Iterable[str]) -> bool:
    """Whether re-showing ``path`` would show one of ``folders`` again."""
    return any(folder == path or folder.startswith(path.rstrip("/") + "/") for folder in folders)


def _runtime_paths() -> list[str]:
    """What a task needs from under hidden folders: this Python, and hivemind's import root."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    paths |= {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib")}
    paths.add(str(Path(hivemind.__file__).resolve().parent.parent))
    existing = sorted(p for p in {os.path.realpath(p) for p in paths} if os.path.isdir(p))
    # A path inside another one comes with it.
    return [p for p in existing if not any(p.startswith(o + "/") for o in existing if o != p)]


def secret_locations(settings: Settings) -> tuple[list[str], list[str]]:
    """The folders and files a task must not see: the platform's and its operator's."""
    home = layout(settings.home)
    folders = {str(home.root), str(credentials_path().parent)}
    folders |= {"/tmp", "/var/tmp", "/run", tempfile.gettempdir()}
    with contextlib.suppress(RuntimeError, KeyError):
        user_home = str(Path.home())
        if user_home != "/":
            folders.add(user_home)
    folders.update(SYSTEM_SECRET_DIRS)
    real = {os.path.realpath(f) for f in folders}
    dirs = sorted(f for f in real if os.path.isdir(f))
    files = []
    config = find_config_file()
    if config is not None:
        files.append(str(config.resolve()))
    # Outer folders first: bwrap mounts in order, and an inner tmpfs under an outer one is
    # made inside the new (empty) outer.
    dirs.sort(key=lambda d: d.count("/"))
    return dirs, files


def ensure_task_user(create: bool = True) -> tuple[tuple[int, int] | None, str]:
    """(uid, gid) of :data:`TASK_USER`, made when missing and ``create``; or None and why."""
    if os.geteuid() != 0:
        return None, "the worker does not run as root, so tasks run as its own user"
    try:
        entry = pwd.getpwnam(TASK_USER)
        return (entry.pw_uid, entry.pw_gid), ""
    except KeyError:
        pass
    if not create:
        return None, f"user {TASK_USER} does not exist yet (the worker creates it at start)"
    useradd = shutil.which("useradd")
    if useradd is None:
        return None, f"no useradd to create user {TASK_USER}"
    options = ["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
    proc = subprocess.run(
        [useradd, *options, "--shell", "/usr/sbin/nologin", TASK_USER],
        capture_output=True,
        text=True,
    )
    try:
        entry = pwd.getpwnam(TASK_USER)
    except KeyError:
        return None, f"useradd {TASK_USER} failed: {proc.stderr.strip() or proc.returncode}"
    return (entry.pw_uid, entry.pw_gid), ""


def _own_cgroup_folder() -> Path | None:
    try:
        mount = cgroup2_mount(Path("/proc/self/mountinfo").read_text())
        own = unified_cgroup(Path("/proc/self/cgroup").read_text())
    except OSError:
        return None
    if mount is None or own is None:
        return None
    return Path(mount) / own.lstrip("/")


def _remove_stale(base: Path) -> None:
    """Empty cgroups of workers that died (SIGKILL leaves them behind)."""
    for stale in base.glob("hivemind-worker-*"):
        pid = stale.name.rpartition("-")[2]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        try:
            children = [child for child in stale.iterdir() if child.is_dir()]
        except OSError:  # another worker starting at the same time removed it first
            continue
        for child in children:
            with contextlib.suppress(OSError):
                child.rmdir()
        with contextlib.suppress(OSError):
            stale.rmdir()


def make_cgroup_parent(name: str) -> tuple[Path | None, frozenset[str], str]:
    """A cgroup v2 folder for this worker's tasks, its controllers, or None and why."""
    base = _own_cgroup_folder()
    if base is None:
        return None, frozenset(), "no cgroup v2 hierarchy"
    _remove_stale(base)
    parent = base / name
    try:
        parent.mkdir(exist_ok=True)
    except OSError as exc:
        return None, frozenset(), f"cannot create a cgroup under {base}: {exc.strerror}"
    if not (parent / "cgroup.kill").exists():
        return parent, frozenset(), ""
    # Delegating a controller fails where the parent does not have it; what is left counts.
    for controller in ("memory", "cpu"):
        with contextlib.suppress(OSError):
            (parent / "cgroup.subtree_control").write_text(f"+{controller}")
    try:
        enabled = frozenset((parent / "cgroup.subtree_control").read_text().split())
    except OSError:
        enabled = frozenset()
    return parent, enabled & {"memory", "cpu"}, ""


def _probe(sandbox: Sandbox) -> str:
    """Run a trivial Python inside ``sandbox``; empty when it worked, else the reason."""
    scratch = Path(tempfile.mkdtemp(prefix="hivemind-sandbox-probe-"))
    try:
        if sandbox.task_user is not None:
            os.chown(scratch, *sandbox.task_user)
        argv = sandbox.command(
            [sys.executable, "-I", "-S", "-c", "import os; open('ok', 'w').write('1')"],
            scratch,
            scratch,
        )
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        if proc.returncode != 0 or not (scratch / "ok").exists():
            lines = (proc.stderr or f"exit code {proc.returncode}").strip().splitlines()
            return lines[-1] if lines else f"exit code {proc.returncode}"
        return ""
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def detect(settings: Settings, *, create: bool = True, cgroup_name: str = "") -> Sandbox:
    """What isolation bundle tasks get on this host, found by trying each part.

    ``create`` makes the task user and this worker's cgroup; the doctor passes False and
    gets the same verdict without changing the host.
    """
    if settings.task_sandbox == "off":
        return Sandbox(missing=("TASK_SANDBOX is off: tasks run as the worker, unisolated",))
    missing: list[str] = []
    user, why = ensure_task_user(create)
    if why:
        missing.append(why)
    cgroup_parent: Path | None = None
    controllers: frozenset[str] = frozenset()
    if create:
        cgroup_parent, controllers, why = make_cgroup_parent(
            cgroup_name or f"hivemind-worker-{os.getpid()}"
        )
    else:
        base = _own_cgroup_folder()
        why = "" if base is not None and os.access(base, os.W_OK) else "no writable cgroup v2"
    if why:
        missing.append(f"{why}: no per-task memory/CPU limits beyond RLIMIT_AS")
    elif create and not {"memory", "cpu"} <= controllers:
        absent = sorted({"memory", "cpu"} - controllers)
        missing.append(f"cgroup controllers {'/'.join(absent)} not delegated: RLIMIT_AS only")
    dirs, files = secret_locations(settings)
    bwrap = shutil.which("bwrap")
    base = Sandbox(None, user, cgroup_parent, controllers, tuple(dirs), tuple(files))
    sandbox = base
    if bwrap is None:
        missing.append("no bubblewrap (apt-get install bubblewrap): tasks see this host's files")
    else:
        candidate = Sandbox(bwrap, user, cgroup_parent, controllers, tuple(dirs), tuple(files))
        failure = _probe(candidate)
        if failure:
            missing.append(f"bubblewrap does not work here ({failure}): tasks see host files")
        else:
            sandbox = candidate
    if sandbox.bwrap is None and user is not None:
        # Without a mount view, the task user reaches only what its permissions allow: its
        # work dirs live outside HIVEMIND_HOME, and it must be able to run this Python.
        work_base = Path(tempfile.gettempdir()) / f"hivemind-tasks-{os.getuid()}"
        with contextlib.suppress(OSError):
            work_base.mkdir(mode=0o711, exist_ok=True)
            os.chmod(work_base, 0o711)
        sandbox = Sandbox(None, user, cgroup_parent, controllers, (), (), (), work_base)
        failure = _probe(sandbox)
        if failure:
            missing.append(f"user {TASK_USER} cannot run {sys.executable} ({failure})")
            sandbox = Sandbox(None, None, cgroup_parent, controllers)
    if not sandbox.kills_descendants:
        missing.append("a task's setsid children can outlive it")
    return Sandbox(
        sandbox.bwrap,
        sandbox.task_user,
        sandbox.cgroup_parent,
        sandbox.controllers,
        sandbox.hidden_dirs,
        sandbox.hidden_files,
        tuple(missing),
        sandbox.work_base,
    )
