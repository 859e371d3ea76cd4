"""Discovery against container engine outages: the engine state with a fake
clock, then the real docker SDK against a small Docker Engine API served on a
unix socket by this test (real HTTP over a real socket), which can refuse,
vanish, hang (accept and never answer, like an engine stopped with SIGSTOP),
answer errors, and come back."""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import queue
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import pytest
import requests
import structlog
import urllib3
from structlog.testing import capture_logs

from cnnf.defender.discovery.docker import (
    ENGINE_ERROR,
    UNREACHABLE,
    UNRESPONSIVE,
    DockerDiscovery,
    EngineState,
    outage_reason,
)
from cnnf.defender.discovery.identity import DiscoveredContainer

DOWN = "container engine unreachable"
BACK = "container engine back"
RESYNC_BOUND = 1.5  # the "within 1 s", with room for a loaded machine


def poll(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


# --- the engine state, with a fake clock ----------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_engine_state_logs_each_change_once_and_the_outage_length() -> None:
    clock = FakeClock()
    state = EngineState(endpoint="unix:///x.sock", runtime="docker", clock=clock)
    assert state.as_dict() == {"up": False, "since": 0.0, "outages": 0}
    with capture_logs() as logs:
        assert state.back() is None  # reached for the first time: nothing to report
        assert state.as_dict() == {"up": True, "since": 1_000.0, "outages": 0}
        assert state.back() is None
        clock.now = 1_010.0
        assert state.down(UNREACHABLE, "connection refused")
        clock.now = 1_012.5
        for _ in range(5):  # every failed retry
            assert not state.down(UNREACHABLE, "connection refused")
        assert state.down(UNRESPONSIVE) is False  # still the same outage
        assert state.outage_seconds() == 2.5
        assert state.as_dict() == {"up": False, "since": 1_010.0, "outages": 1}
        clock.now = 1_013.25
        assert state.back() == 3.25
        assert state.outage_seconds() == 0.0
        assert state.as_dict() == {"up": True, "since": 1_013.25, "outages": 1}
    assert [(e["event"], e["log_level"]) for e in logs] == [(DOWN, "warning"), (BACK, "info")]
    assert logs[0]["reason"] == UNREACHABLE and logs[0]["error"] == "connection refused"
    assert logs[0]["endpoint"] == "unix:///x.sock"
    assert logs[1]["outage_s"] == 3.25


def test_an_engine_down_from_the_start_is_an_outage() -> None:
    clock = FakeClock()
    state = EngineState(clock=clock)
    assert state.outage_seconds() == 0.0  # not tried yet
    with capture_logs() as logs:
        assert state.down(UNRESPONSIVE, "timed out")
        clock.now += 4
        assert state.outage_seconds() == 4.0
        assert state.back() == 4.0
    assert [e["event"] for e in logs] == [DOWN, BACK]
    assert state.outages == 1


# --- why a request failed, from the real SDK on real sockets -----------------------------


def test_outage_reasons_of_real_failures(tmp_path: Path) -> None:
    def failure(path: Path, call: Callable[[DockerDiscovery], object]) -> str:
        d = DockerDiscovery(f"unix://{path}", "node-1", timeout=0.5, ping_timeout=0.5)
        try:
            with pytest.raises(Exception) as info:
                call(d)
            return outage_reason(info.value)
        finally:
            d.close()

    refusing_path, silent_path = tmp_path / "refusing.sock", tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX) as refusing, socket.socket(socket.AF_UNIX) as silent:
        refusing.bind(str(refusing_path))  # bound, not listening: connection refused
        silent.bind(str(silent_path))
        silent.listen(8)  # connections complete in the backlog; nobody answers
        assert failure(refusing_path, DockerDiscovery.probe) == UNREACHABLE
        assert failure(tmp_path / "none.sock", DockerDiscovery.probe) == UNREACHABLE
        DockerDiscovery(f"unix://{silent_path}", "node-1").probe()  # it connects...
        assert failure(silent_path, DockerDiscovery.snapshot) == UNRESPONSIVE  # ...no answer


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (requests.exceptions.ReadTimeout("read timed out"), UNRESPONSIVE),
        (requests.exceptions.ConnectTimeout("connect timed out"), UNRESPONSIVE),
        (docker.errors.DockerException("Error while fetching server API version"), ENGINE_ERROR),
        (ConnectionRefusedError(111, "Connection refused"), UNREACHABLE),
        (FileNotFoundError(2, "No such file or directory"), UNREACHABLE),
        (requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError(
            "Connection aborted.", FileNotFoundError(2, "gone"))), UNREACHABLE),
        (docker.errors.APIError("500 Server Error", explanation="the store is locked"),
         ENGINE_ERROR),
        (requests.exceptions.HTTPError("500 Server Error"), ENGINE_ERROR),
        (PermissionError(13, "Permission denied"), UNREACHABLE),
        (ValueError("bad answer"), ENGINE_ERROR),
    ],
)
def test_outage_reasons(exc: Exception, reason: str) -> None:
    assert outage_reason(exc) == reason


