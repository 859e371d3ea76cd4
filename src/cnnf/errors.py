"""CNNF's exception hierarchy. Every error CNNF raises on purpose derives from
:class:`CnnfError`, so callers (the CLI, the API) can turn it into a clear message."""

from __future__ import annotations

from dataclasses import dataclass


class CnnfError(Exception):
    """Base of every error CNNF raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem in an input, at a path like ``containerRules[3].ports[0].end``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PolicyValidationError(CnnfError):
    """A policy (or policy document) is invalid; ``errors`` lists every problem."""

    def __init__(self, errors: list[FieldError], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        head = f"{source}: " if source else ""
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{head}invalid policy ({len(self.errors)} error(s))\n{lines}")
