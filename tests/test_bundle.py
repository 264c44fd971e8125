"""Task bundles: making them, reading their manifest, and unpacking hostile zips safely."""

from __future__ import annotations

import json
import os
import stat
import struct
import sys
import uuid
import zipfile
import zlib
from pathlib import Path

import pytest

from hivemind.bundle import (
    MIB,
    BundleLimits,
    extract_archive,
    extract_bundle,
    make_bundle,
    read_manifest_from_zip,
    validate_zip,
    zip_output,
)
from hivemind.errors import BundleError

# -- helpers ------------------------------------------------------------------------------


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def zip_with(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def typed_entry(name: str, file_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, so the mode bits mean what they say
    info.external_attr = (file_type | 0o777) << 16
    return info


RawEntry = tuple[str, bytes, int, int, int]  # name, stored bytes, method, crc, declared size


def stored(name: str, data: bytes) -> RawEntry:
    return (name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data))


def raw_zip(path: Path, entries: list[RawEntry]) -> Path:
    """A zip written byte by byte, so its headers can say anything."""
    body = directory = b""
    for name, data, method, crc, size in entries:
        encoded = name.encode()
        head = (0, method, 0, 0x21, crc, len(data), size, len(encoded), 0)
        directory += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, *head, 0, 0, 0, 0o644 << 16, len(body)
        )
        directory += encoded
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, *head) + encoded + data
    count = len(entries)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory), len(body), 0)
    path.write_bytes(body + directory + end)
    return path


@pytest.fixture(scope="module")
def gigabyte_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, valid 1 MiB zip that inflates to 1 GiB of zeros.

    The deflate stream is one fully flushed 1 MiB block of zeros repeated 1024 times, so
    building it costs milliseconds instead of compressing a gigabyte.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = block * 1024 + compressor.flush()
    crc = 0
    zeros = bytes(MIB)
    for _ in range(1024):
        crc = zlib.crc32(zeros, crc)
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    return raw_zip(path, [("zeros.bin", stream, zipfile.ZIP_DEFLATED, crc, 1024 * MIB)])


def assert_refused_cleanly(zip_path: Path, sandbox: Path, match: str, **limits: float) -> None:
    """Extraction is refused with ``match`` and leaves nothing anywhere in ``sandbox``."""
    sandbox.mkdir(parents=True)
    dest = sandbox / "dest"
    with pytest.raises(BundleError, match=match):
        extract_archive(zip_path, dest, BundleLimits(**limits))  # type: ignore[arg-type]
    assert list(sandbox.iterdir()) == []


# -- making bundles and reading manifests -------------------------------------------------


def test_folder_with_only_main_py_runs_main_py_with_this_interpreter(tmp_path: Path) -> None:
    source = write_tree(
        tmp_path / "task",
        {"main.py": "print('hi')", "lib/util.py": "X = 1", "__pycache__/main.cpython.pyc": "x"},
    )
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref")
    bundle = make_bundle(source, tmp_path / "out" / "bundle.zip", max_size=MIB)

    with zipfile.ZipFile(bundle) as archive:
        assert sorted(archive.namelist()) == ["lib/util.py", "main.py"]
    manifest = read_manifest_from_zip(bundle)
    assert manifest.entrypoint == ["python", "main.py"]
    assert manifest.command() == [sys.executable, "main.py"]
    assert manifest.requirements == {"cpu": 0, "memory_mb": 0, "gpu": 0, "labels": []}
    assert (manifest.timeout, manifest.retries, manifest.priority) == (None, None, None)


