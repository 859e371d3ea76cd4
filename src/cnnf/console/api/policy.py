"""Settings, the whole policy, export and import, and the change history."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import Field
from sqlalchemy import func, select

from cnnf.console.api.contract import errors
from cnnf.console.api.deps import (
    ExpectedRevision,
    Limit,
    Offset,
    Reader,
    SessionDep,
    StateDep,
    Writer,
    policy_service,
)
from cnnf.console.services import formats
from cnnf.console.services.policy import PolicyService, Settings
from cnnf.console.store.models import ChangeRow
from cnnf.errors import PolicyValidationError
from cnnf.model import Policy
from cnnf.model.rule import PolicyModel
from cnnf.policy.document import API_VERSION, KIND
from cnnf.policy.prisma import original_format_schema

router = APIRouter(tags=["policy"])
Format = Literal["native", "prisma"]


class FieldProblem(PolicyModel):
    path: str
    message: str


class ImportResult(PolicyModel):
    format: Format = Field(description=(
        "the format the document was read in: with format=native, a document in the "
        "original product's format (_id: networkFirewall) is recognised and read as such"))
    valid: bool = Field(description="always true: a document that is not valid is refused "
                                    "with 422 naming every problem, on a dry run too")
    applied: bool
    dry_run: bool
    revision: int
    diff: dict[str, Any]
    errors: list[FieldProblem] = Field(description="always empty (kept for older clients)")
    unmapped: list[str]
    policy: Policy = Field(description=(
        "the policy as read from the document (what the import stores); to preview its "
        "impact before applying, simulate it: POST /api/v1/policy/simulate {\"policy\": ...}"))


class Change(PolicyModel):
    id: int
    at: datetime
    actor: str
    action: str
    resource: str
    revision: int
    before: Any
    after: Any


class ChangePage(PolicyModel):
    total: int
    limit: int
    offset: int
    items: list[Change]


@router.get("/settings", response_model=Settings)
def get_settings(*, db: SessionDep, console: StateDep,
                 who: Reader) -> Settings:
    return policy_service(db, console, who).settings()


@router.put("/settings", response_model=Settings)
def put_settings(*, body: Settings, db: SessionDep, console: StateDep,
                 who: Writer) -> Settings:
    return policy_service(db, console, who).put_settings(body)


@router.post("/settings/promote", response_model=Settings,
             responses=errors(409, s409=(
                 "no default effect is staged, or the policy is not at expectedRevision")))
def promote_default(*, db: SessionDep, console: StateDep,
                    expected_revision: ExpectedRevision = None, who: Writer) -> Settings:
    """Make the staged default effect the default effect (``stagedDefaultEffect``
    becomes ``defaultEffect``, then null): one change, one revision. With
    ``expectedRevision``, only if the policy is still at that revision (else 409,
    nothing changed)."""
    return policy_service(db, console, who).promote_default(expected_revision)


@router.get("/policy", response_model=Policy)
def get_policy(*, db: SessionDep, console: StateDep,
               who: Reader) -> Policy:
    return policy_service(db, console, who).policy()


@router.put("/policy", response_model=Policy)
def put_policy(*, body: Annotated[Policy, Body()], db: SessionDep, console: StateDep,
               who: Writer) -> Policy:
    """Replace the whole policy at once (the body's revision is ignored)."""
    return policy_service(db, console, who).replace(body)


@router.get("/policy/export")
def export_policy(
    *,
    db: SessionDep, console: StateDep,
    fmt: Annotated[Format, Query(alias="format")] = "native",
    who: Reader,
) -> Response:
    """The whole policy as one document: native (``cnnf/v1``) or the original product's."""
    policy = policy_service(db, console, who).policy()
    headers = {"Content-Disposition": f'attachment; filename="cnnf-policy-{fmt}.json"'}
    if fmt == "native":
        return Response(formats.dump_native(policy), media_type="application/json",
                        headers=headers)
    text, unmapped = formats.dump_prisma_text(policy)
    headers["X-Cnnf-Unmapped"] = str(len(unmapped))
    return Response(text, media_type="application/json", headers=headers)


# A native document (the spec is the policy PUT /policy takes), or, recognised by its
# ``_id``, one in the original product's format.
IMPORT_SCHEMA: dict[str, Any] = {
    "description": "a policy document: native (apiVersion cnnf/v1), or the original "
                   "product's export (_id networkFirewall), in JSON or YAML",
    "anyOf": [
        {"type": "object", "title": "PolicyDocument", "additionalProperties": False,
         "required": ["apiVersion", "kind", "spec"],
         "properties": {"apiVersion": {"const": API_VERSION}, "kind": {"const": KIND},
                        "spec": {"$ref": "#/components/schemas/Policy-Input"}}},
        original_format_schema(whole=False),
    ],
}


@router.post(
    "/policy/import",
    response_model=ImportResult,
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": IMPORT_SCHEMA},
        "application/yaml": {"schema": IMPORT_SCHEMA},
    }}},
)
async def import_policy(
    *,
    request: Request, db: SessionDep, console: StateDep,
    fmt: Annotated[Format, Query(alias="format", description=(
        "kept for older clients: the document's own shape decides how it is read"))] = "native",
    dry_run: Annotated[bool, Query()] = False,
    who: Writer,
) -> ImportResult:
    """Replace the whole policy with a document, atomically. With ``dry_run`` the
    diff is returned and nothing changes. A document that is not valid is refused
    (422, every problem named with its path) and nothing changes, on a dry run too.
    Beyond the schema, a document must hold together: rules name objects it has
    (entities by ``_id`` in the original format) of the kinds their list allows;
    object names, entity ``_id`` s, rule ids and rule names are unique; a port
    range's start is not above its end."""
    raw = await request.body()
    return await run_in_threadpool(
        lambda: _import(raw, service=policy_service(db, console, who), fmt=fmt, dry_run=dry_run)
    )


def _import(raw: bytes, *, service: PolicyService, fmt: Format, dry_run: bool) -> ImportResult:
    revision = service.revision()
    # What the document is decides how it is read (an original-format one by its
    # _id, or its entities without apiVersion): ``format`` cannot make a native
    # document read as an empty original one, which would replace the policy with none.
    fmt, loaded = formats.load_recognised(raw, source="import")
    policy, unmapped = loaded.policy, loaded.unmapped
    diff, errors = service.preview(policy)
    if errors:
        raise PolicyValidationError(errors, "import")
    if dry_run:
        return ImportResult(format=fmt, valid=True, applied=False, dry_run=True,
                            revision=revision, diff=diff, errors=[], unmapped=unmapped,
                            policy=policy)
    stored = service.replace(policy, action=f"policy.import.{fmt}")
    return ImportResult(format=fmt, valid=True, applied=True, dry_run=False,
                        revision=stored.revision, diff=diff, errors=[], unmapped=unmapped,
                        policy=stored)


@router.get("/changes", response_model=ChangePage)
def list_changes(*, db: SessionDep, limit: Limit = 100, offset: Offset = 0,
                 _: Reader) -> ChangePage:
    """Every policy change, newest first: who, when, what (before and after)."""
    total = db.scalar(select(func.count(ChangeRow.id))) or 0
    rows = db.scalars(select(ChangeRow).order_by(ChangeRow.id.desc()).limit(limit).offset(offset))
    items = [
        Change(id=r.id, at=r.at, actor=r.actor, action=r.action, resource=r.resource,
               revision=r.revision, before=r.before, after=r.after)
        for r in rows
    ]
    return ChangePage(total=total, limit=limit, offset=offset, items=items)
