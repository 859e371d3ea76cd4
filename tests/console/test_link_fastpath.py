"""The Defender link's fast path (cnnf.console.api.fastpath), on SQLite and
PostgreSQL: which requests it takes (counted by its metric), that what it
answers is what the OpenAPI document says (status documented, body valid against
the documented schema) and what the route answers, that a revoked Defender's
waiting long-poll still gets 401, and that everything else goes on to the routes
(their 400, 401, 403, 422) with nothing stored."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from consoletest import ApiClient, Console
from sqlalchemy import func, select
from test_cli import CNNF, running_console
from test_defenders import _credential, audit, enroll, flow, policy_long_polls, report
from tests.e2e.managed import PASSWORD

from cnnf.console.api import fastpath
from cnnf.console.api.fastpath import DefenderFastPath, _query
from cnnf.console.app import BodyLimit, create_app
from cnnf.console.security import Role
from cnnf.console.store.models import AuditRow, DefenderRow, ReportBatchRow
from cnnf.model.records import ReportBatch

API = "/api/v1"


def fast(console: Console, request: str, *statuses: str) -> float:
    """Requests of this kind the fast path answered (with these statuses; any)."""
    registry = console.app.state.link.metrics.registry
    return sum(registry.get_sample_value("cnnf_console_link_fast_path_total",
                                         {"request": request, "status": status}) or 0.0
               for status in statuses or ("200", "204", "401", "403", "422", "500"))


async def waiting(link: Any, keys: set[tuple[str, str]], timeout: float = 10.0) -> None:
    """Until these (Defender, topic) long-polls wait in the process (polled)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not keys <= set(link.waiting):
        assert asyncio.get_running_loop().time() < deadline, set(link.waiting)
        await asyncio.sleep(0.01)


def conforms(console: Console, method: str, path: str, response: httpx.Response) -> None:
    """The answer's status is documented for the operation, and its JSON body (if
    any) is valid against the documented schema."""
    document = console.client().get(f"{API}/openapi.json").json()
    operation = document["paths"][path][method]
    status = str(response.status_code)
    assert status in operation["responses"], (method, path, status)
    documented = operation["responses"][status]
    if response.status_code == 204:
        assert response.content == b""
        return
    assert response.headers["content-type"] == "application/json"
    schema = documented["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator(
        {**schema, "components": document["components"]}).validate(response.json())


@pytest.mark.parametrize("topic", ["policy", "inventory"])
def test_a_cached_defender_s_long_poll_takes_the_fast_path_and_answers_as_documented(
    console: Console, admin: ApiClient, topic: str
) -> None:
    """The first call verifies the credential through the route; the next ones are
    the fast path's, with the same answer, byte for byte, each as the document says."""
    _, reporter = enroll(console, admin)
    r = reporter.post(f"{API}/defender/inventory", content=report(
        "node-1", ("api", "10.1.0.2")).model_dump_json(),
        headers={"Content-Type": "application/json"})
    assert r.status_code == 204, r.text
    _, defender = enroll(console, admin, "node-2")
    before = fast(console, topic)
    routed = defender.get(f"{API}/defender/{topic}")
    assert fast(console, topic) == before  # verified by the route's guard
    taken = defender.get(f"{API}/defender/{topic}")
    assert fast(console, topic) == before + 1
    assert (taken.status_code, taken.content, taken.headers["content-type"]) == (
        routed.status_code, routed.content, routed.headers["content-type"])
    assert int(taken.headers["content-length"]) == len(taken.content)
    conforms(console, "get", f"{API}/defender/{topic}", taken)
    revision = taken.json()["revision"]
    unchanged = defender.get(f"{API}/defender/{topic}",
                             params={"revision": revision, "wait": "0.05"})
    assert unchanged.status_code == 204
    assert fast(console, topic) == before + 2
    conforms(console, "get", f"{API}/defender/{topic}", unchanged)


