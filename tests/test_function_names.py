"""The submit-time look at a `module:function`: the allow rule, and a look for the function
that runs none of the module's code."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivemind.function_names import missing_function, module_allowed, split_function_name
from hivemind.nodepool.tasks_service import function_refusal


@pytest.fixture
def on_path(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))


def test_names_and_the_allow_rule() -> None:
    assert split_function_name("pkg.mod:fn") == ("pkg.mod", "fn")
    assert split_function_name("pkg..mod:fn") is None
    assert split_function_name("fn") is None
    assert module_allowed("pkg.mod", ["pkg"]) and module_allowed("pkg", ["pkg"])
    assert not module_allowed("pkg_other", ["pkg"]) and not module_allowed("pkg", [""])


def test_a_missing_function_is_found_without_running_the_module(on_path: Path) -> None:
    package = on_path / "hm_probe_pkg"
    package.mkdir()
    # Importing either file would stop the test run: the look must not import them.
    (package / "__init__.py").write_text("raise SystemExit('imported the package')\n")
    (package / "jobs.py").write_text(
        "raise SystemExit('imported the module')\n"
        "import json as js\n"
        "LIMIT: int = 3\n"
        "def run(x):\n    return x\n"
        "async def later():\n    pass\n"
        "if True:\n    def branch():\n        pass\n"
    )
    for name in ("run", "later", "branch", "js", "LIMIT"):
        assert missing_function("hm_probe_pkg.jobs", name) is None, name
    why = missing_function("hm_probe_pkg.jobs", "nope")
    assert why is not None and "defines no 'nope'" in why
    assert "hm_probe_pkg" not in sys.modules


def test_a_module_that_makes_names_at_run_time_is_given_the_benefit(on_path: Path) -> None:
    (on_path / "hm_probe_star.py").write_text("from os.path import *\n")
    (on_path / "hm_probe_lazy.py").write_text("def __getattr__(name):\n    return name\n")
    assert missing_function("hm_probe_star", "join") is None
    assert missing_function("hm_probe_lazy", "anything") is None
    # Not on this host's path: the worker may still have it.
    assert missing_function("hm_probe_nowhere", "f") is None


def test_a_function_is_refused_only_when_every_live_worker_says_no() -> None:
    examples = ("hivemind.examples",)
    assert function_refusal("hivemind.examples:add", {}) == ""  # no worker yet: queue it
    assert function_refusal("os:system", {"w1": examples, "w2": None}) == ""  # w2 unknown
    refusal = function_refusal("os:system", {"w1": examples, "w2": ("mypkg",)})
    assert "no live worker runs functions of module 'os'" in refusal
    assert "hivemind.examples, mypkg" in refusal and "--allow os" in refusal
    assert function_refusal("mypkg.sub:f", {"w1": examples, "w2": ("mypkg",)}) == ""
    assert "defines no 'nope'" in function_refusal("hivemind.examples:nope", {"w1": examples})
