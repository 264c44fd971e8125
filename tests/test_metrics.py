"""The node pool's and the workers' Prometheus metrics, scraped from a real stack with
prometheus_client's own text parser: the documented names are there, and after 100 tasks
the counters agree with the task store."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socketserver
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from doctor.checks.metrics import exported_names
from doctor.checks.metrics import probe as probe_metrics
from hivemind import keys
from hivemind.client import function_spec
from tests.cluster import Cluster, started_cluster
from tests.helpers import RedisServer, free_port, wait_until

pytestmark = pytest.mark.slow

TASKS = 100
NODEPOOL_NAMES = {
    "hivemind_nodepool_rpc",
    "hivemind_nodepool_rpc_duration_seconds",
    "hivemind_nodepool_heartbeats",
    "hivemind_nodepool_lease_expiries",
    "hivemind_nodepool_requeues",
    "hivemind_nodepool_tasks_finished",
    "hivemind_nodepool_task_duration_seconds",
    "hivemind_nodepool_redis_duration_seconds",
    "hivemind_nodepool_queue_depth",
    "hivemind_nodepool_tasks_running",
}
WORKER_NAMES = {
    "hivemind_worker_tasks",
    "hivemind_worker_task_duration_seconds",
    "hivemind_worker_heartbeats",
    "hivemind_worker_tasks_running",
    "hivemind_worker_task_cpu_seconds",
    "hivemind_worker_task_memory_bytes",
}


def scrape(port: int) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Metric family name -> its samples (name, labels, value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def value(families: dict, sample: str, **labels: str) -> float:  # type: ignore[type-arg]
    """The sum of ``sample``'s values whose labels include ``labels``."""
    return sum(
        v
        for samples in families.values()
        for name, have, v in samples
        if name == sample and labels.items() <= have.items()
    )


def test_counters_match_the_task_store_after_100_tasks(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with started_cluster(redis_server, tmp_path, workers=2) as cluster:
        run_tasks(cluster)
        r = cluster.redis()
        nodepool = scrape(int(cluster.env["HIVEMIND_NODEPOOL_METRICS_PORT"]))
        assert set(nodepool) >= NODEPOOL_NAMES
        stored = int(r.hget(keys.STATS_FINISHED, "SUCCEEDED") or 0)
        assert stored == TASKS
        finished = "hivemind_nodepool_tasks_finished_total"
        assert value(nodepool, finished, status="SUCCEEDED") == stored
        assert value(nodepool, "hivemind_nodepool_task_duration_seconds_count") == stored
        assert value(nodepool, "hivemind_nodepool_rpc_total", method="SubmitTasks", code="OK") >= 1
        assert value(nodepool, "hivemind_nodepool_heartbeats_total") >= 2  # both registered
        redis_calls = "hivemind_nodepool_redis_duration_seconds_count"
        assert value(nodepool, redis_calls, script="heartbeat") >= 2
        assert value(nodepool, redis_calls, script="lease") >= 1
        assert value(nodepool, "hivemind_nodepool_queue_depth") == 0
        assert value(nodepool, "hivemind_nodepool_lease_expiries_total") == 0
        # A refused call is counted with its code.
        with cluster.client() as client, pytest.raises(Exception, match="no task"):
            client.get("0000000000000000")
        after = scrape(int(cluster.env["HIVEMIND_NODEPOOL_METRICS_PORT"]))
        assert value(after, "hivemind_nodepool_rpc_total", method="GetTask", code="NOT_FOUND") == 1

        ran = 0.0
        ports = set()
        for node_id in r.hkeys(keys.WORKER_NODES):
            port = int(r.hget(keys.worker_key(node_id), "metrics_port") or 0)
            assert port, f"worker {node_id} records no metrics port"
            ports.add(port)
            worker = scrape(port)
            assert set(worker) >= WORKER_NAMES
            ran += value(worker, "hivemind_worker_tasks_total", node=node_id, outcome="succeeded")
            assert value(worker, "hivemind_worker_task_memory_bytes", node=node_id) > 0
        assert len(ports) == 2  # two workers on one host: one port each
        assert ran == stored
        doctor = cluster.cli("doctor", "--only", "ports.metrics", "--json", check=False)
        [finding] = json.loads(doctor.stdout)["checks"]
        assert finding["status"] == "ok", finding
        assert "3 metrics endpoint(s) answer" in finding["summary"]


def test_the_doctor_tells_a_metrics_port_held_by_another_program() -> None:
    assert exported_names("# TYPE x counter\nx_total 1\n") == {"x_total"}
    assert exported_names("<html>not metrics</html>") == set()
    with socketserver.TCPServer(("127.0.0.1", 0), _NotMetrics) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        why = probe_metrics("127.0.0.1", port, "hivemind_worker_heartbeats_total", 5)
        server.shutdown()
    assert "another program holds the port" in why
    assert "does not answer" in probe_metrics("127.0.0.1", free_port(), "x", 2)


class _NotMetrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"# TYPE other_thing gauge\nother_thing 1\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def run_tasks(cluster: Cluster) -> None:
    with cluster.client() as client:
        ids = client.submit([function_spec("hivemind.examples:add", [i, 1]) for i in range(TASKS)])
    tasks = cluster.wait_all(ids, 120)
    assert [t.status for t in tasks] == ["SUCCEEDED"] * TASKS


def test_a_lost_worker_counts_one_lease_expiry_and_one_requeue(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with started_cluster(redis_server, tmp_path, workers=2) as cluster, cluster.client() as client:
        [task_id] = client.submit([function_spec("hivemind.examples:sleep", [30])])
        assert wait_until(lambda: client.get(task_id).status == "RUNNING", 30)
        os.kill(cluster.pid(f"worker-{client.get(task_id).worker}"), signal.SIGKILL)
        assert wait_until(lambda: client.get(task_id).attempt == 2, 30)
        port = int(cluster.env["HIVEMIND_NODEPOOL_METRICS_PORT"])
        metrics = scrape(port)
        expiries = "hivemind_nodepool_lease_expiries_total"
        assert value(metrics, expiries, action="requeued") == 1
        assert value(metrics, "hivemind_nodepool_requeues_total", reason="lease_expired") == 1
        client.cancel(task_id)
