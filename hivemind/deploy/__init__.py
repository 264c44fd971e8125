"""Fleet deploy: this checkout's wheel onto hosts over SSH, each joined as a worker.

    hosts = hosts_from_inventory(load_inventory("hosts.yaml"), groups=["workers"])
    summary = deploy(settings, hosts, DeployOptions(ssh=SSHOptions(key_file=key), serial=1))

Per host: connect, check its Python, copy the wheel, make ``$HIVEMIND_HOME/venv`` (with the
host's site packages), install, `hivemind join` with a token issued here, and check the host
with its own `hivemind doctor`. With ``upgrade`` a joined host is drained (`hivemind down`),
reinstalled and started again (`hivemind worker-start`) instead. No typer, no rich: the CLI
renders the events and the summary.
"""

from hivemind.deploy.fleet import deploy
from hivemind.deploy.model import (
    DEFAULT_DOCTOR_CHECKS,
    DeployEvent,
    DeployHost,
    DeployOptions,
    DeploySummary,
    HostDeployResult,
    Outcome,
    Phase,
    default_node_id,
    hosts_from_inventory,
)
from hivemind.deploy.wheel import DeployError, build_wheel, project_root
from hivemind.deploy.worker_start import start_joined_worker

__all__ = [
    "DEFAULT_DOCTOR_CHECKS",
    "DeployError",
    "DeployEvent",
    "DeployHost",
    "DeployOptions",
    "DeploySummary",
    "HostDeployResult",
    "Outcome",
    "Phase",
    "build_wheel",
    "default_node_id",
    "deploy",
    "hosts_from_inventory",
    "project_root",
    "start_joined_worker",
]