def test_outage_reasons_look_through_wrapping() -> None:
    try:
        try:
            raise requests.exceptions.ReadTimeout("read timed out")
        except requests.exceptions.ReadTimeout as inner:
            raise docker.errors.DockerException("Error while fetching server API version") \
                from inner
    except docker.errors.DockerException as outer:
        assert outage_reason(outer) == UNRESPONSIVE


# --- a Docker Engine API on a unix socket -------------------------------------------------


class _Server(socketserver.ThreadingUnixStreamServer):
    engine: FakeEngine
    block_on_close = True  # server_close() joins the handlers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle(self) -> None:
        # The client may have given up (timed out) before a hung engine answered.
        with contextlib.suppress(OSError):
            super().handle()

    def do_GET(self) -> None:
        engine = self.server.engine
        path = re.sub(r"^/v[0-9.]+", "", urlsplit(self.path).path)
        engine.requests.append((time.monotonic(), path))
        while not engine.answering.wait(0.02):  # hung: answers once resumed, as SIGCONT
            if engine.stopping.is_set():
                self.close_connection = True
                return
        if path == "/_ping":
            self._send(200, b"OK", "text/plain")
        elif path == "/version":
            self._json({"ApiVersion": "1.41", "MinAPIVersion": "1.24", "Version": "4.3.1"})
        elif path == "/containers/json":
            if engine.failing:
                self._json({"message": "the store is locked"}, 500)
            else:
                self._json([{"Id": cid} for cid in list(engine.containers)])
        elif m := re.fullmatch(r"/containers/([^/]+)/json", path):
            doc = engine.containers.get(m[1])
            self._json(doc if doc else {"message": "no such container"}, 200 if doc else 404)
        elif path == "/events":
            self._events()
        else:
            self._json({"message": "not found"}, 404)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")  # one request per connection
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _json(self, doc: Any, status: int = 200) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _events(self) -> None:
        engine = self.server.engine
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        q: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        engine.streams.append(q)
        engine.opened.append(time.monotonic())
        try:
            # Ends without the last chunk when the engine stops: as a crash looks.
            while not engine.stopping.is_set():
                if not engine.answering.is_set():  # hung: holds its events back
                    engine.answering.wait(0.02)
                    continue
                try:
                    ev = q.get(timeout=0.02)
                except queue.Empty:
                    continue
                data = json.dumps(ev).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
        finally:
            engine.streams.remove(q)


