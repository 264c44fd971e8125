"""Running bundle task attempts in real subprocesses."""

from __future__ import annotations

import json
import re
import textwrap
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from hivemind.bundle import MIB, make_bundle
from hivemind.worker.execution import BundleRun, RunOutcome, clean_environment, run_bundle

# Generous: these only bound how long a broken implementation can hang the suite.
SLOW = 30.0


@dataclass
class Recorder:
    """Everything a run reports through its callbacks, with arrival times."""

    output: list[tuple[float, str]] = field(default_factory=list)
    progress: list[tuple[float, str]] = field(default_factory=list)
    checkpoints: list[dict[str, bytes]] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    seen_output: threading.Condition = field(default_factory=threading.Condition)

    def on_output(self, text: str) -> None:
        with self.seen_output:
            self.output.append((time.monotonic(), text))
            self.seen_output.notify_all()

    def on_progress(self, fraction: float, message: str) -> None:
        self.progress.append((fraction, message))

    def on_checkpoint(self, path: Path) -> None:
        with zipfile.ZipFile(path) as archive:
            self.checkpoints.append({name: archive.read(name) for name in archive.namelist()})

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.output)

    def wait_for_output(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + SLOW
        with self.seen_output:
            while not (match := re.search(pattern, self.text)):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no output matching {pattern!r}; got {self.text!r}"
                self.seen_output.wait(remaining)
        return match


def make_task(
    tmp_path: Path, files: dict[str, str], manifest: dict[str, object] | None = None
) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name, content in files.items():
        (source / name).write_text(textwrap.dedent(content))
    if manifest is not None:
        (source / "task.json").write_text(json.dumps(manifest))
    return make_bundle(source, tmp_path / "bundle.zip", 10 * MIB)


def run_task(
    tmp_path: Path,
    bundle: Path,
    recorder: Recorder | None = None,
    **overrides: object,
) -> tuple[RunOutcome, Recorder]:
    recorder = recorder or Recorder()
    settings: dict[str, object] = {
        "task_id": "t1",
        "attempt": 1,
        "zip_path": bundle,
        "work_root": tmp_path / "work",
        "timeout": SLOW,
        "memory_limit_mb": 0,
        "extra_env": {},
        "checkpoint_zip": None,
        "max_output_size": 10 * MIB,
        **overrides,
    }
    run = BundleRun(**settings)  # type: ignore[arg-type]
    outcome = run_bundle(
        run, recorder.on_output, recorder.on_progress, recorder.on_checkpoint, recorder.cancel
    )
    return outcome, recorder


def assert_gone(pid: int) -> None:
    """The process is dead: gone, or a zombie waiting for init (no longer ours to reap)."""
    deadline = time.monotonic() + SLOW
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"process {pid} is still running")
    assert pid not in {child.pid for child in psutil.Process().children(recursive=True)}


# -- outcomes -----------------------------------------------------------------------------


def test_success_returns_output_zip_and_cleans_work_dir(tmp_path: Path) -> None:
    bundle = make_task(
        tmp_path,
        {
            "main.py": """
                import pathlib
                pathlib.Path("output/answer.txt").write_text("42")
                pathlib.Path("output/plots").mkdir()
                pathlib.Path("output/plots/p.csv").write_text("1,2")
                print("done")
            """
        },
    )
    outcome, recorder = run_task(tmp_path, bundle)

    assert (outcome.status, outcome.exit_code, outcome.error_message) == ("succeeded", 0, "")
    assert recorder.text == "done\n"
    assert outcome.result_zip is not None
    with zipfile.ZipFile(outcome.result_zip) as archive:
        assert sorted(archive.namelist()) == ["answer.txt", "plots/p.csv"]
        assert archive.read("answer.txt") == b"42"
    # Only the result survives; the work dir is gone.
    assert list((tmp_path / "work").iterdir()) == [outcome.result_zip]
    assert outcome.duration > 0


def test_no_output_means_no_result_zip(tmp_path: Path) -> None:
    outcome, _ = run_task(tmp_path, make_task(tmp_path, {"main.py": "pass"}))
    assert outcome.status == "succeeded"
    assert outcome.result_zip is None
    assert list((tmp_path / "work").iterdir()) == []


def test_nonzero_exit_fails_with_code_and_last_stderr_line(tmp_path: Path) -> None:
    bundle = make_task(
        tmp_path,
        {
            "main.py": """
                import sys
                print("working")
                print("something odd", file=sys.stderr)
                raise SystemExit("input file is empty")
            """
        },
    )
    outcome, recorder = run_task(tmp_path, bundle)

    assert (outcome.status, outcome.exit_code) == ("failed", 1)
    assert outcome.error_message == "exit code 1: input file is empty"
    assert "working\n" in recorder.text
    assert "something odd\n" in recorder.text


