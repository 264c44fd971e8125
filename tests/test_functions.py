"""The warm function pool, over real pool processes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import psutil
import pytest

from hivemind.worker.functions import (
    FunctionCall,
    FunctionError,
    FunctionOutcome,
    FunctionPool,
    resolve_function,
)
from tests.fixtures_tasks import pool_funcs

MODULE = pool_funcs.__name__
PACKAGE = MODULE.rpartition(".")[0]
# Generous: these only bound how long a broken implementation can hang the suite.
SLOW = 60.0


class ProgressLog:
    def __init__(self) -> None:
        self.reports: list[tuple[str, int, float, str]] = []
        self.changed = threading.Condition()

    def __call__(self, task_id: str, attempt: int, fraction: float, message: str) -> None:
        with self.changed:
            self.reports.append((task_id, attempt, fraction, message))
            self.changed.notify_all()

    def of(self, task_id: str) -> list[tuple[float, str]]:
        return [(f, m) for t, _, f, m in self.reports if t == task_id]

    def wait_for_start(self, task_id: str) -> int:
        """Wait until ``sleep_for`` reports it started; returns its process id."""
        deadline = time.monotonic() + SLOW
        with self.changed:
            while not (started := [m for _, m in self.of(task_id) if m.startswith("started")]):
                assert time.monotonic() < deadline, f"{task_id} never started: {self.reports}"
                self.changed.wait(1.0)
        return int(started[0].rsplit(" ", 1)[1])


def assert_gone(pid: int) -> None:
    try:
        psutil.Process(pid).wait(SLOW)
    except psutil.NoSuchProcess:
        return


@pytest.fixture(scope="module")
def progress() -> ProgressLog:
    return ProgressLog()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, progress: ProgressLog) -> Iterator[FunctionPool]:
    pool = FunctionPool(2, [PACKAGE], tmp_path_factory.mktemp("pool"), progress)
    yield pool
    pool.shutdown()


_ids = iter(range(1_000_000))


def call(
    pool: FunctionPool, function: str, *args: object, timeout: float = SLOW, task_id: str = ""
) -> Future[FunctionOutcome]:
    name = function if ":" in function else f"{MODULE}:{function}"
    task_id = task_id or f"task-{next(_ids)}"
    return pool.submit(FunctionCall(task_id, 1, name, list(args), timeout))


def run(pool: FunctionPool, function: str, *args: object, timeout: float = SLOW) -> FunctionOutcome:
    return call(pool, function, *args, timeout=timeout).result(SLOW)


def pool_pids(pool: FunctionPool) -> set[int]:
    """The pool's processes, as the processes themselves report them."""
    futures = [call(pool, "pid") for _ in range(20)]
    return {json.loads(f.result(SLOW).result_json) for f in futures}


def both_busy(pool: FunctionPool) -> list[Future[FunctionOutcome]]:
    return [call(pool, "sleep_for", 0.2) for _ in range(2)]


# -- results and failures ---------------------------------------------------------------------


def test_results_come_back_as_json_from_reused_processes(pool: FunctionPool) -> None:
    futures = [call(pool, "add", i, 0.5) for i in range(40)]
    outcomes = [f.result(SLOW) for f in futures]
    assert [o.status for o in outcomes] == ["succeeded"] * 40
    assert [json.loads(o.result_json) for o in outcomes] == [i + 0.5 for i in range(40)]
    assert all(o.error_message == "" and o.duration >= 0 for o in outcomes)
    # Warm: the same few processes served every call.
    assert len(pool_pids(pool) | pool_pids(pool)) <= 2


def test_exception_is_reported_with_its_location(pool: FunctionPool) -> None:
    outcome = run(pool, "fail", "bad input")
    assert (outcome.status, outcome.result_json) == ("failed", "")
    summary, _, trace = outcome.error_message.partition("\n")
    assert summary.startswith("ValueError: bad input (at pool_funcs.py:")
    assert summary.endswith(" in fail)")
    # The traceback follows, as Python prints it: the Python API re-raises with it.
    assert trace.startswith("Traceback (most recent call last):")
    assert trace.rstrip().endswith("ValueError: bad input") and "pool_funcs.py" in trace


def test_unserialisable_result_fails(pool: FunctionPool) -> None:
    outcome = run(pool, "unserialisable")
    assert outcome.status == "failed"
    assert outcome.error_message.startswith("result is not JSON-serialisable: ")


def test_missing_function_and_module(pool: FunctionPool) -> None:
    assert run(pool, "nope").error_message == f"module '{MODULE}' has no function 'nope'"
    outcome = run(pool, f"{PACKAGE}.missing:f")
    assert outcome.error_message.startswith(f"cannot import module '{PACKAGE}.missing'")


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("os:getcwd", "module 'os' is not allowed on this worker (--allow)"),
        (f"{PACKAGE}_other:f", f"module '{PACKAGE}_other' is not allowed on this worker (--allow)"),
        (f"{MODULE}:getcwd", "comes from module 'posix', which is not allowed on this worker"),
        ("not a function", "function must be written 'module:function'"),
    ],
)
def test_disallowed_functions_are_refused(pool: FunctionPool, function: str, message: str) -> None:
    outcome = run(pool, function)
    assert outcome.status == "failed"
    assert message in outcome.error_message


def test_resolve_function_allows_a_module_and_its_submodules_only() -> None:
    assert resolve_function(f"{MODULE}:add", [PACKAGE])(1, 2) == 3
    assert resolve_function(f"{MODULE}:add", [MODULE])(1, 2) == 3
    with pytest.raises(FunctionError, match="not allowed"):
        resolve_function(f"{MODULE}:add", [f"{MODULE}.sub"])
    with pytest.raises(FunctionError, match="not allowed"):
        resolve_function("json:dumps", [])


