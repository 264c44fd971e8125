"""The Python API against a real `hivemind up` stack: futures, the Executor, waiting, the
decorator and the errors a user's code sees."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

import hivemind
from hivemind import examples
from hivemind.api import (
    AuthenticationExpired,
    Executor,
    HiveMindAPIError,
    HiveMindFuture,
    NodePoolUnavailable,
    NotShippable,
    Session,
    TaskFailed,
    ValueTooLarge,
    as_completed,
    as_completed_async,
    connect,
    task,
)
from hivemind.config import Settings
from hivemind.errors import NodePoolError
from tests.cluster import Cluster, started_cluster
from tests.helpers import RedisServer, free_port


@pytest.fixture(scope="module")
def cluster(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("python-api")
    # A short lease: a killed worker's task is handed on within seconds.
    with started_cluster(redis_server, root, workers=2, lease_timeout="3") as started:
        yield started


def _settings(cluster: Cluster) -> Settings:
    return Settings(
        home=cluster.home,
        grpc_host="127.0.0.1",
        grpc_port=int(cluster.env["HIVEMIND_GRPC_PORT"]),
        max_task_data_size=1024 * 1024,
    )


@pytest.fixture
def session(cluster: Cluster) -> Iterator[Session]:
    with cluster.client() as client:
        token = client.token
    with connect(cluster.address, token, settings=_settings(cluster)) as opened:
        yield opened


def test_executor_map_gives_what_the_builtin_map_gives(session: Session) -> None:
    with Executor(session) as executor:
        assert list(executor.map(examples.square, range(10_000))) == [x * x for x in range(10_000)]
        # Two iterables, as the builtin map takes them; a string path works as well.
        assert list(executor.map("hivemind.examples:add", [1, 2], [10, 20])) == [11, 22]


def test_map_memory_does_not_grow_with_the_count(session: Session) -> None:
    me = psutil.Process()
    peaks: list[float] = []
    # 50,000 results, read every 5,000: a client that kept 200 bytes per result would grow
    # 8 MB from the second reading to the last (flat runs vary by 2 MB).
    for count, value in enumerate(session.map(examples.echo, range(50_000), chunksize=2000)):
        assert value == count
        if count % 5_000 == 0:
            peaks.append(me.memory_info().rss / 2**20)
    grown = peaks[-1] - peaks[1]
    print(f"client RSS MB at each 5,000 results: {[round(p) for p in peaks]}")
    assert grown < 8, f"the client grew {grown:.0f} MB from 5,000 to 45,000 items: {peaks}"


def test_asyncio_code_awaits_futures_and_uses_the_executor(session: Session) -> None:
    async def main() -> tuple[float, float, list[int]]:
        loop = asyncio.get_running_loop()
        via_executor = await loop.run_in_executor(Executor(session), examples.square, 7)
        awaited = await session.submit(examples.add, 1, 2)
        futures = [session.submit(examples.square, x) for x in range(5)]
        seen = [await f async for f in as_completed_async(futures)]
        return via_executor, awaited, sorted(seen)

    assert asyncio.run(main()) == (49, 3, [0, 1, 4, 9, 16])


def test_futures_that_end_together_are_collected_a_few_calls_at_a_time(session: Session) -> None:
    # Held in the queue (no worker has the label), then all cancelled at once: how many end
    # per call is then up to the collector, not to how fast this machine runs tasks.
    specs = [session.spec(examples.square, [i], labels=["no-worker-has-this"]) for i in range(300)]
    futures = session.submit_specs(specs)
    calls_before = session.collector.calls
    with ThreadPoolExecutor(8) as executor:
        list(executor.map(lambda f: session.client.cancel(f.task_id), futures))
    order = list(as_completed(futures, timeout=60))
    assert {f.task_id for f in order} == {f.task_id for f in futures}
    assert all(f.cancelled() or isinstance(f.exception(), Exception) for f in order)
    calls = session.collector.calls - calls_before
    print(f"WaitTasks calls for 300 futures cancelled together: {calls}")
    assert calls < 100, f"{calls} wait calls for 300 futures: not one call for many"


def test_as_completed_yields_each_future_once_in_completion_order(session: Session) -> None:
    futures = [session.submit(examples.sleep, (i % 7) * 0.01) for i in range(500)]
    order = list(as_completed(futures, timeout=120))
    assert len(order) == 500 and {f.task_id for f in order} == {f.task_id for f in futures}
    ended = session.client.wait([f.task_id for f in order], 5)
    finished = {t.id: t.finished_at for t in ended}
    times = [finished[f.task_id] for f in order]
    late = [b - a for a, b in itertools.pairwise(times) if b < a - 0.5]
    assert late == [], "futures came out of completion order"


def test_cancel_stops_a_running_task_on_its_worker(session: Session) -> None:
    future = session.submit(examples.sleep, 60)
    deadline = time.monotonic() + 20
    while session.client.get(future.task_id).status != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert future.cancel() and future.cancelled()
    stopped_by = time.monotonic() + 2
    while session.client.get(future.task_id).status != "CANCELLED":
        assert time.monotonic() < stopped_by, "the worker did not stop the task within 2 s"
        time.sleep(0.05)
    with pytest.raises(hivemind.api.futures.cf.CancelledError):
        future.result(0)


def test_a_remote_value_error_is_a_value_error_with_the_remote_traceback(
    session: Session,
) -> None:
    future = session.submit(examples.to_int, "twelve")
    with pytest.raises(ValueError, match="invalid literal for int") as raised:
        future.result(30)
    error = raised.value
    assert isinstance(error, TaskFailed) and error.remote_type == "ValueError"
    assert error.remote_traceback.startswith("Traceback (most recent call last):")
    assert "return int(text)" in error.remote_traceback
    assert isinstance(future.exception(), ValueError)


def test_the_decorator_keeps_defaults_and_calls_locally_as_ever(session: Session) -> None:
    remote_square = task(retries=1, labels=[])(examples.square)
    assert remote_square(3) == 9  # a plain call runs here
    assert remote_square.submit(4, session=session).result(30) == 16
    assert list(remote_square.map([1, 2, 3], session=session)) == [1, 4, 9]


def test_what_cannot_be_sent_is_refused_before_anything_is_sent(session: Session) -> None:
    submitted_before = len(session.client.list(limit=1000))
    with pytest.raises(NotShippable, match="module level"):
        session.submit(lambda x: x, 1)

    def local(x: int) -> int:
        return x

    with pytest.raises(NotShippable, match="closures"):
        session.submit(local, 1)
    with pytest.raises(ValueTooLarge, match="MAX_TASK_DATA_SIZE"):
        session.submit(examples.echo, "x" * (2 * 1024 * 1024))
    with pytest.raises(TypeError, match="JSON"):
        session.submit(examples.echo, object())
    with pytest.raises(TypeError, match="positionally"):
        Executor(session).submit(examples.echo, value=1)
    assert len(session.client.list(limit=1000)) == submitted_before


def test_a_node_pool_that_is_down_and_a_refused_token_are_distinct_errors(
    cluster: Cluster, tmp_path: Path
) -> None:
    dead = Settings(home=tmp_path, grpc_host="127.0.0.1", grpc_port=free_port())
    down = connect(f"localhost:{dead.grpc_port}", "some-token", settings=dead)
    with down, pytest.raises(NodePoolUnavailable, match="cannot reach the node pool"):
        down.submit(examples.noop)
    forged = connect(cluster.address, "forged.token", settings=_settings(cluster))
    with forged, pytest.raises(AuthenticationExpired, match="log in again"):
        forged.submit(examples.noop)


def test_a_session_is_shared_by_threads(session: Session) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def work(start: int) -> None:
        values = [session.submit(examples.add, start, i).result(60) for i in range(20)]
        with lock:
            results.extend(values)

    threads = [threading.Thread(target=work, args=(n * 100,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == sorted(n * 100 + i for n in range(4) for i in range(20))


class PicklingWorker:
    """A worker of the cluster that also takes pickled calls (``--allow hivemind.pickled``)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        cluster.cli("worker-token", "pickler", "--save")
        self.process = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable, "-m", "hivemind", "worker", "--node-id", "pickler",
            "--label", "pickle", "--allow", "hivemind.pickled", "--allow", "hivemind.examples",
        ]  # fmt: skip
        process = subprocess.Popen(
            argv, env=self.cluster.env, cwd=self.cluster.home,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with self.cluster.client() as client:
            deadline = time.monotonic() + 30
            while not any(
                w.node_id == "pickler" and w.status == "online" for w in client.workers()
            ):
                assert time.monotonic() < deadline, "the pickling worker never came online"
                time.sleep(0.2)
        return process

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def pickler(cluster: Cluster) -> Iterator[PicklingWorker]:
    worker = PicklingWorker(cluster)
    try:
        yield worker
    finally:
        worker.stop()


def _pickling_session(cluster: Cluster) -> Session:
    with cluster.client() as client:
        token = client.token
    return connect(cluster.address, token, settings=_settings(cluster), pickle=True)


def test_pickled_calls_run_only_where_a_worker_allows_them(cluster: Cluster) -> None:
    # No worker takes pickled calls yet (this test runs before the pickler fixture starts
    # one): refused at submit, naming the module a worker would have to allow.
    pickling = _pickling_session(cluster)
    with pickling, pytest.raises(NodePoolError, match=r"hivemind\.pickled"):
        pickling.submit(lambda x: x * 2, 21)


def test_a_session_that_opts_in_sends_lambdas_and_closures(
    cluster: Cluster, pickler: PicklingWorker
) -> None:
    offset = 100

    def shifted(x: int) -> dict[str, int]:
        return {"value": x + offset}

    with _pickling_session(cluster) as pickling:
        doubled = pickling.submit(lambda x: x * 2, 21, labels=["pickle"])
        closure = pickling.submit(shifted, 1, labels=["pickle"])
        assert doubled.result(30) == 42 and closure.result(30) == {"value": 101}
        # Functions with an import path still go by it, to any worker.
        assert pickling.submit(examples.square, 5).result(30) == 25
        ran_on = {pickling.client.get(f.task_id).worker for f in (doubled, closure)}
    assert ran_on == {"pickler"}


def test_a_worker_killed_mid_task_means_a_retry_and_one_result(
    cluster: Cluster, session: Session, pickler: PicklingWorker
) -> None:
    future = session.submit(examples.sleep, 3, labels=["pickle"], retries=2)
    deadline = time.monotonic() + 20
    while session.client.get(future.task_id).status != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pickler.process.kill()
    pickler.process.wait(10)
    pickler.process = pickler.start()  # the same node id, a new process
    assert future.result(60) == 3
    task = session.client.get(future.task_id)
    assert task.status == "SUCCEEDED" and task.attempt == 2
    assert cluster.terminal_events(future.task_id) == ["succeeded"]


def test_a_task_gone_from_the_cluster_fails_its_future_alone(cluster: Cluster) -> None:
    with _pickling_session(cluster) as other:
        kept = other.submit(examples.sleep, 0.5)
        missing = HiveMindFuture("no-such-task", other.client, other.collector)
        other.collector.watch([missing])
        with pytest.raises(NodePoolError, match="no task"):
            missing.result(30)
        assert kept.result(30) == 0.5  # the other future was not failed with it
        late = other.submit(examples.sleep, 30)
    # Closing the session fails what is still pending, with a reason, instead of hanging.
    with pytest.raises(HiveMindAPIError, match="session was closed"):
        late.result(5)


def test_first_completed_waits_answer_with_only_the_tasks_that_ended(session: Session) -> None:
    quick = session.submit(examples.add, 1, 1)
    slow = session.submit(examples.sleep, 30)
    assert quick.result(30) == 2
    client = session.client
    started = time.monotonic()
    # One has ended already: the answer is at once, and holds that one alone (ids repeated).
    ended = client.wait([slow.task_id, quick.task_id, quick.task_id], 10, first_completed=True)
    assert [t.id for t in ended] == [quick.task_id] and time.monotonic() - started < 2
    # None ends within the timeout: an empty answer when it passes, not a busy loop.
    started = time.monotonic()
    assert client.wait([slow.task_id, slow.task_id], 0.5, first_completed=True) == []
    assert time.monotonic() - started >= 0.4
    slow.cancel()
