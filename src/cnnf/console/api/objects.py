"""Network objects: the things rules are written between."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path

from cnnf.console.api.contract import errors
from cnnf.console.api.deps import Reader, SessionDep, StateDep, Writer, policy_service
from cnnf.console.services.defenders import DefenderService
from cnnf.console.services.selection import Selection, SelectionPreview, preview
from cnnf.model import NetworkObject

router = APIRouter(prefix="/objects", tags=["objects"])
# ``:path``: a name may hold ``/`` (``shop/api``, as collection names in the original
# product often do); clients send it percent-encoded (``shop%2Fapi``) and the server
# decodes it before routing, so the route must take the rest of the path.
Name = Annotated[str, Path(min_length=1, max_length=200)]


@router.get("", response_model=list[NetworkObject])
def list_objects(*, db: SessionDep, console: StateDep,
                 who: Reader) -> list[NetworkObject]:
    return list(policy_service(db, console, who).policy().objects)


@router.post("", response_model=NetworkObject, status_code=201, responses=errors(409))
def create_object(*, obj: Annotated[NetworkObject, Body()], db: SessionDep, console: StateDep,
                  who: Writer) -> NetworkObject:
    return policy_service(db, console, who).create_object(obj)


@router.post("/preview", response_model=SelectionPreview)
def preview_selection(*, selection: Annotated[Selection, Body()], db: SessionDep,
                      console: StateDep, who: Reader) -> SelectionPreview:
    """The known workloads (what the live Defenders report running now) a
    container or host selector selects, matched as the policy engine matches:
    the object editor's preview. Changes nothing."""
    return preview(selection, DefenderService(db, console.now).cluster_inventory())


@router.get("/{name:path}", response_model=NetworkObject, responses=errors(404))
def get_object(*, name: Name, db: SessionDep, console: StateDep,
               who: Reader) -> NetworkObject:
    return policy_service(db, console, who).get_object(name)


@router.put("/{name:path}", response_model=NetworkObject, responses=errors(404, 409))
def update_object(*, name: Name, obj: Annotated[NetworkObject, Body()], db: SessionDep,
                  console: StateDep, who: Writer) -> NetworkObject:
    """Replace an object; a changed name is carried into the rules that use it."""
    return policy_service(db, console, who).update_object(name, obj)


@router.delete("/{name:path}", status_code=204, responses=errors(404, 409))
def delete_object(*, name: Name, db: SessionDep, console: StateDep,
                  who: Writer) -> None:
    """Delete an unused object; 409 names the rules that still use it."""
    policy_service(db, console, who).delete_object(name)
