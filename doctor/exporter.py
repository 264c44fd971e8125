"""`hivemind doctor serve`: every check as a Prometheus gauge, kept fresh in the background.

Each check runs in a thread of its own, so a hung probe holds up only its own series: a
scrape starts a round of every check that is not still running, waits at most
``scrape_wait`` for it, and answers with each check's newest finding. A check still running
past its timeout is reported as ``error``, so a hang shows as one, not as the stale verdict
from before it hung. Between scrapes a round runs every ``interval`` seconds.

Exported (``id`` and ``category`` labels on each)::

    hivemind_check_status                  0 ok, 1 warn, 2 fail, 3 error, -1 skip
    hivemind_check_duration_seconds        how long the check took last time
    hivemind_check_completed_timestamp_seconds  when that finding was made (Unix time)
    hivemind_doctor_rounds_total           rounds started (no labels)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from doctor.context import Context
from doctor.engine import run_one
from doctor.model import CheckResult, CheckSpec, Finding, Status
from hivemind.config import Settings

#: The value of ``hivemind_check_status`` for each status (alerts compare against these).
STATUS_VALUES = {Status.OK: 0, Status.WARN: 1, Status.FAIL: 2, Status.ERROR: 3, Status.SKIP: -1}
#: Seconds a scrape waits for the round it starts; a slower check answers with its last finding.
SCRAPE_WAIT = 0.5
#: Seconds between rounds when nobody scrapes.
DEFAULT_INTERVAL = 30.0


@dataclass
class CheckState:
    """One check's newest finding, and whether a run of it is in flight."""

    spec: CheckSpec
    result: CheckResult | None = None
    completed_at: float = 0.0  # Unix time of ``result``
    running_since: float | None = None  # monotonic
    finished: threading.Event = field(default_factory=threading.Event)  # of the newest run


class LiveChecks:
    """The selected checks, each rerun whenever a round starts and it is not still running."""

    def __init__(
        self,
        settings: Settings,
        specs: Sequence[CheckSpec],
        timeout: float,
        make_context: Callable[[], Context] | None = None,
    ) -> None:
        self.timeout = timeout
        self._make_context = make_context or (lambda: Context(settings, timeout=timeout))
        self._states = [CheckState(spec) for spec in specs]
        self._lock = threading.Lock()
        self.rounds = 0

    def refresh(self, wait: float = 0.0) -> None:
        """Start every check that is not running, on a fresh context; return once every
        check in flight has finished or ``wait`` seconds have passed."""
        context = self._make_context()
        in_flight: list[threading.Event] = []
        with self._lock:
            self.rounds += 1
            for state in self._states:
                if state.running_since is None:
                    state.running_since = time.monotonic()
                    state.finished = threading.Event()
                    threading.Thread(
                        target=self._run,
                        args=(state, context, state.finished),
                        name=f"doctor-serve:{state.spec.id}",
                        daemon=True,
                    ).start()
                in_flight.append(state.finished)
        deadline = time.monotonic() + wait
        for finished in in_flight:
            if not finished.wait(max(0.0, deadline - time.monotonic())):
                break

    def _run(self, state: CheckState, context: Context, finished: threading.Event) -> None:
        began = time.monotonic()
        finding = run_one(state.spec, context)
        result = CheckResult.of(state.spec, finding, time.monotonic() - began)
        with self._lock:
            state.result, state.completed_at, state.running_since = result, time.time(), None
        finished.set()

    def results(self) -> list[tuple[CheckResult, float]]:
        """Each check's newest finding with when it was made; a check that has run past its
        timeout is an ``error`` now. A check that has not finished once yet is left out."""
        now = time.monotonic()
        out = []
        with self._lock:
            for state in self._states:
                running_for = now - state.running_since if state.running_since else 0.0
                if running_for > self.timeout:
                    finding = Finding.error(
                        f"the check has not finished for {running_for:.0f}s "
                        f"(timeout {self.timeout:g}s): a probe hangs"
                    )
                    out.append((CheckResult.of(state.spec, finding, running_for), time.time()))
                elif state.result is not None:
                    out.append((state.result, state.completed_at))
        return out

    def run_every(self, interval: float, stop: threading.Event) -> None:
        """Rounds every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            self.refresh()
            stop.wait(interval)


def metric_families(live: LiveChecks) -> Iterator[object]:
    """The Prometheus metric families of the checks' newest findings."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = ["id", "category"]
    status = GaugeMetricFamily(
        "hivemind_check_status",
        "Doctor check status: 0 ok, 1 warn, 2 fail, 3 error, -1 skip.",
        labels=labels,
    )
    duration = GaugeMetricFamily(
        "hivemind_check_duration_seconds", "Seconds the check took last time.", labels=labels
    )
    completed = GaugeMetricFamily(
        "hivemind_check_completed_timestamp_seconds",
        "When the check's newest finding was made (Unix time).",
        labels=labels,
    )
    for result, completed_at in live.results():
        values = [result.id, result.category]
        status.add_metric(values, STATUS_VALUES[result.status])
        duration.add_metric(values, round(result.duration_s, 6))
        completed.add_metric(values, completed_at)
    rounds = CounterMetricFamily("hivemind_doctor_rounds", "Rounds of checks started.")
    rounds.add_metric([], live.rounds)
    yield from (status, duration, completed, rounds)


class ChecksCollector:
    """A prometheus_client collector: each scrape starts a round and waits ``scrape_wait``."""

    def __init__(self, live: LiveChecks, scrape_wait: float = SCRAPE_WAIT) -> None:
        self.live = live
        self.scrape_wait = scrape_wait

    def describe(self) -> list[object]:
        return []  # no round at registration

    def collect(self) -> Iterator[object]:
        self.live.refresh(self.scrape_wait)
        yield from metric_families(self.live)


@dataclass
class Exporter:
    """A running ``doctor serve``: its HTTP server and background rounds."""

    address: tuple[str, int]
    live: LiveChecks
    _server: object
    _stop: threading.Event

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()  # type: ignore[attr-defined]
        self._server.server_close()  # type: ignore[attr-defined]


def serve(
    settings: Settings,
    specs: Sequence[CheckSpec],
    host: str,
    port: int,
    interval: float = DEFAULT_INTERVAL,
    timeout: float = 5.0,
    scrape_wait: float = SCRAPE_WAIT,
) -> Exporter:
    """Serve the checks' metrics on ``host:port`` (``/metrics``) until ``close()``. Raises
    OSError when the port cannot be bound."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    live = LiveChecks(settings, specs, timeout)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ChecksCollector(live, scrape_wait))  # type: ignore[arg-type]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    stop = threading.Event()
    threading.Thread(
        target=live.run_every, args=(interval, stop), name="doctor-serve", daemon=True
    ).start()
    bound = server.server_address
    return Exporter((str(bound[0]), int(bound[1])), live, server, stop)