def test_task_json_is_read_in_full(tmp_path: Path) -> None:
    spec = {
        "name": "train",
        "entrypoint": "python3 'train model.py' --fast",
        "args": ["--epochs", "3"],
        "env": {"MODE": "test"},
        "requirements": {"cpu": 2, "memory_mb": 512, "labels": ["gpu-box"]},
        "timeout": 60,
        "retries": 2,
        "priority": -1,
    }
    source = write_tree(tmp_path / "t", {"task.json": json.dumps(spec), "train model.py": ""})
    manifest = read_manifest_from_zip(make_bundle(source, tmp_path / "b.zip", MIB))

    assert manifest.name == "train"
    assert manifest.command() == [sys.executable, "train model.py", "--fast", "--epochs", "3"]
    assert manifest.env == {"MODE": "test"}
    assert manifest.requirements == {"cpu": 2, "memory_mb": 512, "gpu": 0, "labels": ["gpu-box"]}
    assert (manifest.timeout, manifest.retries, manifest.priority) == (60.0, 2, -1)


@pytest.mark.parametrize(
    ("task_json", "message"),
    [
        ({"timeout": "60"}, "task.json: 'timeout' must be a number"),
        ({"retries": 1.5}, "'retries' must be an integer"),
        ({"entrypoint": []}, "'entrypoint' must be a non-empty command"),
        ({"args": "--fast"}, "'args' must be a list of strings"),
        ({"env": {"A": 1}}, "'env' must be an object"),
        ({"requirements": {"cpu": -1}}, "'requirements.cpu' must be a number"),
        ({"requirements": {"disk": 1}}, "unknown key 'requirements.disk'"),
        ({"entry_point": "python main.py"}, "unknown key 'entry_point'"),
    ],
)
def test_bad_task_json_is_refused_precisely(
    tmp_path: Path, task_json: dict[str, object], message: str
) -> None:
    source = write_tree(tmp_path / "t", {"task.json": json.dumps(task_json), "main.py": ""})
    with pytest.raises(BundleError, match=message):
        make_bundle(source, tmp_path / "b.zip", MIB)
    assert not (tmp_path / "b.zip").exists()


def test_bundle_needs_task_json_or_main_py(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "t", {"run.py": ""})
    with pytest.raises(BundleError, match=r"neither task.json nor main.py"):
        make_bundle(source, tmp_path / "b.zip", MIB)
    source = write_tree(tmp_path / "t2", {"task.json": json.dumps({"name": "x"})})
    with pytest.raises(BundleError, match=r"no 'entrypoint' and the bundle has no main.py"):
        make_bundle(source, tmp_path / "b.zip", MIB)


def test_zipping_the_folder_instead_of_its_contents_gets_a_hint(tmp_path: Path) -> None:
    bundle = zip_with(tmp_path / "b.zip", [("mytask/main.py", b"")])
    with pytest.raises(BundleError, match=r"found 'mytask/main.py': zip the folder's contents"):
        read_manifest_from_zip(bundle)


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    bundle = zip_with(tmp_path / "b.zip", [("task.json", b'{\n"name": }'), ("main.py", b"")])
    with pytest.raises(BundleError, match=r"task.json is not valid JSON: .*line 2"):
        read_manifest_from_zip(bundle)


def test_symlink_in_source_folder_is_refused_by_name(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "t", {"main.py": ""})
    (source / "passwords").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match=r"passwords is a symbolic link"):
        make_bundle(source, tmp_path / "b.zip", MIB)
    assert list(tmp_path.iterdir()) == [source]


def test_bundle_over_max_size_is_refused_with_both_sizes(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "t", {"main.py": "", "data.bin": os.urandom(3 * MIB)})
    with pytest.raises(BundleError, match="over MAX_TASK_DATA_SIZE of 1 MiB"):
        make_bundle(source, tmp_path / "b.zip", max_size=MIB)
    assert list(tmp_path.iterdir()) == [source]

    big_zip = make_bundle(source, tmp_path / "big.zip", max_size=10 * MIB)
    with pytest.raises(
        BundleError, match=r"^bundle is 3\.0 MiB, over MAX_TASK_DATA_SIZE of 2 MiB$"
    ):
        make_bundle(big_zip, tmp_path / "copy.zip", max_size=2 * MIB)