def test_task_context_and_checkpoint_dir_carry_over_attempts(pool: FunctionPool) -> None:
    context = pool.submit(FunctionCall("ctx-task", 3, f"{MODULE}:context", [], SLOW))
    assert json.loads(context.result(SLOW).result_json) == {"task_id": "ctx-task", "attempt": 3}

    attempts = []
    for attempt in (1, 2):
        bump = FunctionCall("ckpt-task", attempt, f"{MODULE}:bump_checkpoint", [], SLOW)
        attempts.append(json.loads(pool.submit(bump).result(SLOW).result_json))
    assert [a["previous"] for a in attempts] == [0, 1]
    assert Path(attempts[0]["folder"]).parts[-2:] == ("ckpt-task", "checkpoint")


def test_progress_is_delivered(pool: FunctionPool, progress: ProgressLog) -> None:
    steps = [[0.25, "a quarter"], [0.5, "half"], [9, "clamped"]]
    outcome = call(pool, "report", steps, 0.3, task_id="progress-task").result(SLOW)
    assert outcome.status == "succeeded"
    reports = progress.of("progress-task")
    assert reports == [(0.25, "a quarter"), (0.5, "half"), (1.0, "clamped")]
    assert {attempt for t, attempt, _, _ in progress.reports if t == "progress-task"} == {1}


def test_fast_progress_is_throttled_but_the_last_report_arrives(
    pool: FunctionPool, progress: ProgressLog
) -> None:
    steps = [[i / 1000, f"step {i}"] for i in range(1001)]
    outcome = call(pool, "report", steps, 0, task_id="burst-task").result(SLOW)
    assert outcome.status == "succeeded"
    reports = progress.of("burst-task")
    assert reports[-1] == (1.0, "step 1000")
    assert len(reports) < 100


# -- stopping calls and losing processes ----------------------------------------------------------


def test_timeout_kills_only_that_process_and_the_pool_keeps_working(
    pool: FunctionPool, progress: ProgressLog
) -> None:
    neighbour = call(pool, "sleep_for", 1.5, task_id="neighbour")
    progress.wait_for_start("neighbour")
    started = time.monotonic()
    slow = call(pool, "sleep_for", 300, timeout=0.5, task_id="slow")
    victim = progress.wait_for_start("slow")
    outcome = slow.result(SLOW)

    assert (outcome.status, outcome.error_message) == ("timeout", "killed after 0.5 s timeout")
    assert time.monotonic() - started < SLOW
    assert_gone(victim)
    # The call in the other process was not disturbed, and the pool still serves calls.
    assert neighbour.result(SLOW).status == "succeeded"
    assert run(pool, "add", 1, 1).result_json == "2"
    assert victim not in pool_pids(pool)


def test_cancel_running_and_queued_calls(pool: FunctionPool, progress: ProgressLog) -> None:
    running = [call(pool, "sleep_for", 300, task_id=f"busy-{i}") for i in range(2)]
    victims = [progress.wait_for_start(f"busy-{i}") for i in range(2)]
    queued = call(pool, "add", 1, 2, task_id="queued")
    time.sleep(0.2)
    assert not queued.done()

    assert pool.cancel("queued")
    assert queued.result(SLOW).status == "cancelled"
    # A caller may also cancel a queued call's future itself.
    dropped = call(pool, "add", 1, 2, task_id="dropped")
    assert dropped.cancel()
    assert pool.cancel("dropped")
    assert dropped.cancelled()
    cancelled_at = time.monotonic()
    assert pool.cancel("busy-0") and pool.cancel("busy-1")
    outcomes = [f.result(SLOW) for f in running]
    assert time.monotonic() - cancelled_at < 2.0
    assert [(o.status, o.error_message) for o in outcomes] == [("cancelled", "cancelled")] * 2
    for pid in victims:
        assert_gone(pid)
    assert not pool.cancel("busy-0")
    assert run(pool, "add", 2, 2).result_json == "4"


@pytest.mark.parametrize(
    ("function", "args", "message"),
    [
        ("exit_now", [7], "worker process died (exit code 7)"),
        ("segfault", [], "worker process died (killed by SIGSEGV)"),
    ],
)
def test_dead_process_fails_the_call_and_is_replaced(
    pool: FunctionPool, function: str, args: list[object], message: str
) -> None:
    outcome = run(pool, function, *args)
    assert (outcome.status, outcome.error_message) == ("failed", message)
    # A replacement starts: two calls at once soon run in two different processes.
    deadline = time.monotonic() + SLOW
    while len({json.loads(f.result(SLOW).result_json) for f in both_busy(pool)}) < 2:
        assert time.monotonic() < deadline, "the dead process was not replaced"
    assert run(pool, "add", 3, 4).result_json == "7"


def test_shutdown_finishes_running_calls_then_stops_processes(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children()}
    pool = FunctionPool(1, [PACKAGE], tmp_path, lambda *_: None)
    own = [p for p in psutil.Process().children() if p.pid not in before]
    running = call(pool, "sleep_for", 0.3)
    pool.shutdown(wait=True)

    assert running.result(0).status == "succeeded"
    with pytest.raises(RuntimeError, match="shut down"):
        call(pool, "noop")
    assert own
    for process in own:
        assert_gone(process.pid)
        assert process.pid not in {p.pid for p in psutil.Process().children()}


def test_shutdown_without_waiting_cancels_everything(tmp_path: Path) -> None:
    pool = FunctionPool(1, [PACKAGE], tmp_path, lambda *_: None)
    running = call(pool, "sleep_for", 300)
    queued = call(pool, "noop")
    pool.shutdown(wait=False)
    assert running.result(SLOW).status == "cancelled"
    assert queued.result(SLOW).status == "cancelled"
