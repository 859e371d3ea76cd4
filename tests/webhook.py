"""A webhook receiver on loopback for the forwarding tests: every POST's JSON
body is recorded with the status it was answered; ``answer(body, n)`` picks that
status (``n``: how many posts so far, this one included; default 204)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[dict[str, Any], int], int]


class Webhook:
    def __init__(self, answer: Answer = lambda body, n: 204) -> None:
        self.received: list[tuple[int, dict[str, Any]]] = []  # (status, body)
        # (path with its query, Authorization header) of every post, recorded before
        # ``answer`` runs (which may read the last one to judge credentials)
        self.requests: list[tuple[str, str]] = []
        hook = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    hook.requests.append((self.path, self.headers.get("Authorization", "")))
                    code = answer(body, len(hook.received) + 1)
                    hook.received.append((code, body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def posts(self) -> list[dict[str, Any]]:
        """Every body posted, in order."""
        return [body for _, body in self.received]

    def batches(self) -> list[tuple[int, list[int]]]:
        """(status answered, audit ids) of every post."""
        return [(code, [a["id"] for a in body["audits"]]) for code, body in self.received]

    def delivered(self) -> list[int]:
        """The audit ids of the posts answered 2xx, sorted."""
        return sorted(i for code, ids in self.batches() if 200 <= code < 300 for i in ids)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