def test_exit_code_three(tmp_path: Path) -> None:
    outcome, _ = run_task(tmp_path, make_task(tmp_path, {"main.py": "raise SystemExit(3)"}))
    assert (outcome.status, outcome.exit_code, outcome.error_message) == (
        "failed",
        3,
        "exit code 3",
    )


def test_hostile_bundle_is_refused_not_raised(tmp_path: Path) -> None:
    bundle = tmp_path / "evil.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("main.py", "print('never runs')")
        archive.writestr("../../escape.py", "x")
    outcome, recorder = run_task(tmp_path, bundle)

    assert outcome.status == "failed"
    assert outcome.error_message.startswith("bundle refused: entry '../../escape.py'")
    assert recorder.output == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip", "work"]


def test_missing_program_fails_clearly(tmp_path: Path) -> None:
    bundle = make_task(tmp_path, {"run.sh": ""}, {"entrypoint": ["no-such-program-xyz", "run.sh"]})
    outcome, _ = run_task(tmp_path, bundle)
    assert outcome.status == "failed"
    assert outcome.error_message == "cannot start 'no-such-program-xyz': No such file or directory"


def test_memory_limit_reports_out_of_memory(tmp_path: Path) -> None:
    bundle = make_task(tmp_path, {"main.py": "block = bytearray(2 * 1024 ** 3)"})
    outcome, _ = run_task(tmp_path, bundle, memory_limit_mb=256)
    assert outcome.status == "failed"
    assert outcome.error_message.startswith("out of memory (limit 256 MiB)")


def test_output_over_the_size_limit_fails_the_task(tmp_path: Path) -> None:
    bundle = make_task(
        tmp_path, {"main.py": "import os; open('output/noise', 'wb').write(os.urandom(3 << 20))"}
    )
    outcome, _ = run_task(tmp_path, bundle, max_output_size=MIB)
    assert outcome.status == "failed"
    assert "task output is over MAX_TASK_DATA_SIZE of 1 MiB" in outcome.error_message
    assert outcome.result_zip is None


# -- stopping -------------------------------------------------------------------------------


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    bundle = make_task(
        tmp_path,
        {"run.sh": 'sleep 300 &\necho "grandchild $!"\necho "leader $$"\nsleep 300\n'},
        {"entrypoint": "sh run.sh"},
    )
    started = time.monotonic()
    outcome, recorder = run_task(tmp_path, bundle, timeout=1.0)

    assert (outcome.status, outcome.exit_code) == ("timeout", None)
    assert outcome.error_message == "killed after 1 s timeout"
    assert time.monotonic() - started < SLOW
    assert_gone(int(recorder.wait_for_output(r"grandchild (\d+)").group(1)))
    assert_gone(int(recorder.wait_for_output(r"leader (\d+)").group(1)))


def test_background_process_left_by_a_finished_task_is_killed(tmp_path: Path) -> None:
    bundle = make_task(
        tmp_path,
        {
            "main.py": """
                import subprocess
                child = subprocess.Popen(["sleep", "300"])
                print("grandchild", child.pid)
            """
        },
    )
    outcome, recorder = run_task(tmp_path, bundle)
    assert outcome.status == "succeeded"
    assert_gone(int(recorder.wait_for_output(r"grandchild (\d+)").group(1)))


def test_cancel_takes_effect_within_two_seconds(tmp_path: Path) -> None:
    bundle = make_task(
        tmp_path,
        {
            "main.py": """
                import os, subprocess, time
                child = subprocess.Popen(["sleep", "300"])
                print("running", os.getpid(), child.pid, flush=True)
                time.sleep(300)
            """
        },
    )
    recorder = Recorder()
    cancelled_at: list[float] = []

    def cancel_when_running() -> None:
        recorder.wait_for_output("running")
        cancelled_at.append(time.monotonic())
        recorder.cancel.set()

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    outcome, _ = run_task(tmp_path, bundle, recorder)
    returned_at = time.monotonic()
    canceller.join()

    assert (outcome.status, outcome.error_message) == ("cancelled", "cancelled")
    assert returned_at - cancelled_at[0] < 2.0
    leader, grandchild = recorder.wait_for_output(r"running (\d+) (\d+)").groups()
    assert_gone(int(leader))
    assert_gone(int(grandchild))


# -- environment, output, progress, checkpoints ----------------------------------------------


