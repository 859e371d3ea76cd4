"""Generated requests for every operation of the published OpenAPI document
(schemathesis strategies driven by hypothesis): none gets a server error, and
every refusal explains itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from consoletest import Console
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core import NotSet

from cnnf.console.services.users import UserService

EXAMPLES_PER_OPERATION = 20


def _fuzz(console: Console, operation: Any) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(), token=st.booleans())
    def check(case: Any, token: bool) -> None:
        headers = {k: v for k, v in (case.headers or {}).items()
                   if k.lower() != "authorization"}
        if token:  # a fresh admin session, so logout cases cannot starve the rest
            with console.session() as s:
                secret = UserService(s, console.clock.now).issue_session(
                    "admin-user", 600).token
            headers["Authorization"] = f"Bearer {secret}"
        kwargs: dict[str, Any] = {"params": case.query or None, "headers": headers}
        if case.body is not None and not isinstance(case.body, NotSet):
            if case.media_type and "json" in case.media_type:
                kwargs["content"] = json.dumps(case.body).encode()
                headers["Content-Type"] = "application/json"
            elif isinstance(case.body, bytes | str):
                kwargs["content"] = case.body
                headers["Content-Type"] = case.media_type or "application/octet-stream"
        r = console.client().request(case.method, case.formatted_path, **kwargs)
        assert r.status_code < 500, f"{label}: {r.status_code} {r.text[:300]}\n{case.body!r}"
        if r.status_code >= 400:
            assert r.json()["detail"], f"{label}: {r.status_code} without a message"

    check()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_no_operation_answers_with_a_server_error(console: Console) -> None:
    schema = schemathesis.openapi.from_dict(console.app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    for operation in operations:
        _fuzz(console, operation)
