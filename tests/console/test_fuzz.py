"""schemathesis against the published OpenAPI document, with every check it has
(server errors, status codes, content types, headers, response schemas, positive
data accepted, negative data rejected, auth not ignored, unsupported methods...):
as an admin and anonymously, positive and negative cases for every operation."""

from __future__ import annotations

from typing import Any

import invariants
import pytest
import schemathesis
from consoletest import Console
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from cnnf.console.security import Role
from cnnf.console.services.users import UserService

EXAMPLES_PER_OPERATION = 8

# Operations that revoke the caller's own credentials: as admin they would end the
# run's session (each case gets a fresh one, but logout is about that session).
SELF_REVOKING = {"POST /api/v1/auth/logout"}


def _run(console: Console, operation: Any, mode: GenerationMode, as_admin: bool) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        headers = {}
        sent = {k.lower() for k in case.headers or {}}
        # A fresh admin session in place of the generated credential, so a case that
        # ends one cannot starve the rest; a negative case that left it out stays so.
        if as_admin and "authorization" in sent:
            with console.session() as s:
                secret = UserService(s, console.clock.now).issue_session(
                    "admin-user", 600).token
            headers["Authorization"] = f"Bearer {secret}"
        if mode is GenerationMode.POSITIVE:
            invariants.hold(label, case)
        case.call_and_validate(headers=headers)

    check()


def _operations(console: Console) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", console.app)
    # A body over the Console's limit is refused with 413, which every operation with
    # a body documents (before the caller is known: the size is checked as the body
    # arrives); schemathesis's default list of refusals leaves it out.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("as_admin", [True, False], ids=["admin", "anonymous"])
def test_schemathesis_finds_no_failure(console: Console, as_admin: bool) -> None:
    operations = _operations(console)
    assert len(operations) >= 40
    ran = 0
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        if as_admin and label in SELF_REVOKING:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _run(console, operation, mode, as_admin)
            except Unsatisfiable:
                # No parameter, body or credential to make invalid (GET /healthz).
                assert mode is GenerationMode.NEGATIVE, label
                continue
            ran += 1
    assert ran >= 80

FAST_PATH = {"GET /api/v1/defender/policy", "GET /api/v1/defender/inventory",
             "POST /api/v1/defender/reports"}


def _defender_credential(console: Console) -> str:
    """An enrolled Defender's credential, verified once (cached: its calls below
    are the fast path's where it takes them, cnnf.console.api.fastpath)."""
    admin = console.as_role(Role.ADMIN)
    token = admin.post("/api/v1/defenders/enrollment-tokens", json={}).json()["token"]
    r = console.client().post("/api/v1/defenders/enroll", json={
        "enrollment_token": token, "hostname": "node-fuzz", "version": "0.1.0"})
    credential = str(r.json()["credential"])
    assert console.client(credential).get("/api/v1/defender/policy").status_code == 200
    return credential


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_schemathesis_as_a_defender_finds_no_failure(console: Console) -> None:
    """The Defender endpoints with a Defender's own (cached) credential: what the
    fast path answers is checked against the document as the routes' answers are.
    A long-poll's wait is kept short (a valid value still: the answer is the same,
    only sooner)."""
    credential = _defender_credential(console)
    console.app.state.link.store_poll = 0.05
    # The operations the fast path takes (POST /defender/inventory is the route's
    # alone).
    operations = [op for op in _operations(console)
                  if f"{op.method.upper()} {op.path}" in FAST_PATH]
    assert len(operations) == len(FAST_PATH)
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run_as_defender(operation, mode, credential)
    registry = console.app.state.link.metrics.registry
    taken = [sum(registry.get_sample_value("cnnf_console_link_fast_path_total",
                                           {"request": r, "status": status}) or 0
                 for status in ("200", "204", "401", "422", "500"))
             for r in ("policy", "inventory", "reports")]
    assert all(taken), taken  # the fast path's answers were among those checked


def _run_as_defender(operation: Any, mode: GenerationMode, credential: str) -> None:
    @settings(max_examples=EXAMPLES_PER_OPERATION * 3, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        sent = {k.lower() for k in case.headers or {}}
        headers = {}
        if "authorization" in sent:  # a negative case that left it out stays so
            headers["Authorization"] = f"Bearer {credential}"
        query = case.query or {}
        if mode is GenerationMode.POSITIVE and isinstance(query.get("wait"), float | int):
            query["wait"] = min(query["wait"], 0.1)
        case.call_and_validate(headers=headers)

    check()
