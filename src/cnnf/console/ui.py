"""Serving the web UI (Radar and the policy pages) at ``/`` and the API docs.

The front end is built from ``src/cnnf/web`` into ``static/`` beside this file
at install time (``scripts/bootstrap.sh``); no bundle is committed. The build
writes ``index.html``, content-hashed assets in ``static/assets/`` (each with a
``.gz`` and a ``.br`` beside it) and ``manifest.json`` (logical name -> hashed
path). Assets are served for a year (their name changes with their content),
compressed when the client accepts it, from memory (read once, when the UI is
mounted: a file read per request went through the server's thread pool, which
on a loaded machine held each of the first page's requests for tens of
milliseconds); ``index.html`` is revalidated on every load (an ``ETag``: a
reload gets 304) so a new build is picked up at once. Without a build, ``/``
says how to make one instead of failing.

``/api/v1/docs`` is Swagger UI with its scripts and styles from the same build
(the swagger-ui-dist package): the docs work with no network but the Console.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

STATIC = Path(__file__).with_name("static")
ASSET_MAX_AGE = 365 * 24 * 3600
ASSET_CACHE = f"public, max-age={ASSET_MAX_AGE}, immutable"
PAGE_CACHE = "no-cache"  # revalidate: the page names the current build's assets
# Preferred first; each with the suffix its precompressed file carries.
ENCODINGS = (("br", ".br"), ("gzip", ".gz"))

NOT_BUILT = """<!doctype html><title>CNNF Console</title>
<p>The web UI is not built. Run <code>scripts/bootstrap.sh</code> (it runs
<code>npm ci</code> and <code>npm run build</code> in <code>src/cnnf/web</code>).
The API is at <a href="/api/v1/docs">/api/v1/docs</a>.</p>"""

DOCS_NOT_BUILT = """<!doctype html><title>CNNF Console API</title>
<p>The interactive API docs come with the web UI, which is not built: run
<code>scripts/bootstrap.sh</code>. The OpenAPI document is at
<a href="{openapi_url}">{openapi_url}</a>.</p>"""


def manifest(static: Path = STATIC) -> dict[str, str]:
    """The build's logical name -> ``assets/NAME-HASH.EXT``; empty without a build."""
    try:
        data = json.loads((static / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def accepted_encodings(header: str) -> set[str]:
    """The content codings an ``Accept-Encoding`` header allows (q above 0)."""
    accepted: set[str] = set()
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name and q > 0:
            accepted.add(name.strip().lower())
    return accepted


def _assets(static: Path) -> dict[str, Path]:
    """The servable assets by file name (the only names ``/assets/`` answers)."""
    folder = static / "assets"
    if not folder.is_dir():
        return {}
    return {p.name: p for p in folder.iterdir()
            if p.is_file() and not p.name.endswith((".gz", ".br"))}


def tag_matches(header: str, tag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``tag`` (weak comparison, as
    RFC 9110 has it for GET: ``W/`` ignored) or is ``*``."""
    for item in header.split(","):
        candidate = item.strip()
        if candidate == "*":
            return True
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == tag:
            return True
    return False


def ui_app(static: Path) -> Starlette:
    """``/`` and ``/index.html`` (the page), ``/assets/NAME`` (hashed, compressed)."""
    assets = _assets(static)
    page = (static / "index.html").read_bytes()
    page_tag = f'"{hashlib.sha256(page).hexdigest()[:32]}"'
    # (file name, coding or "") -> bytes, read here, once (a few MB, Swagger
    # UI's bundle the most): no file is read while serving. The handlers are
    # coroutines: a plain function is run in the thread pool, the hop this avoids.
    loaded: dict[tuple[str, str], bytes] = {}
    for name, path in assets.items():
        loaded[(name, "")] = path.read_bytes()
        for coding, suffix in ENCODINGS:
            packed = path.with_name(path.name + suffix)
            if packed.is_file():
                loaded[(name, coding)] = packed.read_bytes()

    async def index(request: Request) -> Response:
        headers = {"Cache-Control": PAGE_CACHE, "ETag": page_tag}
        if tag_matches(request.headers.get("if-none-match", ""), page_tag):
            return Response(status_code=304, headers=headers)
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    async def asset(request: Request) -> Response:
        path = assets.get(request.path_params["name"])
        if path is None:
            return PlainTextResponse("Not Found", status_code=404)
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type.endswith("javascript"):
            media_type += "; charset=utf-8"
        headers = {"Cache-Control": ASSET_CACHE, "Vary": "Accept-Encoding"}
        accepted = accepted_encodings(request.headers.get("accept-encoding", ""))
        for coding, _ in ENCODINGS:
            packed = loaded.get((path.name, coding)) if coding in accepted else None
            if packed is not None:
                return Response(packed, media_type=media_type,
                                headers={**headers, "Content-Encoding": coding})
        return Response(loaded[(path.name, "")], media_type=media_type, headers=headers)

    return Starlette(routes=[
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/index.html", index, methods=["GET", "HEAD"]),
        Route("/assets/{name}", asset, methods=["GET", "HEAD"]),
    ])


def mount_ui(app: FastAPI, static: Path = STATIC) -> None:
    """Mount the built UI at ``/``; call after every API route is added."""
    if (static / "index.html").is_file():
        app.mount("/", ui_app(static), name="ui")
        return

    @app.get("/", include_in_schema=False)
    def ui_not_built() -> HTMLResponse:
        return HTMLResponse(NOT_BUILT)


def add_docs(app: FastAPI, docs_url: str, openapi_url: str, static: Path = STATIC) -> None:
    """Swagger UI at ``docs_url`` from the build's own copy of its assets."""
    files = manifest(static)
    redirect_url = f"{docs_url}/oauth2-redirect"

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        needed = ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-favicon.png")
        if not all(n in files for n in needed):
            return HTMLResponse(DOCS_NOT_BUILT.format(openapi_url=openapi_url))
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} - API docs",
            swagger_js_url=f"/{files['swagger-ui-bundle.js']}",
            swagger_css_url=f"/{files['swagger-ui.css']}",
            swagger_favicon_url=f"/{files['swagger-favicon.png']}",
            oauth2_redirect_url=redirect_url,
        )

    @app.get(redirect_url, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
