"""A deploy of many hosts: batches of ``serial`` hosts, stopped once too many failed."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hivemind.config import Settings
from hivemind.deploy.host import HostDeployment
from hivemind.deploy.model import (
    DeployEvent,
    DeployHost,
    DeployOptions,
    DeploySummary,
    EventSink,
    HostDeployResult,
    Outcome,
    Phase,
)
from hivemind.deploy.wheel import DeployError, build_wheel, check_wheel, wheel_version


def _ignore(_event: DeployEvent) -> None:
    return None


def _token_issuer(settings: Settings, options: DeployOptions) -> Callable[[DeployHost], str]:
    """One single-use join token per host, issued here on the node pool's host."""
    from hivemind.join import issue_join_token

    def issue(host: DeployHost) -> str:
        return issue_join_token(
            settings, options.token_ttl, host.labels, host.node_id, options.join_address
        )

    return issue


def batches(hosts: Sequence[DeployHost], serial: int) -> list[list[DeployHost]]:
    size = serial if serial > 0 else max(1, len(hosts))
    return [list(hosts[i : i + size]) for i in range(0, len(hosts), size)]


def too_many_failed(failed: int, total: int, max_fail_percent: float) -> bool:
    return total > 0 and 100.0 * failed / total > max_fail_percent


def check_options(hosts: Sequence[DeployHost], options: DeployOptions) -> None:
    if not hosts:
        raise DeployError("no hosts to deploy to")
    if options.serial < 0:
        raise DeployError("--serial must be 0 (all at once) or a positive number of hosts")
    if not 0 <= options.max_fail_percent <= 100:
        raise DeployError("--max-fail-percent must be between 0 and 100")
    seen: dict[str, str] = {}
    for host in hosts:
        if host.node_id in seen:
            raise DeployError(
                f"{host.label} and {seen[host.node_id]} would both be worker {host.node_id}: "
                "give one a node_id in the inventory"
            )
        seen[host.node_id] = host.label
    if options.wheelhouse is not None and not options.wheelhouse.is_dir():
        raise DeployError(f"no wheelhouse folder at {options.wheelhouse}")


def deploy(
    settings: Settings,
    hosts: Sequence[DeployHost],
    options: DeployOptions,
    on_event: EventSink | None = None,
    *,
    issue_token: Callable[[DeployHost], str] | None = None,
) -> DeploySummary:
    """Install this checkout's wheel (or ``options.wheel``) on every host and make each a
    worker of this host's node pool; a rolling upgrade with ``options.upgrade``.

    Hosts go in batches of ``options.serial`` (a batch in parallel); once the failed share
    of all hosts exceeds ``options.max_fail_percent`` no new batch starts and the rest are
    reported skipped. Raises :class:`DeployError` only when nothing can start (bad options,
    no wheel); every host's own failure is its result.
    """
    check_options(hosts, options)
    emit = on_event or _ignore
    issue = issue_token or _token_issuer(settings, options)
    with tempfile.TemporaryDirectory(prefix="hivemind-deploy-") as scratch:
        # Built once per run: every host gets the same bytes.
        wheel = check_wheel(options.wheel) if options.wheel else build_wheel(Path(scratch))
        results: list[HostDeployResult] = []
        stopped_early = False
        for batch in batches(hosts, options.serial):
            if too_many_failed(
                sum(1 for r in results if r.outcome is Outcome.FAILED),
                len(hosts),
                options.max_fail_percent,
            ):
                stopped_early = True
                for host in batch:
                    results.append(_skipped(host, emit))
                continue
            with ThreadPoolExecutor(max_workers=len(batch)) as pool:
                results += list(
                    pool.map(
                        lambda host: HostDeployment(host, options, wheel, issue, emit).run(),
                        batch,
                    )
                )
        summary = DeploySummary(
            wheel=options.wheel or Path(wheel.name),
            version=wheel_version(wheel),
            results=results,
            stopped_early=stopped_early,
        )
    return summary


def _skipped(host: DeployHost, emit: EventSink) -> HostDeployResult:
    message = "not attempted: too many hosts failed before it (--max-fail-percent)"
    emit(DeployEvent(host.label, host.node_id, Phase.CONNECT, "skipped", message))
    return HostDeployResult(host.label, host.node_id, Phase.CONNECT, Outcome.SKIPPED, message)
