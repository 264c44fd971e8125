"""One host of a deploy: copy the wheel, make the venv, install, join (or drain and restart
in a rolling upgrade), and check it with the host's own doctor."""

from __future__ import annotations

import json
import posixpath
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hivemind.deploy.model import (
    DeployEvent,
    DeployHost,
    DeployOptions,
    EventSink,
    HostDeployResult,
    Outcome,
    Phase,
)
from hivemind.deploy.wheel import last_lines
from hivemind.errors import HivemindError
from hivemind.remote.runner import CommandResult, Runner

#: Python the venv needs: what hivemind requires.
MIN_PYTHON = (3, 10)
#: Run with the host's Python: its version, where its HIVEMIND_HOME is, whether it joined.
_PROBE = (
    "import json, os, sys\n"
    "home = os.path.abspath(os.path.expanduser("
    "os.environ.get('HIVEMIND_HOME') or '~/.hivemind'))\n"
    "print(json.dumps({'version': list(sys.version_info[:2]), 'home': home,"
    " 'joined': os.path.isfile(os.path.join(home, 'hivemind.toml'))}))\n"
)
#: Run with the venv's Python: the installed version, and whether hivemind imports from it.
_INSTALLED = (
    "import importlib.metadata as m, json, os, sys\n"
    "import hivemind\n"
    "print(json.dumps({'version': m.version('hivemind-platform'),"
    " 'file': os.path.realpath(hivemind.__file__), 'prefix': os.path.realpath(sys.prefix)}))\n"
)
#: Seconds for quick remote commands (probes, mkdir, kill -0).
_QUICK = 30.0


class StepFailed(HivemindError):
    pass


@dataclass(frozen=True)
class _Remote:
    """Where things are on the host, once its HIVEMIND_HOME is known."""

    home: str
    joined: bool

    @property
    def venv(self) -> str:
        return posixpath.join(self.home, "venv")

    @property
    def staging(self) -> str:
        return posixpath.join(self.home, "deploy")

    def bin(self, tool: str) -> str:
        return posixpath.join(self.venv, "bin", tool)


def _output(result: CommandResult) -> str:
    return last_lines(
        result.stdout.decode("utf-8", "replace") + "\n" + result.stderr.decode("utf-8", "replace")
    )


