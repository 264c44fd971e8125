"""Task bundles: zips holding a ``task.json`` manifest and/or a ``main.py``.

Bundles come from users, so every zip is treated as hostile until its listing has been
checked (names, entry types, counts, declared sizes, compression ratios), and extraction
counts the bytes it actually writes instead of trusting the headers. Nothing is ever
written outside the destination folder, and a refused extraction leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, NamedTuple

from hivemind.errors import BundleError

MANIFEST_NAME = "task.json"
MAIN_NAME = "main.py"
MIB = 1024 * 1024
_CHUNK = MIB
_MANIFEST_MAX_BYTES = MIB
# Ratios are only meaningful for big entries: a small text file of spaces compresses
# far beyond any sane cap and is harmless.
_RATIO_MIN_SIZE = MIB
_SKIP_DIRS = frozenset({"__pycache__", ".git"})
_PYTHON_WORDS = frozenset({"python", "python3"})
_DRIVE = re.compile(r"^[A-Za-z]:")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MANIFEST_KEYS = frozenset(
    {"name", "entrypoint", "args", "env", "requirements", "timeout", "retries", "priority"}
)
_REQUIREMENT_KEYS = frozenset({"cpu", "memory_mb", "gpu", "labels"})


@dataclass(frozen=True)
class BundleLimits:
    max_entries: int = 10_000
    #: Bytes, total uncompressed.
    max_unpacked_size: int = 512 * MIB
    #: Per-entry and overall cap, applied to entries over 1 MiB uncompressed.
    max_ratio: float = 200.0


@dataclass(frozen=True)
class BundleManifest:
    #: "" when task.json gives none.
    name: str
    #: As written in task.json; a leading ``python``/``python3`` is resolved by :meth:`command`.
    entrypoint: list[str]
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: Keys cpu, memory_mb, gpu, labels, always present.
    requirements: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    retries: int | None = None
    priority: int | None = None

    def command(self) -> list[str]:
        """The argv to run: the entrypoint plus args, ``python`` meaning this interpreter."""
        first, *rest = self.entrypoint
        if first in _PYTHON_WORDS:
            first = sys.executable
        return [first, *rest, *self.args]


class _Entry(NamedTuple):
    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    is_dir: bool


def _mib(size: float) -> str:
    value = size / MIB
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


# -- reading and checking zips ---------------------------------------------------------------


@contextmanager
def _open_zip(zip_path: Path) -> Iterator[zipfile.ZipFile]:
    if not zip_path.is_file():
        raise BundleError(f"bundle {zip_path} does not exist")
    try:
        if not zipfile.is_zipfile(zip_path):
            raise BundleError(f"not a zip file: {zip_path.name}")
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise BundleError(f"corrupt zip: {exc}") from None
    except OSError as exc:
        raise BundleError(f"cannot read {zip_path}: {exc.strerror or exc}") from None
    with archive:
        yield archive


def _member_parts(name: str) -> tuple[str, ...]:
    # Backslashes are separators for zips made on Windows, and must not hide a traversal.
    unified = name.replace("\\", "/")
    if unified.startswith("/") or _DRIVE.match(unified):
        raise BundleError(f"entry {name!r} is an absolute path; bundles hold relative paths only")
    parts = tuple(part for part in unified.split("/") if part not in ("", "."))
    if ".." in parts:
        raise BundleError(f"entry {name!r} points outside the bundle (path traversal)")
    if not parts:
        raise BundleError(f"entry {name!r} has an empty path")
    return parts


def _checked_is_dir(info: zipfile.ZipInfo) -> bool:
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise BundleError(f"entry {info.filename!r} is a symbolic link; links are not allowed")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise BundleError(
            f"entry {info.filename!r} is a special file (device, pipe or socket); "
            "only regular files and folders are allowed"
        )
    if info.flag_bits & 0x1:
        raise BundleError(f"entry {info.filename!r} is encrypted")
    return info.is_dir() or kind == stat.S_IFDIR


def _check_ratio(what: str, size: int, compressed: int, limit: float) -> None:
    ratio = size / compressed if compressed else math.inf
    if size > _RATIO_MIN_SIZE and ratio > limit:
        shown = "∞" if math.isinf(ratio) else f"{ratio:.0f}"
        raise BundleError(
            f"{what} has a compression ratio of {shown}:1, over the limit of {limit:g}:1 "
            "(refusing a likely zip bomb)"
        )


def _inspect(archive: zipfile.ZipFile, limits: BundleLimits) -> list[_Entry]:
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise BundleError(
            f"bundle has {len(infos)} entries, over the limit of {limits.max_entries}"
        )
    entries: list[_Entry] = []
    seen: set[tuple[str, ...]] = set()
    total = compressed_total = 0
    for info in infos:
        entry = _Entry(info, _member_parts(info.filename), _checked_is_dir(info))
        entries.append(entry)
        if entry.is_dir:
            continue
        if entry.parts in seen:
            raise BundleError(f"entry {info.filename!r} appears twice in the bundle")
        seen.add(entry.parts)
        _check_ratio(
            f"entry {info.filename!r}", info.file_size, info.compress_size, limits.max_ratio
        )
        total += info.file_size
        compressed_total += info.compress_size
    if total > limits.max_unpacked_size:
        raise BundleError(
            f"bundle unpacks to {_mib(total)} MiB, over the limit of "
            f"{_mib(limits.max_unpacked_size)} MiB"
        )
    _check_ratio("the bundle", total, compressed_total, limits.max_ratio)
    return entries


def _copy_entry(archive: zipfile.ZipFile, entry: _Entry, out: BinaryIO, budget: int) -> int:
    """Stream one entry into ``out``; returns the bytes written. ``budget`` is what is left."""
    name = entry.info.filename
    written = 0
    try:
        with archive.open(entry.info) as src:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                # Headers can lie: the bytes actually coming out decide.
                if written > entry.info.file_size:
                    raise BundleError(
                        f"entry {name!r} holds more data than its header declares "
                        f"({entry.info.file_size} bytes)"
                    )
                if written > budget:
                    raise BundleError(f"bundle unpacks to more than the limit (at entry {name!r})")
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise BundleError(f"corrupt zip: entry {name!r}: {exc}") from None
    return written


def _make_folder(folder: Path, created: list[Path]) -> None:
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise BundleError(f"{folder} is in the way: it exists and is not a folder")
    if not folder.exists():
        folder.mkdir()
        created.append(folder)


def _extract_entries(
    archive: zipfile.ZipFile, entries: list[_Entry], dest: Path, limits: BundleLimits
) -> None:
    """Write the (already inspected) entries under ``dest``; on failure undo what was made."""
    created: list[Path] = []
    budget = limits.max_unpacked_size
    try:
        if not dest.is_dir():
            dest.mkdir(parents=True)
            created.append(dest)
        for entry in entries:
            name = entry.info.filename
            try:
                # Made one level at a time, so no link already in ``dest`` is ever followed.
                folders = entry.parts if entry.is_dir else entry.parts[:-1]
                for depth in range(1, len(folders) + 1):
                    _make_folder(dest.joinpath(*folders[:depth]), created)
                if entry.is_dir:
                    continue
                target = dest.joinpath(*entry.parts)
                existed = target.exists() or target.is_symlink()
                if existed and (target.is_symlink() or not target.is_file()):
                    raise BundleError(
                        f"{target} is in the way: it exists and is not a regular file"
                    )
                mode = 0o755 if (entry.info.external_attr >> 16) & 0o111 else 0o644
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                fd = os.open(target, flags, mode)
                if not existed:
                    created.append(target)
                with os.fdopen(fd, "wb") as out:
                    budget -= _copy_entry(archive, entry, out, budget)
            except OSError as exc:
                raise BundleError(f"cannot extract entry {name!r}: {exc.strerror or exc}") from None
    except BaseException:
        for path in reversed(created):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


# -- the manifest -----------------------------------------------------------------------------


def _check(ok: bool, key: str, expected: str) -> None:
    if not ok:
        raise BundleError(f"{MANIFEST_NAME}: {key!r} must be {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_env(value: Any) -> bool:
    return isinstance(value, dict) and all(
        _ENV_NAME.match(name) and isinstance(text, str) and "\x00" not in text
        for name, text in value.items()
    )


def _refuse_unknown(data: Mapping[str, Any], known: frozenset[str], prefix: str = "") -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise BundleError(
            f"{MANIFEST_NAME}: unknown key '{prefix}{unknown[0]}' "
            f"(expected one of {', '.join(sorted(known))})"
        )


def _parse_entrypoint(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise BundleError(f"{MANIFEST_NAME}: 'entrypoint' cannot be split: {exc}") from None
    _check(
        _is_strings(value) and bool(value) and bool(value[0]),
        "entrypoint",
        "a non-empty command (a string or a list of strings)",
    )
    return list(value)


def _parse_requirements(value: Any) -> dict[str, Any]:
    _check(isinstance(value, dict), "requirements", "an object")
    _refuse_unknown(value, _REQUIREMENT_KEYS, "requirements.")
    found = {"cpu": 0, "memory_mb": 0, "gpu": 0, "labels": [], **value}
    _check(_is_number(found["cpu"]) and found["cpu"] >= 0, "requirements.cpu", "a number ≥ 0")
    for key in ("memory_mb", "gpu"):
        _check(_is_int(found[key]) and found[key] >= 0, f"requirements.{key}", "an integer ≥ 0")
    _check(_is_strings(found["labels"]), "requirements.labels", "a list of strings")
    return found


def _parse_manifest(raw: Mapping[str, Any] | None, has_main: bool) -> BundleManifest:
    data: Mapping[str, Any] = raw or {}
    _refuse_unknown(data, _MANIFEST_KEYS)
    if "entrypoint" not in data and not has_main:
        raise BundleError(f"{MANIFEST_NAME} has no 'entrypoint' and the bundle has no {MAIN_NAME}")
    entrypoint = _parse_entrypoint(data.get("entrypoint", ["python", MAIN_NAME]))
    name, args, env = data.get("name", ""), data.get("args", []), data.get("env", {})
    _check(isinstance(name, str), "name", "a string")
    _check(_is_strings(args), "args", "a list of strings")
    _check(_is_env(env), "env", "an object mapping variable names to strings")
    timeout, retries, priority = (data.get(key) for key in ("timeout", "retries", "priority"))
    _check(timeout is None or (_is_number(timeout) and timeout > 0), "timeout", "a number > 0")
    _check(retries is None or (_is_int(retries) and retries >= 0), "retries", "an integer ≥ 0")
    _check(priority is None or _is_int(priority), "priority", "an integer")
    return BundleManifest(
        name=name,
        entrypoint=entrypoint,
        args=list(args),
        env=dict(env),
        requirements=_parse_requirements(data.get("requirements", {})),
        timeout=None if timeout is None else float(timeout),
        retries=retries,
        priority=priority,
    )


def _nested_hint(entries: list[_Entry]) -> str:
    for entry in entries:
        if len(entry.parts) == 2 and entry.parts[1] in (MANIFEST_NAME, MAIN_NAME):
            return (
                f"; found {'/'.join(entry.parts)!r}: zip the folder's contents, "
                "not the folder itself"
            )
    return ""


def _read_manifest(archive: zipfile.ZipFile, entries: list[_Entry]) -> BundleManifest:
    files = {entry.parts: entry for entry in entries if not entry.is_dir}
    manifest_entry = files.get((MANIFEST_NAME,))
    has_main = (MAIN_NAME,) in files
    if manifest_entry is None:
        if not has_main:
            raise BundleError(
                f"bundle has neither {MANIFEST_NAME} nor {MAIN_NAME} at its top level"
                + _nested_hint(entries)
            )
        return _parse_manifest(None, has_main)
    if manifest_entry.info.file_size > _MANIFEST_MAX_BYTES:
        raise BundleError(f"{MANIFEST_NAME} is over {_mib(_MANIFEST_MAX_BYTES)} MiB")
    buffer = io.BytesIO()
    _copy_entry(archive, manifest_entry, buffer, _MANIFEST_MAX_BYTES)
    try:
        raw = json.loads(buffer.getvalue().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise BundleError(f"{MANIFEST_NAME} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"{MANIFEST_NAME} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(raw, dict):
        raise BundleError(f"{MANIFEST_NAME} must hold a JSON object")
    return _parse_manifest(raw, has_main)


# -- the public API ---------------------------------------------------------------------------


def validate_zip(zip_path: Path, limits: BundleLimits = BundleLimits()) -> None:
    """Check a zip's listing (names, entry types, counts, sizes, ratios) without extracting."""
    with _open_zip(Path(zip_path)) as archive:
        _inspect(archive, limits)


