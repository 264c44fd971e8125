"""Turning a submit form (the console's or the API's) into a task spec and a queued task."""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hivemind.client import Client, function_spec
from hivemind.errors import BundleError
from hivemind.master.gateway import ApiError
from hivemind.submission import TaskOptions, prepare_bundle

LABEL_SPLIT = re.compile(r"[,\s]+")
COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class SubmitForm:
    """What a user filled in: the task's options, and a function and its arguments (empty
    for a bundle, which comes as its own upload)."""

    options: TaskOptions
    function: str = ""
    args: str = ""

    @classmethod
    def from_fields(
        cls,
        name: str,
        function: str,
        args: str,
        timeout: float,
        retries: int,
        priority: int,
        cpu: int,
        memory_mb: int,
        gpu: int,
        labels: str,
    ) -> SubmitForm:
        """The form's fields as they arrive; ``labels`` is comma- or space-separated."""
        options = TaskOptions(
            name.strip(), timeout, retries, priority, cpu, memory_mb, gpu, tuple(_labels(labels))
        )
        return cls(options, function, args)


def _labels(text: str) -> list[str]:
    return [label for label in LABEL_SPLIT.split(text.strip()) if label]


def _args(text: str) -> list[object]:
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ApiError(400, f"arguments must be a JSON array, e.g. [2, 3]: {exc}") from None
    if not isinstance(value, list):
        raise ApiError(400, "arguments must be a JSON array, e.g. [2, 3]")
    return value


def _save_upload(upload: IO[bytes], limit: int, dest: Path) -> int:
    size = 0
    with dest.open("wb") as out:
        while data := upload.read(COPY_CHUNK):
            size += len(data)
            if size > limit:
                raise ApiError(413, f"the bundle is over MAX_TASK_DATA_SIZE ({limit} bytes)")
            out.write(data)
    return size


def submit_task(client: Client, form: SubmitForm, bundle: IO[bytes] | None, limit: int) -> str:
    """Upload the bundle (if any), submit one task, return its id."""
    options = form.options
    if bundle is not None and form.function.strip():
        raise ApiError(400, "give either a bundle zip or a function, not both")
    if bundle is not None:
        with tempfile.TemporaryDirectory(prefix="hivemind-master-") as tmp:
            path = Path(tmp) / "bundle.zip"
            if _save_upload(bundle, limit, path) == 0:
                raise ApiError(400, "the uploaded bundle is empty")
            if not zipfile.is_zipfile(path):
                raise ApiError(400, "the uploaded bundle is not a zip file")
            try:
                spec = prepare_bundle(client, path, options, limit)
            except BundleError as exc:  # the user's bundle, not the master, is at fault
                raise ApiError(400, str(exc)) from None
    elif form.function.strip():
        spec = function_spec(form.function.strip(), _args(form.args), **options.spec_fields())
    else:
        raise ApiError(400, "give a bundle zip to upload or a function (module:function) to call")
    [task_id] = client.submit([spec])
    return task_id
