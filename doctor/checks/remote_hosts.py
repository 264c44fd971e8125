"""``remote.ssh``: a host given with --host or --inventory answers over SSH.

It has a verdict only in a remote run (:mod:`doctor.remote` writes its row); listed here so
that `hivemind doctor list` and the catalog show it.
"""

from __future__ import annotations

from doctor.context import Context
from doctor.model import Finding
from doctor.registry import check

REMOTE_CHECK = "remote.ssh"
REMOTE_TITLE = "The host is reachable over SSH"
REMOTE_GUIDE = "4 網路問題: 節點間通訊失敗"


@check(REMOTE_CHECK, title=REMOTE_TITLE, guide=REMOTE_GUIDE)
def ssh_reachable(_ctx: Context) -> Finding:
    return Finding.skip("applies only to hosts given with --host or --inventory")
