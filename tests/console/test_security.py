"""The login limiter, pure, with a moved clock."""

from __future__ import annotations

import pytest

from cnnf.console.security import LoginLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("failures", "ask", "locked"),
    [
        ([("alice", "c1")] * 5, ("alice", "c1"), True),
        ([("alice", "c1")] * 4, ("alice", "c1"), False),
        ([("alice", "c1")] * 5, ("alice", "c2"), False),  # another client
        ([("alice", "c1")] * 5, ("bob", "c1"), False),  # another user, few failures
        # one password tried on many names from one client: the client is limited
        ([(f"user{i}", "c1") for i in range(20)], ("alice", "c1"), True),
        ([(f"user{i}", "c1") for i in range(19)], ("alice", "c1"), False),
        ([(f"user{i}", "c1") for i in range(20)], ("alice", "c2"), False),
    ],
)
def test_who_is_locked_out(failures: list[tuple[str, str]], ask: tuple[str, str],
                           locked: bool) -> None:
    limiter = LoginLimiter(allowed=5, window=60, clock=Clock())
    for user, client in failures:
        limiter.failed(user, client)
    assert (limiter.retry_after(*ask) > 0) is locked


def test_the_lock_ends_with_the_window_and_old_keys_are_forgotten() -> None:
    clock = Clock()
    limiter = LoginLimiter(allowed=5, window=60, clock=clock)
    for i in range(1000):
        limiter.failed(f"made-up-{i}", f"10.0.{i // 250}.{i % 250}")
    assert limiter.retry_after("made-up-0", "10.0.0.0") == 0  # one failure each
    assert limiter.tracked() == 2 * 1000  # a user+client key and a client key each
    clock.now = 30.0
    limiter.failed("alice", "c1")
    assert limiter.retry_after("made-up-0", "10.0.0.0") == 0
    clock.now = 61.0
    assert limiter.tracked() == 2  # only alice's failure is still in the window
    for _ in range(4):
        limiter.failed("alice", "c1")
    assert limiter.retry_after("alice", "c1") == pytest.approx(29.0)
    clock.now = 90.0
    assert limiter.retry_after("alice", "c1") == 0


def test_the_unknown_user_hash_is_made_by_the_console_not_by_every_command() -> None:
    """An argon2 hash costs about half a second of CPU: importing the ``cnnf``
    command makes none; a Console makes one as it builds its limiter, before any
    login, so the first login for an unknown user is as slow as the rest; a second
    limiter and the logins reuse it. (A fresh interpreter: this one imported the
    Console long ago.)"""
    import subprocess
    import sys

    code = ("import argon2\n"
            "made = []\n"
            "hash_ = argon2.PasswordHasher.hash\n"
            "argon2.PasswordHasher.hash = lambda self, p, **k: made.append(p) or hash_(self, p)\n"
            "import cnnf.cli\n"
            "from cnnf.console.security import LoginLimiter, burn_password_check\n"
            "print(len(made))\n"
            "LoginLimiter()\n"
            "print(len(made))\n"
            "LoginLimiter()\n"
            "burn_password_check('guess')\n"
            "print(len(made))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.split() == ["0", "1", "1"]
