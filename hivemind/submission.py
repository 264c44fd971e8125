"""Building submissions, for the CLI and the master alike.

A bundle's ``task.json`` is merged with what the submitter gave here and nowhere else, so
a bundle asks for the same timeout, retries, priority and requirements however it comes
in. Defaults are the node pool's business: what nobody gave stays 0 / -1 / empty.
"""

from __future__ import annotations

import json
import math
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hivemind.bundle import BundleManifest, make_bundle, read_manifest_from_zip
from hivemind.client import Client, bundle_spec
from hivemind.errors import UsageError
from hivemind.proto import hivemind_pb2 as pb

#: Called with (bytes sent, bytes in all) as a bundle uploads.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TaskOptions:
    """What a submitter asked for; 0, -1 (retries) and empty mean "not given"."""

    name: str = ""
    timeout: float = 0.0
    retries: int = -1
    priority: int = 0
    cpu: int = 0
    memory_mb: int = 0
    gpu: int = 0
    labels: tuple[str, ...] = ()

    def spec_fields(self) -> dict[str, Any]:
        """Keyword arguments for :func:`hivemind.client.function_spec` / ``bundle_spec``."""
        return {
            "name": self.name,
            "timeout": self.timeout,
            "retries": self.retries,
            "priority": self.priority,
            "cpu": self.cpu,
            "memory_mb": self.memory_mb,
            "gpu": self.gpu,
            "labels": list(self.labels),
        }


#: A ``--arg`` that starts like this was meant as JSON: if it does not parse, it is an error,
#: not text sent on to fail on a worker.
_JSON_OPENERS = ("{", "[", '"')


def parse_arg(text: str) -> Any:
    """A ``--arg`` value: JSON when it parses (``3``, ``[1,2]``, ``"x"``), else the text, but
    text that opens like a JSON object, array or string and does not parse is refused."""
    try:
        return json.loads(text)
    except ValueError as exc:
        if text.lstrip().startswith(_JSON_OPENERS):
            raise UsageError(
                f"--arg {text!r} looks like JSON but does not parse ({exc}); fix it, or pass "
                f"it as a JSON string to mean the text: --arg {shlex.quote(json.dumps(text))}"
            ) from None
        return text


def load_items(path: Path) -> list[Any]:
    """One JSON value per non-blank line; a bad line is an error naming its line number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except ValueError as exc:
            raise UsageError(f"{path}:{number}: not JSON: {exc.msg}") from None
    if not items:
        raise UsageError(f"{path} holds no items")
    return items


def merge_manifest(
    options: TaskOptions, manifest: BundleManifest, fallback_name: str = "bundle"
) -> TaskOptions:
    """``options`` where given, else the manifest's values, else "not given"."""
    req = manifest.requirements
    # The wire carries whole cores: a fractional ask needs the next whole one.
    cpu = math.ceil(req.get("cpu", 0))
    retries = manifest.retries if manifest.retries is not None else -1
    return replace(
        options,
        name=options.name or manifest.name or fallback_name,
        timeout=options.timeout or manifest.timeout or 0.0,
        retries=options.retries if options.retries >= 0 else retries,
        priority=options.priority or manifest.priority or 0,
        cpu=options.cpu or cpu,
        memory_mb=options.memory_mb or int(req.get("memory_mb", 0)),
        gpu=options.gpu or int(req.get("gpu", 0)),
        labels=tuple(options.labels) or tuple(req.get("labels", ())),
    )


def prepare_bundle(
    client: Client,
    source: Path,
    options: TaskOptions,
    max_size: int,
    *,
    fallback_name: str = "bundle",
    on_progress: Progress | None = None,
) -> pb.TaskSpec:
    """Pack (a folder) or check (a zip) ``source``, upload it, return its merged spec.

    A malformed bundle or ``task.json`` raises :class:`~hivemind.errors.BundleError`
    before anything is uploaded.
    """
    source = Path(source)
    with tempfile.TemporaryDirectory(prefix="hivemind-bundle-") as tmp:
        # A zip is checked where it lies (make_bundle copies only to another path).
        dest = Path(tmp) / "bundle.zip" if source.is_dir() else source
        zip_path = make_bundle(source, dest, max_size)
        manifest = read_manifest_from_zip(zip_path)
        bundle_id = client.upload_bundle(zip_path, on_progress)
    return bundle_spec(bundle_id, **merge_manifest(options, manifest, fallback_name).spec_fields())