def test_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET", "hunter2")
    monkeypatch.setenv("HIVEMIND_WORKER_TOKEN", "worker-token")
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    bundle = make_task(
        tmp_path,
        {"main.py": "import json, os; print(json.dumps(dict(os.environ)))"},
        {"env": {"MODE": "bundle", "SHARED": "from bundle"}},
    )
    outcome, recorder = run_task(
        tmp_path, bundle, task_id="abc", attempt=2, extra_env={"SHARED": "from spec"}
    )
    assert outcome.status == "succeeded"
    env = json.loads(recorder.text)

    assert "SECRET" not in env
    assert "HIVEMIND_WORKER_TOKEN" not in env
    assert "/somewhere/else" not in env.get("PYTHONPATH", "")
    assert (env["MODE"], env["SHARED"]) == ("bundle", "from spec")
    assert (env["HIVEMIND_TASK_ID"], env["HIVEMIND_TASK_ATTEMPT"]) == ("abc", "2")
    assert env["PYTHONUNBUFFERED"] == "1"
    work_dir = Path(env["HOME"])
    assert work_dir.parent == tmp_path / "work"
    assert work_dir.name.startswith("abc-2-")
    assert Path(env["TMPDIR"]).parent == work_dir
    assert not work_dir.exists()


def test_clean_environment_lets_the_worker_context_win() -> None:
    env = clean_environment(
        {"HOME": "/task/home", "PATH": "/task/bin", "HIVEMIND_TASK_ID": "forged"},
        {"HOME": "/work/dir", "HIVEMIND_TASK_ID": "real"},
    )
    assert (env["HOME"], env["HIVEMIND_TASK_ID"], env["PATH"]) == ("/work/dir", "real", "/task/bin")
    allowed = {"PATH", "LANG", "LC_ALL", "TZ", "HOME", "PYTHONUNBUFFERED", "PYTHONPATH"}
    assert set(env) <= allowed | {"HIVEMIND_TASK_ID"}


def test_output_arrives_while_the_task_still_runs(tmp_path: Path) -> None:
    bundle = make_task(
        tmp_path,
        {
            "main.py": """
                import sys, time
                print("first")
                sys.stdout.write("partial line, no newline")
                sys.stdout.flush()
                time.sleep(1.5)
                print(" ...finished")
            """
        },
    )
    outcome, recorder = run_task(tmp_path, bundle)
    finished = time.monotonic()

    assert outcome.status == "succeeded"
    assert recorder.text == "first\npartial line, no newline ...finished\n"
    arrivals = {text: at for at, text in recorder.output}
    assert finished - arrivals["first\n"] > 1.0
    assert finished - arrivals["partial line, no newline"] > 1.0


def test_progress_reports_are_delivered(tmp_path: Path) -> None:
    bundle = make_task(
        tmp_path,
        {
            "main.py": """
                import time
                from hivemind.task import report_progress
                report_progress(0.25, "a quarter")
                time.sleep(1.0)
                report_progress(7, "all done")
            """
        },
    )
    outcome, recorder = run_task(tmp_path, bundle)
    assert outcome.status == "succeeded"
    assert recorder.progress == [(0.25, "a quarter"), (1.0, "all done")]


def test_checkpoint_is_restored_and_new_ones_are_delivered(tmp_path: Path) -> None:
    previous = tmp_path / "previous.zip"
    with zipfile.ZipFile(previous, "w") as archive:
        archive.writestr("state.txt", "3")
    bundle = make_task(
        tmp_path,
        {
            "main.py": """
                import time
                from hivemind.task import attempt, checkpoint_dir, task_id
                state = checkpoint_dir() / "state.txt"
                print(task_id(), attempt(), state.read_text())
                state.write_text("4")
                time.sleep(1.0)
                state.write_text("5")
            """
        },
    )
    outcome, recorder = run_task(
        tmp_path, bundle, task_id="resumed", attempt=2, checkpoint_zip=previous
    )

    assert outcome.status == "succeeded"
    assert recorder.text == "resumed 2 3\n"
    # The restored checkpoint is not sent back; each change is, the last one at exit.
    assert recorder.checkpoints == [{"state.txt": b"4"}, {"state.txt": b"5"}]
    assert previous.exists()


def test_damaged_checkpoint_does_not_stop_the_task(tmp_path: Path) -> None:
    previous = tmp_path / "previous.zip"
    previous.write_text("not a zip")
    main = "from hivemind.task import checkpoint_dir; print(list(checkpoint_dir().iterdir()))"
    bundle = make_task(tmp_path, {"main.py": main})
    outcome, recorder = run_task(tmp_path, bundle, checkpoint_zip=previous)
    assert outcome.status == "succeeded"
    assert "previous checkpoint not restored: not a zip file" in recorder.text
    assert recorder.text.endswith("[]\n")
