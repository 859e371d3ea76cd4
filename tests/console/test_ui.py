"""The built UI as the Console serves it: the page revalidated on every load,
content-hashed assets cached for a year and sent compressed when the client
accepts it, nothing else under ``/assets/``; Swagger UI at ``/api/v1/docs`` from
the Console's own files."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

import brotli  # type: ignore[import-untyped]
import pytest
from consoletest import ApiClient, Console
from fastapi import FastAPI

from cnnf.console.ui import (
    ASSET_CACHE,
    STATIC,
    accepted_encodings,
    add_docs,
    manifest,
    mount_ui,
    tag_matches,
)

SCRIPT = b"window.cnnfBuilt = true; /* " + b"x" * 2000 + b" */"


def _built(root: Path) -> Path:
    """A build as build.mjs lays it out (a small one)."""
    static = root / "static"
    (static / "assets").mkdir(parents=True)
    (static / "index.html").write_text(
        '<!doctype html><title>built</title><script src="assets/app-ABC.js"></script>')
    (static / "assets" / "app-ABC.js").write_bytes(SCRIPT)
    (static / "assets" / "app-ABC.js.gz").write_bytes(gzip.compress(SCRIPT))
    (static / "assets" / "app-ABC.js.br").write_bytes(brotli.compress(SCRIPT))
    (static / "assets" / "style-DEF.css").write_text("body { color: red; }")
    (static / "secret.txt").write_text("not an asset")
    (static / "manifest.json").write_text(json.dumps({
        "app.js": "assets/app-ABC.js", "style.css": "assets/style-DEF.css",
        "swagger-ui-bundle.js": "assets/sw-1.js", "swagger-ui.css": "assets/sw-2.css",
        "swagger-favicon.png": "assets/sw-3.png"}))
    return static


@pytest.fixture
def built(tmp_path: Path) -> Iterator[ApiClient]:
    app = FastAPI(docs_url=None, redoc_url=None)
    static = _built(tmp_path)
    add_docs(app, "/api/v1/docs", "/api/v1/openapi.json", static)
    mount_ui(app, static)
    client = ApiClient(app)
    try:
        yield client
    finally:
        client.close()


def test_the_page_is_revalidated_on_every_load(built: ApiClient) -> None:
    for path in ("/", "/index.html"):
        page = built.get(path)
        assert page.status_code == 200 and "<title>built</title>" in page.text
        assert page.headers["cache-control"] == "no-cache"
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        # a reload with the page's tag: 304, no body; another tag: the page
        tag = page.headers["etag"]
        again = built.get(path, headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == tag and again.headers["cache-control"] == "no-cache"
        other = built.get(path, headers={"If-None-Match": '"another-build"'})
        assert other.status_code == 200 and "<title>built</title>" in other.text
        # a list naming it, a weak form of it, or "*": 304 too
        for header in (f'"another-build", {tag}', f"W/{tag}", "*"):
            assert built.get(path, headers={"If-None-Match": header}).status_code == 304
        # a tag that only contains it is another tag
        assert built.get(path, headers={"If-None-Match": f'"x{tag}"'}).status_code == 200


def test_if_none_match_parsing() -> None:
    assert tag_matches('"a"', '"a"') and tag_matches('W/"a"', '"a"')
    assert tag_matches('"b", "a"', '"a"') and tag_matches("*", '"a"')
    assert not tag_matches('"ab"', '"a"') and not tag_matches("", '"a"')
    assert not tag_matches('"b", W/"c"', '"a"')


def test_a_new_build_has_another_page_tag(tmp_path: Path) -> None:
    tags = []
    for title in ("one", "two"):
        static = tmp_path / title
        (static / "assets").mkdir(parents=True)
        (static / "index.html").write_text(f"<title>{title}</title>")
        app = FastAPI(docs_url=None, redoc_url=None)
        mount_ui(app, static)
        client = ApiClient(app)
        try:
            tags.append(client.get("/").headers["etag"])
        finally:
            client.close()
    assert tags[0] != tags[1]


@pytest.mark.parametrize(("accept", "encoding"), [
    ("gzip, deflate, br", "br"),
    ("gzip, deflate", "gzip"),
    ("br;q=0, gzip", "gzip"),
    ("identity", None),
    ("", None),
])
def test_assets_are_cached_long_and_compressed_as_accepted(built: ApiClient, accept: str,
                                                            encoding: str | None) -> None:
    r = built.get("/assets/app-ABC.js", headers={"Accept-Encoding": accept})
    assert r.status_code == 200
    assert r.headers["cache-control"] == ASSET_CACHE == "public, max-age=31536000, immutable"
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers.get("content-encoding") == encoding
    assert r.content == SCRIPT  # httpx decodes br and gzip: the same bytes either way
    if encoding:
        assert int(r.headers["content-length"]) < len(SCRIPT) / 5


def test_an_asset_without_compressed_copies_is_sent_as_is(built: ApiClient) -> None:
    r = built.get("/assets/style-DEF.css", headers={"Accept-Encoding": "br, gzip"})
    assert r.status_code == 200 and r.text == "body { color: red; }"
    assert "content-encoding" not in r.headers and r.headers["cache-control"] == ASSET_CACHE


@pytest.mark.parametrize("path", [
    "/assets/missing.js", "/assets/app-ABC.js.gz", "/assets/..%2Fsecret.txt",
    "/assets/../secret.txt", "/secret.txt", "/manifest.json", "/app.js",
])
def test_only_built_assets_are_served(built: ApiClient, path: str) -> None:
    assert built.get(path).status_code == 404


def test_accept_encoding_parsing() -> None:
    assert accepted_encodings("gzip, deflate, br") == {"gzip", "deflate", "br"}
    assert accepted_encodings("br;q=0, GZIP;q=0.5") == {"gzip"}
    assert accepted_encodings("br;q=x") == set()
    assert accepted_encodings("") == set()


def test_docs_name_the_consoles_own_swagger_files(built: ApiClient) -> None:
    page = built.get("/api/v1/docs")
    assert page.status_code == 200
    sources = set(re.findall(r'(?:src|href)="([^"]+)"', page.text))
    assert sources == {"/assets/sw-1.js", "/assets/sw-2.css", "/assets/sw-3.png"}
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert built.get("/api/v1/docs/oauth2-redirect").status_code == 200


def test_docs_without_a_build_point_at_the_openapi_document(tmp_path: Path) -> None:
    app = FastAPI(docs_url=None, redoc_url=None)
    add_docs(app, "/api/v1/docs", "/api/v1/openapi.json", tmp_path / "no-build")
    client = ApiClient(app)
    try:
        page = client.get("/api/v1/docs")
        assert page.status_code == 200 and "scripts/bootstrap.sh" in page.text
        assert "/api/v1/openapi.json" in page.text and "https://" not in page.text
    finally:
        client.close()


def test_the_real_build_is_hashed_minified_and_precompressed() -> None:
    """The bundle scripts/bootstrap.sh made: every asset the page and the docs name
    exists, is named by its content, and has smaller .br and .gz copies."""
    files = manifest(STATIC)
    if not files:
        pytest.fail("the web UI is not built: run scripts/bootstrap.sh")
    assert set(files) == {"app.js", "style.css", "swagger-ui-bundle.js",
                          "swagger-ui.css", "swagger-favicon.png"}
    page = (STATIC / "index.html").read_text()
    assert f'src="{files["app.js"]}"' in page and f'href="{files["style.css"]}"' in page
    # the boot script is in the page's head (no request of its own), minified,
    # before the bundle, which ends the body
    boot = re.search(r"<script>(.+?)</script>", page, re.S)
    assert boot is not None and "cnnfBoot" in boot.group(1) and len(boot.group(1)) < 4000
    assert boot.start() < page.index("</head>") < page.index(f'src="{files["app.js"]}"')
    assert "boot" not in " ".join(p.name for p in (STATIC / "assets").iterdir())
    for logical, path in files.items():
        stem = Path(logical).stem
        assert re.fullmatch(rf"assets/{re.escape(stem)}-[A-Za-z0-9]{{8,16}}\.\w+", path), path
        asset = STATIC / path
        assert asset.is_file(), path
        if not path.endswith(".png"):
            size = asset.stat().st_size
            br, gz = 3, 2
            assert (STATIC / f"{path}.br").stat().st_size < size / br
            assert (STATIC / f"{path}.gz").stat().st_size < size / gz
    app = (STATIC / files["app.js"]).read_text()
    # Minified: long lines, not the sources (whose lines are under 200 characters);
    # template literals keep their newlines, so a few hundred remain.
    assert len(app) / (app.count("\n") + 1) > 1000


def test_the_console_serves_its_docs_and_ui(console: Console) -> None:
    client = console.client()
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200 and "/assets/swagger-ui-bundle-" in docs.text
    script = re.search(r'src="(/assets/swagger-ui-bundle-[^"]+)"', docs.text)
    assert script is not None
    r = client.get(script.group(1), headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert "SwaggerUIBundle" in r.text
    assert client.get("/api/v1/docs", params={"x": "1"}).status_code == 400
