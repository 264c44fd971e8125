"""Live task logs for the console (server-sent events) and for scripts (streamed text).

Both poll the node pool twice a second rather than holding a gRPC stream open: a browser
that goes away then costs at most one poll, never a thread blocked on a quiet task.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from hivemind.errors import NodePoolError
from hivemind.master.auth import Caller
from hivemind.master.gateway import Gateway
from hivemind.proto import hivemind_pb2 as pb
from hivemind.states import is_terminal

POLL_SECONDS = 0.5
#: A comment line now and then keeps proxies from closing a quiet stream.
KEEPALIVE_POLLS = 30


def _task_event(task: pb.Task) -> dict[str, Any]:
    return {
        "status": task.status,
        "progress": task.progress,
        "progress_message": task.progress_message,
        "attempt": task.attempt,
        "worker": task.worker,
        "error_message": task.error_message,
        "has_result_archive": task.has_result_archive,
        "finished": is_terminal(task.status),
    }


def _sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


async def sse_stream(
    gateway: Gateway, caller: Caller, task_id: str, offset: int
) -> AsyncIterator[str]:
    """``log`` events (id = chunk index, so a reconnect resumes), ``task`` events when the
    status or progress changes, and one ``end`` event once the task has ended."""
    client = gateway.client(caller.token)
    last_task: dict[str, Any] | None = None
    quiet = 0
    while True:
        try:
            # The status first: a log read after it holds every line of a task that ended.
            task = await run_in_threadpool(client.get, task_id)
            chunks = await run_in_threadpool(client.log_chunks, task_id, offset)
        except NodePoolError as exc:
            yield _sse("error", {"error": str(exc)})
            return
        for chunk in chunks:
            yield _sse("log", {"text": chunk.text}, chunk.index)
            offset = chunk.index + 1
        event = _task_event(task)
        if event != last_task:
            yield _sse("task", event)
            last_task = event
        if event["finished"]:
            yield _sse("end", event)
            return
        quiet = 0 if chunks else quiet + 1
        if quiet >= KEEPALIVE_POLLS:
            quiet = 0
            yield ": keepalive\n\n"
        await asyncio.sleep(POLL_SECONDS)


async def log_text_stream(
    gateway: Gateway, caller: Caller, task_id: str, first: list[pb.LogChunk], follow: bool
) -> AsyncIterator[str]:
    """The log as plain text; with ``follow``, more as it is written, until the task ends."""
    offset = 0
    for chunk in first:
        yield chunk.text
        offset = chunk.index + 1
    if not follow:
        return
    client = gateway.client(caller.token)
    while True:
        try:
            task = await run_in_threadpool(client.get, task_id)
            chunks = await run_in_threadpool(client.log_chunks, task_id, offset)
        except NodePoolError:
            return
        for chunk in chunks:
            yield chunk.text
            offset = chunk.index + 1
        if is_terminal(task.status):
            return
        await asyncio.sleep(POLL_SECONDS)
