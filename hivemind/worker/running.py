"""What a worker keeps about each task it holds, and the backoff its loops share."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

BACKOFF_START, BACKOFF_MAX = 0.2, 10.0


@dataclass
class RunningTask:
    task_id: str
    attempt: int
    kind: int
    name: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)
    executing: bool = False  # holds one of the MAX_CONCURRENT_TASKS slots
    handed_back: bool = False  # stopped by a shutdown: released, not reported
    reported: bool = False  # its outcome is on its way to the node pool
    leased_at: float = field(default_factory=time.monotonic)


class Backoff:
    """Capped exponential waits between attempts to reach the node pool."""

    def __init__(self) -> None:
        self.delay = BACKOFF_START

    def sleep(self, stop: threading.Event) -> None:
        stop.wait(self.delay)
        self.delay = min(self.delay * 2, BACKOFF_MAX)

    def reset(self) -> None:
        self.delay = BACKOFF_START
