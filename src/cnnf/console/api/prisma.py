"""The original product's Compute API for the network firewall, so that scripts
and SDKs written for it keep working: ``/authenticate``, the network firewall
policy (``/policies/firewall/network``) and its audits
(``/audits/firewall/network/{container,host}`` and their ``/download``).

Same store, roles and tokens as the rest of the API: the token from
``/authenticate`` is a session token, and an API token works here too. What is
not covered is listed in the README (section "The Prisma-compatible API")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from cnnf import __version__
from cnnf.console.api import auth
from cnnf.console.api.deps import (
    MAX_INT,
    Reader,
    SessionDep,
    StateDep,
    Timestamp,
    Writer,
    policy_service,
)
from cnnf.console.services.prisma import NetworkAuditFilter, PrismaService
from cnnf.policy.prisma import original_format_schema

router = APIRouter(tags=["prisma-compatible"])


class _Original(BaseModel):
    """A shape of the original API: its field names as they are."""

    model_config = ConfigDict(populate_by_name=True)


class Problem(_Original):
    path: str
    message: str


class ErrorBody(_Original):
    detail: str
    errors: list[Problem] | None = None


_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no token, or an unknown or expired one"},
    403: {"model": ErrorBody, "description": "the caller's role may not do this"},
}
_QUERY_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH_ERRORS,
    422: {"model": ErrorBody, "description": "a query parameter is invalid (named in errors)"},
}


class Token(_Original):
    token: str


class Port(_Original):
    start: int
    end: int
    deny: bool = False


class NetworkRule(_Original):
    id: int
    name: str
    src: int = Field(description="the _id of the source entity")
    dst: int = Field(description="the _id of the destination entity")
    ports: list[Port]
    effect: Literal["allow", "alert", "prevent"]
    disabled: bool = False
    staged: bool | None = Field(None, description=(
        "CNNF only: true for a staged rule (written disabled, so that the original "
        "never enforces it); read back staged by a PUT of this document"))
    notes: str | None = None
    owner: str | None = None
    modified: str | None = None


class Collection(_Original):
    name: str
    images: list[str] | None = None
    hosts: list[str] | None = None
    labels: list[str] | None = None
    containers: list[str] | None = None
    namespaces: list[str] | None = None
    clusters: list[str] | None = None
    appIDs: list[str] | None = None
    accountIDs: list[str] | None = None
    functions: list[str] | None = None
    codeRepos: list[str] | None = None


class Subnet(_Original):
    name: str
    cidr: str


class NetworkEntity(_Original):
    id: int = Field(alias="_id")
    name: str
    type: Literal["container", "host", "subnet", "dns"]
    description: str | None = None
    collections: list[Collection] | None = None
    subnets: list[Subnet] | None = None
    domains: list[str] | None = None


class NetworkPolicy(_Original):
    """The network firewall policy as the original product's API returns it."""

    id: Literal["networkFirewall"] = Field("networkFirewall", alias="_id")
    containerEnabled: bool
    containerRules: list[NetworkRule]
    hostEnabled: bool
    hostRules: list[NetworkRule]
    networkEntities: list[NetworkEntity]
    stagedDefaultEffect: Literal["allow", "alert", "prevent"] | None = Field(None, description=(
        "CNNF only: the staged default effect, when one is staged; read back by a PUT"))


class PolicyReplaced(_Original):
    revision: int = Field(description="the policy revision now in force")
    unmapped: list[str] = Field(description=(
        "what the document held that could not be carried, and every change made to "
        "carry it (renumbered ids, named rules, kept collection names), each with its path"))


class NetworkAudit(_Original):
    """A network firewall audit with the original's field names; ``effect``, the
    namespaces, pods and addresses are ours."""

    id: str = Field(alias="_id")
    time: datetime
    type: str
    ruleID: int
    ruleName: str
    effect: str
    block: bool
    srcImageName: str
    srcContainerName: str
    srcHostname: str
    dstImageName: str
    dstContainerName: str
    dstHostname: str
    dstPort: int
    dstSubnet: str
    dstDomain: str
    msg: str
    count: int
    srcNamespace: str
    dstNamespace: str
    srcPod: str
    dstPod: str
    srcIP: str
    dstIP: str


def _service(db: SessionDep, console: StateDep, who: Any) -> PrismaService:
    return PrismaService(db, policy_service(db, console, who))


@router.post("/authenticate", response_model=Token,
             responses={401: {"model": ErrorBody, "description": "wrong user name or password"},
                        422: {"model": ErrorBody, "description": "the body is not "
                              "{username, password}"},
                        429: {"model": ErrorBody, "description": "too many failed logins"}})
def authenticate(*, body: auth.LoginRequest, request: Request, db: SessionDep,
                 console: StateDep) -> Token:
    """Exchange a user name and password for a token (the original's login; the
    same session token as ``/auth/login``)."""
    issued = auth.login(body=body, request=request, db=db, console=console)
    return Token(token=issued.token)


@router.get("/_ping", response_class=PlainTextResponse)
def ping() -> PlainTextResponse:
    """Liveness without credentials, as the original answers it."""
    return PlainTextResponse("OK")