def test_existing_zip_is_checked_then_copied(tmp_path: Path) -> None:
    good = zip_with(tmp_path / "good.zip", [("main.py", b"print(1)")])
    copy = make_bundle(good, tmp_path / "sub" / "copy.zip", MIB)
    assert copy.read_bytes() == good.read_bytes()

    (tmp_path / "notes.zip").write_text("not a zip at all")
    with pytest.raises(BundleError, match="neither a folder nor a zip file"):
        make_bundle(tmp_path / "notes.zip", tmp_path / "x.zip", MIB)
    hostile = zip_with(tmp_path / "hostile.zip", [("main.py", b""), ("../evil.py", b"")])
    with pytest.raises(BundleError, match="path traversal"):
        make_bundle(hostile, tmp_path / "y.zip", MIB)


# -- extracting ---------------------------------------------------------------------------


def test_extract_round_trip_keeps_files_and_exec_bit(tmp_path: Path) -> None:
    source = write_tree(
        tmp_path / "t", {"main.py": "print(1)", "bin/run.sh": "echo hi", "d/e.txt": "e"}
    )
    (source / "bin" / "run.sh").chmod(0o755)
    bundle = make_bundle(source, tmp_path / "b.zip", MIB)

    manifest = extract_bundle(bundle, tmp_path / "x")
    assert manifest.entrypoint == ["python", "main.py"]
    assert (tmp_path / "x" / "d" / "e.txt").read_text() == "e"
    assert os.access(tmp_path / "x" / "bin" / "run.sh", os.X_OK)
    assert not os.access(tmp_path / "x" / "main.py", os.X_OK)


def test_tiny_highly_compressible_files_are_fine(tmp_path: Path) -> None:
    bundle = zip_with(tmp_path / "b.zip", [("main.py", b""), ("blank.txt", b" " * 500_000)])
    validate_zip(bundle, BundleLimits(max_ratio=10))
    extract_bundle(bundle, tmp_path / "x", BundleLimits(max_ratio=10))
    assert (tmp_path / "x" / "blank.txt").stat().st_size == 500_000


EVIL_NAME = f"hivemind-evil-{uuid.uuid4().hex}"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (f"../../{EVIL_NAME}", "points outside the bundle"),
        (f"sub/../../../{EVIL_NAME}", "points outside the bundle"),
        (f"..\\..\\{EVIL_NAME}", "points outside the bundle"),
        (f"/tmp/{EVIL_NAME}", "is an absolute path"),
        (f"C:\\{EVIL_NAME}", "is an absolute path"),
        (f"C:/{EVIL_NAME}", "is an absolute path"),
    ],
)
def test_paths_leaving_dest_are_refused(tmp_path: Path, entry: str, message: str) -> None:
    bundle = zip_with(tmp_path / "b.zip", [("main.py", b"ok"), (entry, b"evil")])
    assert_refused_cleanly(bundle, tmp_path / "a" / "b", message)
    assert not (Path("/tmp") / EVIL_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.zip"]


@pytest.mark.parametrize(
    ("file_type", "message"),
    [(stat.S_IFLNK, "is a symbolic link"), (stat.S_IFIFO, "is a special file")],
)
def test_links_and_special_files_are_refused(tmp_path: Path, file_type: int, message: str) -> None:
    bundle = zip_with(
        tmp_path / "b.zip", [("main.py", b""), (typed_entry("passwd", file_type), b"/etc/passwd")]
    )
    assert_refused_cleanly(bundle, tmp_path / "sandbox", rf"entry 'passwd' {message}")


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    bundle = zip_with(tmp_path / "b.zip", [(f"f{i}.txt", b"") for i in range(6)])
    assert_refused_cleanly(
        bundle, tmp_path / "s", "has 6 entries, over the limit of 5", max_entries=5
    )


def test_declared_size_over_the_cap_is_refused(tmp_path: Path) -> None:
    bundle = zip_with(tmp_path / "b.zip", [("a.bin", os.urandom(MIB)), ("b.bin", os.urandom(MIB))])
    assert_refused_cleanly(
        bundle, tmp_path / "s", "unpacks to 2 MiB, over the limit of 1.5 MiB",
        max_unpacked_size=MIB + MIB // 2,
    )  # fmt: skip


def test_gigabyte_zip_bomb_is_refused_before_inflating(tmp_path: Path, gigabyte_bomb: Path) -> None:
    assert gigabyte_bomb.stat().st_size < 2 * MIB
    assert_refused_cleanly(
        gigabyte_bomb, tmp_path / "s1", r"entry 'zeros.bin' has a compression ratio of \d+:1"
    )
    # Even with no ratio cap, its declared size gives it away.
    assert_refused_cleanly(
        gigabyte_bomb, tmp_path / "s2", "unpacks to 1024 MiB, over the limit of 512 MiB",
        max_ratio=1e9,
    )  # fmt: skip


def test_header_declaring_less_than_the_real_data_is_refused(tmp_path: Path) -> None:
    data = os.urandom(3 * MIB)
    liar = ("data.bin", data, zipfile.ZIP_STORED, zlib.crc32(data), 100)
    bundle = raw_zip(tmp_path / "liar.zip", [stored("main.py", b""), liar])
    assert_refused_cleanly(bundle, tmp_path / "s", "corrupt zip: entry 'data.bin'")


def test_refusal_midway_removes_only_what_it_wrote(tmp_path: Path) -> None:
    dest = write_tree(tmp_path / "dest", {"mine.txt": "keep me"})
    data = os.urandom(2 * MIB)
    liar = ("sub/late.bin", data, zipfile.ZIP_STORED, zlib.crc32(data), 10)
    bundle = raw_zip(
        tmp_path / "b.zip", [stored("early.txt", b"early"), stored("sub/first.txt", b"1"), liar]
    )
    with pytest.raises(BundleError, match=r"corrupt zip: entry 'sub/late.bin'"):
        extract_archive(bundle, dest)
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]
    assert (dest / "mine.txt").read_text() == "keep me"


