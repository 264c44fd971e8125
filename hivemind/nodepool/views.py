"""Conversions between Redis/SQLite records and the protobuf messages of the API."""

from __future__ import annotations

import json
from typing import Any

from hivemind.proto import hivemind_pb2 as pb
from hivemind.userdb import UserRecord
from hivemind.worker_records import allowed_modules_of

KIND_NAMES = {pb.BUNDLE: "BUNDLE", pb.FUNCTION: "FUNCTION"}
KIND_VALUES = {v: k for k, v in KIND_NAMES.items()}


def _float(record: dict[str, str], name: str) -> float:
    try:
        return float(record.get(name) or 0)
    except ValueError:
        return 0.0


def _int(record: dict[str, str], name: str) -> int:
    try:
        return int(float(record.get(name) or 0))
    except ValueError:
        return 0


def task_spec(record: dict[str, str]) -> pb.TaskSpec:
    spec: dict[str, Any] = json.loads(record.get("spec") or "{}")
    labels = [x for x in (record.get("req_labels") or "").split(",") if x]
    return pb.TaskSpec(
        name=record.get("name", ""),
        kind=KIND_VALUES.get(record.get("kind", ""), pb.TASK_KIND_UNSPECIFIED),
        bundle_id=spec.get("bundle_id", ""),
        function=spec.get("function", ""),
        args_json=spec.get("args_json", ""),
        timeout=_float(record, "timeout"),
        retries=_int(record, "retries"),
        priority=_int(record, "priority"),
        requirements=pb.Requirements(
            cpu=_int(record, "req_cpu"),
            memory_mb=_int(record, "req_memory_mb"),
            gpu=_int(record, "req_gpu"),
            labels=labels,
        ),
    )


def task_message(record: dict[str, str], history: list[dict[str, Any]] | None = None) -> pb.Task:
    return pb.Task(
        id=record.get("id", ""),
        spec=task_spec(record),
        status=record.get("status", ""),
        owner=record.get("owner", ""),
        worker=record.get("worker", ""),
        attempt=_int(record, "attempt"),
        progress=_float(record, "progress"),
        progress_message=record.get("progress_message", ""),
        error_message=record.get("error_message", ""),
        created_at=_float(record, "created_at"),
        start_time=_float(record, "start_time"),
        last_update=_float(record, "last_update"),
        finished_at=_float(record, "finished_at"),
        result_json=record.get("result_json", ""),
        has_result_archive=record.get("has_result_archive") == "1",
        unschedulable_reason=record.get("unschedulable_reason", ""),
        cancel_requested=record.get("cancel_requested") == "1",
        history=[
            pb.AttemptEvent(
                attempt=int(e.get("attempt") or 0),
                event=str(e.get("event", "")),
                worker=str(e.get("worker", "")),
                at=float(e.get("at") or 0),
                detail=str(e.get("detail", "")),
            )
            for e in (history or [])
        ],
    )


def user_message(user: UserRecord) -> pb.User:
    return pb.User(
        username=user.username,
        role=user.role,
        credits=user.credits,
        created_at=user.created_at,
        disabled=user.disabled,
    )


def worker_message(node_id: str, record: dict[str, str], running: list[str]) -> pb.WorkerInfo:
    metrics = json.loads(record.get("metrics") or "{}")
    return pb.WorkerInfo(
        node_id=node_id,
        status=record.get("status", "unknown"),
        last_heartbeat=_float(record, "last_heartbeat"),
        resources=pb.WorkerResources(
            cpu=_int(record, "cpu"),
            memory_mb=_int(record, "memory_mb"),
            gpu=_int(record, "gpu"),
            labels=[x for x in (record.get("labels") or "").split(",") if x],
            capacity=_int(record, "capacity"),
            hostname=record.get("hostname", ""),
            address=record.get("address", ""),
            version=record.get("version", ""),
            allowed_modules=list(allowed_modules_of(record) or ()),
        ),
        metrics=pb.Metrics(
            cpu_percent=float(metrics.get("cpu_percent", 0)),
            memory_percent=float(metrics.get("memory_percent", 0)),
            load1=float(metrics.get("load1", 0)),
            disk_percent=float(metrics.get("disk_percent", 0)),
        ),
        running_task_ids=sorted(running),
    )