@dataclass
class FakeEngine:
    """The engine's side: containers, and what the process does (runs, stops, hangs)."""

    path: Path
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    failing: bool = False  # answer 500 to the container list
    requests: list[tuple[float, str]] = field(default_factory=list)
    streams: list[queue.SimpleQueue[dict[str, Any]]] = field(default_factory=list)
    opened: list[float] = field(default_factory=list)  # when each event stream opened
    answering: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    _server: _Server | None = None

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self.stopping.clear()
        self.answering.set()
        server = _Server(str(self.path), _Handler)
        server.engine = self
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        self._server = server

    def stop(self, remove_socket: bool = False) -> None:
        """The engine's process ends: its socket refuses connections (or is gone)."""
        if self._server is None:
            return
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        if remove_socket:
            self.path.unlink()

    def hang(self) -> None:
        self.answering.clear()

    def resume(self) -> None:
        self.answering.set()

    def run(self, cid: str, address: str, image: str = "shop/api:2.1") -> None:
        self.containers[cid] = {
            "Id": cid, "Name": f"/{cid}",
            "Config": {"Image": f"docker.io/{image}", "Labels": {"app": cid}},
            "State": {"Running": True, "Pid": 4242},
            "HostConfig": {"NetworkMode": "bridge"},
            "NetworkSettings": {"Networks": {"lab": {"IPAddress": address}}},
        }
        for q in list(self.streams):
            q.put({"Type": "container", "Action": "start", "id": cid, "Actor": {"ID": cid}})

    def served(self, path: str) -> list[float]:
        return [t for t, p in list(self.requests) if p == path]


@dataclass
class Watch:
    """watch() in its thread, and what it called back."""

    discovery: DockerDiscovery
    stop: threading.Event = field(default_factory=threading.Event)
    snapshots: list[tuple[float, list[str]]] = field(default_factory=list)
    started: list[DiscoveredContainer] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    thread: threading.Thread | None = None

    def run(self, **kwargs: Any) -> None:
        self.thread = threading.Thread(
            target=self.discovery.watch,
            args=(lambda found: self.snapshots.append(
                      (time.monotonic(), sorted(c.identity.id for c in found))),
                  self.started.append, self.stop),
            kwargs={"on_error": self.errors.append, **kwargs}, daemon=True)
        self.thread.start()

    def resynced_after(self, t: float) -> float | None:
        return next((at for at, _ in list(self.snapshots) if at >= t), None)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[FakeEngine]:
    e = FakeEngine(tmp_path / "docker.sock")
    e.run("api-1", "10.1.0.2")
    e.start()
    try:
        yield e
    finally:
        e.resume()
        e.stop()


@pytest.fixture
def watch(engine: FakeEngine) -> Iterator[Watch]:
    # A short request timeout, ping period and ping timeout keep the test short.
    w = Watch(DockerDiscovery(f"unix://{engine.path}", "node-1", timeout=1.0,
                              ping_interval=0.2, ping_timeout=0.5))
    # structlog's global configuration is what capture_logs() swaps: a logger
    # cached by an earlier configuration would not be captured.
    structlog.reset_defaults()
    yield w
    w.stop.set()
    if w.thread is not None:
        w.thread.join(5)
        assert not w.thread.is_alive()
    w.discovery.close()
    w.errors.clear()  # they hold the failed requests' frames
    gc.collect()  # a socket left open shows here, as a ResourceWarning of this test


def _connected(w: Watch, engine: FakeEngine) -> None:
    assert poll(lambda: w.snapshots and w.discovery.engine.up), "no first resync"
    assert poll(lambda: engine.streams), "no event stream"
    assert w.snapshots[-1][1] == ["api-1"]


def test_events_are_followed_while_the_engine_is_up(engine: FakeEngine, watch: Watch) -> None:
    with capture_logs() as logs:
        watch.run()
        _connected(watch, engine)
        engine.run("web-1", "10.1.0.3", "shop/web:1.0")
        assert poll(lambda: watch.started)
    (c,) = watch.started
    assert (c.identity.id, c.identity.image, c.addresses) == ("web-1", "shop/web:1.0",
                                                              ("10.1.0.3",))
    assert poll(lambda: watch.snapshots[-1][1] == ["api-1", "web-1"])
    assert not events(logs, DOWN) and not events(logs, BACK)  # the first contact is silent
    assert watch.discovery.engine.as_dict()["outages"] == 0
    assert poll(lambda: engine.served("/_ping"))  # the liveness check runs while up


