"""The object editor's preview in Debian's chromium: as a container or host
selector is typed, the editor lists the running workloads it selects (the
shop's inventory, as its Defenders reported it), says what is wrong with a
half-typed pattern, and saving still works."""

from __future__ import annotations

from typing import Any

import pytest
from radarpage import sign_in
from radarserver import RadarConsole

pytestmark = pytest.mark.browser

COUNT = "#object-preview-count"


def _count_is(page: Any, text: str) -> None:
    page.wait_for_function(
        "(t) => (document.querySelector('#object-preview-count') || {}).textContent === t",
        arg=text)


def test_the_editor_previews_what_a_selector_selects_as_it_is_typed(
        page: Any, console: RadarConsole) -> None:
    sign_in(page, console, "#/objects")
    page.click("#add-object")
    page.wait_for_selector("#object-preview:has-text('Type a selector')")
    page.fill("#object-form input[name=name]", "shop-front")
    page.locator("#object-form input[name=images]").press_sequentially("shop/*", delay=20)
    _count_is(page, "Selects 7 of 9 running containers.")
    page.locator("#object-form input[name=labels]").press_sequentially("app=web", delay=20)
    _count_is(page, "Selects 3 of 9 running containers.")
    items = page.locator("#object-preview li").all_text_contents()
    assert items == [
        "shop/web-1 · shop/web:1.4 · node-1 · 10.88.1.2",
        "shop/web-2 · shop/web:1.4 · node-2 · 10.88.1.3",
        "shop/web-3 · shop/web:1.4 · node-1 · 10.88.1.4"]
    page.fill("#object-form input[name=hosts]", "node-2")
    _count_is(page, "Selects 1 of 9 running containers.")
    # a half-typed label pattern: the preview says what is wrong, nothing fails
    page.fill("#object-form input[name=labels]", "app")
    page.wait_for_selector("#object-preview .error:has-text('is not key=value')")
    page.fill("#object-form input[name=labels]", "app=web")
    _count_is(page, "Selects 1 of 9 running containers.")
    page.click("#object-form button[type=submit]")
    page.wait_for_selector("#objects tr[data-name='shop-front']")
    with console.client() as api:
        saved = api.get("/api/v1/objects/shop-front").json()
    assert {k: v for k, v in saved["selector"].items() if v} == {
        "images": ["shop/*"], "labels": ["app=web"], "hosts": ["node-2"]}


def test_a_host_selector_previews_hosts(page: Any, console: RadarConsole) -> None:
    sign_in(page, console, "#/objects")
    page.click("#add-object")
    page.select_option("#object-form select[name=kind]", "host")
    page.fill("#object-form input[name=labels]", "zone=b")
    _count_is(page, "Selects 1 of 2 known hosts.")
    assert page.locator("#object-preview li").all_text_contents() == ["node-2 · 10.10.0.2"]
    page.select_option("#object-form select[name=kind]", "subnet")
    page.wait_for_selector("#object-preview", state="hidden")
