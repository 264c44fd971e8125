"""A bundle's task.json counts however it is submitted: console form, REST API or CLI.

One real cluster (`hivemind up`: node pool, master, Redis) plus a worker advertising the
label the bundle asks for; the bundle's main.py never ends, so its 3 s timeout must stop it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from hivemind.bundle import BundleManifest
from hivemind.client import bundle_spec
from hivemind.config import Settings
from hivemind.submission import TaskOptions, merge_manifest
from tests.cluster import Cluster, started_cluster
from tests.helpers import RedisServer, wait_until
from tests.master_support import csrf_of, sign_in

pytestmark = pytest.mark.slow

LABEL = "runaway"
MANIFEST = {
    "name": "runaway",
    "timeout": 3,
    "retries": 0,
    "priority": 7,
    "requirements": {"cpu": 1, "memory_mb": 16, "labels": [LABEL]},
}
#: What a browser posts for the fields left as the form shows them: none may hide task.json.
UNTOUCHED_FORM = {
    "function": "",
    "args": "",
    "name": "",
    "timeout": "0",
    "retries": "-1",
    "priority": "0",
    "cpu": "0",
    "memory_mb": "0",
    "gpu": "0",
    "labels": "",
}
RUNAWAY = "import time\nwhile True:\n    time.sleep(1)\n"
#: What task.json asks for, as the task hash holds it.
EXPECTED = {
    "timeout": 3.0,
    "retries": 0,
    "priority": 7,
    "req_cpu": 1,
    "req_memory_mb": 16,
    "req_labels": LABEL,
}


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buf.getvalue()


def _bundle() -> bytes:
    return _zip({"task.json": json.dumps(MANIFEST), "main.py": RUNAWAY})


@pytest.fixture(scope="module")
def cluster(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("manifest")
    with started_cluster(redis_server, root, workers=0) as c:
        c.cli("worker-token", "labelled", "--save")
        worker = subprocess.Popen(
            [sys.executable, "-m", "hivemind", "worker", "--node-id", "labelled", "--label", LABEL],
            env=c.env,
            cwd=c.home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with c.client() as client:
                assert wait_until(
                    lambda: any(w.node_id == "labelled" for w in client.workers()), 30
                )
            yield c
        finally:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)


@pytest.fixture(scope="module")
def master(cluster: Cluster) -> str:
    return f"http://127.0.0.1:{cluster.env['HIVEMIND_MASTER_PORT']}"


@pytest.fixture(scope="module")
def admin_password(cluster: Cluster) -> str:
    return (cluster.home / "node_pool" / "admin.password").read_text().strip()


def _submit_by_form(master: str, password: str) -> str:
    with httpx2.Client(base_url=master, follow_redirects=False, timeout=30) as http:
        signed_in = sign_in(http, "admin", password)  # type: ignore[arg-type]
        assert signed_in.status_code == 303, signed_in.text  # type: ignore[attr-defined]
        token = csrf_of(http.get("/submit").text)
        reply = http.post(
            "/submit",
            data={"csrf_token": token, **UNTOUCHED_FORM},
            files={"bundle": ("runaway.zip", _bundle(), "application/zip")},
        )
    assert reply.status_code == 303, reply.text
    return reply.headers["location"].split("?")[0].removeprefix("/tasks/")


@contextmanager
def _api(master: str, password: str) -> Iterator[httpx2.Client]:
    """A client carrying admin's bearer token, as a script would."""
    with httpx2.Client(base_url=master, timeout=30) as http:
        reply = http.post("/api/auth/login", json={"username": "admin", "password": password})
        assert reply.status_code == 200, reply.text
        http.headers["authorization"] = f"Bearer {reply.json()['token']}"
        yield http


def _submit_by_api(master: str, password: str) -> str:
    with _api(master, password) as http:
        reply = http.post(
            "/api/tasks", files={"bundle": ("runaway.zip", _bundle(), "application/zip")}
        )
    assert reply.status_code == 201, reply.text
    return str(reply.json()["task_id"])


