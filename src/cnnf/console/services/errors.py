"""Errors the services raise; the API maps each to one HTTP status."""

from __future__ import annotations

from cnnf.errors import CnnfError, FieldError


class NotFound(CnnfError):
    """The named resource does not exist (404)."""


class Conflict(CnnfError):
    """The change clashes with the current state, e.g. deleting an object in use (409);
    ``errors`` names the fields concerned where there are any."""

    def __init__(self, message: str, errors: list[FieldError] | None = None) -> None:
        self.errors = list(errors or ())
        super().__init__(message)


class InvalidInput(CnnfError):
    """Bad input outside the policy document itself, naming the field (422)."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


class Unauthorized(CnnfError):
    """No valid credentials (401)."""


class Forbidden(CnnfError):
    """Valid credentials, but the role may not do this (403)."""


class BadRequest(InvalidInput):
    """The request itself is malformed, e.g. a query parameter the operation does
    not have (400), naming what is wrong."""
