"""Serving the web UI (Radar and the policy pages) at ``/``.

The front end is built from ``src/cnnf/web`` into ``static/`` beside this file
at install time (``scripts/bootstrap.sh``); no bundle is committed. Without a
build, ``/`` says how to make one instead of failing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")

NOT_BUILT = """<!doctype html><title>CNNF Console</title>
<p>The web UI is not built. Run <code>scripts/bootstrap.sh</code> (it runs
<code>npm ci</code> and <code>npm run build</code> in <code>src/cnnf/web</code>).
The API is at <a href="/api/v1/docs">/api/v1/docs</a>.</p>"""


def mount_ui(app: FastAPI, static: Path = STATIC) -> None:
    """Mount the built UI at ``/``; call after every API route is added."""
    if (static / "index.html").is_file():
        app.mount("/", StaticFiles(directory=static, html=True), name="ui")
        return

    @app.get("/", include_in_schema=False)
    def ui_not_built() -> HTMLResponse:
        return HTMLResponse(NOT_BUILT)