def _submit_by_cli(cluster: Cluster, folder: Path) -> str:
    folder.mkdir()
    (folder / "task.json").write_text(json.dumps(MANIFEST))
    (folder / "main.py").write_text(RUNAWAY)
    proc = cluster.cli("submit", str(folder), "--json")
    return str(json.loads(proc.stdout)["task_ids"][0])


def test_task_json_counts_for_the_console_the_api_and_the_cli(
    cluster: Cluster, master: str, admin_password: str, tmp_path: Path
) -> None:
    ids = {
        "console": _submit_by_form(master, admin_password),
        "api": _submit_by_api(master, admin_password),
        "cli": _submit_by_cli(cluster, tmp_path / "runaway"),
    }
    db = cluster.redis()
    fields = list(EXPECTED)
    for way, task_id in ids.items():
        stored = dict(zip(fields, db.hmget(f"task:{task_id}", fields), strict=True))
        got = {key: type(EXPECTED[key])(value) for key, value in stored.items()}
        assert got == EXPECTED, f"submitted through the {way}"
        assert db.hget(f"task:{task_id}", "name") == "runaway", way

    def ended() -> bool:
        return all(db.hget(f"task:{i}", "status") == "TIMEOUT" for i in ids.values())

    # With fewer slots than tasks (2 cores), one waits for a slot: a few timeouts in all.
    assert wait_until(ended, 60, interval=0.2), {
        way: db.hmget(f"task:{i}", ["status", "error_message"]) for way, i in ids.items()
    }
    for way, task_id in ids.items():
        start, end = db.hmget(f"task:{task_id}", ["start_time", "finished_at"])
        ran = float(end or 0) - float(start or 0)
        assert 3.0 <= ran <= 15.0, f"{way}: ran {ran:.1f} s for a 3 s timeout"


def test_a_malformed_task_json_is_a_400_naming_it(master: str, admin_password: str) -> None:
    bad = _zip({"task.json": '{"timeout": 3,', "main.py": RUNAWAY})
    with _api(master, admin_password) as http:
        reply = http.post("/api/tasks", files={"bundle": ("bad.zip", bad, "application/zip")})
        wrong_type = http.post(
            "/api/tasks",
            files={"bundle": ("t.zip", _zip({"task.json": '{"timeout": "soon"}'}), "x")},
        )
    assert reply.status_code == 400, reply.text
    assert "task.json is not valid JSON" in reply.json()["error"]
    assert wrong_type.status_code == 400, wrong_type.text
    assert "task.json" in wrong_type.json()["error"]


def test_explicit_options_win_over_task_json_and_nothing_stays_unset() -> None:
    manifest = BundleManifest(
        name="from-json",
        entrypoint=["python", "main.py"],
        requirements={"cpu": 1.5, "memory_mb": 64, "gpu": 0, "labels": ["a"]},
        timeout=3.0,
        retries=0,
        priority=7,
    )
    merged = merge_manifest(TaskOptions(timeout=10, priority=-1, labels=("b",)), manifest)
    assert merged == TaskOptions(
        name="from-json",
        timeout=10,
        retries=0,
        priority=-1,
        cpu=2,
        memory_mb=64,
        labels=("b",),
    )
    bare = BundleManifest(name="", entrypoint=["python", "main.py"], requirements={})
    # Unset stays 0 / -1 so that the node pool, and only it, fills in its defaults.
    assert merge_manifest(TaskOptions(), bare, "folder") == TaskOptions(name="folder")


def test_only_the_node_pool_fills_in_defaults(cluster: Cluster) -> None:
    bundle = cluster.home / "plain.zip"
    bundle.write_bytes(_zip({"main.py": "print('hi')\n"}))
    with cluster.client() as c:
        # A label no worker has keeps it queued: only what was stored matters here.
        spec = bundle_spec(c.upload_bundle(bundle), labels=["nobody-has-it"])
        [task_id] = c.submit([spec])
        stored = cluster.redis().hmget(f"task:{task_id}", ["timeout", "retries"])
        c.cancel(task_id)
    # The stored task, which the lease hands to the worker as is, holds the filled values.
    defaults = Settings()
    assert stored == [repr(defaults.task_timeout), str(defaults.default_retries)]