class HostDeployment:
    """Deploys one host; :meth:`run` never raises for a host failure, it reports it."""

    def __init__(
        self,
        host: DeployHost,
        options: DeployOptions,
        wheel: Path,
        issue_token: Callable[[DeployHost], str],
        emit: EventSink,
    ) -> None:
        self.host = host
        self.options = options
        self.wheel = wheel
        self.issue_token = issue_token
        self.emit = emit
        self.result = HostDeployResult(host.label, host.node_id, Phase.CONNECT, Outcome.FAILED)
        self._env: dict[str, str] = {}

    def run(self) -> HostDeployResult:
        try:
            with self._phase(Phase.CONNECT):
                runner = self.options.ssh.open(self.host.target)
            with runner:
                self._deploy(runner)
        except HivemindError as exc:
            # StepFailed and RemoteError (unreachable, timed out) alike: one line for the host.
            self.result.message = f"{self.result.phase.value}: {exc}"
            return self.result
        self.result.phase = Phase.DONE
        self.result.outcome = Outcome.OK
        return self.result

    @contextmanager
    def _phase(self, phase: Phase) -> Iterator[None]:
        self.result.phase = phase
        self.emit(DeployEvent(self.host.label, self.host.node_id, phase, "started"))
        started = time.monotonic()
        try:
            yield
        except HivemindError as exc:
            self.result.durations[phase.value] = time.monotonic() - started
            self.emit(DeployEvent(self.host.label, self.host.node_id, phase, "failed", str(exc)))
            raise
        self.result.durations[phase.value] = time.monotonic() - started
        self.emit(DeployEvent(self.host.label, self.host.node_id, phase, "done"))

    def _run(self, runner: Runner, argv: list[str], timeout: float | None = None) -> CommandResult:
        return runner.run(argv, timeout=timeout or self.options.command_timeout, env=self._env)

    def _deploy(self, runner: Runner) -> None:
        with self._phase(Phase.PYTHON):
            remote = self._probe(runner)
        self.result.venv = remote.venv
        self._env = {"HIVEMIND_HOME": remote.home}
        upgrading = self.options.upgrade and remote.joined
        with self._phase(Phase.COPY):
            wheel_path = self._copy(runner, remote)
        with self._phase(Phase.VENV):
            self._make_venv(runner, remote)
        if upgrading:
            with self._phase(Phase.DRAIN):
                self._drain(runner, remote)
        with self._phase(Phase.INSTALL):
            self._install(runner, remote, wheel_path)
        if upgrading:
            with self._phase(Phase.START):
                self._start(runner, remote)
        else:
            with self._phase(Phase.JOIN):
                self._join(runner, remote)
        with self._phase(Phase.VERIFY):
            self._verify(runner, remote)

    def _probe(self, runner: Runner) -> _Remote:
        python = self.host.python
        env = {"HIVEMIND_HOME": self.host.hivemind_home} if self.host.hivemind_home else None
        result = runner.run([python, "-c", _PROBE], timeout=_QUICK, env=env)
        if result.exit_code in (126, 127):
            raise StepFailed(f"no {python} on the host ({_output(result)}); install Python 3")
        if not result.ok:
            raise StepFailed(f"{python} does not run: {_output(result)}")
        try:
            facts = json.loads(result.text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise StepFailed(f"{python} printed no facts: {_output(result)}") from None
        if tuple(facts["version"]) < MIN_PYTHON:
            have = ".".join(map(str, facts["version"]))
            raise StepFailed(f"{python} is Python {have}; hivemind needs 3.10 or newer")
        remote = _Remote(home=str(facts["home"]), joined=bool(facts["joined"]))
        if remote.joined and not self.options.upgrade:
            raise StepFailed(
                f"{remote.home} has joined a node pool already (hivemind.toml exists): "
                "deploy with --upgrade to reinstall and restart its worker"
            )
        return remote

    def _copy(self, runner: Runner, remote: _Remote) -> str:
        made = self._run(runner, ["mkdir", "-p", posixpath.join(remote.staging, "wheelhouse")])
        if not made.ok:
            raise StepFailed(f"cannot create {remote.staging}: {_output(made)}")
        wheel_path = posixpath.join(remote.staging, self.wheel.name)
        runner.put(self.wheel, wheel_path)
        if self.options.wheelhouse:
            for dependency in sorted(self.options.wheelhouse.glob("*.whl")):
                runner.put(
                    dependency, posixpath.join(remote.staging, "wheelhouse", dependency.name)
                )
        return wheel_path

    def _make_venv(self, runner: Runner, remote: _Remote) -> None:
        if self._run(runner, ["test", "-x", remote.bin("python")], _QUICK).ok:
            return
        # System site packages: the host's own grpcio, redis … serve the venv, so the host
        # needs no package index; the venv only pins which hivemind runs.
        made = self._run(
            runner, [self.host.python, "-m", "venv", "--system-site-packages", remote.venv]
        )
        if not made.ok:
            raise StepFailed(
                f"cannot create the venv {remote.venv} (on Debian: apt-get install "
                f"python3-venv): {_output(made)}"
            )

    def _install(self, runner: Runner, remote: _Remote, wheel_path: str) -> None:
        pip = [remote.bin("python"), "-m", "pip", "install", "--no-index", "-q"]
        pip += ["--disable-pip-version-check"]
        if self.options.wheelhouse:
            # Dependencies the host lacks come from the wheelhouse; the rest are its own.
            links = ["--find-links", posixpath.join(remote.staging, "wheelhouse")]
            with_deps = self._run(runner, [*pip, *links, wheel_path])
            if not with_deps.ok:
                raise StepFailed(f"pip could not install the dependencies:\n{_output(with_deps)}")
        installed = self._run(runner, [*pip, "--no-deps", "--force-reinstall", wheel_path])
        if not installed.ok:
            raise StepFailed(f"pip could not install {self.wheel.name}:\n{_output(installed)}")
        probe = self._run(runner, [remote.bin("python"), "-c", _INSTALLED], _QUICK)
        if not probe.ok:
            raise StepFailed(f"the installed hivemind does not import:\n{_output(probe)}")
        try:
            facts = json.loads(probe.text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise StepFailed(f"the installed hivemind printed no facts: {_output(probe)}") from None
        # An editable or user install on the host could shadow the venv's copy.
        if not str(facts["file"]).startswith(str(facts["prefix"]) + "/"):
            raise StepFailed(
                f"the venv imports hivemind from {facts['file']}, not from {facts['prefix']}"
            )
        self.result.installed_version = str(facts["version"])

    def _labels(self) -> list[str]:
        return [arg for label in self.host.labels for arg in ("--label", label)]

    def _join(self, runner: Runner, remote: _Remote) -> None:
        token = self.issue_token(self.host)
        joined = self._run(
            runner, [remote.bin("hivemind"), "join", token, "--node-id", self.host.node_id]
        )
        if not joined.ok:
            raise StepFailed(f"the join failed: {_output(joined)}")

    def _drain(self, runner: Runner, remote: _Remote) -> None:
        """SIGTERM through `hivemind worker-stop` (``systemctl stop`` for a systemd unit):
        the worker finishes or hands back its tasks, and the command returns only once it is
        gone (killed after SHUTDOWN_GRACE)."""
        argv = [remote.bin("hivemind"), "worker-stop", "--node-id", self.host.node_id]
        stopped = self._run(runner, argv)
        if not stopped.ok:
            raise StepFailed(f"`hivemind worker-stop` failed: {_output(stopped)}")

    def _start(self, runner: Runner, remote: _Remote) -> None:
        argv = [remote.bin("hivemind"), "worker-start", "--node-id", self.host.node_id]
        started = self._run(runner, [*argv, *self._labels()])
        if not started.ok:
            raise StepFailed(f"the worker did not start: {_output(started)}")

    def _verify(self, runner: Runner, remote: _Remote) -> None:
        only = [arg for check in self.options.doctor_checks for arg in ("--only", check)]
        ran = self._run(runner, [remote.bin("hivemind"), "doctor", *only, "--json"])
        try:
            report = json.loads(ran.text)
            checks = report["checks"]
        except (ValueError, KeyError, TypeError):
            raise StepFailed(f"the doctor gave no report: {_output(ran)}") from None
        failing = [c for c in checks if c.get("status") in ("fail", "error")]
        self.result.doctor_failures = len(failing)
        if failing:
            what = "; ".join(f"{c.get('id')}: {c.get('summary')}" for c in failing)
            raise StepFailed(f"{len(failing)} doctor check(s) fail: {what}")
