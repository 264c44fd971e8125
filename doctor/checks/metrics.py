"""Do the node pool and this host's workers serve their Prometheus metrics?"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

from doctor.cluster import workers
from doctor.context import Context
from doctor.model import Finding
from doctor.registry import check

#: A metric each daemon always exports: its presence tells our endpoint from another's.
NODEPOOL_MARKER = "hivemind_nodepool_heartbeats_total"
WORKER_MARKER = "hivemind_worker_heartbeats_total"


def exported_names(text: str) -> set[str]:
    """The sample names in a Prometheus text exposition (empty when it is not one)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        return {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    except ValueError:
        return set()


def probe(host: str, port: int, marker: str, timeout: float) -> str:
    """ "" when ``host:port/metrics`` exports ``marker``, else what is wrong."""
    target = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    url = f"http://{target}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            text = reply.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return f"{url} does not answer ({exc})"
    if marker not in exported_names(text):
        return f"{url} answers, but without {marker}: another program holds the port"
    return ""


@check(
    "ports.metrics",
    title="The node pool and this host's workers serve Prometheus metrics",
    guide="2 性能問題 / 性能監控",
)
def metrics_ports(ctx: Context) -> Finding:
    settings, timeout = ctx.settings, ctx.probe_timeout
    probed: dict[str, str] = {}
    if settings.nodepool_metrics_port and (ctx.home.run / "nodepool.pid").exists():
        port = settings.nodepool_metrics_port
        probed[f"node pool :{port}"] = probe(settings.grpc_host, port, NODEPOOL_MARKER, timeout)
    here = socket.gethostname()
    for row in workers(ctx):
        if row.status == "online" and row.hostname == here and row.metrics_port:
            probed[f"worker {row.node_id} :{row.metrics_port}"] = probe(
                settings.grpc_host, row.metrics_port, WORKER_MARKER, timeout
            )
    if not probed:
        return Finding.skip(
            "no node pool or online worker on this host serves metrics "
            "(NODEPOOL_METRICS_PORT / WORKER_METRICS_PORT 0, or none runs here)"
        )
    broken = {name: why for name, why in probed.items() if why}
    evidence = {"endpoints": {name: why or "ok" for name, why in probed.items()}}
    if broken:
        return Finding.warn(
            "metrics not served: " + "; ".join(f"{name}: {why}" for name, why in broken.items()),
            "Prometheus sees nothing from these; look for a metrics warning in the daemon's "
            "log (a port in use), or set NODEPOOL_METRICS_PORT / WORKER_METRICS_PORT",
            **evidence,
        )
    return Finding.ok(f"{len(probed)} metrics endpoint(s) answer: {', '.join(probed)}", **evidence)
