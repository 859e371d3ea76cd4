"""Forwarding audits: syslog (RFC 5424 over UDP or TCP) and webhooks (JSON POST).

Ingestion hands stored audits to :meth:`Forwarder.submit`, which never blocks:
each sink has its own bounded queue and worker thread. When a sink cannot keep
up (or is down for long) its queue fills and new batches for it are dropped and
counted, instead of slowing the Defenders' report ingestion. A sink that fails
is retried with exponential backoff; a batch that still fails is counted as
failed.

Syslog over TCP frames each message by octet counting (RFC 6587), over UDP one
message per datagram. Each message carries the audit as structured data
(``[cnnf@32473 ...]``, 32473 being the enterprise number reserved for examples)
and the audit's sentence as the message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from cnnf import __version__
from cnnf.console.services.records import AuditRecord
from cnnf.errors import CnnfError

log = logging.getLogger("cnnf.console.forwarding")

FACILITY_LOCAL0 = 16
SEVERITY_WARNING = 4  # blocked connections
SEVERITY_NOTICE = 5  # alerted connections
SD_ID = "cnnf@32473"
QUEUE_BATCHES = 1000  # per sink


class ForwardError(CnnfError):
    """A sink could not deliver a batch."""


class Sink(Protocol):
    name: str

    def send(self, audits: Sequence[AuditRecord]) -> None:
        """Deliver the batch once, or raise."""

    def close(self) -> None: ...


def _sd_value(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_field(value: str, size: int) -> str:
    """A syslog header field: printable US-ASCII without spaces, or ``-``."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:size]
    return cleaned or "-"


def syslog_message(audit: AuditRecord, app_name: str = "cnnf") -> bytes:
    """One audit as an RFC 5424 message (no framing)."""
    severity = SEVERITY_WARNING if audit.blocked else SEVERITY_NOTICE
    pri = FACILITY_LOCAL0 * 8 + severity
    stamp = audit.time.isoformat().replace("+00:00", "Z")
    host = _header_field(audit.defender, 255)
    params = {
        "type": audit.type, "effect": audit.effect.value,
        "blocked": "true" if audit.blocked else "false",
        "rule": audit.rule_name, "ruleId": audit.rule_id if audit.rule_id is not None else "",
        "srcImage": audit.src_image, "srcContainer": audit.src_container,
        "srcHost": audit.src_hostname, "srcAddress": audit.src_address,
        "dstImage": audit.dst_image, "dstContainer": audit.dst_container,
        "dstHost": audit.dst_hostname, "dstAddress": audit.dst_address,
        "port": audit.port, "dstSubnet": audit.dst_subnet, "dstDomain": audit.dst_domain,
        "count": audit.count, "revision": audit.revision,
        # A pod name is unique only within its namespace: both, or neither.
        "srcNamespace": audit.src_namespace, "srcPod": audit.src_pod,
        "dstNamespace": audit.dst_namespace, "dstPod": audit.dst_pod,
    }
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    text = f"<{pri}>1 {stamp} {host} {app_name} - audit {sd} {audit.msg}"
    return text.encode("utf-8")


