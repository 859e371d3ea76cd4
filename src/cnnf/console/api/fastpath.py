"""The Defender link's fast path: its long-polls and report batches answered
before FastAPI's router, for the plain case only.

After a policy change a replica answers every waiting Defender at once; through
FastAPI each answer (and the next long-poll it brings) cost about 1.6 ms of CPU,
half of it routing and dependency resolution (py-spy), that is 1.6 s of one core
per change for 1,000 Defenders. This ASGI middleware, in front of the app,
answers the requests whose every part it can judge with a few comparisons:

- ``GET /api/v1/defender/policy`` and ``/inventory`` with at most the query
  parameters ``revision`` and ``wait``, each once, as plain decimal numbers in
  their ranges, no body, and a Defender credential this process verified before
  (the :class:`~cnnf.console.services.defenders.CredentialCache` lookup the
  route's guard does: a hash and a dictionary read);
- ``POST /api/v1/defender/reports`` with no query, ``Content-Type:
  application/json``, a declared length within the body limit and such a
  credential: the body is validated from its JSON bytes
  (``ReportBatch.model_validate_json``, no dict in between) and stored in one
  worker thread (a large batch's validation does not hold the event loop and
  every waiting long-poll's answer); a body the model refuses is validated
  again as the route validates it (the parsed JSON) and answered with the
  route's own 422, byte for byte.

Everything else (a first call whose credential the store must verify, a user's
token, a bad or unknown parameter, a body that is not JSON) goes on to the
FastAPI routes unchanged (a read body replayed), which answer it as the OpenAPI
document says: the fast path answers only what the route would answer the same
way, through the same code (:func:`~cnnf.console.api.defender.serve`,
:func:`~cnnf.console.api.defender.store_reports`), with the app's own exception
handlers for its errors (401 for a Defender revoked while it waited, 422, 500
for the store). The answer body of a revision is serialized once per process
and sent as the same bytes to every waiting Defender. It sits inside the app's
other middleware (the body limit). ``cnnf console --no-link-fast-path`` leaves
it out (every request through the routes: for comparison and diagnosis).
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cnnf.console.api.defender import (
    MAX_WAIT,
    LinkHub,
    answered,
    serve,
    store_reports,
)
from cnnf.console.security import token_hash
from cnnf.console.services.defenders import CREDENTIAL_PREFIX, DefenderPrincipal
from cnnf.model.records import ReportBatch

if TYPE_CHECKING:
    from fastapi import FastAPI

    from cnnf.console.api.deps import ConsoleState

log = logging.getLogger("cnnf.console.defender")
PREFIX = "/api/v1/defender/"
# What the fast path takes as is; anything else (pydantic takes more: "+5", " 5",
# "1e1") goes to the route, which judges it.
_REVISION = re.compile(rb"-1|0|[1-9][0-9]{0,18}")
_WAIT = re.compile(rb"(?:0|[1-9][0-9]?)(?:\.[0-9]{1,6})?")
_JSON = [(b"content-type", b"application/json")]
_BEARER = b"bearer"


class DefenderFastPath:
    """ASGI middleware: the plain Defender-link requests answered here (see the
    module's text), the rest passed on to ``app``."""

    def __init__(self, app: ASGIApp, owner: FastAPI) -> None:
        self.app = app
        self.owner = owner  # the FastAPI app: its state and exception handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            topic = scope["path"][len(PREFIX):]
            if scope["method"] == "GET" and topic in ("policy", "inventory"):
                if await self._long_poll(scope, receive, send, topic):
                    return
            elif scope["method"] == "POST" and topic == "reports":
                replay = await self._reports(scope, receive, send)
                if replay is None:
                    return
                receive = replay
        await self.app(scope, receive, send)

    async def _who(self, link: LinkHub, console: ConsoleState,
                   headers: Sequence[tuple[bytes, bytes]],
                   ) -> tuple[DefenderPrincipal, int] | None:
        """The calling Defender if its credential is one this process verified
        (no store read), with the count of revoked Defenders it was checked
        under; else None (the route's guard decides)."""
        found = [v for k, v in headers if k == b"authorization"]
        if len(found) != 1:
            return None
        scheme, _, secret = found[0].partition(b" ")
        if scheme.lower() != _BEARER or not secret.startswith(CREDENTIAL_PREFIX.encode()):
            return None
        try:
            epoch = await link.current_revocations.get()
        except Exception:  # the store: the route's guard reads it again and answers
            return None
        who = link.verified.lookup(token_hash(secret.decode("latin-1")), epoch,
                                   console.now(), link.saw)
        return None if who is None else (who, epoch)

    async def _long_poll(self, scope: Scope, receive: Receive, send: Send,
                         topic: str) -> bool:
        query = _query(scope["query_string"])
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if query is None or any(k in (b"content-length", b"transfer-encoding")
                                and v != b"0" for k, v in headers):
            return False
        link: LinkHub = self.owner.state.link
        console: ConsoleState = self.owner.state.console
        caller = await self._who(link, console, headers)
        if caller is None:
            return False
        try:
            answer, noticed = await serve(console, link, caller[0], topic, revision=query[0],
                                          wait=query[1], epoch=caller[1])
        except Exception as exc:  # answered as the route's would be
            await self._failed(scope, receive, send, exc, topic)
            return True
        if answer is None:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            link.metrics.fast.labels(topic, "204").inc()
            return True
        body = answer[1]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_JSON, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        link.metrics.fast.labels(topic, "200").inc()
        if noticed is not None:
            await answered(link, topic, noticed)
        return True

    async def _reports(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """None when answered here; else the ``receive`` to pass on (the body
        replayed when it was read)."""
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        console: ConsoleState = self.owner.state.console
        link: LinkHub = self.owner.state.link
        lengths = [v for k, v in headers if k == b"content-length"]
        types = [v for k, v in headers if k == b"content-type"]
        if (scope["query_string"] or len(lengths) != 1 or not lengths[0].isdigit()
                or int(lengths[0]) > console.config.max_body_bytes
                or types != [b"application/json"]
                or any(k == b"transfer-encoding" for k, _ in headers)):
            return receive
        caller = await self._who(link, console, headers)
        if caller is None:
            return receive
        messages: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return replayed(messages, receive)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if len(body) != int(lengths[0]):
            return replayed(messages, receive)
        try:
            # Validation and storing in a worker thread: a large batch's validation
            # does not hold the event loop (and every waiting long-poll's answer).
            result = await run_in_threadpool(_take, console, link, caller[0], body)
        except Exception as exc:
            await self._failed(scope, replayed([], receive), send, exc, "reports")
            return None
        if result is None:
            return replayed(messages, receive)  # not JSON: the route answers it
        if isinstance(result, RequestValidationError):
            await self._failed(scope, replayed([], receive), send, result, "reports")
            return None
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_JSON, (b"content-length", str(len(result)).encode())]})
        await send({"type": "http.response.body", "body": result})
        link.metrics.fast.labels("reports", "200").inc()
        return None

    async def _failed(self, scope: Scope, receive: Receive, send: Send,
                      exc: Exception, request: str) -> None:
        """Answer ``exc`` with the app's own handler for it (401, 422, 500, ...)."""
        handlers = self.owner.exception_handlers
        for cls in type(exc).__mro__:
            handler = handlers.get(cls)
            if handler is not None:
                if cls is Exception:
                    log.error("Defender link: unexpected failure", exc_info=exc)
                response = handler(Request(scope, receive), exc)
                if inspect.isawaitable(response):
                    response = await response
                await response(scope, receive, send)
                self.owner.state.link.metrics.fast.labels(
                    request, str(response.status_code)).inc()
                return
        raise exc


