"""Property-based requests generated from the master's /openapi.json (schemathesis): whatever a
client sends, the answer is never a 500, and it matches the documented status codes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from hivemind.config import Settings
from tests.master_support import Console, console_for


@pytest.fixture
def console(settings: Settings) -> Iterator[Console]:
    with console_for(settings) as c:
        yield c


@pytest.fixture
def admin_token(console: Console) -> str:
    api = console.api("root", admin=True)
    # Something to find: a task, a second user.
    api.post("/api/tasks", data={"function": "hivemind.examples:add", "args": "[1, 2]"})
    api.post("/api/users", json={"username": "alice", "password": "alice-password"})
    return api.headers["authorization"]


@pytest.fixture
def api_schema(console: Console) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", console.app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_request_makes_a_500(case: schemathesis.Case, admin_token: str) -> None:
    response = case.call(headers={"authorization": admin_token})
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
    assert response.status_code < 500, response.text
