"""Bundle tasks are kept from the platform: a real `hivemind up`, real workers, real bubblewrap.

The hostile bundle is what an ordinary user could upload: it tries the node pool's secrets,
users.db, Redis's append-only file, the CLI's token and the worker's environment.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hivemind import sandbox as sandboxes
from hivemind.bundle import MIB
from hivemind.client import bundle_spec
from hivemind.config import Settings
from hivemind.worker.execution import BundleRun, run_bundle
from tests.cluster import Cluster, make_cluster
from tests.helpers import REPO_ROOT, free_port, wait_until

pytestmark = pytest.mark.slow

HOSTILE = """
import sys
for path in sys.argv[1:]:
    print("TRY", path, flush=True)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        print("READ", path, len(data), flush=True)
    except OSError as exc:
        print("DENIED", path, type(exc).__name__, flush=True)
"""


def bundle_zip(main: str, args: list[str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("main.py", main)
        if args is not None:
            zf.writestr("task.json", json.dumps({"entrypoint": "python main.py", "args": args}))
    return buf.getvalue()


def upload(cluster: Cluster, tmp: Path, main: str, args: list[str] | None = None) -> str:
    path = tmp / f"b{abs(hash((main, tuple(args or ()))))}.zip"
    path.write_bytes(bundle_zip(main, args))
    with cluster.client() as c:
        return c.upload_bundle(path)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """`hivemind up` on a port where no Redis answers: it starts its own, as by default."""
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is not installed: .ci/run installs it (apt-get bubblewrap)")
    root = tmp_path_factory.mktemp("sandbox")
    c = make_cluster(root, f"redis://127.0.0.1:{free_port()}/0")
    c.up(workers=1)
    try:
        yield c
    finally:
        c.down()


def secret_paths(cluster: Cluster) -> dict[str, Path]:
    [aof, *_] = sorted((cluster.home / "redis").rglob("*.aof"))
    worker = cluster.pid(next(p.stem for p in sorted((cluster.home / "run").glob("worker-*.pid"))))
    return {
        "secret.key": cluster.home / "node_pool" / "secret.key",
        "admin.password": cluster.home / "node_pool" / "admin.password",
        "users.db": cluster.home / "node_pool" / "users.db",
        "aof": aof,
        "cli token": Path(cluster.env["XDG_CONFIG_HOME"]) / "hivemind" / "credentials.json",
        "worker environ": Path(f"/proc/{worker}/environ"),
    }


def test_a_hostile_bundle_reads_none_of_the_platforms_secrets(
    cluster: Cluster, tmp_path: Path
) -> None:
    paths = secret_paths(cluster)
    for name, path in paths.items():  # they are there, and the worker's user can read them
        assert path.read_bytes(), name
    bundle_id = upload(cluster, tmp_path, HOSTILE, [str(p) for p in paths.values()])
    with cluster.client() as c:
        [tid] = c.submit([bundle_spec(bundle_id)])
        [task] = c.wait([tid], 60)
        log = "".join(c.stream_log(tid))
    assert task.status == "SUCCEEDED", task.error_message
    for path in paths.values():
        assert f"TRY {path}\n" in log
        assert f"READ {path}" not in log
        assert any(
            line.startswith(f"DENIED {path} ")
            and line.split()[-1]
            in (
                "PermissionError",
                "FileNotFoundError",
            )
            for line in log.splitlines()
        ), log


def test_the_same_bundle_unsandboxed_reads_them_all(cluster: Cluster, tmp_path: Path) -> None:
    """The control: without the sandbox, the hostile bundle gets every secret."""
    paths = secret_paths(cluster)
    source = tmp_path / "b.zip"
    source.write_bytes(bundle_zip(HOSTILE, [str(p) for p in paths.values()]))
    lines: list[str] = []
    run = BundleRun("t", 1, source, tmp_path / "work", 30, 0, {}, None, MIB)
    outcome = run_bundle(run, lines.append, lambda *_: None, lambda _: None, threading.Event())
    assert outcome.status == "succeeded", outcome.error_message
    assert all(f"READ {path}" in "".join(lines) for path in paths.values())


def marker_running(marker: str) -> bool:
    processes = psutil.process_iter(["cmdline"])
    return any(marker in " ".join(p.info["cmdline"] or []) for p in processes)


SETSID_CHILD = """
import subprocess, sys, time
subprocess.Popen(["bash", "-c", "exec -a {marker} sleep 300"], start_new_session=True)
time.sleep({linger})
"""


@pytest.mark.parametrize("ending", ["timeout", "normal end"])
def test_a_setsid_grandchild_is_gone_within_two_seconds(
    cluster: Cluster, tmp_path: Path, ending: str
) -> None:
    marker = f"hivemind-escapee-{os.getpid()}-{ending.replace(' ', '-')}"
    linger = 300 if ending == "timeout" else 3
    bundle_id = upload(cluster, tmp_path, SETSID_CHILD.format(marker=marker, linger=linger))
    with cluster.client() as c:
        [tid] = c.submit([bundle_spec(bundle_id, timeout=4)])
        assert wait_until(lambda: marker_running(marker), 20)
        [task] = c.wait([tid], 60)
    assert task.status == ("TIMEOUT" if ending == "timeout" else "SUCCEEDED"), task.error_message
    assert wait_until(lambda: not marker_running(marker), 2.0)


def test_the_worker_says_what_isolates_tasks(cluster: Cluster) -> None:
    [log] = list((cluster.home).rglob("worker.log"))
    line = next(line for line in log.read_text().splitlines() if "task sandbox:" in line)
    assert "bubblewrap mount view and pid namespace" in line
    if os.geteuid() == 0:
        assert f"user {sandboxes.TASK_USER}" in line


# -- without bubblewrap: the cgroup alone kills setsid children ------------------------------
def test_a_cgroup_kills_what_left_the_process_group(tmp_path: Path) -> None:
    parent, _, why = sandboxes.make_cgroup_parent(f"hivemind-worker-{os.getpid()}")
    if parent is None:
        pytest.skip(f"no writable cgroup v2 here: {why}")
    box = sandboxes.Sandbox(cgroup_parent=parent)
    marker = f"hivemind-cgroup-escapee-{os.getpid()}"
    source = tmp_path / "b.zip"
    source.write_bytes(bundle_zip(SETSID_CHILD.format(marker=marker, linger=1)))
    run = BundleRun("t", 1, source, tmp_path / "work", 30, 0, {}, None, MIB, sandbox=box)
    try:
        outcome = run_bundle(run, print, lambda *_: None, lambda _: None, threading.Event())
        assert outcome.status == "succeeded", outcome.error_message
        assert not marker_running(marker)
        assert list(parent.iterdir()) == [p for p in parent.iterdir() if p.is_file()]
    finally:
        box.close()
    assert not parent.exists()


# -- what the doctor says -----------------------------------------------------------------------
def doctor_sandbox(env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "hivemind", "doctor", "--only", "security.sandbox", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    [finding] = [f for f in json.loads(proc.stdout)["checks"] if f["id"] == "security.sandbox"]
    return finding


def test_the_doctor_warns_without_bubblewrap_and_passes_with_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    env.update(HIVEMIND_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO_ROOT))
    with_bwrap = doctor_sandbox(env)
    assert with_bwrap["status"] == "ok", with_bwrap
    empty = tmp_path / "bin"
    empty.mkdir()
    without = doctor_sandbox({**env, "PATH": str(empty)})
    assert without["status"] == "warn"
    assert "no bubblewrap" in str(without["summary"])
    off = doctor_sandbox({**env, "HIVEMIND_TASK_SANDBOX": "off"})
    assert off["status"] == "warn" and "TASK_SANDBOX is off" in str(off["summary"])


def test_sandbox_off_claims_no_isolation() -> None:
    box = sandboxes.detect(Settings(task_sandbox="off"))
    assert not box.isolated and not box.kills_descendants
    assert box.describe() == "none"
    assert any("TASK_SANDBOX is off" in why for why in box.missing)


# -- parsers ------------------------------------------------------------------------------------
MOUNTINFO = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
"""


