"""The worker's reporter, against a recording stand-in for its node pool connection: the
order in which reports leave, and outcomes carried by a lease instead of sent apart."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from hivemind.errors import NodePoolError
from hivemind.proto import hivemind_pb2 as pb
from hivemind.worker.reporting import Reporter
from hivemind.worker.running import RunningTask
from tests.helpers import wait_until


@dataclass
class RecordingConnection:
    calls: list[tuple[str, str]] = field(default_factory=list)
    down: bool = False
    logs_open: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.logs_open.set()

    def progress(self, task_id: str, attempt: int, fraction: float, message: str) -> bool:
        self.calls.append(("progress", task_id))
        return True

    def append_log(self, task_id: str, attempt: int, text: str) -> bool:
        self.logs_open.wait(10)
        self.calls.append(("log", task_id))
        return True

    def complete(self, results: Sequence[pb.TaskResult]) -> list[pb.FenceReply]:
        if self.down:
            self.calls.extend(("refused", r.ref.task_id) for r in results)
            raise NodePoolError("node pool unreachable", "UNAVAILABLE")
        self.calls.extend(("complete", r.ref.task_id) for r in results)
        return [pb.FenceReply(accepted=True) for _ in results]


@dataclass
class Running:
    reporter: Reporter
    conn: RecordingConnection
    settled: list[str]


@pytest.fixture
def running() -> Iterator[Running]:
    conn = RecordingConnection()
    settled: list[str] = []
    reporter = Reporter(conn, lambda task: settled.append(task.task_id))  # type: ignore[arg-type]
    stopped = threading.Event()
    thread = threading.Thread(target=reporter.run, args=(stopped,), daemon=True)
    thread.start()
    yield Running(reporter, conn, settled)
    stopped.set()
    thread.join(5)


def finished(task_id: str) -> tuple[RunningTask, pb.TaskResult]:
    task = RunningTask(task_id, 1, pb.FUNCTION)
    result = pb.TaskResult(ref=pb.AttemptRef(task_id=task_id, attempt=1), outcome=pb.SUCCEEDED)
    return task, result


def test_a_tasks_logs_and_progress_leave_before_its_outcome(running: Running) -> None:
    task, result = finished("t1")
    running.reporter.log(task, "line\n")
    running.reporter.progress("t1", 1, 0.9, "nearly")
    running.reporter.outcome(task, result)
    assert wait_until(lambda: running.settled == ["t1"], 5)
    assert running.conn.calls == [("log", "t1"), ("progress", "t1"), ("complete", "t1")]


def test_an_outcome_waited_for_by_the_lease_loop_is_carried_not_sent_apart(
    running: Running,
) -> None:
    running.reporter.carry = True
    carried: list[list[tuple[RunningTask, pb.TaskResult]]] = []
    carrier = threading.Thread(target=lambda: carried.append(running.reporter.to_carry(5.0)))
    carrier.start()
    assert wait_until(lambda: running.reporter._carrier_waiting, 5)
    task, result = finished("t2")
    running.reporter.outcome(task, result)
    carrier.join(5)
    assert [t.task_id for t, _ in carried[0]] == ["t2"] and task.reported
    assert ("complete", "t2") not in running.conn.calls
    running.reporter.settle(carried[0], [pb.FenceReply(accepted=True)])
    assert running.settled == ["t2"]


def test_a_carried_outcome_waits_for_its_tasks_logs_to_be_sent(running: Running) -> None:
    running.reporter.carry = True
    running.conn.logs_open.clear()  # the node pool is slow to take log lines
    task, result = finished("t4")
    running.reporter.log(task, "last words\n")
    assert wait_until(lambda: running.reporter._queue.empty(), 5)  # being sent

    def carry() -> None:
        for carried, _ in running.reporter.to_carry(5.0):
            running.conn.calls.append(("carried", carried.task_id))

    carrier = threading.Thread(target=carry)
    carrier.start()
    assert wait_until(lambda: running.reporter._carrier_waiting, 5)
    running.reporter.outcome(task, result)
    running.conn.logs_open.set()
    carrier.join(5)
    assert running.conn.calls == [("log", "t4"), ("carried", "t4")]


def test_outcomes_of_a_failed_call_are_kept_and_sent_when_the_node_pool_is_back(
    running: Running,
) -> None:
    running.conn.down = True
    task, result = finished("t3")
    running.reporter.outcome(task, result)
    assert wait_until(lambda: ("refused", "t3") in running.conn.calls, 5)
    assert running.settled == []
    running.conn.down = False
    assert wait_until(lambda: running.settled == ["t3"], 10)
    assert running.conn.calls[-1] == ("complete", "t3")
