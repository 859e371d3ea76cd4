"""An ASGI app (the Console's, mostly) served by uvicorn in a thread of the test
process, on a free loopback port: up before the ``with`` body runs, stopped at
its end."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

# How long a server may take to start: long, because a loaded CI machine (two
# cores, other test streams beside this one) can be slow; it is a readiness
# deadline, not a timing assertion.
START_WITHIN = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def uvicorn_thread(app: Any, **config: Any) -> Iterator[int]:
    """Serve ``app`` (``config``: more uvicorn.Config options, e.g. TLS files);
    yields the port. The listening socket is made here and handed to uvicorn, so
    no other process (another test stream's server) can take the port between
    choosing it and listening on it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    # loop="asyncio": the tests' own event loop in this thread, not uvloop (which
    # `cnnf console` uses): uvloop's handles outlive a server stopped from another
    # thread and surface as warnings in whichever test runs next.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off",
                                           loop="asyncio", timeout_graceful_shutdown=1,
                                           **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="console",
                              daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_WITHIN
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise AssertionError(f"the Console did not start within {START_WITHIN} s")
            time.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
