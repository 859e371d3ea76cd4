"""Roles and permissions, password and token hashing, login rate limiting.

Passwords are hashed with argon2. Tokens (session and API) are 256-bit random
secrets, so a plain SHA-256 of the secret is enough to store them: nobody can
brute-force the preimage, and lookup by hash stays one indexed query.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

TOKEN_PREFIX = "cnnf_"
MIN_PASSWORD_LENGTH = 8

Clock = Callable[[], float]


class Role(StrEnum):
    ADMIN = "admin"  # everything
    OPERATOR = "operator"  # policy and settings, and reading
    AUDITOR = "auditor"  # read-only


class Permission(StrEnum):
    """What an endpoint needs. Every API route declares exactly one."""

    READ = "read"  # any role: read policy, audits, flows, history
    POLICY = "policy"  # change policy and settings
    ADMIN = "admin"  # users, other people's tokens
    SELF = "self"  # any signed-in principal, on its own account (me, logout, own tokens)
    DEFENDER = "defender"  # a Defender credential (no user role has it): /api/v1/defender/*


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission) - {Permission.DEFENDER},
    Role.OPERATOR: frozenset({Permission.READ, Permission.POLICY, Permission.SELF}),
    Role.AUDITOR: frozenset({Permission.READ, Permission.SELF}),
}


def allowed(role: Role, permission: Permission) -> bool:
    return permission in GRANTS[role]


_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash() -> str:
    """Verifying against this keeps a login for an unknown user as slow as a real
    one. Made once per process when first asked (every Console asks as it builds
    its LoginLimiter, before it serves a login), not at import: an argon2 hash costs
    about half a second of CPU, which every ``cnnf`` command paid."""
    return _hasher.hash("cnnf-no-such-user")


def burn_password_check(password: str) -> None:
    verify_password(_dummy_hash(), password)


def password_problem(password: str) -> str | None:
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"must be at least {MIN_PASSWORD_LENGTH} characters"
    return None


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LoginLimiter:
    """At most ``allowed`` failed logins per (user, client) in a sliding window,
    and ``allowed * CLIENT_FACTOR`` per client over all user names (a client
    trying one password on many names is limited too).

    In memory: it guards one Console process, which is what serves logins.
    Keys without recent failures are forgotten, so names made up by a client do
    not pile up. The clock is injected so tests move time instead of sleeping.
    """

    CLIENT_FACTOR = 4
    _ANY_USER = "\0any"  # the per-client key (no user name holds a NUL)

    def __init__(self, allowed: int = 5, window: float = 60.0, clock: Clock = time.monotonic):
        _dummy_hash()  # made now, so the first unknown user's login is no quicker
        self.allowed = allowed
        self.window = window
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            self._failures.pop(key, None)
        return times

    def _prune(self, now: float) -> None:
        for key in list(self._failures):
            self._recent(key, now)

    def retry_after(self, user: str, client: str) -> float:
        """Seconds until a new attempt is allowed; 0 when allowed now."""
        with self._lock:
            now = self.clock()
            wait = 0.0
            for key, allowed in (((user, client), self.allowed),
                                 ((self._ANY_USER, client), self.allowed * self.CLIENT_FACTOR)):
                times = self._recent(key, now)
                if len(times) >= allowed:
                    wait = max(wait, times[-allowed] + self.window - now, 0.001)
            return wait

    def failed(self, user: str, client: str) -> None:
        with self._lock:
            now = self.clock()
            if len(self._failures) > 10_000:
                self._prune(now)
            for key in ((user, client), (self._ANY_USER, client)):
                times = self._recent(key, now)
                times.append(now)
                self._failures[key] = times

    def tracked(self) -> int:
        """Keys with failures in the window (after forgetting the others)."""
        with self._lock:
            self._prune(self.clock())
            return len(self._failures)

    def succeeded(self, user: str, client: str) -> None:
        with self._lock:
            self._failures.pop((user, client), None)