def test_a_defender_revoked_while_its_fast_long_poll_waits_gets_401_as_documented(
    console: Console, admin: ApiClient
) -> None:
    revoked_id, revoked = enroll(console, admin, "node-1")
    other_id, other = enroll(console, admin, "node-2")
    credentials = [_credential(revoked), _credential(other)]
    link = console.app.state.link
    link.store_poll = 3600
    admin_token = console.tokens[Role.ADMIN]
    for d in (revoked, other):  # verified once: the long-polls below are the fast path's
        assert d.get(f"{API}/defender/policy").status_code == 200
    before = fast(console, "policy")

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=console.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as c:
            polls = policy_long_polls(c, credentials)
            await waiting(link, {(revoked_id, "policy"), (other_id, "policy")})
            assert not any(p.done() for p in polls)
            r = await c.delete(f"{API}/defenders/{revoked_id}",
                               headers={"Authorization": f"Bearer {admin_token}"})
            assert r.status_code == 204, r.text
            # The revocation alone moves no policy: a change wakes both.
            r = await c.post(f"{API}/objects", headers={"Authorization": f"Bearer {admin_token}"},
                             json={"kind": "subnet", "name": "internet", "cidrs": ["0.0.0.0/0"]})
            assert r.status_code == 201, r.text
            return list(await asyncio.gather(*polls))

    gone, kept = asyncio.run(run())
    assert fast(console, "policy") == before + 2
    assert gone.status_code == 401, gone.text
    assert gone.json() == {"detail": "invalid or revoked Defender credential"}
    assert gone.headers["www-authenticate"] == "Bearer"
    conforms(console, "get", f"{API}/defender/policy", gone)
    assert kept.status_code == 200
    assert kept.json()["revision"] == 1
    conforms(console, "get", f"{API}/defender/policy", kept)
    # And its next call is refused by the route's guard (the store says revoked).
    assert revoked.get(f"{API}/defender/policy").status_code == 401


@pytest.mark.parametrize(("query", "status"), [
    ("revision=abc", 422), ("wait=31", 422), ("wait=-1", 422), ("revision=-2", 422),
    ("revision=1&revision=2", 400), ("rev=1", 400), ("revision=%31", 200),
    ("revision=+1", 200), ("wait=1e-3", 200),
])
def test_what_the_fast_path_does_not_take_the_route_judges(
    console: Console, admin: ApiClient, query: str, status: int
) -> None:
    _, defender = enroll(console, admin)
    assert defender.get(f"{API}/defender/policy").status_code == 200  # cached now
    before = fast(console, "policy")
    r = defender.get(f"{API}/defender/policy?{query}")
    assert r.status_code == status, r.text
    assert fast(console, "policy") == before
    conforms(console, "get", f"{API}/defender/policy", r)


def test_a_user_token_a_missing_or_unknown_credential_go_to_the_route(
    console: Console, admin: ApiClient
) -> None:
    before = fast(console, "policy")
    assert admin.get(f"{API}/defender/policy").status_code == 403
    assert console.client().get(f"{API}/defender/policy").status_code == 401
    assert console.client("cnnfd_" + "x" * 40).get(f"{API}/defender/policy").status_code == 401
    assert fast(console, "policy") == before


def test_a_cached_defender_s_batch_is_stored_once_by_the_fast_path(
    console: Console, admin: ApiClient
) -> None:
    _, defender = enroll(console, admin)
    assert defender.get(f"{API}/defender/policy").status_code == 200  # cached now
    body = ReportBatch(batch_id="b1", flows=[flow()], audits=[audit()]).model_dump_json()
    headers = {"Content-Type": "application/json"}
    before = fast(console, "reports")
    first = defender.post(f"{API}/defender/reports", content=body, headers=headers)
    again = defender.post(f"{API}/defender/reports", content=body, headers=headers)
    assert fast(console, "reports") == before + 2
    assert first.json() == {"accepted": True, "duplicate": False}
    assert again.json() == {"accepted": True, "duplicate": True}
    for answer in (first, again):
        conforms(console, "post", f"{API}/defender/reports", answer)
    with console.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditRow)) == 1
        assert s.scalar(select(func.count()).select_from(ReportBatchRow)) == 1