def read_manifest_from_zip(zip_path: Path) -> BundleManifest:
    """The manifest of a bundle, after checking its listing; used at submit time."""
    zip_path = Path(zip_path)
    with _open_zip(zip_path) as archive:
        entries = _inspect(archive, BundleLimits())
        return _read_manifest(archive, entries)


def extract_archive(zip_path: Path, dest: Path, limits: BundleLimits = BundleLimits()) -> None:
    """Safely unpack any zip (a bundle, a checkpoint, a result) into ``dest``.

    ``dest`` may already hold files: same-named regular files are overwritten, links are
    never followed. On any refusal, the files and folders this call made are removed.
    """
    with _open_zip(Path(zip_path)) as archive:
        _extract_entries(archive, _inspect(archive, limits), Path(dest), limits)


def extract_bundle(
    zip_path: Path, dest: Path, limits: BundleLimits = BundleLimits()
) -> BundleManifest:
    """Unpack a bundle into ``dest`` like :func:`extract_archive`; returns its manifest.

    The listing and the manifest are both checked before anything is written.
    """
    zip_path = Path(zip_path)
    with _open_zip(zip_path) as archive:
        entries = _inspect(archive, limits)
        manifest = _read_manifest(archive, entries)
        _extract_entries(archive, entries, Path(dest), limits)
    return manifest


