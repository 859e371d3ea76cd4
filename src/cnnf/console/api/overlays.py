"""Data overlays: ingest Trivy JSON reports per image or host; read the counts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query
from pydantic import WithJsonSchema

from cnnf.console.api.contract import errors
from cnnf.console.api.deps import Reader, SessionDep, StateDep, Writer
from cnnf.console.services.overlays import (
    TRIVY_REPORT_SCHEMA,
    OverlayInfo,
    OverlayKind,
    OverlayService,
)

router = APIRouter(prefix="/overlays", tags=["overlays"])
Kind = Annotated[OverlayKind, Path(description="image or host")]
Name = Annotated[str, Path(min_length=1, max_length=300, description="image or host name")]


@router.post("/{kind}/trivy", response_model=OverlayInfo)
def ingest_trivy(
    *, kind: Kind,
    report: Annotated[dict[str, Any], Body(description="a Trivy JSON report (-f json)"),
                      WithJsonSchema(TRIVY_REPORT_SCHEMA)],
    name: Annotated[str, Query(max_length=300, pattern=r"^(?:|\s*\S[\s\S]*)$",
                               description="default: the report's ArtifactName")] = "",
    db: SessionDep, console: StateDep, who: Writer,
) -> OverlayInfo:
    """Replace the overlay of one image or host with the counts of a Trivy report."""
    return OverlayService(db, console.now).ingest_trivy(kind, report, name)


@router.get("", response_model=list[OverlayInfo])
def list_overlays(*, db: SessionDep, console: StateDep, _: Reader) -> list[OverlayInfo]:
    return OverlayService(db, console.now).list()


@router.get("/{kind}/{name:path}", response_model=OverlayInfo, responses=errors(404))
def get_overlay(*, kind: Kind, name: Name, db: SessionDep, console: StateDep,
                _: Reader) -> OverlayInfo:
    return OverlayService(db, console.now).get(kind, name)


@router.delete("/{kind}/{name:path}", status_code=204, responses=errors(404))
def delete_overlay(*, kind: Kind, name: Name, db: SessionDep, console: StateDep,
                   who: Writer) -> None:
    OverlayService(db, console.now).delete(kind, name)
