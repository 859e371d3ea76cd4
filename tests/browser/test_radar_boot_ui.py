"""The boot script (assets/boot-HASH.js): Radar's first /radar request sent from
the page's head before the bundle has loaded, and when Radar takes its answer.

Every test signs in, then loads the page again (a first visit, signed in), with
the bundle (assets/app-HASH.js) held back where the test changes something
before it runs; the /radar requests the browser sends are counted.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from radarpage import sign_in, wait_radar
from radarserver import ADMIN, RadarConsole

pytestmark = pytest.mark.browser

BUNDLE = re.compile(r"/assets/app-[^/]+\.js$")
# Counts each time the login form is drawn (set before the page's scripts run).
COUNT_LOGINS = """window.cnnfLogins = 0;
new MutationObserver((ms) => { for (const m of ms) for (const n of m.addedNodes)
  if (n.id === 'login') window.cnnfLogins += 1; })
  .observe(document, {childList: true, subtree: true});"""


class Requests:
    """The /api/v1/radar requests the page sends: (query, Authorization)."""

    def __init__(self, page: Any) -> None:
        self.sent: list[tuple[dict[str, list[str]], str | None]] = []
        page.on("request", self._on)

    def _on(self, request: Any) -> None:
        if urlsplit(request.url).path == "/api/v1/radar":
            self.sent.append((parse_qs(urlsplit(request.url).query),
                              request.headers.get("authorization")))


def signed_in(page: Any, console: RadarConsole, poll_ms: int = 60_000) -> str:
    """Signed in on Radar (polling every poll_ms); the page's token."""
    sign_in(page, console, "#/radar", f"?poll={poll_ms}")
    wait_radar(page)
    token: str = page.evaluate("sessionStorage.getItem('cnnf.token')")
    return token


def load_held(page: Any, hash_: str = "#/radar") -> Any:
    """Load the page again on hash_ with the bundle held back once the boot script
    has sent its request; returns the held bundle request (route.continue_() it)."""
    held: list[Any] = []

    def hold(route: Any) -> None:  # a bound builtin (held.append) is refused by Playwright
        held.append(route)

    page.route(BUNDLE, hold)
    page.evaluate("(h) => { location.hash = h; }", hash_)
    page.reload(wait_until="commit")
    page.wait_for_function("window.cnnfBoot !== undefined", polling=50)
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert held, "the bundle was not requested"
    return held[0]


def release(page: Any, bundle: Any) -> None:
    bundle.continue_()
    page.unroute(BUNDLE)


def live(page: Any) -> str:
    text: str = page.text_content("#live") or ""
    return text


def test_first_visit_takes_the_boot_answer(page: Any, console: RadarConsole) -> None:
    signed_in(page, console)
    requests = Requests(page)
    page.reload()
    wait_radar(page)
    assert len(requests.sent) == 1  # the boot script's, taken by Radar
    marks = page.evaluate("""() => Object.fromEntries(['cnnf:radar-request', 'cnnf:script']
      .map(n => [n, performance.getEntriesByName(n).map(e => e.startTime)]))""")
    assert len(marks["cnnf:radar-request"]) == 1
    assert marks["cnnf:radar-request"][0] < marks["cnnf:script"][0]  # sent before the bundle ran
    assert page.evaluate("window.cnnfBoot") is None
    assert live(page).startswith("● Live")


def test_a_link_changed_before_the_bundle_ran_asks_again(page: Any,
                                                          console: RadarConsole) -> None:
    signed_in(page, console)
    requests = Requests(page)
    bundle = load_held(page)
    page.evaluate("location.hash = '#/radar?view=host'")  # not what the boot script asked
    release(page, bundle)
    wait_radar(page)
    assert [q["view"] for q, _ in requests.sent] == [["container"], ["host"]]
    assert page.eval_on_selector("select[name=view]", "s => s.value") == "host"


def test_an_expired_session_shows_the_login_once_then_radar_loads_fresh(
        page: Any, console: RadarConsole) -> None:
    old = signed_in(page, console, poll_ms=1000)
    with console.client(old) as api:  # the session ends (as if expired)
        api.post("/api/v1/auth/logout").raise_for_status()
    page.add_init_script(COUNT_LOGINS)
    requests = Requests(page)
    page.reload()
    page.wait_for_selector("#login-error:has-text('Your session ended')")
    page.fill("input[name=username]", "adm")
    page.wait_for_timeout(2500)  # 2.5 polls: Radar does not poll without a session
    assert page.evaluate("window.cnnfLogins") == 1
    assert page.input_value("input[name=username]") == "adm"
    assert len(requests.sent) == 1  # the boot script's, answered 401
    page.fill("input[name=username]", ADMIN[0])
    page.fill("input[name=password]", ADMIN[1])
    page.click("form#login button[type=submit]")
    page.wait_for_function("window.cnnfRadar && window.cnnfRadar.ready")
    new = page.evaluate("sessionStorage.getItem('cnnf.token')")
    assert new and new != old
    assert [auth for _, auth in requests.sent[:2]] == [f"Bearer {old}", f"Bearer {new}"]
    assert live(page).startswith("● Live")
    page.wait_for_timeout(1500)
    assert page.evaluate("document.body.dataset.page") == "radar"
    assert page.evaluate("window.cnnfLogins") == 1


def test_radar_opened_after_another_page_asks_afresh(page: Any, console: RadarConsole) -> None:
    signed_in(page, console)
    requests = Requests(page)
    bundle = load_held(page)
    page.evaluate("location.hash = '#/audits'")  # the first page shown is not Radar
    release(page, bundle)
    page.wait_for_selector("body[data-page=audits]")
    assert page.evaluate("window.cnnfBoot") is None
    page.click("#nav a[data-page=radar]")
    wait_radar(page)
    assert len(requests.sent) == 2  # the boot script's answer was not taken


def test_radar_after_signing_in_again_does_not_replay_the_boot_401(
        page: Any, console: RadarConsole) -> None:
    old = signed_in(page, console)
    with console.client(old) as api:
        api.post("/api/v1/auth/logout").raise_for_status()
    requests = Requests(page)
    bundle = load_held(page)
    page.evaluate("location.hash = '#/audits'")
    release(page, bundle)
    page.wait_for_selector("#login-error:has-text('Your session ended')")
    page.fill("input[name=username]", ADMIN[0])
    page.fill("input[name=password]", ADMIN[1])
    page.click("form#login button[type=submit]")
    page.wait_for_selector("body[data-page=audits]")
    page.click("#nav a[data-page=radar]")
    wait_radar(page)
    assert page.evaluate("document.body.dataset.page") == "radar"
    assert live(page).startswith("● Live")
    assert len(requests.sent) == 2


def test_a_boot_answer_for_another_token_or_too_old_is_not_taken(
        page: Any, console: RadarConsole) -> None:
    signed_in(page, console)
    requests = Requests(page)
    bundle = load_held(page)
    # Signed in again (another session) before the bundle ran.
    page.evaluate("(t) => sessionStorage.setItem('cnnf.token', t)", console.token)
    release(page, bundle)
    wait_radar(page)
    assert [auth for _, auth in requests.sent][1:] == [f"Bearer {console.token}"]
    assert len(requests.sent) == 2

    requests.sent.clear()
    bundle = load_held(page)
    page.wait_for_timeout(5500)  # older than the 5 s Radar takes
    release(page, bundle)
    wait_radar(page)
    assert len(requests.sent) == 2
    assert live(page).startswith("● Live")