def test_link_already_in_dest_is_never_followed(tmp_path: Path) -> None:
    outside = write_tree(tmp_path / "outside", {"target.txt": "original"})
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    (dest / "file.txt").symlink_to(outside / "target.txt")
    for entry in ("sub/target.txt", "file.txt"):
        bundle = zip_with(tmp_path / "b.zip", [(entry, b"overwritten")])
        with pytest.raises(BundleError):
            extract_archive(bundle, dest)
    assert (outside / "target.txt").read_text() == "original"


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"just some text", "not a zip file"), (None, "corrupt zip")],
)
def test_not_a_zip_and_corrupt_zip(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bundle.zip"
    if content is None:
        good = zip_with(tmp_path / "good.zip", [("main.py", os.urandom(5000))])
        data = bytearray(good.read_bytes())
        data[100:2000] = os.urandom(1900)  # the entry's data, not the directory at the end
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(content)
    with pytest.raises(BundleError, match=message):
        extract_bundle(path, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# -- zipping a task's output ----------------------------------------------------------------


def test_zip_output_collects_files_and_skips_links(tmp_path: Path) -> None:
    output = write_tree(tmp_path / "output", {"result.txt": "42", "plots/a.csv": "1,2"})
    (output / "leak").symlink_to("/etc/passwd")
    result = zip_output(output, tmp_path / "result.zip", MIB)

    assert result == tmp_path / "result.zip"
    with zipfile.ZipFile(result) as archive:
        assert sorted(archive.namelist()) == ["plots/a.csv", "result.txt"]
        assert archive.read("result.txt") == b"42"


def test_zip_output_is_none_without_files_and_refuses_oversize(tmp_path: Path) -> None:
    assert zip_output(tmp_path / "missing", tmp_path / "r.zip", MIB) is None
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert zip_output(tmp_path / "empty", tmp_path / "r.zip", MIB) is None
    big = write_tree(tmp_path / "big", {"noise.bin": os.urandom(2 * MIB)})
    with pytest.raises(BundleError, match="task output is over MAX_TASK_DATA_SIZE of 1 MiB"):
        zip_output(big, tmp_path / "r.zip", MIB)
    assert not (tmp_path / "r.zip").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "empty"]
