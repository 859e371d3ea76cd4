"""A throw-away PostgreSQL server for tests: Debian's binaries, a temporary
cluster owned by the ``postgres`` user, listening on 127.0.0.1 on a free port
and on a unix socket inside the cluster directory; stopped and deleted at the end.

CI starts nothing for us, so the fixture starts the server itself.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_BIN = Path(os.environ.get("CNNF_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = ("runuser", "-u", "postgres", "--")


def available() -> str | None:
    """None when a server can be started here, else the reason why not."""
    if not (PG_BIN / "initdb").exists():
        return f"no PostgreSQL binaries in {PG_BIN} (install Debian's postgresql)"
    if os.geteuid() != 0:
        return "starting PostgreSQL as the postgres user needs root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """``durable=False`` (the tests): fsync, synchronous_commit and
    full_page_writes off, fast and fine for data thrown away; ``durable=True``:
    PostgreSQL's own defaults, as a user runs it (the benchmarks)."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="cnnf-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._databases = 0

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run([*RUN_AS, *args], capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")

    def start(self) -> None:
        shutil.chown(self.root, "postgres", "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", *(() if self.durable else ("--no-sync",)))
        # The port is free when chosen, but another process (another test stream
        # beside this one) may take it before the server listens: then another.
        for attempt in range(5):
            options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            if not self.durable:
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            try:
                self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
                          "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")
                return
            except RuntimeError:
                log = self.root / "server.log"
                if attempt == 4 or "Address already in use" not in (
                        log.read_text() if log.exists() else ""):
                    raise
                log.unlink()
                self.port = _free_port()

    def stop(self) -> None:
        try:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                      "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, template: str | None = None) -> str:
        """A new database, empty or a copy of ``template`` (a URL this method
        returned, that nobody uses any more: the sessions of a client that just
        stopped may take a moment to end, so this waits up to 10 s for them, then
        fails naming them); returns its SQLAlchemy URL."""
        import psycopg

        self._databases += 1
        name = f"cnnf_test_{os.getpid()}_{self._databases}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            if template is None:
                conn.execute(f'CREATE DATABASE "{name}"')
            else:
                source = template.rsplit("/", 1)[1]
                deadline = time.monotonic() + 10
                while sessions := conn.execute(
                        "SELECT pid, application_name, state FROM pg_stat_activity "
                        "WHERE datname = %s", (source,)).fetchall():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"database {source} is still in use: {sessions}")
                    time.sleep(0.05)
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        return self.url(name)


@contextmanager
def postgres_server(durable: bool = False) -> Iterator[PostgresServer]:
    server = PostgresServer(durable)
    try:
        server.start()
        yield server
    finally:
        server.stop()
