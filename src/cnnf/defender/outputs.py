"""Flows and audits as JSON lines, to a file (appended) or stdout.

One object per line: ``{"record": "flow", ...FlowRecord}`` or
``{"record": "audit", ...AuditEvent}`` (the wire field names, snake_case).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import IO

from cnnf.model.records import AuditEvent, FlowRecord


class JsonLinesOutput:
    def __init__(self, target: str) -> None:
        self.target = target
        self._fh: IO[str] = (sys.stdout if target == "-"
                             else open(target, "a", encoding="utf-8"))  # noqa: SIM115

    def write(self, flows: Iterable[FlowRecord], audits: Iterable[AuditEvent]) -> int:
        n = 0
        for kind, records in (("flow", flows), ("audit", audits)):
            for rec in records:
                line = {"record": kind, **rec.model_dump(mode="json")}
                self._fh.write(json.dumps(line, separators=(",", ":")) + "\n")
                n += 1
        if n:
            self._fh.flush()
        return n

    def close(self) -> None:
        if self._fh is not sys.stdout:
            self._fh.close()
