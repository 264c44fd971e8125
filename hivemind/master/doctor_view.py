"""The doctor's findings for admins: the same library, ids and hints as `hivemind doctor`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hivemind.config import Settings
from hivemind.errors import UsageError
from hivemind.master.gateway import ApiError


def run_doctor_report(
    settings: Settings, only: Sequence[str] = (), skip: Sequence[str] = ()
) -> dict[str, Any]:
    """The report as the JSON of `hivemind doctor --json` (schema 1)."""
    try:
        from doctor import run_doctor  # imported late: the console works without it
    except ImportError:
        raise ApiError(503, "doctor not installed: this master has no doctor package") from None
    try:
        # Each check gets the doctor's own default timeout, so a page never hangs on a dead host.
        report = run_doctor(settings, only=tuple(only), skip=tuple(skip))
    except UsageError as exc:  # an unknown id or category in only/skip
        raise ApiError(400, str(exc)) from None
    result: dict[str, Any] = report.to_dict()
    return result
