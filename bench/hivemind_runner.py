"""HiveMind as a benchmarked system: a local stack started with the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.processes import ROOT, base_environment, free_ports
from bench.system import SAMPLE_TIMEOUT, BatchOutcome, _outcome

HIVEMIND_DB = 1
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"})


class HiveMindStack:
    """A local stack started with the CLI (`hivemind up`) in a temporary home."""

    def __init__(
        self,
        workdir: Path,
        redis_port: int,
        db: int,
        workers: int,
        concurrency: int,
        tls: bool = False,
        mutual: bool = False,
        metrics: bool = True,
    ) -> None:
        self.home = workdir / "home"
        self.xdg = workdir / "xdg"
        self.workers = workers
        self.grpc_port, self.master_port, enroll_port = free_ports(3)
        self.address = f"localhost:{self.grpc_port}"
        self.log = workdir / "cli.log"
        self.env = base_environment()
        self.env.update(
            HIVEMIND_HOME=str(self.home),
            HIVEMIND_REDIS_URL=f"redis://127.0.0.1:{redis_port}/{db}",
            HIVEMIND_GRPC_HOST="127.0.0.1",
            HIVEMIND_GRPC_PORT=str(self.grpc_port),
            HIVEMIND_MASTER_HOST="127.0.0.1",
            HIVEMIND_MASTER_PORT=str(self.master_port),
            HIVEMIND_MAX_CONCURRENT_TASKS=str(concurrency),
            XDG_CONFIG_HOME=str(self.xdg),
            HIVEMIND_TLS="on" if tls else "off",
        )
        if mutual:
            self.env.update(HIVEMIND_REQUIRE_CLIENT_CERT="1", HIVEMIND_ENROLL_PORT=str(enroll_port))
        if metrics:
            nodepool_metrics, worker_metrics = free_ports(2)
        else:
            nodepool_metrics = worker_metrics = 0
        self.env.update(
            HIVEMIND_NODEPOOL_METRICS_PORT=str(nodepool_metrics),
            HIVEMIND_WORKER_METRICS_PORT=str(worker_metrics),
        )

    def _cli(self, *args: str, timeout: float) -> None:
        with self.log.open("ab") as out:
            code = subprocess.run(
                [sys.executable, "-m", "hivemind", *args],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            ).returncode
        if code != 0:
            raise RuntimeError(f"`hivemind {' '.join(args)}` exited {code}; see {self.log}")

    def up(self) -> None:
        self._cli("up", "--workers", str(self.workers), timeout=180)

    def down(self) -> None:
        self._cli("down", timeout=180)

    def token(self) -> str:
        from hivemind.credentials import load_token

        saved = os.environ.get("XDG_CONFIG_HOME")
        os.environ["XDG_CONFIG_HOME"] = str(self.xdg)
        try:
            return load_token(self.address)
        finally:
            if saved is None:
                os.environ.pop("XDG_CONFIG_HOME", None)
            else:
                os.environ["XDG_CONFIG_HOME"] = saved

    def nodepool_pid(self) -> int:
        return int(json.loads((self.home / "run" / "nodepool.pid").read_text())["pid"])

    def settings(self) -> Any:
        from hivemind.config import load_settings

        return load_settings(
            environ={k: v for k, v in self.env.items() if k.startswith("HIVEMIND_")}
        )


class HiveMind:
    name = "hivemind"
    tls = False
    mutual = False
    metrics = True

    def __init__(self, workdir: Path, redis_port: int, concurrency: int) -> None:
        self.stack = HiveMindStack(
            workdir, redis_port, HIVEMIND_DB, 2, concurrency, self.tls, self.mutual, self.metrics
        )
        self.setup = f"2 workers x {concurrency} slots (MAX_CONCURRENT_TASKS={concurrency})"
        if self.tls:
            self.setup += ", TLS=on (every client, worker and the master verify the CA)"
        if self.mutual:
            self.setup += ", REQUIRE_CLIENT_CERT (each presents its own certificate)"
        if not self.metrics:
            self.setup += ", metrics off (NODEPOOL_METRICS_PORT=0, WORKER_METRICS_PORT=0)"
        self.client: Any = None
        self.started = False

    def start(self) -> None:
        from hivemind.client import Client

        self.started = True
        from hivemind.tls import client_security

        self.stack.up()
        security = client_security(self.stack.settings())
        assert (security is not None) == self.tls
        self.client = Client(self.stack.address, self.stack.token(), security=security)

    def _spec(self) -> Any:
        from hivemind.client import function_spec

        return function_spec("hivemind.examples:noop")

    def one(self) -> None:
        # What `hivemind submit --wait` does: submit and wait in one call.
        [task] = self.client.submit_and_wait([self._spec()], SAMPLE_TIMEOUT)
        if task.status != "SUCCEEDED":
            raise RuntimeError(f"task {task.id} ended {task.status}: {task.error_message}")

    def batch(self, count: int, timeout: float) -> BatchOutcome:
        # Building the tasks is timed, as it is for the futures variant and the peers (each
        # builds its messages inside `batch`'s timed part, or in its submit call).
        started = time.perf_counter()
        deadline = started + timeout
        ids = self.client.submit([self._spec() for _ in range(count)])
        submitted_at = time.perf_counter()
        succeeded = other = 0
        for start in range(0, len(ids), 1000):
            part = ids[start : start + 1000]
            tasks: list[Any] = []
            while time.perf_counter() < deadline:
                wait = max(1.0, min(60.0, deadline - time.perf_counter()))
                tasks = self.client.wait(part, wait)
                if all(t.status in TERMINAL for t in tasks):
                    break
            succeeded += sum(t.status == "SUCCEEDED" for t in tasks)
            other += sum(t.status in TERMINAL and t.status != "SUCCEEDED" for t in tasks)
        finished_at = time.perf_counter()
        return _outcome(len(ids), succeeded, started, submitted_at, finished_at, deadline, other)

    def nodepool_rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.stack.nodepool_pid()).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.started:
            self.stack.down()


class HiveMindTLS(HiveMind):
    """The same stack with TLS on its gRPC port: what encryption costs, beside plaintext."""

    name = "hivemind-tls"
    tls = True


class HiveMindMutualTLS(HiveMind):
    """TLS with client certificates required: what the node id check per call costs."""

    name = "hivemind-mtls"
    tls = True
    mutual = True


class HiveMindNoMetrics(HiveMind):
    """The same stack with its Prometheus metrics off: what counting every call costs."""

    name = "hivemind-nometrics"
    metrics = False


class HiveMindFutures(HiveMind):
    """The same stack driven through the Python API (`hivemind.api`): futures resolved by
    the session's collector, `Session.map` for the batch. Beside `hivemind` (the raw
    client), what the futures layer costs."""

    name = "hivemind-futures"

    def start(self) -> None:
        from hivemind.api import Session

        super().start()
        self.session = Session(self.client, self.stack.settings().max_task_data_size)

    def one(self) -> None:
        from hivemind import examples

        self.session.submit(examples.noop).result(SAMPLE_TIMEOUT)

    def batch(self, count: int, timeout: float) -> BatchOutcome:
        from hivemind import examples

        started = time.perf_counter()
        deadline = started + timeout
        futures = self.session.submit_specs(
            [self.session.spec(examples.noop) for _ in range(count)]
        )
        submitted_at = time.perf_counter()
        succeeded = other = 0
        for future in futures:
            try:
                future.result(max(0.0, deadline - time.perf_counter()))
                succeeded += 1
            except TimeoutError:
                break
            except Exception:  # a task's failure: counted, as the raw client's run counts it
                other += 1
        finished_at = time.perf_counter()
        return _outcome(count, succeeded, started, submitted_at, finished_at, deadline, other)

    def stop(self) -> None:
        if self.started:
            self.session.collector.close()
        super().stop()