# -- writing zips -----------------------------------------------------------------------------


def _collect(source: Path, *, strict: bool, exclude: Path) -> list[Path]:
    """The regular files under ``source``, sorted.

    ``strict`` refuses links and special files (a bundle being made); otherwise they are
    skipped (a task's output, which the task may have filled with anything).
    """
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(source):
        folder = Path(dirpath)
        # os.walk does not follow links to folders: output may skip them, bundles refuse them.
        if strict:
            dirnames[:] = [name for name in dirnames if name not in _SKIP_DIRS]
            for name in dirnames:
                if (folder / name).is_symlink():
                    raise BundleError(f"{folder / name} is a symbolic link; bundles hold no links")
        dirnames.sort()
        for name in sorted(filenames):
            path = folder / name
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                if name != exclude.name or path.resolve() != exclude:
                    files.append(path)
            elif strict:
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
                raise BundleError(f"{path} is {kind}; bundles hold regular files only")
    return files


def _open_inside(source: Path, parts: tuple[str, ...]) -> IO[bytes]:
    """Open the regular file ``source/parts`` without following a link on the way.

    The folder may belong to a running task, which could swap a file or a folder for a link
    to a secret between listing and reading; every step is opened relative to the last.
    """
    folder = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            os.close(folder)
            folder = inner
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(parts[-1], flags, dir_fd=folder)
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{'/'.join(parts)} is no longer a regular file")
    return os.fdopen(fd, "rb")


