"""The wheel a deploy installs: this checkout, built once per run, in a copy of the tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from hivemind.errors import HivemindError


class DeployError(HivemindError):
    """A deploy cannot start at all (no wheel, bad options); host failures are results."""


#: What is never copied into the build tree: VCS data and earlier build output.
_BUILD_IGNORE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", ".*_cache", "node_modules"
)


def project_root() -> Path:
    """The checkout this `hivemind` package lives in (the folder with its pyproject.toml)."""
    import hivemind

    root = Path(hivemind.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise DeployError(
            f"hivemind runs from {root}, which is no source checkout (no pyproject.toml): "
            "pass a wheel to deploy"
        )
    return root


def wheel_version(wheel: Path) -> str:
    """The version in a wheel's file name (``name-VERSION-py3-none-any.whl``)."""
    parts = wheel.name.split("-")
    if not wheel.name.endswith(".whl") or len(parts) < 5:
        raise DeployError(f"{wheel} is not a wheel file name (name-version-…-….whl)")
    return parts[1]


def check_wheel(wheel: Path) -> Path:
    if not wheel.is_file():
        raise DeployError(f"no wheel at {wheel}")
    wheel_version(wheel)
    try:
        with zipfile.ZipFile(wheel) as archive:
            if "hivemind/__init__.py" not in archive.namelist():
                raise DeployError(f"{wheel} holds no hivemind package")
    except zipfile.BadZipFile:
        raise DeployError(f"{wheel} is not a wheel (not a zip file)") from None
    return wheel


def build_wheel(out_dir: Path, root: Path | None = None, timeout: float = 300.0) -> Path:
    """Build a wheel of ``root`` (default: this checkout) into ``out_dir``.

    The tree is copied first: setuptools writes build/ and *.egg-info next to the sources,
    and a deploy must leave the checkout as it found it. No build isolation, so the build
    needs no package index (setuptools is already installed where hivemind runs).
    """
    root = root or project_root()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hivemind-wheel-") as scratch:
        tree = Path(scratch) / "src"
        shutil.copytree(root, tree, ignore=_BUILD_IGNORE)
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        argv += ["--no-index", "-q", "-w", str(out_dir), str(tree)]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"building the wheel of {root} took over {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise DeployError(f"building the wheel of {root} failed:\n{last_lines(proc.stderr)}")
    wheels = sorted(out_dir.glob("hivemind_platform-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise DeployError(f"pip built no hivemind wheel into {out_dir}")
    return wheels[-1]


def last_lines(text: str, count: int = 8) -> str:
    """The tail of a tool's output: where pip and friends say what went wrong."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:]) or "(no output)"
