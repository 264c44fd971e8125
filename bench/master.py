"""How fast the master serves its busiest pages with a big cluster behind it.

It starts its own Redis, a node pool and a master (`python -m hivemind nodepool|master`, as
systemd would), registers 100 simulated workers that keep heartbeating, puts 10,000 tasks in
the store (some running, most finished, some failed, the rest queued), signs in through the
sign-in form and then times sequential GETs of the dashboard (`/`) and the task list
(`/tasks`), printing p50 and p99 in milliseconds. `--screenshot PATH` also saves a picture of
the dashboard, taken with Debian's chromium through Playwright.

    python -m bench.master                       # about a minute on 2 cores
    python -m bench.master --requests 500 --screenshot docs/dashboard.png

Not a timed test: nothing in the test suite depends on it.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2
import redis

from bench.machine import percentile
from bench.processes import Child, base_environment, free_ports, start_redis

WORKERS = 100
TASKS = 10_000
USER, PASSWORD = "bench", "bench-password"
#: Seconds between a simulated worker's heartbeats: HEARTBEAT_INTERVAL's default.
HEARTBEAT_INTERVAL = 5.0


def wait_for(check, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"error: {what} did not come up in {timeout:.0f} s")


def seed_cluster(address: str, settings, tasks: int, workers: int, rng: random.Random):  # type: ignore[no-untyped-def]
    """Register ``workers`` workers, submit ``tasks`` tasks and finish most of them."""
    from hivemind.auth import issue_worker_token
    from hivemind.client import Client, function_spec
    from hivemind.proto import hivemind_pb2 as pb
    from hivemind.worker.connection import WorkerConnection

    client = Client(address)
    client.login(USER, PASSWORD)
    names = ["resize-images", "train-shard", "render-frame", "etl-daily"]
    specs = [
        function_spec("hivemind.examples:add", [i, 1], name=f"{rng.choice(names)}-{i}")
        for i in range(tasks)
    ]
    client.submit(specs)
    conns = []
    for n in range(workers):
        node = f"node-{n:03d}"
        conn = WorkerConnection(address, node, issue_worker_token(settings, node))
        conn.register(
            pb.WorkerResources(
                cpu=rng.choice([4, 8, 16]),
                memory_mb=rng.choice([8192, 16384]),
                capacity=4,
                hostname=f"rack{n // 20}-{n:03d}",
                gpu=1 if n % 10 == 0 else 0,
            ),
            [],
        )
        conns.append(conn)
    # Each worker leases some tasks: most finish (a few fail), the last ones stay running.
    running: dict[str, list[str]] = {}
    finish_target = int(tasks * 0.7)
    per_worker = finish_target // workers + 2
    for conn in conns:
        leased = conn.lease(per_worker, wait=0).tasks
        results = []
        for lease in leased[:-2]:
            failed = rng.random() < 0.05
            results.append(
                pb.TaskResult(
                    ref=conn.ref(lease.task_id, lease.attempt),
                    outcome=pb.FAILED if failed else pb.SUCCEEDED,
                    result_json="" if failed else "1",
                    error_message="simulated failure" if failed else "",
                )
            )
        if results:
            conn.complete(results)
        running[conn.node_id] = [lease.task_id for lease in leased[-2:]]
    client.close()
    return conns, running


def backfill_history(redis_url: str, rng: random.Random) -> None:
    """The last hour's per-minute counters, written straight into Redis: the bench cannot wait
    an hour, and the chart should be rendered full, as on a cluster that has been busy."""
    from hivemind import keys, tuning

    r = redis.Redis.from_url(redis_url)
    now_minute = int(time.time() // 60)
    pipe = r.pipeline()
    for back in range(1, 60):
        key = keys.stats_minute_key(now_minute - back)
        pipe.hset(key, mapping={"SUCCEEDED": rng.randint(80, 160), "FAILED": rng.randint(0, 8)})
        pipe.expire(key, tuning.STATS_MINUTE_TTL)
    pipe.execute()


def keep_heartbeating(conns, running, stop: threading.Event, rng: random.Random) -> None:  # type: ignore[no-untyped-def]
    from hivemind.proto import hivemind_pb2 as pb

    while not stop.is_set():
        for conn in conns:
            metrics = pb.Metrics(
                cpu_percent=rng.uniform(20, 95),
                memory_percent=rng.uniform(30, 80),
                load1=rng.uniform(0.5, 4),
            )
            with contextlib.suppress(Exception):  # a missed beat is the worker's problem
                conn.heartbeat(metrics, running[conn.node_id])
        stop.wait(HEARTBEAT_INTERVAL)


def sign_in(base: str) -> httpx2.Client:
    http = httpx2.Client(base_url=base, timeout=30)
    page = http.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, "no CSRF token on the sign-in page"
    reply = http.post(
        "/login", data={"username": USER, "password": PASSWORD, "csrf_token": token.group(1)}
    )
    if reply.status_code != 303:
        raise SystemExit(f"error: sign-in failed with HTTP {reply.status_code}")
    return http


def time_page(http: httpx2.Client, path: str, requests: int) -> list[float]:
    for _ in range(10):  # warm up: channels, templates, Redis scripts
        http.get(path).raise_for_status()
    took = []
    for _ in range(requests):
        start = time.perf_counter()
        reply = http.get(path)
        took.append((time.perf_counter() - start) * 1000)
        reply.raise_for_status()
    return took


def screenshot(base: str, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if not chromium:
        raise SystemExit("error: --screenshot needs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/login")
        page.fill("input[name=username]", USER)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("svg.chart")
        page.wait_for_timeout(1500)  # let the heartbeat ages tick once
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="timed GETs per page")
    parser.add_argument("--tasks", type=int, default=TASKS)
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--screenshot", type=Path, help="save the dashboard as a PNG here")
    args = parser.parse_args(argv)

    from hivemind import keys
    from hivemind.config import load_settings
    from hivemind.userdb import UserStore

    rng = random.Random(5)
    with tempfile.TemporaryDirectory(prefix="hivemind-bench-master-") as tmp:
        work = Path(tmp)
        redis_port, grpc_port, master_port = free_ports(3)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        env = base_environment()
        env.update(
            HIVEMIND_HOME=str(work / "home"),
            HIVEMIND_REDIS_URL=redis_url,
            HIVEMIND_GRPC_HOST="127.0.0.1",
            HIVEMIND_GRPC_PORT=str(grpc_port),
            HIVEMIND_MASTER_HOST="127.0.0.1",
            HIVEMIND_MASTER_PORT=str(master_port),
            # Generous: the seeding workers heartbeat from one thread.
            HIVEMIND_HEARTBEAT_INTERVAL="5",
        )
        settings = load_settings(
            environ={}, home=work / "home", redis_url=redis_url, grpc_port=grpc_port
        )
        from hivemind.paths import layout

        store = UserStore(layout(settings.home).ensure().users_db)
        store.create_user(USER, PASSWORD, "admin", 1000)
        store.close()
        children = [start_redis(work, redis_port)]
        stop = threading.Event()
        try:
            python = sys.executable
            children.append(
                Child("nodepool", [python, "-m", "hivemind", "nodepool"], env, work / "np.log")
            )
            address = f"127.0.0.1:{grpc_port}"
            wait_for(lambda: _grpc_up(address), "the node pool")
            children.append(
                Child("master", [python, "-m", "hivemind", "master"], env, work / "master.log")
            )
            base = f"http://127.0.0.1:{master_port}"
            wait_for(lambda: httpx2.get(f"{base}/healthz").status_code == 200, "the master")
            print(f"seeding {args.workers} workers and {args.tasks} tasks ...", flush=True)
            began = time.monotonic()
            conns, running = seed_cluster(address, settings, args.tasks, args.workers, rng)
            backfill_history(redis_url, rng)
            beat = threading.Thread(
                target=keep_heartbeating, args=(conns, running, stop, rng), daemon=True
            )
            beat.start()
            # The node pool archives finished tasks to SQLite in the background: time the pages
            # on a settled store, as a cluster is between bursts.
            archive = redis.Redis.from_url(redis_url)
            wait_for(lambda: archive.scard(keys.TASKS_ARCHIVE_PENDING) == 0, "archiving", 300)
            print(f"seeded in {time.monotonic() - began:.1f} s", flush=True)
            http = sign_in(base)
            stats = http.get("/api/stats").json()
            print(
                f"store: {stats['queued']} queued, {stats['running']} running, "
                f"{stats['succeeded']} succeeded, {stats['failed']} failed; "
                f"{stats['workers_online']} workers online"
            )
            rows = []
            for label, path in (
                ("dashboard /", "/"),
                ("task list /tasks (50 rows)", "/tasks"),
                ("API /api/tasks?limit=100", "/api/tasks?limit=100"),
                ("metrics /metrics", "/metrics"),
                ("health /healthz", "/healthz"),
                ("static /static/console.css", "/static/console.css"),
            ):
                took = time_page(http, path, args.requests)
                rows.append(
                    (label, percentile(took, 0.5), percentile(took, 0.99), statistics.fmean(took))
                )
            header = f"{'page':<30} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}"
            print(f"\n{header}  ({args.requests} GETs each)")
            for label, p50, p99, mean in rows:
                print(f"{label:<30} {p50:8.1f} {p99:8.1f} {mean:8.1f}")
            if args.screenshot:
                screenshot(base, args.screenshot)
                print(f"\nscreenshot: {args.screenshot}")
            slow = [r for r in rows[:2] if r[1] >= 50]
            return 1 if slow else 0
        finally:
            stop.set()
            for child in reversed(children):
                child.stop()


def _grpc_up(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1
        )
        return reply.status == health_pb2.HealthCheckResponse.SERVING


if __name__ == "__main__":
    sys.exit(main())
