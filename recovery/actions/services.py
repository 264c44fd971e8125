"""Service actions: start, stop, restart or report HiveMind's services; wait for a port or
for a service to be healthy."""

from __future__ import annotations

import time
from typing import Any

from hivemind.service_health import port_listening
from recovery.actions import Outcome, Param, StepContext, action
from recovery.model import ActionFailed
from recovery.services import SERVICES, ServiceControl, expand

_NAMES = (*SERVICES, "all")


def _control(ctx: StepContext) -> ServiceControl:
    return ServiceControl(ctx.settings, ctx.runner, ctx.emit, ctx.timeout)


@action(
    "service",
    "Start, stop or restart a service (redis, nodepool, master, workers or all), or report it",
    {
        "name": Param(str, required=True, choices=_NAMES),
        "state": Param(str, required=True, choices=("started", "stopped", "restarted", "status")),
    },
)
def service(ctx: StepContext, params: dict[str, Any]) -> Outcome:
    control = _control(ctx)
    names = expand(params["name"])
    state = params["state"]
    # Stop in reverse start order: workers first, Redis last.
    order = list(reversed(names)) if state == "stopped" else names
    before = control.states(order)
    if state == "status":
        return Outcome(False, ", ".join(f"{k} {v}" for k, v in before.items()), before, before)
    if ctx.dry_run:
        return _preview(state, before)
    changed: list[str] = []
    if state in ("stopped", "restarted"):
        for name in reversed(names):
            done = control.stop(name)
            if done:
                changed.append(done)
    if state in ("started", "restarted"):
        for name in names:
            if control.start(name):
                changed.append(f"started {name}")
    after = control.states(order)
    if not changed:
        return Outcome(False, f"nothing to do: {_summary(before)}", before, after)
    return Outcome(True, "; ".join(changed), before, after)


def _summary(states: dict[str, str]) -> str:
    return ", ".join(f"{name} {state}" for name, state in states.items())


def _preview(state: str, before: dict[str, str]) -> Outcome:
    if state == "started":
        todo = [n for n, s in before.items() if s not in ("healthy", "not-installed")]
        verb = "start"
    elif state == "stopped":
        todo = [n for n, s in before.items() if s not in ("stopped", "not-installed")]
        verb = "stop (or clear the stale pid files of)"
    else:
        todo = [n for n, s in before.items() if s != "not-installed"]
        verb = "restart"
    if not todo:
        return Outcome(False, f"nothing to do: {_summary(before)}", before, before)
    return Outcome(True, f"would {verb} {', '.join(todo)} ({_summary(before)})", before, before)


@action(
    "wait",
    "Wait until a service is healthy, or until a TCP port accepts connections",
    {
        "service": Param(str, choices=_NAMES),
        "port": Param(int),
        "address": Param(str, default="127.0.0.1"),
    },
    validate=lambda p: _one_of(p, ("service", "port")),
)
def wait(ctx: StepContext, params: dict[str, Any]) -> Outcome:
    began = time.monotonic()
    if params.get("port") is not None:
        what = f"port {params['address']}:{params['port']}"

        def ready() -> bool:
            return port_listening(params["address"], int(params["port"]))

    else:
        control = _control(ctx)
        names = [n for n in expand(params["service"]) if control.state(n) != "not-installed"]
        what = " and ".join(names) + " healthy"

        def ready() -> bool:
            return all(control.state(n) == "healthy" for n in names)

    if ready():
        return Outcome(False, f"{what}: already", {"ready": True}, {"ready": True})
    if ctx.dry_run:
        return Outcome(True, f"would wait up to {ctx.timeout:g}s for {what}", {"ready": False})
    while time.monotonic() - began < ctx.timeout:
        time.sleep(0.25)
        if ready():
            took = time.monotonic() - began
            return Outcome(False, f"{what} after {took:.1f}s", {"ready": False}, {"ready": True})
    raise ActionFailed(f"{what}: not within {ctx.timeout:g}s")


def _one_of(params: dict[str, Any], names: tuple[str, ...]) -> None:
    given = [n for n in names if params.get(n) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(names)}")
