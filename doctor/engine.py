"""Runs checks concurrently, each under its own timeout, and never lets one break the run."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from datetime import datetime, timezone

from doctor.context import DEFAULT_CHECK_TIMEOUT, Context, Unavailable
from doctor.model import CheckResult, CheckSpec, Finding, Report
from doctor.registry import all_checks, select
from hivemind.config import Settings


def run_one(spec: CheckSpec, context: Context) -> Finding:
    """The check's finding; what it raises becomes ``skip`` (a missing source) or ``error``."""
    try:
        finding = spec.function(context)
    except Unavailable as missing:
        return Finding.skip(str(missing))
    except Exception as exc:  # a broken check is reported, never fatal to the run
        return Finding.error(f"the check raised {type(exc).__name__}: {exc}")
    if not isinstance(finding, Finding):
        return Finding.error(f"the check returned {type(finding).__name__}, not a Finding")
    return finding


def run_checks(specs: Sequence[CheckSpec], context: Context) -> list[CheckResult]:
    """Every check at once, in daemon threads, so a hung probe costs one timeout in all."""
    futures: list[tuple[CheckSpec, Future[tuple[Finding, float]]]] = []
    for spec in specs:
        future: Future[tuple[Finding, float]] = Future()

        def work(spec: CheckSpec = spec, future: Future[tuple[Finding, float]] = future) -> None:
            started = time.monotonic()
            finding = run_one(spec, context)
            future.set_result((finding, time.monotonic() - started))

        threading.Thread(target=work, name=f"doctor:{spec.id}", daemon=True).start()
        futures.append((spec, future))

    deadline = time.monotonic() + context.timeout
    results = []
    for spec, future in futures:
        try:
            finding, took = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            finding = Finding.error(f"the check did not finish within {context.timeout:g}s")
            took = context.timeout
        results.append(CheckResult.of(spec, finding, took))
    return results


def run_doctor(
    settings: Settings,
    only: Iterable[str] = (),
    skip: Iterable[str] = (),
    timeout: float = DEFAULT_CHECK_TIMEOUT,
    context: Context | None = None,
) -> Report:
    """Run the selected checks on this host and return the report."""
    context = context or Context(settings, timeout=timeout)
    specs = select(all_checks(), only, skip)
    started_at = datetime.now(timezone.utc)
    began = time.monotonic()
    results = run_checks(specs, context)
    return Report(
        host=context.host,
        started_at=started_at.isoformat(timespec="seconds"),
        duration_s=time.monotonic() - began,
        results=results,
    )
