"""Stop and start the worker of a host that `hivemind join` set up (a drain, an upgrade, a
reboot), however it runs: its systemd unit, or the pid supervisor."""

from __future__ import annotations

from collections.abc import Sequence

from hivemind.config import CONFIG_FILE_NAME, Settings
from hivemind.deploy.wheel import DeployError
from hivemind.join import joined_labels
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
    # The labels the join token gave, unless others are asked for.
    chosen = tuple(labels) or joined_labels(settings, node)
    return start_joined(settings, Joined(node, chosen, settings.nodepool_address))


def stop_joined_worker(settings: Settings, node_id: str = "") -> str:
    """Stop this host's joined worker and wait until it is gone: it finishes its running
    tasks or hands them back within SHUTDOWN_GRACE (the drain of an upgrade)."""
    from hivemind.stack import worker_spec_paths
    from hivemind.supervisor import stop_services
    from recovery.systemd import joined_worker_active, systemd_manages_services
    from recovery.systemd import stop_joined_worker as stop_unit

    node = node_id or joined_node_id(settings)
    if systemd_manages_services() and joined_worker_active(node):
        return stop_unit(node, settings.shutdown_grace + 60.0)
    pidfile, _console = worker_spec_paths(layout(settings.home), node)
    stopped = [r for r in stop_services([pidfile], settings.shutdown_grace + 5.0) if r.stopped]
    if not stopped:
        return f"worker {node} was not running"
    return f"worker {node} stopped ({stopped[0].detail or stopped[0].outcome})"
