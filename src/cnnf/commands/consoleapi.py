"""The HTTP client the Console's command-line clients share (``cnnf rules``,
``cnnf policy learn|simulate``): a token, the Console's CA, and a clear error
(exit 2) for a missing token or a CA file that is not there or not a
certificate, instead of a traceback."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer

Fail = Callable[[str, int], NoReturn]

# The options every such command takes (the project's CLI convention).
ConsoleOpt = typer.Option(..., "--console", help="The Console URL, e.g. https://console:8443")
TokenOpt = typer.Option(..., "--token", envvar="CNNF_TOKEN",
                        help="An API or session token (env CNNF_TOKEN).")
CaOpt = typer.Option(None, "--ca", help="CA bundle to verify the Console with.")


def console_client(console: str, token: str | None, ca: Path | str | None, *,
                   timeout: float, fail: Fail) -> httpx.Client:
    """An httpx client for ``console`` (its base URL) that sends ``token``
    and trusts ``ca`` (else the system's CAs)."""
    if not token:
        fail("no token: pass --token or set CNNF_TOKEN (cnnf needs an API or session "
             "token to talk to the Console)", 2)
    verify: ssl.SSLContext | bool = True
    if ca is not None and str(ca):
        path = Path(ca)
        if not path.is_file():
            fail(f"--ca: {path} is not a readable file", 2)
        try:
            verify = ssl.create_default_context(cafile=str(path))
        except (ssl.SSLError, OSError, ValueError) as exc:
            fail(f"--ca: {path} holds no CA certificate (PEM) cnnf can read: {exc}", 2)
    return httpx.Client(base_url=console.rstrip("/"), verify=verify,
                        headers={"Authorization": f"Bearer {token}"}, timeout=timeout)


def console_request(method: str, console: str, path: str, token: str | None,
                    ca: Path | str | None, *, fail: Fail, **kwargs: Any) -> httpx.Response:
    """One call to the Console's API (``path`` below ``/api/v1``): a connection
    error or an error answer is one clear line through ``fail`` (exit 1)."""
    with console_client(console, token, ca, timeout=30.0, fail=fail) as client:
        try:
            answer = client.request(method, "/api/v1" + path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"{method} {console.rstrip('/')}/api/v1{path}: {exc}", 1)
    if answer.status_code >= 400:
        try:
            detail = answer.json().get("detail", answer.text)
        except ValueError:
            detail = answer.text
        fail(f"{method} {path}: {answer.status_code}: {detail}", 1)
    return answer
