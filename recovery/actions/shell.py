"""The `shell` action: a command line, only in a playbook that opts in (``allow_shell``).

``unless`` makes it idempotent (a command that exits 0 when the work is already done), and
``requires`` skips it on hosts without the tool (ufw here, firewall-cmd there).
"""

from __future__ import annotations

from typing import Any

from hivemind.errors import CommandTimeout
from recovery.actions import Outcome, Param, StepContext, action
from recovery.model import ActionFailed


@action(
    "shell",
    "Run a shell command (the playbook must say allow_shell: true)",
    {
        "command": Param(str, required=True),
        "unless": Param(str, doc="a command whose exit 0 means: already done"),
        "requires": Param(list, default=[], doc="tools that must be on PATH, else skipped"),
        "sudo": Param(bool, default=False),
    },
    shell=True,
)
def shell(ctx: StepContext, params: dict[str, Any]) -> Outcome:
    missing = [str(t) for t in params["requires"] if ctx.runner.which(str(t)) is None]
    if missing:
        return Outcome(False, f"skipped: {', '.join(missing)} not installed here")
    sudo = bool(params["sudo"])
    try:
        if params.get("unless"):
            check = ctx.runner.run(params["unless"], timeout=ctx.timeout, sudo=sudo)
            if check.ok:
                return Outcome(False, "nothing to do: `unless` says it is done", {"done": True})
        if ctx.dry_run:
            return Outcome(True, f"would run: {params['command']}", {"done": False})
        done = ctx.runner.run(params["command"], timeout=ctx.timeout, sudo=sudo)
    except CommandTimeout as exc:
        raise ActionFailed(str(exc)) from None
    output = (done.stdout + done.stderr).decode(errors="replace").strip()
    if not done.ok:
        raise ActionFailed(f"exit {done.exit_code}: {output[-300:] or '(no output)'}")
    return Outcome(True, output[-200:] or "done", {"done": False}, {"done": True})
