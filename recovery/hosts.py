"""Running on many hosts: each host over SSH runs the same engine itself (`hivemind playbook
exec` / `hivemind recover --json` there, fed the playbook on stdin), so a step does exactly
on that host what it does locally, and its audit line is written there.

Hosts run in parallel, ``serial`` at a time; once more than ``max_fail_percent`` of the hosts
run so far have failed, the rest are not started. Every host gets its own result, and a failed
or unreachable host never hides the others.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hivemind.errors import RemoteError, UsageError
from hivemind.remote import LOCAL_HOST, SSHOptions, SSHTarget, for_each_host
from hivemind.remote.runner import Runner
from recovery.audit import OPERATOR_ENV, operator
from recovery.model import HostRun, Playbook

T = TypeVar("T")
Target = SSHTarget | None
#: Seconds a remote run may take beyond its steps' own time (interpreter start-up, SSH).
_REMOTE_MARGIN = 60.0


def label(target: Target) -> str:
    return LOCAL_HOST if target is None else str(target)


def playbook_budget(playbook: Playbook) -> float:
    """The longest a whole run may take: every step's timeout and retries."""
    return sum((s.timeout + s.delay) * (s.retries + 1) for s in playbook.steps) + _REMOTE_MARGIN


def remote_json(runner: Runner, command: str, payload: Any, timeout: float) -> Any:
    """Run ``command`` on the host with ``payload`` as JSON on stdin; its JSON reply."""
    data = json.dumps(payload).encode() if payload is not None else None
    done = runner.run(command, timeout=timeout, input=data, env={OPERATOR_ENV: operator()})
    try:
        return json.loads(done.stdout)
    except ValueError:
        stderr = done.stderr.decode(errors="replace").strip().splitlines()
        why = stderr[-1] if stderr else "(no output)"
        raise RemoteError(runner.host, f"`{command}` exited {done.exit_code}: {why}") from None


def exec_command(hivemind: str, dry_run: bool) -> str:
    return f"{hivemind} playbook exec --json" + (" --dry-run" if dry_run else "")


def run_playbook_over(
    runner: Runner, playbook: Playbook, variables: dict[str, str], dry_run: bool, hivemind: str
) -> HostRun:
    payload = {"source": playbook.source, "file": playbook.file, "vars": variables}
    reply = remote_json(runner, exec_command(hivemind, dry_run), payload, playbook_budget(playbook))
    try:
        run = HostRun.from_dict(reply)
    except (KeyError, TypeError, ValueError) as exc:
        raise RemoteError(runner.host, f"unreadable playbook result: {exc}") from None
    run.host = runner.host
    return run


def in_batches(
    targets: Sequence[Target],
    work: Callable[[Target], T],
    *,
    failed: Callable[[T], bool],
    broken: Callable[[str, str], T],
    serial: int = 0,
    max_fail_percent: float = 100.0,
) -> list[T]:
    """``work`` on every target, ``serial`` at a time (0: all at once); one result each.

    ``broken(host, why)`` makes the result of a host that raised or was never started.
    """
    if serial < 0:
        raise UsageError("--serial must be 0 (all at once) or more")
    if not 0 <= max_fail_percent <= 100:
        raise UsageError("--max-fail-percent must be 0-100")
    size = serial or len(targets) or 1
    results: list[T] = []
    for start in range(0, len(targets), size):
        batch = list(targets[start : start + size])
        if results and 100.0 * sum(map(failed, results)) / len(results) > max_fail_percent:
            why = f"not run: more than {max_fail_percent:g}% of the hosts so far failed"
            results += [broken(label(t), why) for t in batch]
            continue
        for outcome in for_each_host(batch, work, label=label, max_parallel=size):
            value = outcome.value
            results.append(
                value if value is not None else broken(outcome.host, outcome.error or "?")
            )
    return results


def with_runner(target: Target, ssh: SSHOptions, fn: Callable[[Runner], T]) -> T:
    """``fn`` with a runner for ``target`` (None: this host), closed afterwards."""
    with ssh.open(target) as runner:
        return fn(runner)
