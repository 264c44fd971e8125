"""/healthz for the doctor's ports.master check, and /metrics for Prometheus."""

from __future__ import annotations

import time
from collections.abc import Iterator
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
    """The cluster's figures in Prometheus's text format, written by prometheus_client."""
    from prometheus_client import generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import CollectorRegistry

    def families() -> Iterator[Any]:
        yield GaugeMetricFamily(
            "hivemind_queue_length", "Tasks waiting in the queue.", stats["queued"]
        )
        yield GaugeMetricFamily(
            "hivemind_tasks_running", "Tasks holding a lease.", stats["running"]
        )
        finished = CounterMetricFamily(
            "hivemind_tasks_finished", "Tasks that ended, by final status.", labels=["status"]
        )
        for state in TaskState:
            if state.terminal:
                finished.add_metric([state.value], stats[state.value.lower()])
        yield finished
        yield GaugeMetricFamily(
            "hivemind_tasks_per_second",
            "Tasks finished per second over the last five full minutes.",
            stats["tasks_per_second"],
        )
        yield GaugeMetricFamily(
            "hivemind_workers_live",
            "Workers whose heartbeats arrive (status online).",
            stats["workers_online"],
        )
        ages = GaugeMetricFamily(
            "hivemind_worker_heartbeat_age_seconds",
            "Seconds since each worker's last heartbeat.",
            labels=["node", "status"],
        )
        for w in workers:
            if w["heartbeat_age"] is not None:
                ages.add_metric([w["node_id"], w["status"]], w["heartbeat_age"])
        yield ages

    class _Figures:
        def collect(self) -> Iterator[Any]:
            return families()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


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
