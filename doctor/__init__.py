"""`hivemind doctor`: every check of the troubleshooting guide, as a library.

The CLI and the master's console only render what :func:`run_doctor` returns.
"""

from doctor.context import Context, Unavailable
from doctor.engine import DEFAULT_CHECK_TIMEOUT, run_checks, run_doctor
from doctor.model import CheckResult, CheckSpec, Finding, Report, Status
from doctor.registry import all_checks, check, select

__all__ = [
    "DEFAULT_CHECK_TIMEOUT",
    "CheckResult",
    "CheckSpec",
    "Context",
    "Finding",
    "Report",
    "Status",
    "Unavailable",
    "all_checks",
    "check",
    "run_checks",
    "run_doctor",
    "select",
]
