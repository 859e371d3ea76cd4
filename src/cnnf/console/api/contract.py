"""The API's contract, applied to every route of the app, including routers added later.

- **Unknown query parameters are refused** (400, naming them): a misspelt filter
  must never widen a query to everything. :func:`refuse_unknown_query` is an
  app-level dependency, so every route gets it.
- **Authentication comes before the request is judged**: FastAPI parses a JSON
  body before it runs any dependency, so a malformed body would be refused (422,
  400) before the caller is known. Every refusal of input first runs the route's
  guards (:class:`Guard`: the dependencies behind ``Reader``, ``Writer``,
  ``Admin``, ``Caller`` and the Defender credential): an anonymous caller gets
  401, a role without the permission 403, whatever the body.
- **The OpenAPI document names every status an operation answers** with the one
  error body (:class:`ErrorBody`): :func:`document_errors` adds 400, 401, 403,
  413 and 422 from what the route declares (security, parameters, body) and 500
  everywhere; routes add their own 404, 409, 429 with :func:`errors`.
- **Constraints are in the schema**: each field's syntax (patterns, lengths,
  ranges, a selector's one set field); what spans several fields of a document
  (references, uniqueness, a port range's order) is in the operation's
  description, and a change that clashes with the stored state is 409.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel

from cnnf.console.security import Permission, Role, allowed
from cnnf.console.services.errors import BadRequest
from cnnf.errors import FieldError


class ErrorItem(BaseModel):
    path: str
    message: str


class ErrorBody(BaseModel):
    """Every 4xx answer: a message, and for bad input the fields it names."""

    detail: str
    errors: list[ErrorItem] | None = None


_DESCRIPTIONS = {
    400: "Malformed request: an unknown query parameter (named), or a body that is not UTF-8",
    401: "No valid credentials",
    403: "The caller's role or credential may not do this",
    404: "Not found",
    409: "Conflicts with the stored state; nothing was changed",
    413: "Request body too large",
    422: "Invalid input; `errors` names each field and what is wrong",
    429: "Too many attempts; see Retry-After",
    500: "An unexpected failure (the store could not be reached, or a defect); what was "
         "being changed was not changed",
}


def errors(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route's own error statuses, with the error body schema.
    ``described`` overrides a description: ``errors(404, s409="name in use")``."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        text = described.get(f"s{status}", _DESCRIPTIONS.get(status, "Error"))
        out[status] = {"model": ErrorBody, "description": text}
    return out


class Guard:
    """A dependency that authenticates and authorizes the caller. :meth:`check`
    runs it on its own, for refusals of input that FastAPI raises before the
    route's dependencies run."""

    async def check(self, request: Request) -> None:
        raise NotImplementedError


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from _dependants(sub)


async def authenticate_first(request: Request) -> None:
    """Run the guards of the route ``request`` matched (raises Unauthorized, Forbidden)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    for sub in _dependants(route.dependant):
        if isinstance(sub.call, Guard):
            await sub.call.check(request)


_KNOWN: dict[int, tuple[frozenset[str], frozenset[str]]] = {}


def _takes_several(annotation: Any) -> bool:
    """``list[str] | None`` and the like: a query parameter given once per value."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _takes_several(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return any(_takes_several(a) for a in get_args(annotation))
    return origin in (list, tuple, set, frozenset)


def _query_names(route: APIRoute) -> tuple[frozenset[str], frozenset[str]]:
    """The operation's query parameters, and those of them that take several values."""
    known = _KNOWN.get(id(route))
    if known is None:
        every = [route.dependant, *_dependants(route.dependant)]
        params = [p for d in every for p in d.query_params]
        known = (frozenset(p.alias for p in params),
                 frozenset(p.alias for p in params if _takes_several(
                     p.field_info.annotation)))
        _KNOWN[id(route)] = known
    return known


async def refuse_unknown_query(request: Request) -> None:
    """App-level dependency: refuse query parameters the operation does not have,
    and a parameter of one value given several times (which one would count?).
    async: it runs on the event loop for every request, not in a worker thread."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    known, several = _query_names(route)
    unknown = sorted({k for k in request.query_params if k not in known})
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise BadRequest([FieldError(f"query.{name}", f"unknown query parameter "
                                     f"(this operation accepts: {accepted})")
                          for name in unknown])
    repeated = sorted({k for k in request.query_params if k not in several
                       and len(request.query_params.getlist(k)) > 1})
    if repeated:
        params = request.query_params
        raise BadRequest([FieldError(f"query.{name}", f"given {len(params.getlist(name))} "
                                     "times; this parameter takes one value")
                          for name in repeated])


_ERROR_REF = "#/components/schemas/ErrorBody"


def document_errors(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    """Add the statuses every operation can answer, each with :class:`ErrorBody`,
    and replace FastAPI's own 422 schema with ours."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorItem", ErrorItem.model_json_schema())
    error_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    error_schema.pop("$defs", None)
    components.setdefault("ErrorBody", error_schema)
    for item in schema.get("paths", {}).values():
        for method, op in item.items():
            if method not in ("get", "put", "post", "patch", "delete"):
                continue
            responses = op.setdefault("responses", {})
            scopes = [s for req in op.get("security", []) for v in req.values() for s in v]
            needed = {400, 500}
            if scopes:
                needed.add(401)
                # 403 where some credential is valid but not enough: a role without
                # the permission, or a user's token on a Defender endpoint.
                if not all(allowed(role, Permission(s)) for s in scopes for role in Role):
                    needed.add(403)
            if op.get("parameters") or op.get("requestBody"):
                needed.add(422)
            if op.get("requestBody"):
                needed.add(413)
            for status in needed:
                responses.setdefault(str(status), {"description": _DESCRIPTIONS[status]})
            for status, response in responses.items():
                if status.startswith("4") or status == "500":
                    response["content"] = {"application/json": {"schema": {"$ref": _ERROR_REF}}}
                    if status == "422":
                        response["description"] = _DESCRIPTIONS[422]
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema
