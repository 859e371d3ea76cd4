"""Where the datapath's kernel state lives: a network namespace.

``NetnsRef(None)`` is the namespace the process runs in; ``NetnsRef("/run/netns/x")``
(or a bare name, looked up under ``/run/netns``) is another one. Commands run
there through ``nsenter --net=PATH``; a thread or a worker process moves itself
there with :meth:`NetnsRef.enter` (``setns(2)`` affects only the calling thread),
so the netlink sockets it opens afterwards belong to that namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
from dataclasses import dataclass

from cnnf.errors import CnnfError

CLONE_NEWNET = 0x40000000


class DatapathError(CnnfError):
    """The datapath could not change or read kernel state; the message says what failed."""


@dataclass(frozen=True, slots=True)
class NetnsRef:
    """A network namespace by path (``None``: the current one)."""

    path: str | None = None

    @classmethod
    def of(cls, netns: str | NetnsRef | None) -> NetnsRef:
        if netns is None or isinstance(netns, NetnsRef):
            return netns or cls(None)
        return cls(netns if "/" in netns else f"/run/netns/{netns}")

    def argv(self, *cmd: str) -> list[str]:
        return [*cmd] if self.path is None else ["nsenter", f"--net={self.path}", *cmd]

    def run(
        self, *cmd: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace; a failure raises :class:`DatapathError`."""
        try:
            proc = subprocess.run(
                self.argv(*cmd), input=input, capture_output=True, text=True, check=False
            )
        except FileNotFoundError as exc:
            raise DatapathError(f"{cmd[0]}: command not found (install it)") from exc
        if check and proc.returncode != 0:
            where = f" in {self.path}" if self.path else ""
            raise DatapathError(
                f"{' '.join(cmd)}{where} failed (exit {proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def enter(self) -> None:
        """Move the calling thread into the namespace (no-op for the current one)."""
        if self.path is None:
            return
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise DatapathError(f"setns({self.path}): {os.strerror(err)}")
        finally:
            os.close(fd)

    def proc_net(self, name: str) -> str:
        """Read a ``/proc/net/...`` file as seen from the namespace."""
        if self.path is None:
            with open(f"/proc/net/{name}") as f:
                return f.read()
        return self.run("cat", f"/proc/net/{name}").stdout
