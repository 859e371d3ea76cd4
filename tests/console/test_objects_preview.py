"""``POST /api/v1/objects/preview``, against SQLite and PostgreSQL: which
running workloads (the cluster inventory) a container or host selector
selects, matched as the policy engine matches; bad selectors are refused with
the field named; nothing is stored."""

from __future__ import annotations

from consoletest import ApiClient, Console
from test_defenders import API, enroll

from cnnf.console.security import Role
from cnnf.model.records import HostInfo, InventoryReport, WorkloadInfo


def _inventory(console: Console, admin: ApiClient) -> None:
    for host, workloads in [
        ("node-1", [("web-1", "shop/web:1.4", "shop", "10.88.1.2", {"app": "web"}),
                    ("api-1", "shop/api:2.0", "shop", "10.88.1.5", {"app": "api"})]),
        ("node-2", [("db-1", "docker.io/library/postgres:15", "data", "10.88.1.7",
                     {"app": "db"})]),
    ]:
        _, defender = enroll(console, admin, host)
        report = InventoryReport(
            host=HostInfo(name=host, addresses=[f"10.10.0.{host[-1]}"], labels={"zone": host}),
            containers=[WorkloadInfo(address=a, image=i, name=n, namespace=ns, host=host,
                                     labels=labels) for n, i, ns, a, labels in workloads])
        assert defender.post(f"{API}/defender/inventory",
                             json=report.model_dump(mode="json")).status_code == 204


def _names(r: dict[str, object]) -> list[str]:
    return [m["name"] for m in r["matches"]]  # type: ignore[attr-defined, index]


def test_a_container_selector_previews_the_workloads_it_selects(
        console: Console, admin: ApiClient) -> None:
    _inventory(console, admin)
    reader = console.as_role(Role.AUDITOR)

    def preview(**selector: list[str]) -> dict[str, object]:
        r = reader.post(f"{API}/objects/preview", json={"kind": "container",
                                                        "selector": selector})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    r = preview(images=["shop/*"])
    assert (_names(r), r["total"], r["known"]) == (["api-1", "web-1"], 2, 3)
    assert r["matches"][0] == {  # type: ignore[index]
        "kind": "container", "name": "api-1", "image": "shop/api:2.0", "namespace": "shop",
        "pod": "", "host": "node-1", "address": "10.88.1.5"}
    # as the engine matches: "postgres" names docker.io/library/postgres:15
    assert _names(preview(images=["postgres"])) == ["db-1"]
    assert _names(preview(images=["shop/*"], labels=["app=w*"])) == ["web-1"]
    assert _names(preview(namespaces=["data"], hosts=["node-2"])) == ["db-1"]
    assert (_names(preview(images=["nothing*"])), preview(images=["*"])["total"]) == ([], 3)


def test_a_host_selector_previews_the_hosts_it_selects(
        console: Console, admin: ApiClient) -> None:
    _inventory(console, admin)
    r = admin.post(f"{API}/objects/preview",
                   json={"kind": "host", "selector": {"labels": ["zone=node-2"]}}).json()
    assert (r["matches"], r["total"], r["known"]) == (
        [{"kind": "host", "name": "node-2", "image": "", "namespace": "", "pod": "",
          "host": "node-2", "address": "10.10.0.2"}], 1, 2)


def test_a_bad_selector_is_refused_with_the_field_named(
        console: Console, admin: ApiClient) -> None:
    for body, path in [
        ({"kind": "container", "selector": {}}, "selector"),
        ({"kind": "container", "selector": {"labels": ["novalue"]}}, "selector.labels"),
        ({"kind": "subnet", "selector": {"images": ["*"]}}, "kind"),
        ({"kind": "container", "selector": {"images": ["*"]}, "extra": 1}, "extra"),
    ]:
        r = admin.post(f"{API}/objects/preview", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["errors"][0]["path"].startswith(path), (body, r.json())
    assert admin.get(f"{API}/objects").json() == []  # nothing stored
    assert console.client().post(f"{API}/objects/preview", json={
        "kind": "container", "selector": {"images": ["*"]}}).status_code == 401