@pytest.mark.parametrize(("body", "path", "taken"), [
    (b'{"batch_id": "b2", "flows": [{"port": 70000}]}', "flows[0]", True),
    (b'{"batch_id": "b2", "flows": [', "body", False),  # not JSON: the route's
    (b'{"batch_id": ""}', "batch_id", True),
    (b'{"batch_id": "b2", "surprise": 1}', "surprise", True),
    (b'{"batch_id": "b2", "audits": [' + b",".join([b"{}"] * 1001) + b"]}", "audits", True),
])
def test_a_bad_batch_is_refused_as_the_route_refuses_it_and_nothing_is_stored(
    console: Console, admin: ApiClient, body: bytes, path: str, taken: bool
) -> None:
    """422 naming what is wrong, the same bytes as the route's answer (which a
    Content-Type with a charset gets: the fast path leaves that to the route);
    the fast path answers it itself unless the body is not JSON at all."""
    _, defender = enroll(console, admin)
    assert defender.get(f"{API}/defender/policy").status_code == 200
    before = fast(console, "reports")
    r = defender.post(f"{API}/defender/reports", content=body,
                      headers={"Content-Type": "application/json"})
    assert fast(console, "reports") == before + (1 if taken else 0)
    assert fast(console, "reports", "422") == (1 if taken else 0)
    routed = defender.post(f"{API}/defender/reports", content=body,
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert fast(console, "reports") == before + (1 if taken else 0)
    assert r.status_code == routed.status_code == 422, r.text
    assert r.content == routed.content
    assert any(e["path"].startswith(path) for e in r.json()["errors"]), r.json()
    conforms(console, "post", f"{API}/defender/reports", r)
    with console.session() as s:
        assert s.scalar(select(func.count()).select_from(ReportBatchRow)) == 0


def test_the_document_says_how_many_records_a_batch_may_hold(console: Console) -> None:
    document = console.client().get(f"{API}/openapi.json").json()
    batch = document["components"]["schemas"]["ReportBatch"]["properties"]
    assert batch["flows"]["maxItems"] == batch["audits"]["maxItems"] == 1000


def test_a_batch_is_validated_and_stored_off_the_event_loop(
    console: Console, admin: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large batch's validation (up to the body limit) does not hold the event
    loop, and with it every waiting long-poll's answer: it runs in a worker thread."""
    _, defender = enroll(console, admin)
    assert defender.get(f"{API}/defender/policy").status_code == 200
    threads: list[str] = []
    take = fastpath._take

    def recorded(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return take(*args)

    monkeypatch.setattr(fastpath, "_take", recorded)
    r = defender.post(f"{API}/defender/reports", content=ReportBatch(
        batch_id="b4", flows=[flow()] * 200).model_dump_json(),
        headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert len(threads) == 1
    assert threads[0] != threading.main_thread().name


def test_a_revoked_defender_s_batch_is_refused_by_the_store_on_the_fast_path(
    console: Console, admin: ApiClient
) -> None:
    """The cache did not hear of the revocation (another replica, notice lost): the
    fast path takes the call, the store's check refuses it, nothing is stored."""
    defender_id, defender = enroll(console, admin)
    assert defender.get(f"{API}/defender/policy").status_code == 200
    with console.session() as s:
        row = s.scalars(select(DefenderRow).where(DefenderRow.defender_id == defender_id)).one()
        row.revoked = True
        s.commit()
    before = fast(console, "reports", "401")
    r = defender.post(f"{API}/defender/reports", content=ReportBatch(
        batch_id="b3", audits=[audit()]).model_dump_json(),
        headers={"Content-Type": "application/json"})
    assert fast(console, "reports", "401") == before + 1
    assert r.status_code == 401, r.text
    conforms(console, "post", f"{API}/defender/reports", r)
    with console.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditRow)) == 0


@pytest.mark.parametrize(("raw", "parsed"), [
    (b"", (-1, 0.0)),
    (b"revision=5&wait=25", (5, 25.0)),
    (b"wait=0.5&revision=-1", (-1, 0.5)),
    (b"revision=9223372036854775807", (2**63 - 1, 0.0)),
    (b"revision=9223372036854775808", None),
    (b"wait=30", (-1, 30.0)),
    (b"wait=30.000001", None),
    (b"wait=99", None),
    (b"revision=05", None),
    (b"revision=-0", None),
    (b"revision=1&revision=1", None),
    (b"revision", None),
    (b"revision=1&", None),
    (b"other=1", None),
])
def test_the_query_the_fast_path_takes_as_is(raw: bytes, parsed: Any) -> None:
    assert _query(raw) == parsed


@pytest.mark.parametrize("query", ["revision=-1", "revision=%2D1"], ids=["fast", "routed"])
def test_a_revocation_between_the_credential_check_and_the_answer_gets_401(
    console: Console, admin: ApiClient, query: str
) -> None:
    """The long-poll is judged under the count of revoked Defenders its credential
    was checked with, not one read after: a revocation landing right after the
    check (here: inside the cache lookup) is seen, through the fast path and
    through the route alike."""
    defender_id, defender = enroll(console, admin)
    assert defender.get(f"{API}/defender/policy").status_code == 200  # cached now
    link = console.app.state.link
    lookup = link.verified.lookup

    def revoking(*args: Any, **kwargs: Any) -> Any:
        who = lookup(*args, **kwargs)  # checked under the count before the revocation
        with console.session() as s:
            row = s.scalars(select(DefenderRow).where(
                DefenderRow.defender_id == defender_id)).one()
            row.revoked = True
            s.commit()
        link.credentials.notify()  # as a revocation through this process does
        return who

    link.verified.lookup = revoking
    before = fast(console, "policy")
    r = defender.get(f"{API}/defender/policy?{query}")
    assert fast(console, "policy") == before + (1 if query == "revision=-1" else 0)
    assert r.status_code == 401, r.text
    assert r.json() == {"detail": "invalid or revoked Defender credential"}


def test_the_fast_path_sits_inside_every_other_middleware(console: Console) -> None:
    """What is added around the app (the body limit, and any middleware added
    later, after it) applies to the Defender link's fast path too."""
    order = [m.cls for m in console.app.user_middleware]
    assert order == [BodyLimit, DefenderFastPath]  # outermost first


def test_without_the_fast_path_the_routes_answer_the_same(
    console: Console, admin: ApiClient
) -> None:
    """``cnnf console --no-link-fast-path`` (for comparison and diagnosis): the
    same store, every Defender request through the routes, the same answers."""
    _, defender = enroll(console, admin)
    assert defender.get(f"{API}/defender/policy").status_code == 200  # cached now
    fast_answer = defender.get(f"{API}/defender/policy")
    config = dataclasses.replace(console.app.state.console.config, link_fast_path=False)
    routed_app = create_app(config, engine=console.engine, now=console.clock.now,
                            monotonic=console.clock.monotonic)
    try:
        assert [m.cls for m in routed_app.user_middleware] == [BodyLimit]
        routed = ApiClient(routed_app, _credential(defender))
        answers = [routed.get(f"{API}/defender/policy") for _ in range(2)]  # then cached
        assert [a.content for a in answers] == [fast_answer.content] * 2
        stored = routed.post(f"{API}/defender/reports", content=ReportBatch(
            batch_id="b5", audits=[audit()]).model_dump_json(),
            headers={"Content-Type": "application/json"})
        assert stored.json() == {"accepted": True, "duplicate": False}
        registry = routed_app.state.link.metrics.registry
        assert sum(registry.get_sample_value("cnnf_console_link_fast_path_total", {
            "request": r, "status": s}) or 0 for r in ("policy", "reports")
            for s in ("200", "204")) == 0
        routed.close()
    finally:
        routed_app.state.link.forwarder.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("flag", [(), ("--no-link-fast-path",)], ids=["fast", "off"])
def test_the_console_command_runs_with_the_fast_path_or_without(
    db_url: str, tmp_path: Path, flag: tuple[str, ...]
) -> None:
    """A served ``cnnf console``: a Defender's second long-poll (its credential
    cached) is the fast path's, unless ``--no-link-fast-path``."""
    created = subprocess.run([CNNF, "console", "create-user", "admin", "--password-stdin",
                              "--db", db_url], input=PASSWORD + "\n", capture_output=True,
                             text=True, timeout=60, check=False)
    assert created.returncode == 0, created.stderr
    with running_console(tmp_path, "--db", db_url, *flag) as base, \
            httpx.Client(base_url=base, timeout=30) as http:
        token = http.post(f"{API}/auth/login", json={
            "username": "admin", "password": PASSWORD}).json()["token"]
        admin = {"Authorization": f"Bearer {token}"}
        enrollment = http.post(f"{API}/defenders/enrollment-tokens", json={},
                               headers=admin).json()["token"]
        credential = http.post(f"{API}/defenders/enroll", json={
            "enrollment_token": enrollment, "hostname": "node-1",
            "version": "0.1.0"}).json()["credential"]
        answers = [http.get(f"{API}/defender/policy",
                            headers={"Authorization": f"Bearer {credential}"})
                   for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200]
        assert answers[0].content == answers[1].content
        metrics = http.get("/metrics", headers=admin).text
    taken = [line for line in metrics.splitlines() if line.startswith(
        'cnnf_console_link_fast_path_total{request="policy",status="200"}')]
    assert taken == [f'cnnf_console_link_fast_path_total{{request="policy",status="200"}} '
                     f'{0.0 if flag else 1.0}']
