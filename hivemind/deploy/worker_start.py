"""Start the worker of a host that `hivemind join` set up, again (after a drain or reboot)."""

from __future__ import annotations

from collections.abc import Sequence

from hivemind.config import CONFIG_FILE_NAME, Settings
from hivemind.deploy.wheel import DeployError
from hivemind.paths import layout


def joined_node_id(settings: Settings) -> str:
    """The id of this host's joined worker: the one token `join` wrote into worker/config."""
    tokens = sorted(layout(settings.home).worker_config.glob("*.token"))
    if len(tokens) != 1:
        found = ", ".join(p.stem for p in tokens) or "none"
        raise DeployError(
            f"cannot tell which worker to start (worker tokens found: {found}): pass --node-id"
        )
    return tokens[0].stem


def start_joined_worker(settings: Settings, node_id: str = "", labels: Sequence[str] = ()) -> str:
    """Start (unless it runs) the worker `hivemind join` set up in this HIVEMIND_HOME, with
    the node pool address and CA the join wrote; wait until it registered. Returns what
    runs, for a person to read."""
    from hivemind.join import Joined, start_joined

    home = layout(settings.home)
    if not (home.root / CONFIG_FILE_NAME).is_file() or not settings.nodepool_address:
        raise DeployError(
            f"{home.root} has not joined a node pool (no NODEPOOL_ADDRESS in "
            f"{home.root / CONFIG_FILE_NAME}): run `hivemind join TOKEN` first"
        )
    node = node_id or joined_node_id(settings)
    if not home.worker_token_file(node).is_file():
        raise DeployError(f"no worker token for {node} at {home.worker_token_file(node)}")
    return start_joined(settings, Joined(node, tuple(labels), settings.nodepool_address))
