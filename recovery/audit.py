"""The audit trail: every step a run makes is one JSON line in
``$HIVEMIND_HOME/recovery/audit.log`` (who, when, host, step, state before and after, how long).
A dry run changes nothing, so it writes nothing here either."""

from __future__ import annotations

import getpass
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hivemind.config import Settings
from hivemind.paths import layout
from recovery.model import StepResult

#: Set by the host that started a run over SSH, so the remote audit line names the operator.
OPERATOR_ENV = "HIVEMIND_RECOVERY_OPERATOR"


def audit_log(settings: Settings) -> Path:
    return layout(settings.home).root / "recovery" / "audit.log"


def operator() -> str:
    """Who runs this: the operator who started it remotely, else this user on this host."""
    given = os.environ.get(OPERATOR_ENV)
    if given:
        return given
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def record(settings: Settings, host: str, playbook: str, result: StepResult) -> None:
    entry: dict[str, Any] = {
        "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "who": operator(),
        "host": host,
        "playbook": playbook,
        **result.to_dict(),
    }
    path = audit_log(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as log:
        log.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
