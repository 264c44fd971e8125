"""Regenerate ``hivemind_pb2*.py`` from ``hivemind.proto`` (needs grpcio-tools).

Run ``python -m hivemind.proto.generate``; ``--check`` exits 1 when the checked-in code
differs from a fresh generation, without touching it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent.parent
GENERATED = ("hivemind_pb2.py", "hivemind_pb2_grpc.py", "hivemind_pb2.pyi")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # test-only dependency

    args = [
        "protoc",
        f"-I{REPO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_DIR / "hivemind.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def stale_files() -> list[str]:
    """Names of generated files whose checked-in text differs from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "hivemind" / "proto"
        return [
            name
            for name in GENERATED
            if not (PROTO_DIR / name).exists()
            or (fresh / name).read_text() != (PROTO_DIR / name).read_text()
        ]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_files()
        for name in stale:
            print(f"stale: hivemind/proto/{name}")
        return 1 if stale else 0
    generate(REPO_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
