"""Bundle tasks are isolated from the platform: what the worker on this host would give them.

The check asks :func:`hivemind.sandbox.detect` without creating anything (no task user, no
cgroup), so it runs the same probes the worker runs at start and changes nothing.
"""

from __future__ import annotations

from doctor.context import Context
from doctor.model import Finding
from doctor.registry import check
from hivemind import sandbox as sandboxes

INSTALL = (
    "apt-get install bubblewrap (and run the worker as root, so tasks run as user "
    f"{sandboxes.TASK_USER}); then restart the worker"
)


def verdict(sandbox: sandboxes.Sandbox, task_sandbox_setting: str) -> Finding:
    """The finding for what ``sandbox`` isolates."""
    evidence = {"sandbox": sandbox.describe(), "missing": list(sandbox.missing)}
    if task_sandbox_setting == "off":
        return Finding.warn(
            "TASK_SANDBOX is off: bundle tasks run as the worker's user and can read the "
            "platform's secrets",
            "remove TASK_SANDBOX=off (the default is auto) and restart the worker",
            **evidence,
        )
    if not sandbox.isolated:
        return Finding.warn(
            "bundle tasks are not isolated here: " + "; ".join(sandbox.missing or ("no sandbox",)),
            INSTALL,
            **evidence,
        )
    return Finding.ok(f"bundle tasks run isolated: {sandbox.describe()}", **evidence)


@check(
    "security.sandbox",
    title="Bundle tasks cannot read the platform's files or outlive their end",
    guide="(implied by 任務執行: a task runs somebody's code)",
)
def sandbox_check(ctx: Context) -> Finding:
    try:
        found = sandboxes.detect(ctx.settings, create=False)
    except Exception as exc:  # a check never raises: an unexpected probe failure is a finding
        return Finding.warn(f"could not probe the task sandbox: {exc}", INSTALL)
    return verdict(found, ctx.settings.task_sandbox)
