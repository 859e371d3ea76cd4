"""The Console's pages outside Radar in Debian's chromium, against a seeded Console:
sign-in, not found, Defenders, users and tokens, policy changes, audits, import
preview, objects named with '/', the API docs with no network but the Console,
the assets as served, and axe-core on every page."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from radarpage import sign_in, wait_radar
from radarserver import RadarConsole

from cnnf.console.services.records import AuditRecord
from cnnf.model import Effect

pytestmark = pytest.mark.browser

# "2026-11-30 12:48:05 UTC": ISO date, local time with seconds, the zone.
TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+$")
AXE = Path(__file__).resolve().parents[2] / "src/cnnf/web/node_modules/axe-core/axe.min.js"


def get(console: RadarConsole, path: str) -> Any:
    """One API answer through a client closed at once (no socket left open)."""
    with console.client() as api:
        return api.get(path)


def wait_page(page: Any, name: str) -> None:
    page.wait_for_function(f"document.body.dataset.page === {json.dumps(name)}")


def accept_dialogs(page: Any) -> None:
    page.on("dialog", lambda d: d.accept())


def test_the_login_page_shows_no_navigation(page: Any, console: RadarConsole) -> None:
    page.goto(console.url + "/")
    page.wait_for_selector("form#login")
    assert not page.is_visible("#top")
    assert not page.is_visible("#nav") and not page.is_visible("#logout")
    sign_in(page, console)
    wait_radar(page)
    assert page.is_visible("#nav") and page.is_visible("#logout")
    page.click("#logout")
    page.wait_for_selector("form#login")
    assert not page.is_visible("#top")


def test_an_unknown_route_says_not_found(page: Any, console: RadarConsole) -> None:
    sign_in(page, console, "#/no-such-page/x")
    page.wait_for_selector("#not-found")
    assert page.text_content("#not-found h1") == "Page not found"
    assert 'There is no page "#/no-such-page/x"' in page.text_content("#not-found")
    assert page.query_selector("#graph") is None
    assert page.query_selector("#nav a.active") is None
    page.click("#not-found a")
    wait_radar(page)


def test_defenders_are_listed_and_revoked(page: Any, console: RadarConsole) -> None:
    accept_dialogs(page)
    sign_in(page, console, "#/defenders")
    page.wait_for_selector("#defenders tr[data-host='node-2']")
    api = {d["hostname"]: d for d in get(console, "/api/v1/defenders").json()}
    for host in ("node-1", "node-2"):
        cells = page.locator(f"#defenders tr[data-host='{host}'] td").all_text_contents()
        assert cells[0] == host and cells[1] == (api[host]["version"] or "not reported")
        assert cells[2] == "connected"
        assert cells[3] == "not reported"  # the shop's Defenders report no datapath state
        assert TIME.match(cells[4]) and TIME.match(cells[5]), cells  # last report, enrolled
        assert cells[6] == str(api[host]["workloads"]) and cells[7] == str(api[host]["protected"])
    page.click("#defenders tr[data-host='node-2'] button:has-text('Revoke')")
    page.wait_for_selector("#defenders-message:has-text('Revoked the Defender of node-2')")
    row = "#defenders tr[data-host='node-2']"
    assert page.locator(f"{row} td").nth(2).text_content() == "revoked"
    assert page.locator(f"{row} button").count() == 0
    after = {d["hostname"]: d["status"] for d in get(console, "/api/v1/defenders").json()}
    assert after == {"node-1": "connected", "node-2": "revoked"}
    # The revoked Defender's credential is refused from now on.
    with console.client(console.defenders["node-2"]) as defender:
        assert defender.get("/api/v1/defender/inventory").status_code == 401


def test_users_and_api_tokens(page: Any, console: RadarConsole) -> None:
    accept_dialogs(page)
    sign_in(page, console, "#/users")
    page.wait_for_selector("#users tr[data-name='admin']")
    page.fill("#user-form input[name=name]", "ops")
    page.select_option("#user-form select[name=role]", "operator")
    page.fill("#user-form input[name=password]", "short")
    page.click("#user-form button[type=submit]")
    page.wait_for_selector("#user-form .field-error")  # the API's length rule, at the field
    assert get(console, "/api/v1/users/ops").status_code == 404
    page.fill("#user-form input[name=password]", "a-long-enough-password")
    page.click("#user-form button[type=submit]")
    page.wait_for_selector("#users tr[data-name='ops']")
    assert page.text_content("#users-message") == "Created user ops (operator)."
    assert get(console, "/api/v1/users/ops").json()["role"] == "operator"

    page.fill("#token-form input[name=name]", "ci-pipeline")
    page.fill("#token-form input[name=expiresInDays]", "30")
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#new-token-secret")
    secret = page.text_content("#new-token-secret")
    with console.client(secret) as tokened:
        assert tokened.get("/api/v1/auth/me").json()["name"] == "admin"
    row = page.locator("#tokens tr[data-name='ci-pipeline'] td").all_text_contents()
    assert row[1] == "admin" and TIME.match(row[3]) and TIME.match(row[4]) and row[5] == "never"
    page.click("#tokens tr[data-name='ci-pipeline'] button:has-text('Revoke')")
    page.wait_for_selector("#users-message:has-text('Revoked token ci-pipeline of admin')")
    with console.client(secret) as tokened:
        assert tokened.get("/api/v1/auth/me").status_code == 401

    page.click("#users tr[data-name='ops'] button:has-text('Delete')")
    page.wait_for_selector("#users-message:has-text('Deleted user ops')")
    assert get(console, "/api/v1/users/ops").status_code == 404
    # The last admin cannot be deleted: the API's refusal is shown, nothing changes.
    page.click("#users tr[data-name='admin'] button:has-text('Delete')")
    page.wait_for_selector("#users-message:has-text('last enabled admin')")
    assert get(console, "/api/v1/users/admin").status_code == 200


def test_an_operator_sees_only_their_tokens(page: Any, console: RadarConsole) -> None:
    with console.client() as api:
        api.post("/api/v1/users", json={"name": "ops", "role": "operator",
                                        "password": "a-long-enough-password"}).raise_for_status()
        api.post("/api/v1/tokens", json={"name": "admins-token"}).raise_for_status()
    sign_in(page, console, "#/users", credentials=("ops", "a-long-enough-password"))
    page.wait_for_selector("#tokens")
    assert page.text_content("h1") == "API tokens"
    assert page.query_selector("#users") is None
    page.wait_for_selector("#tokens td:has-text('No API tokens.')")
    assert "admins-token" not in page.text_content("#tokens")


def test_the_policy_change_history(page: Any, console: RadarConsole) -> None:
    with console.client() as api:
        api.put("/api/v1/objects/lan", json={"name": "lan", "kind": "subnet",
                                             "cidrs": ["192.0.2.0/25"]}).raise_for_status()
    changes = get(console, "/api/v1/changes").json()
    sign_in(page, console, "#/changes")
    page.wait_for_selector("#changes tbody tr[data-id]")
    first = page.locator("#changes tbody tr").first.locator("td").all_text_contents()
    latest = changes["items"][0]
    assert TIME.match(first[0])
    assert first[1:5] == [str(latest["revision"]), "admin", latest["action"], latest["resource"]]
    assert "192.0.2.0/24" in first[5] and "192.0.2.0/25" in first[6]
    total = changes["total"]
    assert page.text_content("#changes-pager") == f"1\u2013{min(total, 50)} of {total}"


def _audit(console: RadarConsole, minutes_ago: float, **fields: Any) -> None:
    data: dict[str, Any] = {
        "time": datetime.now(UTC) - timedelta(minutes=minutes_ago), "type": "container",
        "rule_id": 0, "rule_name": "", "blocked": True, "effect": Effect.PREVENT,
        "src_image": "shop/web:1.4", "src_container": "web-1", "src_namespace": "shop",
        "src_hostname": "node-1", "port": 443, "count": 1, "msg": "blocked"}
    data.update(fields)
    console.add_audits([AuditRecord.model_validate(data)])


def test_audits_link_filter_show_domains_and_refresh(page: Any, console: RadarConsole) -> None:
    _audit(console, 1, dst_domain="api.pay.example", dst_address="203.0.113.5", port=443,
           msg="blocked connection to api.pay.example")
    sign_in(page, console, "#/audits")
    page.wait_for_selector("#audits tbody tr[data-id]")
    rows = page.locator("#audits tbody tr")
    assert rows.count() == 3
    top = rows.first.locator("td").all_text_contents()
    assert TIME.match(top[0]), top[0]
    assert top[3] == "no rule (default effect)"
    assert top[5] == "api.pay.example (203.0.113.5)"
    # The seeded alert by rule 2 (api-db): a link to the rule and one to the Radar edge.
    alert = page.locator("#audits tbody tr", has_text="api-db")
    link = alert.locator("td.rule a")
    assert link.text_content() == "#2 api-db"
    assert link.get_attribute("href") == "#/rules/container?edit=2"
    assert alert.locator("a.radar-link").get_attribute("href") == (
        "#/radar?view=container&src=image%3Ashop%2Fapi%3A2.0&dst=image%3Ashop%2Fdb%3A15&port=5432")

    # Filters: rule glob, namespace (either end), pod.
    page.fill("#audit-filters input[name=rule]", "api-*")
    page.click("#audit-filters button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#audits tbody tr').length === 2")
    page.fill("#audit-filters input[name=rule]", "")
    page.fill("#audit-filters input[name=namespace]", "data")
    page.click("#audit-filters button[type=submit]")
    page.wait_for_selector("#audits td:has-text('No audits match.')")
    _audit(console, 0.5, src_namespace="shop", dst_image="shop/db:15", dst_container="db-1",
           dst_namespace="data", dst_pod="db-0", port=5432)
    # Auto-refresh: the new audit shows without touching the page.
    page.wait_for_selector("#audits tbody tr[data-id]", timeout=25_000)
    assert "db-0 in data" in page.locator("#audits tbody tr").first.text_content()
    page.fill("#audit-filters input[name=pod]", "db-*")
    page.click("#audit-filters button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#audits tbody tr[data-id]').length === 1")

    # Rule link: the editor opens on the rule.
    page.fill("#audit-filters input[name=namespace]", "")
    page.fill("#audit-filters input[name=pod]", "")
    page.click("#audit-filters button[type=submit]")
    page.click("#audits td.rule a:has-text('#2 api-db')")
    page.wait_for_selector("#rule-form h2:has-text('Edit rule #2')")
    page.go_back()
    # Radar link: Radar opens with that edge selected and its panel shown.
    page.click("#audits tbody tr:has-text('api-db') a.radar-link")
    wait_radar(page)
    page.wait_for_selector("#panel:not([hidden])")
    selected = page.evaluate("window.cnnfRadar.cy.edges(':selected').map(e => [e.data('source'), "
                             "e.data('target')])")
    assert selected == [["image:shop/api:2.0", "image:shop/db:15"]]
    assert "5432" in page.text_content("#panel")


def test_import_preview_says_what_the_import_does(page: Any, console: RadarConsole) -> None:
    policy = get(console, "/api/v1/policy/export").json()
    spec = policy["spec"]
    spec["containerRules"] = [r for r in spec["containerRules"] if r["id"] != 3]
    spec["containerRules"][0]["ports"] = [8080, 8443]
    spec["containerRules"].append({"id": 9, "name": "web-db", "src": "web", "dst": "db",
                                   "ports": [5432], "effect": "prevent"})
    spec["objects"] = [o for o in spec["objects"] if o["name"] != "payments"]
    spec["containerEnabled"] = True
    sign_in(page, console, "#/transfer")
    page.wait_for_selector("textarea[name=document]")
    page.fill("textarea[name=document]", json.dumps(policy))
    page.click("#import-preview-button")
    page.wait_for_selector("#import-preview ul.diff")
    items = page.locator("#import-preview ul.diff li").all_text_contents()
    assert items == [
        "Settings: containerEnabled false → true",
        "Objects: removes payments",
        "Container rules: adds rule #9; removes rule #3 api-lan; changes rule #1 web-api",
        "Host rules: no change",
    ]
    text = page.text_content("#import-preview")
    assert "null" not in text and "undefined" not in text
    assert page.text_content("#import-preview h3") == (
        "What this import would do (nothing is changed yet)")
    page.click("#import-apply")
    page.wait_for_selector("#import-preview h3:has-text('Applied')")
    revision = get(console, "/api/v1/policy").json()["revision"]
    assert page.text_content("#import-preview h3") == (
        f"Applied: the policy is now at revision {revision}")
    assert "removed rule #3" in page.text_content("#import-preview ul.diff")


def test_an_object_named_with_a_slash_is_edited_and_deleted_in_the_ui(
        page: Any, console: RadarConsole) -> None:
    accept_dialogs(page)
    sign_in(page, console, "#/objects")
    page.click("#add-object")
    page.fill("#object-form input[name=name]", "bad name/with spaces")
    page.fill("#object-form input[name=images]", "shop/api*")
    page.click("#object-form button[type=submit]")
    row = "#objects tr[data-name='bad name/with spaces']"
    page.wait_for_selector(row)
    page.click(f"{row} button:has-text('Edit')")
    page.fill("#object-form input[name=description]", "edited")
    page.click("#object-form button[type=submit]")
    page.wait_for_selector(f"{row} td:has-text('edited')")
    with console.client() as api:
        got = api.get("/api/v1/objects/bad%20name%2Fwith%20spaces").json()
    assert got["description"] == "edited"
    page.click(f"{row} button:has-text('Delete')")
    page.wait_for_selector(row, state="detached")
    with console.client() as api:
        assert api.get("/api/v1/objects/bad%20name%2Fwith%20spaces").status_code == 404
    # "..": refused with the API's message at the name field; nothing created.
    page.click("#add-object")
    page.fill("#object-form input[name=name]", "..")
    page.fill("#object-form input[name=images]", "x")
    page.click("#object-form button[type=submit]")
    page.wait_for_selector("#object-form .field-error:has-text('cannot be a name')")
    names = [o["name"] for o in get(console, "/api/v1/objects").json()]
    assert ".." not in names


def test_api_docs_work_with_no_network_but_the_console(browser: Any,
                                                      console: RadarConsole) -> None:
    context = browser.new_context()
    elsewhere: list[str] = []
    origin = urlsplit(console.url).netloc

    def only_the_console(route: Any) -> None:
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_console)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{console.url}/api/v1/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
        assert page.text_content(".swagger-ui .info .title").startswith("CNNF Console")
        page.wait_for_selector(".opblock")
        assert page.locator(".opblock").count() > 40
        page.screenshot(path=str(Path(__file__).resolve().parents[2]
                                 / "test-artifacts/browser/api_docs_offline.png"))
    finally:
        context.close()
    assert elsewhere == [] and errors == []


def test_assets_arrive_compressed_and_cacheable(page: Any, console: RadarConsole) -> None:
    answers: dict[str, dict[str, str]] = {}
    page.on("response", lambda r: answers.__setitem__(urlsplit(r.url).path, r.all_headers()))
    sign_in(page, console)
    wait_radar(page)
    script = next(p for p in answers if re.fullmatch(r"/assets/app-\w+\.js", p))
    # Chromium offers br only over HTTPS; over loopback HTTP it takes gzip.
    assert answers[script]["content-encoding"] in ("gzip", "br")
    assert answers[script]["cache-control"] == "public, max-age=31536000, immutable"
    assert answers["/"]["cache-control"] == "no-cache"
    first_ms = page.evaluate("window.cnnfRadar.timing.firstRenderMs")
    print(f"demo Radar first render: {first_ms} ms")
    # The page's ETag (a reload is answered 304 to If-None-Match) is checked over
    # HTTP in tests/console/test_ui.py; Chromium reports a revalidated navigation
    # to Playwright as the cached 200, so it is not asserted here.
    assert answers["/"].get("etag")


PAGES = ["#/radar", "#/rules/container", "#/rules/host", "#/objects", "#/audits",
         "#/settings", "#/transfer", "#/defenders", "#/users", "#/changes", "#/nowhere"]


def axe_violations(page: Any) -> list[dict[str, Any]]:
    page.add_script_tag(path=str(AXE))
    found: list[dict[str, Any]] = page.evaluate("""async () => {
      const r = await axe.run(document, {resultTypes: ['violations']});
      return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
        .map(v => ({id: v.id, impact: v.impact, help: v.help,
                    nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))}));
    }""")
    return found


def test_axe_finds_no_serious_violation_on_any_page(page: Any, console: RadarConsole) -> None:
    if not AXE.is_file():
        pytest.fail(f"{AXE} is missing: run scripts/bootstrap.sh (npm ci in src/cnnf/web)")
    page.goto(console.url + "/")
    page.wait_for_selector("form#login")
    found = {"login": axe_violations(page)}
    sign_in(page, console)
    wait_radar(page)
    for hash_ in PAGES:
        page.goto(f"{console.url}/{hash_}")
        page.wait_for_function("document.querySelector('#main').children.length > 0")
        page.wait_for_load_state("networkidle")
        if hash_ == "#/radar":
            wait_radar(page)
        found[hash_] = axe_violations(page)
    bad = {k: v for k, v in found.items() if v}
    assert bad == {}, json.dumps(bad, indent=1)


def test_a_browser_without_compression_gets_plain_assets(browser: Any,
                                                         console: RadarConsole) -> None:
    context = browser.new_context(extra_http_headers={"Accept-Encoding": "identity"})
    page = context.new_page()
    try:
        answers: dict[str, dict[str, str]] = {}
        page.on("response", lambda r: answers.__setitem__(urlsplit(r.url).path,
                                                          r.all_headers()))
        sign_in(page, console, query="?poll=600000")
        wait_radar(page)
        script = next(p for p in answers if re.fullmatch(r"/assets/app-\w+\.js", p))
        assert "content-encoding" not in answers[script]
    finally:
        context.close()


