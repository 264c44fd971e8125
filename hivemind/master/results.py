"""Result downloads: a bundle task's output zip, or a function task's JSON value."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.responses import JSONResponse, Response, StreamingResponse

from hivemind.master.auth import Caller
from hivemind.master.gateway import ApiError, Gateway
from hivemind.states import is_terminal


def result_response(gateway: Gateway, caller: Caller, task_id: str) -> Response:
    with gateway.calling(caller.token, is_admin=caller.is_admin) as client:
        task = client.get(task_id)
        if not is_terminal(task.status):
            raise ApiError(409, f"task {task_id} is {task.status}; it has no result yet")
        if task.has_result_archive:
            chunks = client.result_chunks(task_id)
            first = next(chunks, b"")  # refusals surface before any byte is sent

            def body() -> Iterator[bytes]:
                yield first
                yield from chunks

            return StreamingResponse(
                body(),
                media_type="application/zip",
                headers={"Content-Disposition": f'attachment; filename="{task_id}-result.zip"'},
            )
    if task.result_json:
        return JSONResponse(
            {"task_id": task_id, "status": task.status, "result_json": task.result_json},
            headers={"Content-Disposition": f'attachment; filename="{task_id}-result.json"'},
        )
    raise ApiError(404, f"task {task_id} ended {task.status} with no result")
