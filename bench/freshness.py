"""Would a user who installs today, without the lock, still get a green suite?

The README's commands install through ``constraints.txt``, so CI and every developer run the
versions the lock pins. Upstream keeps releasing: this check installs the newest versions that
``pyproject.toml`` allows into a scratch venv (no lock), lists every package that moved past its
pin, then runs the test suite there. Run it from the repository root, now and then, or before a
release::

    python -m bench.freshness                         # about 8 minutes on 2 cores
    python -m bench.freshness -- -x tests/test_master_openapi.py   # pytest arguments after --
    python -m bench.freshness --keep                  # leave the venv behind to poke at

It exits with the suite's exit code (1 when a test failed), or 2 when the install failed.
When it is red and CI is green, upstream broke us: fix the code, then move the pin with
``uv pip compile ... --upgrade-package NAME`` (the full command is in the README).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"


@dataclass(frozen=True)
class Moved:
    name: str
    locked: str
    newest: str


def read_pins(text: str, environment: Mapping[str, str] | None = None) -> dict[str, str]:
    """Canonical name → pinned version of each ``name==version [; marker]`` line of a lock
    whose marker holds in ``environment`` (this interpreter's when None). A universal lock
    pins some packages twice, once per Python version range; only one of the two holds."""
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(
            dict(environment) if environment is not None else None
        ):
            continue
        (specifier,) = requirement.specifier  # a lock line has exactly one: ==version
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def moved_past_the_lock(pins: Mapping[str, str], installed: Mapping[str, str]) -> list[Moved]:
    """The installed packages whose version differs from the lock's pin, by name."""
    return sorted(
        (
            Moved(name, pins[name], version)
            for name, version in installed.items()
            if name in pins and pins[name] != version
        ),
        key=lambda moved: moved.name,
    )


def requirement_holds(requirement: Requirement, extras: Sequence[str]) -> bool:
    """Whether ``requirement`` applies to this interpreter with one of ``extras`` asked for."""
    marker: Marker | None = requirement.marker
    if marker is None:
        return True
    return any(marker.evaluate({"extra": extra}) for extra in ("", *extras))


def installed_versions(python: Path) -> dict[str, str]:
    listing = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {canonicalize_name(row["name"]): row["version"] for row in json.loads(listing)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the scratch venv")
    parser.add_argument("pytest_args", nargs="*", help="arguments for pytest (after --)")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="hivemind-freshness-"))
    venv = scratch / "venv"
    python = venv / "bin" / "python"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        print(f"installing the newest allowed versions into {venv} (no lock) ...", flush=True)
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-e", ".[test]"], cwd=ROOT
        )
        if install.returncode != 0:
            print("freshness: the install without the lock failed (see above)", file=sys.stderr)
            return 2
        moved = moved_past_the_lock(read_pins(LOCK.read_text()), installed_versions(python))
        if moved:
            print(f"{len(moved)} packages are newer than constraints.txt pins:")
            for package in moved:
                print(f"  {package.name:<32} {package.locked:>14} -> {package.newest}")
        else:
            print("every installed package is at its constraints.txt pin")
        suite = subprocess.run(
            [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args],
            cwd=ROOT,
        )
        verdict = "green" if suite.returncode == 0 else f"red (pytest exit {suite.returncode})"
        print(f"freshness: the suite on the newest allowed versions is {verdict}")
        return suite.returncode
    finally:
        if args.keep:
            print(f"kept {venv}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