@pytest.mark.parametrize("remove_socket", [False, True], ids=["refused", "socket-gone"])
def test_an_engine_that_goes_away_is_logged_once_and_resynced_within_a_second_of_return(
    engine: FakeEngine, watch: Watch, remove_socket: bool
) -> None:
    with capture_logs() as logs:
        watch.run()
        _connected(watch, engine)
        t_stop = time.monotonic()
        engine.stop(remove_socket=remove_socket)
        assert poll(lambda: not watch.discovery.engine.up), "the outage was not noticed"
        t_noticed = time.monotonic()
        assert poll(lambda: len(watch.errors) >= 3), "no retries"
        engine.containers.pop("api-1")  # changed while it was away
        engine.run("db-1", "10.1.0.4", "shop/db:13")
        engine.start()
        t_back = time.monotonic()
        resynced = poll(lambda: watch.resynced_after(t_back), RESYNC_BOUND)
        assert resynced is not None and resynced - t_back <= RESYNC_BOUND, (
            "no resync within the bound after the engine came back")
    assert watch.snapshots[-1][1] == ["db-1"]
    (down,) = events(logs, DOWN)  # once, however many retries failed
    assert down["reason"] == UNREACHABLE and down["log_level"] == "warning"
    (back,) = events(logs, BACK)
    assert t_back - t_noticed <= back["outage_s"] <= resynced - t_stop
    state = watch.discovery.engine
    assert state.up and state.outages == 1 and state.outage_seconds() == 0.0


def test_a_hung_engine_is_detected_as_unresponsive_and_resynced_when_it_answers_again(
    engine: FakeEngine, watch: Watch
) -> None:
    with capture_logs() as logs:
        watch.run()
        _connected(watch, engine)
        engine.hang()  # accepts connections, answers nothing (the event stream stays open)
        t_hang = time.monotonic()
        assert poll(lambda: not watch.discovery.engine.up, 5), "the hang was not noticed"
        t_noticed = time.monotonic()
        assert watch.discovery.engine.outage_seconds() >= 0
        # The reconnection attempts time out too, and are not logged again.
        assert poll(lambda: len(watch.errors) >= 3, 10), "no retries"
        engine.resume()
        t_back = time.monotonic()
        resynced = poll(lambda: watch.resynced_after(t_back), RESYNC_BOUND)
        assert resynced is not None and resynced - t_back <= RESYNC_BOUND, (
            "no resync within the bound after the engine answered again")
        # A new event stream (this fake replays no events from before it opened):
        # a container started now is seen.
        assert poll(lambda: [t for t in engine.opened if t >= t_back])
        engine.run("web-1", "10.1.0.3", "shop/web:1.0")
        assert poll(lambda: [c.identity.id for c in watch.started] == ["web-1"])
    (down,) = events(logs, DOWN)
    assert down["reason"] == UNRESPONSIVE
    (back,) = events(logs, BACK)
    assert back["reason"] == UNRESPONSIVE
    assert t_back - t_noticed <= back["outage_s"] <= resynced - t_hang
    assert watch.discovery.engine.outages == 1
    assert all(isinstance(e, Exception) for e in watch.errors)


def test_an_engine_answering_errors_is_retried_at_most_every_half_second(
    engine: FakeEngine, watch: Watch
) -> None:
    engine.failing = True
    with capture_logs() as logs:
        watch.run()
        assert poll(lambda: len(engine.served("/containers/json")) >= 4, 5)
        engine.failing = False
        t_back = time.monotonic()
        resynced = poll(lambda: watch.resynced_after(t_back), RESYNC_BOUND)
        assert resynced is not None and resynced - t_back <= RESYNC_BOUND
    # Each attempt opens a new client, whose first request is /version. They start
    # 0.5 s apart; the margin is for the time the requests take to arrive.
    attempts = engine.served("/version")
    assert len(attempts) >= 4
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert min(gaps) >= 0.4, gaps
    (down,) = events(logs, DOWN)
    assert down["reason"] == ENGINE_ERROR and "the store is locked" in down["error"]
    (back,) = events(logs, BACK)
    assert back["outage_s"] > 0