def test_parsers_find_the_unified_hierarchy_and_this_process_in_it() -> None:
    assert sandboxes.cgroup2_mount(MOUNTINFO) == "/sys/fs/cgroup/unified"
    assert sandboxes.cgroup2_mount(MOUNTINFO.replace("cgroup2 cgroup2", "ext4 /dev/sda")) is None
    assert sandboxes.unified_cgroup("4:memory:/x\n0::/system.slice/w.service\n") == (
        "/system.slice/w.service"
    )
    assert sandboxes.unified_cgroup("0::/\n") == "/"
    assert sandboxes.unified_cgroup("4:memory:/x\n") is None
    assert sandboxes.populated("populated 1\nfrozen 0\n")
    assert not sandboxes.populated("populated 0\nfrozen 0\n")


def test_bwrap_arguments_hide_secrets_and_keep_the_interpreter(tmp_path: Path) -> None:
    box = sandboxes.Sandbox(
        bwrap="/usr/bin/bwrap",
        hidden_dirs=("/root", "/tmp"),
        hidden_files=("/etc/hivemind.toml",),
    )
    argv = box.command(["python", "main.py"], tmp_path, tmp_path / "bundle", memory_bytes=MIB)
    joined = " ".join(argv)
    assert "--tmpfs /root" in joined and "--tmpfs /tmp" in joined
    assert "--ro-bind /dev/null /etc/hivemind.toml" in joined
    assert f"--bind {tmp_path} {tmp_path}" in joined
    assert "--unshare-pid" in argv and argv[-2:] == ["python", "main.py"]
    assert json.loads(argv[5]) == {"rlimit_as": MIB}
    # The hidden folders come before what is shown again inside them.
    assert joined.index("--tmpfs /tmp") < joined.index(f"--bind {tmp_path}")


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_stale_cgroups_another_worker_removed_meanwhile_are_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two workers starting at once both clear the cgroups of dead workers: one may find a
    # folder its glob listed already gone.
    stale = tmp_path / f"hivemind-worker-{_dead_pid()}"
    (stale / "task-1").mkdir(parents=True)
    live = tmp_path / f"hivemind-worker-{os.getpid()}"
    live.mkdir()
    vanished = tmp_path / f"hivemind-worker-{_dead_pid()}"
    listed = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: [*listed(self, pattern), vanished])
    sandboxes._remove_stale(tmp_path)
    assert not stale.exists() and live.exists()
