"""Property-based requests generated from the master's /openapi.json: whatever a client sends,
the answer is never a 500, and its status is one the schema documents.

Schemathesis's documented strategy API (``APIOperation.as_strategy``) drives Hypothesis
directly, one operation at a time; its pytest plugin is not used, so a pytest release that
changes pytest's internals cannot break the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI, HTTPException
from hypothesis import HealthCheck, given, note, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup, ServerError
from schemathesis.specs.openapi.checks import status_code_conformance

from hivemind.config import Settings
from tests.master_support import Console, console_for

EXAMPLES_PER_OPERATION = 30


def assert_no_server_error(app: FastAPI, headers: dict[str, str], path: str | None = None) -> int:
    """Send generated requests to every operation of ``app``'s schema (or those of ``path``);
    raise schemathesis's FailureGroup on the first that answers with a 500 or an undocumented
    status. Returns how many operations were exercised."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    if path is not None:
        schema = schema.include(path=path)
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def answers_without_a_server_error(case: schemathesis.Case) -> None:
            note(f"operation: {case.operation.label}")
            response = case.call(headers=headers)
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance])

        answers_without_a_server_error()
    return len(operations)


@pytest.fixture
def console(settings: Settings) -> Iterator[Console]:
    with console_for(settings) as c:
        yield c


@pytest.fixture
def admin_headers(console: Console) -> dict[str, str]:
    api = console.api("root", admin=True)
    # Something to find: a task, a second user.
    api.post("/api/tasks", data={"function": "hivemind.examples:add", "args": "[1, 2]"})
    api.post("/api/users", json={"username": "alice", "password": "alice-password"})
    return {"authorization": api.headers["authorization"]}


def test_no_request_makes_a_500(console: Console, admin_headers: dict[str, str]) -> None:
    exercised = assert_no_server_error(console.app, admin_headers)
    assert exercised >= 10, f"only {exercised} operations in /openapi.json"


def test_a_route_that_answers_500_is_caught(
    console: Console, admin_headers: dict[str, str]
) -> None:
    """The same check over the master's app with one deliberately broken route added: it must
    fail, naming a server error, or the test above proves nothing."""
    app = console.app

    @app.get("/api/deliberately-broken")
    def deliberately_broken(limit: int = 10) -> dict[str, int]:
        if limit > 3:
            raise HTTPException(status_code=500, detail="deliberately broken")
        return {"limit": limit}

    with pytest.raises(FailureGroup) as failed:
        assert_no_server_error(app, admin_headers, path="/api/deliberately-broken")
    assert any(isinstance(f, ServerError) for f in failed.value.exceptions), failed.value
    assert "deliberately broken" in str(failed.value)