@router.get("/version", response_model=str, responses=_AUTH_ERRORS)
def version(*, _: Reader) -> str:
    """The Console's version."""
    return __version__


@router.get("/policies/firewall/network", response_model=NetworkPolicy,
            response_model_exclude_none=True, responses=_AUTH_ERRORS)
def get_network_policy(*, response: Response, db: SessionDep, console: StateDep,
                       who: Reader) -> Any:
    """The whole network firewall policy in the original's document shape. What
    that shape cannot hold (a default effect other than allow, the block mode) is
    counted in ``X-Cnnf-Unmapped``; ``/policy/export?format=prisma`` lists it."""
    doc, unmapped = _service(db, console, who).policy_document()
    response.headers["X-Cnnf-Unmapped"] = str(len(unmapped))
    return doc


@router.put(
    "/policies/firewall/network", response_model=PolicyReplaced,
    responses={**_AUTH_ERRORS,
               422: {"model": ErrorBody, "description": "the document is invalid; every "
                     "problem is named with its path, and nothing changed"}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {**original_format_schema(whole=True), "description": (
            "a network firewall policy in the original's shape (see the GET), every part "
            "present; rules numbered from 0 or without names are accepted, renumbered and "
            "named; fields without a place here are accepted and listed in `unmapped`")}}}}},
)
async def put_network_policy(*, request: Request, db: SessionDep, console: StateDep,
                             who: Writer) -> PolicyReplaced:
    """Replace the whole network firewall policy (rules, entities, both switches) at
    once, all or nothing, as the original does. The answer lists every change made
    to carry the document and everything it held that has no place here."""
    raw = await request.body()
    service = _service(db, console, who)
    replaced = await run_in_threadpool(service.replace_policy, raw)
    return PolicyReplaced(revision=replaced.revision, unmapped=replaced.unmapped)


From = Annotated[Timestamp | None, Query(alias="from", description="at or after (ISO 8601)")]
To = Annotated[Timestamp | None, Query(alias="to", description="at or before (ISO 8601)")]
Block = Annotated[Literal["true", "false"] | None, Query(
    description="true: blocked connections only; false: alerted only")]
Limit = Annotated[int, Query(ge=1, le=1000, description="audits per page")]
Offset = Annotated[int, Query(ge=0, le=MAX_INT)]
SrcImages = Annotated[list[str] | None, Query(alias="srcImageName", max_length=100)]
DstImages = Annotated[list[str] | None, Query(alias="dstImageName", max_length=100)]


def _patterns(values: list[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for value in values or ():
        out.extend(p.strip() for p in value.split(",") if p.strip())
    return tuple(out)


def _filter(kind: str, *, since: datetime | None, until: datetime | None,
            src: list[str] | None, dst: list[str] | None, block: str | None,
            ) -> NetworkAuditFilter:
    return NetworkAuditFilter(kind=kind, since=since, until=until, src_images=_patterns(src),
                              dst_images=_patterns(dst),
                              block=None if block is None else block == "true")


_PAGE_HEADERS = {"Total-Count": {"description": "audits matching the filters, all pages",
                                 "schema": {"type": "integer"}}}


def _audit_routes(kind: Literal["container", "host"]) -> None:
    path = f"/audits/firewall/network/{kind}"

    @router.get(path, response_model=list[NetworkAudit], name=f"network_{kind}_audits",
                responses={**_QUERY_ERRORS, 200: {"headers": _PAGE_HEADERS}})
    def list_audits(*, response: Response, db: SessionDep, console: StateDep,
                    since: From = None, until: To = None,
                    src_image_name: SrcImages = None, dst_image_name: DstImages = None,
                    block: Block = None, limit: Limit = 50, offset: Offset = 0,
                    who: Reader) -> Any:
        """Network firewall audits, newest first, as a list with the original's field
        names; ``Total-Count`` holds the number matching the filters."""
        f = _filter(kind, since=since, until=until, src=src_image_name, dst=dst_image_name,
                    block=block)
        page = _service(db, console, who).audits(f, limit, offset)
        response.headers["Total-Count"] = str(page.total)
        return page.items

    @router.get(f"{path}/download", response_class=PlainTextResponse,
                name=f"network_{kind}_audits_csv",
                responses={**_QUERY_ERRORS, 200: {"content": {"text/csv": {
                    "schema": {"type": "string"}}}}})
    def download_audits(*, db: SessionDep, console: StateDep,
                        since: From = None, until: To = None,
                        src_image_name: SrcImages = None, dst_image_name: DstImages = None,
                        block: Block = None, who: Reader) -> Response:
        """The same audits as CSV with the original's export columns (ours after
        them), at most the Console's csv_max_rows."""
        f = _filter(kind, since=since, until=until, src=src_image_name, dst=dst_image_name,
                    block=block)
        text = "".join(_service(db, console, who).audits_csv(f, console.config.csv_max_rows))
        # Exactly "text/csv" (no charset): the original's clients compare it as is.
        return Response(text, headers={
            "Content-Type": "text/csv",
            "Content-Disposition": f'attachment; filename="cnnf-{kind}-audits.csv"'})


_audit_routes("container")
_audit_routes("host")
