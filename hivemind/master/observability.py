"""/healthz for the doctor's ports.master check, and /metrics for Prometheus."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from hivemind.errors import NodePoolError
from hivemind.master.gateway import ApiError, Gateway
from hivemind.master.views import stats_view, worker_view
from hivemind.states import TaskState

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Is the master up, and does it reach the node pool?")
async def healthz(request: Request) -> dict[str, Any]:
    """Always 200 while the master serves; ``nodepool`` says whether the node pool answers
    its gRPC health check (the doctor checks the node pool on its own)."""
    gateway: Gateway = request.app.state.gateway
    nodepool = await run_in_threadpool(gateway.nodepool_health)
    return {"status": "ok", "nodepool": nodepool, "address": gateway.address}


def prometheus_text(stats: dict[str, Any], workers: list[dict[str, Any]]) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    metric("hivemind_queue_length", "gauge", "Tasks waiting in the queue.", [("", stats["queued"])])
    metric("hivemind_tasks_running", "gauge", "Tasks holding a lease.", [("", stats["running"])])
    metric(
        "hivemind_tasks_finished_total",
        "counter",
        "Tasks that ended, by final status.",
        [(f'{{status="{s.value}"}}', stats[s.value.lower()]) for s in TaskState if s.terminal],
    )
    metric(
        "hivemind_tasks_per_second",
        "gauge",
        "Tasks finished per second over the last five full minutes.",
        [("", stats["tasks_per_second"])],
    )
    metric(
        "hivemind_workers_live",
        "gauge",
        "Workers whose heartbeats arrive (status online).",
        [("", stats["workers_online"])],
    )
    # Node ids are plain words (the node pool checks them); quotes are escaped all the same.
    metric(
        "hivemind_worker_heartbeat_age_seconds",
        "gauge",
        "Seconds since each worker's last heartbeat.",
        [
            (_labels(node=w["node_id"], status=w["status"]), w["heartbeat_age"])
            for w in workers
            if w["heartbeat_age"] is not None
        ],
    )
    return "\n".join(lines) + "\n"


def _labels(**values: str) -> str:
    def escape(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in values.items()) + "}"


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(request: Request) -> PlainTextResponse:
    gateway: Gateway = request.app.state.gateway
    try:
        client = gateway.service_client()
        stats, workers = client.stats(), client.workers()
    except NodePoolError as exc:
        raise ApiError(503, f"cannot read the node pool: {exc}") from None
    now = time.time()
    worker_views = [worker_view(w, now) for w in workers]
    text = prometheus_text(stats_view(stats, worker_views), worker_views)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
