""""Datapath up" as Defenders report it, against SQLite and PostgreSQL: stored
from the inventory report, listed on ``GET /api/v1/defenders``, kept when a
report does not say, and never part of the cluster inventory (a change of it
wakes no Defender)."""

from __future__ import annotations

from consoletest import ApiClient, Console
from test_defenders import API, enroll, report

from cnnf.console.security import Role
from cnnf.model.records import DatapathState


def _listed(admin: ApiClient) -> tuple[bool | None, list[str]]:
    [info] = admin.get(f"{API}/defenders").json()
    return info["datapathUp"], info["datapathProblems"]


def test_datapath_up_is_stored_listed_and_kept_out_of_the_inventory(
        console: Console, admin: ApiClient) -> None:
    _, defender = enroll(console, admin)
    base = report("node-1", ("api-1", "10.0.0.5"))
    assert defender.post(f"{API}/defender/inventory",
                         json=base.model_dump(mode="json")).status_code == 204
    assert _listed(admin) == (None, [])  # not reported yet
    revision = admin.get(f"{API}/inventory").json()["revision"]

    down = base.model_copy(update={"datapath": DatapathState(
        up=False, problems=["queue 0 not bound", "verdict worker for queue 0 not running"])})
    assert defender.post(f"{API}/defender/inventory",
                         json=down.model_dump(mode="json")).status_code == 204
    assert _listed(admin) == (False, ["queue 0 not bound",
                                      "verdict worker for queue 0 not running"])
    # the workloads did not change: neither did the cluster inventory
    assert admin.get(f"{API}/inventory").json()["revision"] == revision
    # auditors read it too
    [info] = console.as_role(Role.AUDITOR).get(f"{API}/defenders").json()
    assert info["datapathUp"] is False

    # a report that does not say (an older Defender) keeps the last answer
    assert defender.post(f"{API}/defender/inventory",
                         json=base.model_dump(mode="json")).status_code == 204
    assert _listed(admin)[0] is False
    up = base.model_copy(update={"datapath": DatapathState(up=True)})
    assert defender.post(f"{API}/defender/inventory",
                         json=up.model_dump(mode="json")).status_code == 204
    assert _listed(admin) == (True, [])
    assert admin.get(f"{API}/inventory").json()["revision"] == revision


def test_a_bad_datapath_state_is_refused_and_changes_nothing(
        console: Console, admin: ApiClient) -> None:
    _, defender = enroll(console, admin)
    body = report("node-1").model_dump(mode="json")
    for bad, path in [({"up": "maybe"}, "datapath.up"),
                      ({"up": False, "problems": ["x" * 301]}, "datapath.problems[0]"),
                      ({"up": False, "problems": ["p"] * 21}, "datapath.problems")]:
        r = defender.post(f"{API}/defender/inventory", json={**body, "datapath": bad})
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["path"] == path, r.json()
    assert _listed(admin) == (None, [])