def parse_syslog_url(url: str) -> tuple[str, str, int]:
    """``udp://host:port`` or ``tcp://host:port`` -> (transport, host, port)."""
    parts = urlsplit(url)
    if parts.scheme not in ("udp", "tcp"):
        raise CnnfError(f"--syslog {url!r}: expected udp://HOST:PORT or tcp://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise CnnfError(f"--syslog {url!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname or not port:
        raise CnnfError(f"--syslog {url!r}: expected udp://HOST:PORT or tcp://HOST:PORT")
    return parts.scheme, parts.hostname, port


def check_webhook_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CnnfError(f"--webhook {url!r}: expected an http:// or https:// URL")
    return url


def webhook_name(url: str) -> str:
    """A webhook's name for logs and metric labels: scheme, host and port only.
    Webhook URLs often carry their secret (user:password, a token in the path or
    the query); a short hash of the whole URL tells two webhooks apart instead."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return f"webhook:{parts.scheme}://{host}{port} ({digest})"


class SyslogSink:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.transport, self.host, self.port = parse_syslog_url(url)
        self.name = f"syslog:{self.transport}://{self.host}:{self.port}"
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
            info = socket.getaddrinfo(self.host, self.port, type=kind)[0]
            sock = socket.socket(info[0], kind)
            sock.settimeout(self.timeout)
            try:
                sock.connect(info[4])
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def send(self, audits: Sequence[AuditRecord]) -> None:
        try:
            sock = self._connect()
            for audit in audits:
                message = syslog_message(audit)
                if self.transport == "udp":
                    sock.send(message)
                else:
                    sock.sendall(b"%d %s" % (len(message), message))
        except OSError as exc:
            self.close()  # reconnect on the next try
            raise ForwardError(f"{self.name}: {exc}") from exc

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


class WebhookSink:
    """POST ``{"source": "cnnf", "audits": [...]}`` to a URL; 2xx is success."""

    def __init__(self, url: str, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = check_webhook_url(url)
        self.name = webhook_name(url)
        self._http = httpx.Client(timeout=timeout, transport=transport,
                                  headers={"User-Agent": f"cnnf-console/{__version__}"})

    def send(self, audits: Sequence[AuditRecord]) -> None:
        body = {"source": "cnnf", "audits": [a.model_dump(mode="json") for a in audits]}
        try:
            resp = self._http.post(self.url, content=json.dumps(body),
                                   headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            raise ForwardError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= resp.status_code < 300:
            raise ForwardError(f"{self.name}: answered {resp.status_code}")

    def close(self) -> None:
        self._http.close()


@dataclass
class SinkStats:
    sent: int = 0  # audits delivered
    failed: int = 0  # audits given up on after the retries
    dropped: int = 0  # audits dropped because the sink's queue was full
    retries: int = 0


@dataclass
class _Worker:
    sink: Sink
    queue: queue.Queue[list[AuditRecord] | None]
    stats: SinkStats = field(default_factory=SinkStats)
    thread: threading.Thread | None = None


class Forwarder:
    """Bounded per-sink queues drained by one thread each, with retries and backoff."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        queue_batches: int = QUEUE_BATCHES,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._stopping = threading.Event()
        self._sleep = sleep or self._wait
        self._workers = [_Worker(sink, queue.Queue(queue_batches)) for sink in sinks]
        for w in self._workers:
            w.thread = threading.Thread(target=self._run, args=(w,), daemon=True,
                                        name=f"cnnf-forward-{w.sink.name[:40]}")
            w.thread.start()

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    @property
    def stats(self) -> dict[str, SinkStats]:
        return {w.sink.name: w.stats for w in self._workers}

    def submit(self, audits: Sequence[AuditRecord]) -> None:
        """Queue a batch for every sink; never blocks (a full queue drops and counts)."""
        if not audits:
            return
        batch = list(audits)
        for w in self._workers:
            try:
                w.queue.put_nowait(batch)
            except queue.Full:
                w.stats.dropped += len(batch)

    def _run(self, w: _Worker) -> None:
        while True:
            batch = w.queue.get()
            if batch is None:
                return
            self._deliver(w, batch)

    def _deliver(self, w: _Worker, batch: list[AuditRecord]) -> None:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                w.sink.send(batch)
                w.stats.sent += len(batch)
                return
            except Exception as exc:  # a sink must never kill its worker
                if attempt == self.attempts or self._stopping.is_set():
                    log.error("forwarding failed; giving up on %d audits: %s", len(batch), exc)
                    w.stats.failed += len(batch)
                    return
                log.warning("forwarding failed (attempt %d of %d); retrying in %.1f s: %s",
                            attempt, self.attempts, delay, exc)
                w.stats.retries += 1
                self._sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (within ``timeout``), then stop the threads."""
        deadline = time.monotonic() + timeout
        for w in self._workers:
            with contextlib.suppress(queue.Full):
                w.queue.put(None, timeout=max(deadline - time.monotonic(), 0.01))
        for w in self._workers:
            if w.thread is not None:
                w.thread.join(max(deadline - time.monotonic(), 0.01))
        self._stopping.set()
        for w in self._workers:
            w.sink.close()


def build_sinks(syslog: Sequence[str], webhooks: Sequence[str]) -> list[Sink]:
    sinks: list[Sink] = [SyslogSink(url) for url in syslog]
    sinks += [WebhookSink(url) for url in webhooks]
    return sinks


def stats_as_rows(forwarder: Forwarder | None) -> list[tuple[str, str, int]]:
    """(sink, result, audits) rows for the metrics endpoint."""
    rows: list[tuple[str, str, int]] = []
    if forwarder is None:
        return rows
    for name, s in forwarder.stats.items():
        rows += [(name, "sent", s.sent), (name, "failed", s.failed), (name, "dropped", s.dropped)]
    return rows

