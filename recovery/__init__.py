"""Recovery: backup, verification and restore of a cluster (:mod:`recovery.backup`,
:mod:`recovery.verify`, :mod:`recovery.restore`); declarative playbooks (YAML in
``playbooks/``) run by one engine on this host or, over SSH, on many; and `hivemind recover`,
which lets the doctor's findings choose them.

    playbook = load_playbook("recover")
    run = run_playbook(playbook, settings, RunOptions(dry_run=True))   # the plan
"""

from recovery.engine import RunOptions, run_playbook
from recovery.loader import PlaybookError, load_playbook, parse_playbook, shipped
from recovery.model import HostRun, Playbook, Step, StepResult, StepStatus
from recovery.triage import RecoverReport, recover

__all__ = [
    "HostRun",
    "Playbook",
    "PlaybookError",
    "RecoverReport",
    "RunOptions",
    "Step",
    "StepResult",
    "StepStatus",
    "load_playbook",
    "parse_playbook",
    "recover",
    "run_playbook",
    "shipped",
]