def _take(console: ConsoleState, link: LinkHub, who: DefenderPrincipal,
          body: bytes) -> bytes | RequestValidationError | None:
    """In a worker thread: the batch validated from its JSON bytes and stored (the
    answer's body); else the route's own refusal of it (the parsed JSON validated
    as the route validates it, its errors under ``body``), or None when the body
    is not JSON (the route answers it)."""
    try:
        batch = ReportBatch.model_validate_json(body)
    except ValidationError:
        pass
    else:
        return store_reports(console, link, who, batch)
    try:
        data = json.loads(body)
    except ValueError:
        return None
    try:
        ReportBatch.model_validate(data, from_attributes=True)
    except ValidationError as exc:
        return RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)],
            body=data)
    return None  # taken from Python, refused from JSON: the route judges it


def _query(raw: bytes) -> tuple[int, float] | None:
    """(revision, wait) from a query string the fast path takes as is, else None."""
    revision, wait = -1, 0.0
    if not raw:
        return revision, wait
    seen: set[bytes] = set()
    for pair in raw.split(b"&"):
        name, eq, value = pair.partition(b"=")
        if name in seen or not eq:
            return None
        seen.add(name)
        if name == b"revision" and _REVISION.fullmatch(value):
            revision = int(value)
            if revision > 2**63 - 1:
                return None
        elif name == b"wait" and _WAIT.fullmatch(value):
            wait = float(value)
            if wait > MAX_WAIT:
                return None
        else:
            return None
    return revision, wait


def replayed(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` (a body read already) first, then
    what ``receive`` gives."""

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay
