"""When a RUNNING task is overdue: the one rule the node pool's reaper and the doctor share.

A task's worker stops it at ``timeout`` seconds and reports TIMEOUT. The node pool gives the
worker ``TIMEOUT_GRACE`` seconds more to do so; past that deadline its reaper marks the task
TIMEOUT itself (the lease script files the same deadline, in ms, in ``keys.DEADLINES``). The
doctor must not requeue a task in either stretch: it would run again a task that is already on
its way to TIMEOUT.
"""

from __future__ import annotations

import enum

from hivemind import tuning


class TimeoutPhase(str, enum.Enum):
    #: Inside its timeout.
    WITHIN = "within"
    #: Past its timeout: its worker is stopping it, within TIMEOUT_GRACE.
    STOPPING = "stopping"
    #: Past timeout and grace: the node pool's reaper marks it TIMEOUT.
    OVERDUE = "overdue"


def timeout_deadline(started: float, timeout: float) -> float:
    """Unix time at which the node pool marks a task started at ``started`` TIMEOUT."""
    return started + timeout + tuning.TIMEOUT_GRACE


def timeout_phase(now: float, started: float, timeout: float) -> TimeoutPhase:
    """Where a RUNNING task stands against its timeout. A task with no start time or no
    timeout is WITHIN: nothing is overdue about it."""
    if started <= 0 or timeout <= 0 or now <= started + timeout:
        return TimeoutPhase.WITHIN
    if now < timeout_deadline(started, timeout):
        return TimeoutPhase.STOPPING
    return TimeoutPhase.OVERDUE
