"""`hivemind doctor --host …`: the same checks on other hosts, over SSH, in parallel.

On each host it runs `hivemind doctor --json` when HiveMind is installed there, so the host
reports exactly what its own local run would. Where it is not installed, the host probes
(files under /proc, local tools) run over the SSH runner and everything else is a ``skip``
that says why. A host that cannot be reached is one ``fail`` row (``remote.ssh``), reached
within the timeout, and never hides the other hosts.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from doctor.checks.remote_hosts import REMOTE_CHECK, REMOTE_GUIDE, REMOTE_TITLE
from doctor.context import DEFAULT_CHECK_TIMEOUT, Context
from doctor.engine import run_checks
from doctor.model import CheckResult, Finding, Report
from doctor.registry import all_checks, select
from hivemind.config import Settings
from hivemind.errors import RemoteError
from hivemind.remote import SSHOptions, SSHTarget, for_each_host
from hivemind.remote.runner import Runner

#: Exit statuses of `hivemind doctor`: findings (0 or 1) versus a usage error (2).
_FINDINGS_EXITS = (0, 1)
#: Seconds a remote `hivemind doctor` may take beyond its per-check timeout (start-up).
_REMOTE_STARTUP = 15.0


@dataclass(frozen=True)
class RemoteOptions:
    timeout: float = DEFAULT_CHECK_TIMEOUT
    only: Sequence[str] = ()
    skip: Sequence[str] = ()
    #: How to reach the hosts; a host is connected to within ``timeout``, not the SSH
    #: options' own connect timeout, so an unreachable one costs one check timeout.
    ssh: SSHOptions = field(default_factory=SSHOptions)
    max_parallel: int = 16


def _unreachable(host: str, reason: str, took: float) -> Report:
    row = CheckResult(
        REMOTE_CHECK,
        REMOTE_TITLE,
        REMOTE_GUIDE,
        Finding.fail(
            reason,
            "check the address and port, that sshd runs there, and that your key is in its "
            "authorized_keys (--insecure-host-key only for a host key you have verified)",
        ),
    )
    return Report(host, _now(), took, [row])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _doctor_command(options: RemoteOptions) -> str:
    words = ["doctor", "--json", "--timeout", f"{options.timeout:g}"]
    for name in options.only:
        words += ["--only", name]
    for name in options.skip:
        words += ["--skip", name]
    return f"{options.ssh.hivemind} {shlex.join(words)}"


def run_over(runner: Runner, settings: Settings, options: RemoteOptions) -> Report:
    """The doctor's report for the host behind ``runner``."""
    began = time.monotonic()
    done = runner.run(_doctor_command(options), timeout=options.timeout + _REMOTE_STARTUP)
    if done.exit_code in _FINDINGS_EXITS:
        try:
            report = Report.from_dict(json.loads(done.stdout))
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"`hivemind doctor --json` printed no report: {exc}"
            raise RemoteError(runner.host, reason) from None
        return Report(runner.host, report.started_at, report.duration_s, report.results)
    stderr = done.stderr.decode(errors="replace").strip()
    if done.exit_code == 127 or "No module named hivemind" in stderr:
        return _probe_over(runner, settings, options, began, missing=stderr.splitlines()[-1:])
    raise RemoteError(
        runner.host, f"hivemind doctor exited {done.exit_code}: {stderr[-500:] or '(no output)'}"
    )


def _probe_over(
    runner: Runner,
    settings: Settings,
    options: RemoteOptions,
    began: float,
    missing: list[str],
) -> Report:
    """HiveMind is not installed there: run the host probes through the runner."""
    specs = select(all_checks(), options.only, options.skip)
    context = Context(settings, timeout=options.timeout, host=runner.host, runner=runner)
    probed = run_checks([s for s in specs if s.host_probe], context)
    why = (
        f"hivemind is not installed on {runner.host} ({' '.join(missing) or 'not found'}); "
        "only the host probes ran over SSH"
    )
    by_id = {r.id: r for r in probed}
    results = [
        by_id.get(spec.id) or CheckResult.of(spec, Finding.skip(why), 0.0)
        for spec in specs
        if spec.id != REMOTE_CHECK
    ]
    return Report(runner.host, _now(), time.monotonic() - began, results)


def run_remote(
    targets: Sequence[SSHTarget], settings: Settings, options: RemoteOptions
) -> list[Report]:
    """One report per host, in the order given; hosts run in parallel."""
    select(all_checks(), options.only, options.skip)  # a typo is a usage error, before SSH
    ssh = replace(options.ssh, connect_timeout=options.timeout)

    def one(target: SSHTarget) -> Report:
        began = time.monotonic()
        try:
            with ssh.open(target) as runner:
                return run_over(runner, settings, options)
        except RemoteError as exc:
            return _unreachable(str(target), exc.reason, time.monotonic() - began)

    results = for_each_host(list(targets), one, max_parallel=options.max_parallel)
    return [
        r.value if r.value is not None else _unreachable(r.host, r.error or "?", r.duration_s)
        for r in results
    ]
