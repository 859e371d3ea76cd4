"""Data overlays: vulnerability and compliance counts per image and host,
ingested from Trivy JSON reports (``trivy image -f json``, ``trivy rootfs -f
json``; misconfiguration results count as compliance checks).

Each report replaces the previous overlay of its image or host whole.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from cnnf.console.radar import Overlay
from cnnf.console.services import commit
from cnnf.console.services.errors import InvalidInput, NotFound
from cnnf.console.store.models import OverlayRow
from cnnf.errors import FieldError
from cnnf.model.rule import PolicyModel

OverlayKind = Literal["image", "host"]
SEVERITY_COLUMNS = ("critical", "high", "medium", "low", "unknown")
TOP_FINDINGS = 20
_RANK = {s: i for i, s in enumerate(SEVERITY_COLUMNS)}


class Finding(PolicyModel):
    id: str
    severity: str
    package: str = ""
    installed: str = ""
    fixed: str = ""
    title: str = ""


class OverlayInfo(PolicyModel):
    kind: OverlayKind
    name: Annotated[str, Field(min_length=1, max_length=300)]
    vulnerabilities: dict[str, int]
    compliance: dict[str, int]
    worst: str
    source: str = ""
    updated: datetime
    top: list[Finding] = Field(default_factory=list)


def _bad(path: str, message: str) -> InvalidInput:
    return InvalidInput([FieldError(path, message)])


def summarise_trivy(doc: Any) -> tuple[str, dict[str, int], dict[str, int], list[Finding]]:
    """(artifact name, counts by severity, compliance counts, most severe findings)
    of a Trivy JSON report; raises :class:`InvalidInput` naming what is wrong."""
    if not isinstance(doc, dict):
        raise _bad("body", "a Trivy JSON report is an object")
    results = doc.get("Results", [])
    if results is None:
        results = []
    if not isinstance(results, list):
        raise _bad("Results", f"expected a list (got {type(results).__name__})")
    if "ArtifactName" not in doc:
        raise _bad("body", "not a Trivy JSON report: no ArtifactName")
    artifact = doc["ArtifactName"]
    if not isinstance(artifact, str) or not artifact.strip() or len(artifact) > 300:
        raise _bad("ArtifactName", f"{artifact!r} is not the name of an image or host "
                                   "(1 to 300 characters)")
    counts = dict.fromkeys(SEVERITY_COLUMNS, 0)
    compliance = {"passed": 0, "failed": 0}
    findings: list[Finding] = []
    for i, result in enumerate(results):
        if not isinstance(result, dict):
            raise _bad(f"Results[{i}]", "expected an object")
        vulns = result.get("Vulnerabilities")
        if vulns is None:
            vulns = []
        if not isinstance(vulns, list):
            raise _bad(f"Results[{i}].Vulnerabilities", "expected a list")
        for j, v in enumerate(vulns):
            if not isinstance(v, dict):
                raise _bad(f"Results[{i}].Vulnerabilities[{j}]", "expected an object")
            severity = str(v.get("Severity", "UNKNOWN")).lower()
            if severity not in counts:
                severity = "unknown"
            counts[severity] += 1
            findings.append(Finding(
                id=str(v.get("VulnerabilityID", "?")), severity=severity,
                package=str(v.get("PkgName", "")), installed=str(v.get("InstalledVersion", "")),
                fixed=str(v.get("FixedVersion", "")), title=str(v.get("Title", ""))[:200]))
        summary = result.get("MisconfSummary")
        misconfs = result.get("Misconfigurations") or []
        if isinstance(summary, dict):
            for key, column in (("Successes", "passed"), ("Failures", "failed")):
                count = summary.get(key, 0)
                if isinstance(count, float) and count.is_integer():
                    count = int(count)  # JSON's 3.0 is the integer 3
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    raise _bad(f"Results[{i}].MisconfSummary.{key}",
                               f"expected a count (got {count!r})")
                compliance[column] += count
        elif isinstance(misconfs, list):
            for m in misconfs:
                status = str(m.get("Status", "FAIL")).upper() if isinstance(m, dict) else ""
                compliance["passed" if status == "PASS" else "failed"] += 1
    findings.sort(key=lambda f: (_RANK[f.severity], f.id))
    return (artifact, counts, compliance, findings[:TOP_FINDINGS])


# What :func:`summarise_trivy` reads of a report, as the API's schema states it; the
# rest of Trivy's output is allowed and ignored. A report names what it scanned
# (ArtifactName); ``?name=`` stores it under another name.
TRIVY_REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "TrivyReport",
    "description": "a Trivy JSON report (-f json); fields not listed here are ignored",
    "required": ["ArtifactName"],
    "properties": {
        "ArtifactName": {"type": "string", "minLength": 1, "maxLength": 300,
                         "pattern": r"^\s*\S", "description": "the image or host scanned"},
        "Results": {"type": ["array", "null"], "items": {
            "type": "object",
            "properties": {
                "Vulnerabilities": {"type": ["array", "null"], "items": {
                    "type": "object", "description": (
                        "Severity (CRITICAL, HIGH, MEDIUM, LOW, else UNKNOWN), "
                        "VulnerabilityID, PkgName, InstalledVersion, FixedVersion, Title")}},
                "MisconfSummary": {"description": "compliance counts, when an object",
                                   "properties": {
                                       "Successes": {"type": "integer", "minimum": 0},
                                       "Failures": {"type": "integer", "minimum": 0}}},
                "Misconfigurations": {"description": (
                    "without a MisconfSummary: each Status PASS counts as passed, "
                    "anything else as failed")},
            },
        }},
    },
}


def _info(row: OverlayRow) -> OverlayInfo:
    vulns = {s: getattr(row, s) for s in SEVERITY_COLUMNS}
    compliance = {"passed": row.compliance_passed, "failed": row.compliance_failed}
    kind: OverlayKind = "host" if row.kind == "host" else "image"
    return OverlayInfo(kind=kind, name=row.name, vulnerabilities=vulns, compliance=compliance,
                       worst=Overlay(vulns).worst, source=row.source, updated=row.updated,
                       top=[Finding.model_validate(f) for f in row.top])


class OverlayService:
    def __init__(self, session: Session, now: Callable[[], datetime]) -> None:
        self.session = session
        self.now = now

    def ingest_trivy(self, kind: OverlayKind, doc: Any, name: str = "") -> OverlayInfo:
        """Store a report as the overlay of ``name`` (default: the report's
        ArtifactName); the previous overlay of that image or host is replaced."""
        artifact, counts, compliance, top = summarise_trivy(doc)
        name = (name or artifact).strip()
        if not name:
            raise _bad("name", "blank: name the image or host, or leave it out")
        row = self.session.scalar(
            select(OverlayRow).where(OverlayRow.kind == kind, OverlayRow.name == name))
        if row is None:
            row = OverlayRow(kind=kind, name=name)
            self.session.add(row)
        for severity, n in counts.items():
            setattr(row, severity, n)
        row.compliance_passed = compliance["passed"]
        row.compliance_failed = compliance["failed"]
        row.source = artifact[:300]
        row.updated = self.now()
        row.top = [f.model_dump(mode="json") for f in top]
        commit(self.session)
        return _info(row)

    def list(self) -> list[OverlayInfo]:
        rows = self.session.scalars(select(OverlayRow).order_by(OverlayRow.kind, OverlayRow.name))
        return [_info(r) for r in rows]

    def get(self, kind: OverlayKind, name: str) -> OverlayInfo:
        row = self.session.scalar(
            select(OverlayRow).where(OverlayRow.kind == kind, OverlayRow.name == name))
        if row is None:
            raise NotFound(f"no overlay for {kind} {name!r}")
        return _info(row)

    def delete(self, kind: OverlayKind, name: str) -> None:
        row = self.session.scalar(
            select(OverlayRow).where(OverlayRow.kind == kind, OverlayRow.name == name))
        if row is None:
            raise NotFound(f"no overlay for {kind} {name!r}")
        self.session.delete(row)
        self.session.commit()

    def for_radar(self) -> dict[tuple[str, str], Overlay]:
        out: dict[tuple[str, str], Overlay] = {}
        for row in self.session.scalars(select(OverlayRow)):
            out[(row.kind, row.name)] = Overlay(
                {s: getattr(row, s) for s in SEVERITY_COLUMNS},
                {"passed": row.compliance_passed, "failed": row.compliance_failed})
        return out