def _zip_info(name: str, handle: IO[bytes]) -> zipfile.ZipInfo:
    status = os.fstat(handle.fileno())
    stamp = time.localtime(status.st_mtime)[:6]
    # As ZipInfo.from_file(strict_timestamps=False): zip dates run from 1980 to 2107.
    stamp = max(min(stamp, (2107, 12, 31, 23, 59, 59)), (1980, 1, 1, 0, 0, 0))
    info = zipfile.ZipInfo(name, stamp)
    info.external_attr = (status.st_mode & 0xFFFF) << 16
    info.file_size = status.st_size
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _write_zip(source: Path, files: list[Path], dest: Path, max_size: int, what: str) -> None:
    limit = f"over MAX_TASK_DATA_SIZE of {_mib(max_size)} MiB"
    with dest.open("wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            relative = path.relative_to(source)
            try:
                src = _open_inside(source, relative.parts)
            except OSError:
                continue  # replaced by a link or removed since it was listed: left out
            with src, archive.open(_zip_info(relative.as_posix(), src), "w") as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    # Stop early rather than compress gigabytes that will be refused anyway.
                    if raw.tell() > max_size:
                        total = sum(p.stat().st_size for p in files)
                        raise BundleError(
                            f"{what} is {limit} (its files total {_mib(total)} MiB uncompressed)"
                        )
    size = dest.stat().st_size
    if size > max_size:
        raise BundleError(f"{what} is {_mib(size)} MiB, {limit}")


def _atomic_zip(source: Path, dest: Path, max_size: int, what: str, *, strict: bool) -> bool:
    """Zip ``source`` into ``dest`` via a temp file; False (and no file) when there is nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    files = _collect(source, strict=strict, exclude=dest.resolve())
    if not files:
        return False
    fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    temp = Path(temp_name)
    try:
        _write_zip(source, files, temp, max_size, what)
        if strict:
            read_manifest_from_zip(temp)
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return True


def make_bundle(source: Path, dest: Path, max_size: int) -> Path:
    """Make the bundle ``dest`` from a folder (zipped) or a zip file (checked and copied)."""
    source, dest = Path(source), Path(dest)
    if source.is_dir():
        if not _atomic_zip(source, dest, max_size, "bundle", strict=True):
            raise BundleError(
                f"{source} holds no files; a bundle needs {MANIFEST_NAME} or {MAIN_NAME}"
            )
        return dest
    if not source.exists():
        raise BundleError(f"{source} does not exist")
    if not source.is_file() or not zipfile.is_zipfile(source):
        raise BundleError(f"{source} is neither a folder nor a zip file")
    read_manifest_from_zip(source)
    size = source.stat().st_size
    if size > max_size:
        raise BundleError(
            f"bundle is {_mib(size)} MiB, over MAX_TASK_DATA_SIZE of {_mib(max_size)} MiB"
        )
    if source.resolve() != dest.resolve():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
    return dest


def zip_output(
    output_dir: Path, dest_zip: Path, max_size: int, what: str = "task output"
) -> Path | None:
    """Zip the regular files under ``output_dir`` (links skipped); None when there are none.

    ``what`` names the zip in the message of the BundleError raised when it is too big.
    """
    output_dir, dest_zip = Path(output_dir), Path(dest_zip)
    if not output_dir.is_dir():
        return None
    if _atomic_zip(output_dir, dest_zip, max_size, what, strict=False):
        return dest_zip
    return None
