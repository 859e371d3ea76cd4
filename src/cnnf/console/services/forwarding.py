"""Forwarding audits: syslog (RFC 5424 over UDP or TCP) and webhooks (JSON POST).

Durable and at least once: ingestion stores, with each audit, one outbox row
per configured sink in the same transaction, and never waits for a sink. The
:class:`Forwarder` of the one Console process holding the singleton lease
(:mod:`cnnf.console.services.leases`) sends the outbox in batches and deletes
what a sink took. A sink down for an hour, or a Console killed mid-batch,
loses nothing: the rows wait (bounded by retention, which counts and logs what
it prunes undelivered). Every message carries the audit's store id, the same
on each delivery, so a receiver drops the repeats at-least-once allows.

Syslog over TCP frames each message by octet counting (RFC 6587), over UDP one
message per datagram. Each message carries the audit as structured data
(``[cnnf@32473 ...]``, 32473 being the enterprise number reserved for examples)
and the audit's sentence as the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import select as io_select
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Protocol
from urllib.parse import urlsplit

import httpx
from pydantic import Field
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cnnf import __version__
from cnnf.console.services.errors import Conflict, NotFound
from cnnf.console.services.leases import Lease
from cnnf.console.services.records import AuditRecord, StoredAudit, stored_audit
from cnnf.console.store.models import AuditRow, OutboxRow, SinkRow
from cnnf.errors import CnnfError
from cnnf.model.rule import PolicyModel

log = logging.getLogger("cnnf.console.forwarding")

FACILITY_LOCAL0 = 16
SEVERITY_WARNING = 4  # blocked connections
SEVERITY_NOTICE = 5  # alerted connections
SD_ID = "cnnf@32473"


class ForwardError(CnnfError):
    """A sink could not deliver a batch. ``rejected``: the sink answered, and refused
    this batch for what it holds (a webhook's 400, 413 or 422; not 401, 403 or
    404, which say the sink's own configuration is wrong): sending
    it again unchanged would be refused again, so the forwarder looks for the
    record(s) it refuses instead of waiting for the sink to come back."""

    def __init__(self, message: str, *, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


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
    """One audit as an RFC 5424 message (no framing); a stored audit's ``id`` is the
    first parameter, the same on every delivery (receivers drop repeats by it)."""
    severity = SEVERITY_WARNING if audit.blocked else SEVERITY_NOTICE
    pri = FACILITY_LOCAL0 * 8 + severity
    stamp = audit.time.isoformat().replace("+00:00", "Z")
    host = _header_field(audit.defender, 255)
    params: dict[str, object] = {"id": audit.id} if isinstance(audit, StoredAudit) else {}
    params |= {
        "type": audit.type, "effect": audit.effect.value,
        "blocked": "true" if audit.blocked else "false",
        # A "would" audit (staged, or enforcement off) enforced nothing: said apart
        # from a real alert, which has the same effect and blocked values.
        "would": "true" if audit.would else "false",
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


def shown_url(url: str) -> str:
    """``url`` as logs, error messages and metric labels may show it: scheme, host
    and port; no user, password, path or query (webhook URLs carry their secret in
    any of those: ``user:token@``, ``/services/T0/B0/TOKEN``, ``?token=``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "(an unparsable URL)"
    if ":" in host:
        host = f"[{host}]"
    rest = "/..." if parts.path not in ("", "/") or parts.query else ""
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{rest}"


def scrub(text: str, url: str) -> str:
    """``text`` (an exception's message) with every secret-bearing part of ``url``
    replaced by ``...``: a library's message may quote the URL it was given."""
    parts = urlsplit(url)
    secrets = {url, parts.netloc, parts.username or "", parts.password or "",
               parts.path, parts.query, parts.path + ("?" + parts.query if parts.query else "")}
    for secret in sorted((s for s in secrets if len(s) > 1), key=len, reverse=True):
        text = text.replace(secret, "...")
    return text


def parse_syslog_url(url: str) -> tuple[str, str, int]:
    """``udp://host:port`` or ``tcp://host:port`` -> (transport, host, port)."""
    parts = urlsplit(url)
    shown = shown_url(url)
    if parts.scheme not in ("udp", "tcp"):
        raise CnnfError(f"--syslog {shown}: expected udp://HOST:PORT or tcp://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise CnnfError(f"--syslog {shown}: the port is not a number from 1 to 65535") from None
    if not parts.hostname or not port:
        raise CnnfError(f"--syslog {shown}: expected udp://HOST:PORT or tcp://HOST:PORT")
    return parts.scheme, parts.hostname, port


def check_webhook_url(url: str) -> str:
    parts = urlsplit(url)
    shown = shown_url(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CnnfError(f"--webhook {shown}: expected an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number in range)
    except ValueError:
        raise CnnfError(f"--webhook {shown}: the port is not a number from 1 to 65535"
                        ) from None
    return url


_DEFAULT_PORTS = {"http": 80, "https": 443}


def webhook_name(url: str) -> str:
    """A webhook's name: its key in the store (the outbox, the fleet's sinks), in
    logs and in metric labels. Scheme, host and port, and a short hash of what
    identifies the receiver (scheme, host, port and path) that tells two webhooks
    on one host apart. The credentials (user and password, the query) are not part
    of it: a rotated secret names the same sink, which keeps its backlog and
    delivers it with the new secret. The path is hashed, not shown: services such
    as Slack carry the secret in it."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    shown_port = "" if port == _DEFAULT_PORTS.get(scheme) else f":{port}"
    receiver = f"{scheme}://{host}:{port}{parts.path or '/'}"
    digest = hashlib.sha256(receiver.encode()).hexdigest()[:8]
    return f"webhook:{scheme}://{host}{shown_port} ({digest})"


def _peer_gone(sock: socket.socket) -> bool:
    """True when the peer closed the connection (or reset it); a syslog receiver
    never writes, so anything readable is its end of the stream."""
    # poll(), not select(): select() refuses descriptors of 1024 and more, which a
    # replica holding thousands of long-polls hands out.
    try:
        poller = io_select.poll()
        poller.register(sock, io_select.POLLIN)
        if not poller.poll(0):
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _acknowledged(sock: socket.socket, timeout: float) -> None:
    """Wait until the peer's TCP acknowledged everything written (the kernel's send
    queue is empty), or raise: a reset connection, a closed peer, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
        unacked = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                 b"\0\0\0\0"))[0]
        if unacked == 0:
            # Acknowledged: the receiver's kernel has it all (a reset arriving just
            # now would have set the error read below).
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
            return
        if time.monotonic() > deadline:
            raise OSError(f"the receiver did not acknowledge {unacked} bytes "
                          f"within {timeout:g} s")
        time.sleep(0.002)


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
        """UDP: one datagram each. TCP: the batch counts as delivered only once the
        receiver's TCP acknowledged every byte of it; a connection the receiver
        closed meanwhile (a restart) is found before writing and replaced, and a
        batch written into a connection that died is an error, so the batch stays
        queued and is sent again (at least once; receivers drop repeats by id)."""
        try:
            if self.transport == "tcp" and self._sock is not None and _peer_gone(self._sock):
                self.close()  # the receiver closed it since the last batch
            sock = self._connect()
            for audit in audits:
                message = syslog_message(audit)
                if self.transport == "udp":
                    sock.send(message)
                else:
                    sock.sendall(b"%d %s" % (len(message), message))
            if self.transport == "tcp":
                _acknowledged(sock, self.timeout)
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
            raise ForwardError(f"{self.name}: {type(exc).__name__}: "
                               f"{scrub(str(exc), self.url)}") from exc
        if not 200 <= resp.status_code < 300:
            rejected = resp.status_code in (400, 413, 422)
            raise ForwardError(f"{self.name}: answered {resp.status_code}", rejected=rejected)

    def close(self) -> None:
        self._http.close()


@dataclass
class SinkStats:
    sent: int = 0  # audits delivered (a repeat after a failure counts again)
    failed: int = 0  # audits in batches that failed (kept in the outbox, tried again)
    retries: int = 0  # failed attempts
    parked: int = 0  # audits the sink refused on their own, set aside (not sent again)


@dataclass
class _Target:
    sink: Sink
    stats: SinkStats = field(default_factory=SinkStats)
    retry_at: float = 0.0  # monotonic; the sink is not tried before
    delay: float = 0.0  # the next backoff after a failure
    stored_as: str = ""  # its key in the store ("": the sink's own outbox_name)

    @property
    def key(self) -> str:
        """Its key in the outbox: the stored sink's name (0011 kept the old key of
        two stored URLs that would have shared one), else :func:`outbox_name`."""
        return self.stored_as or outbox_name(self.sink)


def outbox_name(sink: Sink) -> str:
    """The sink's key in the outbox (its name; a long one shortened, kept unique)."""
    if len(sink.name) <= 200:
        return sink.name
    return sink.name[:180] + " (" + hashlib.sha256(sink.name.encode()).hexdigest()[:12] + ")"


@dataclass(frozen=True)
class Backlog:
    """The undelivered audits of one sink, as the store has them."""

    sink: str
    audits: int
    oldest_queued: datetime | None  # when the oldest undelivered audit was stored
    oldest_audit: datetime | None  # the time of the oldest undelivered audit


def backlog(session: Session) -> list[Backlog]:
    rows = session.execute(
        select(OutboxRow.sink, func.count(), func.min(OutboxRow.queued), func.min(AuditRow.time))
        .join(AuditRow, AuditRow.id == OutboxRow.audit_id).where(OutboxRow.parked.is_(None))
        .group_by(OutboxRow.sink).order_by(OutboxRow.sink)).all()
    return [Backlog(sink, count, _aware(queued), _aware(oldest))
            for sink, count, queued, oldest in rows]


def _aware(value: datetime | None) -> datetime | None:
    # min() over a UtcDateTime column comes back raw (naive on SQLite).
    if value is None or isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC) if value else None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Forwarder:
    """Delivers the outbox: every stored audit to every sink, at least once.

    Ingestion writes one outbox row per audit and sink in the transaction that
    stores the audit (:meth:`AuditService.insert_many` with ``forward_to``). One
    thread per process reads the oldest rows of each sink in batches, sends them
    and deletes them once the sink took them, but only while this process holds
    the ``lease`` (one process of all replicas forwards). A failing sink is
    tried again with exponential backoff up to ``max_backoff``; its rows wait
    in the store meanwhile (bounded by retention), and the other sinks go on.
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        sessions: sessionmaker[Session],
        lease: Lease | None = None,
        *,
        from_store: bool = False,
        batch: int = 500,
        interval: float = 0.5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.lease = lease
        self.batch = batch
        self.interval = interval
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.monotonic = monotonic
        self._targets = [_Target(sink, delay=backoff) for sink in sinks]
        # The fleet's sinks from the store (forward_sinks), looked up each round:
        # a replica delivers to every sink any replica was configured with.
        self.from_store = from_store
        self._urls: dict[str, str] = {}
        self._targets_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cnnf-forward")

    def start(self) -> None:
        """Start delivering (a thread). The Console starts it when it starts serving
        (its lifespan) and stops it with :meth:`close` when it stops, so no thread
        outlives the app or its store."""
        if not self._thread.is_alive() and not self._stopping.is_set():
            self._thread.start()

    @property
    def names(self) -> tuple[str, ...]:
        """The outbox keys of this process's sinks (ingestion queues audits for them)."""
        return tuple(t.key for t in self._targets)

    @property
    def stats(self) -> dict[str, SinkStats]:
        with self._targets_lock:
            return {t.key: t.stats for t in self._targets}

    def _load(self) -> None:
        """Follow the store's sinks: build the new ones, close the removed ones."""
        with self.sessions() as session:
            urls = stored_sinks(session)
        if urls == self._urls:
            return
        with self._targets_lock:
            kept = [t for t in self._targets if t.key in urls
                    and self._urls.get(t.key) == urls[t.key]]
            for t in self._targets:
                if t not in kept:
                    t.sink.close()
            have = {t.key for t in kept}
            for name, url in urls.items():
                if name not in have:
                    if name in self._urls:
                        log.info("forwarding: %s has new credentials; its backlog goes "
                                 "with them", name)
                    try:
                        kept.append(_Target(build_sink(url), delay=self.backoff,
                                            stored_as=name))
                    except CnnfError as exc:  # written by another version, say
                        log.error("forwarding: cannot use the stored sink %s: %s", name, exc)
            self._targets = kept
        self._urls = urls

    def wake(self) -> None:
        """Audits were stored: look at the outbox now rather than at the next round."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            busy = False
            if self.lease is None or self.lease.ensure():
                try:
                    busy = self.deliver_round()
                except SQLAlchemyError as exc:
                    log.warning("forwarding: the store failed; trying again: %s", exc)
                except Exception:
                    # A defect must not end the thread: this process keeps the lease
                    # (its retention loop renews it), so no other replica would take
                    # forwarding over. The rows stay in the outbox for the next round.
                    log.exception("forwarding: a round failed; trying again")
            if not busy:
                self._wake.wait(self.interval)
                self._wake.clear()

    def deliver_round(self) -> bool:
        """One batch to each sink that is due; True if any batch was full (more wait)."""
        if self.from_store:
            self._load()
        more = False
        for target in list(self._targets):
            if self._stopping.is_set():
                break
            if self.monotonic() < target.retry_at:
                continue
            more |= self._deliver(target)
        return more

    def _deliver(self, target: _Target) -> bool:
        name = target.key
        with self.sessions() as session:
            rows = session.execute(
                select(AuditRow, OutboxRow.requeued)
                .join(OutboxRow, OutboxRow.audit_id == AuditRow.id)
                .where(OutboxRow.sink == name, OutboxRow.parked.is_(None))
                .order_by(OutboxRow.audit_id).limit(self.batch)).all()
            audits = [stored_audit(row) for row, _ in rows]
            requeued = {row.id for row, when in rows if when is not None}
        if not audits:
            return False
        delivered: list[int] = []
        parked: list[int] = []
        try:
            refused: dict[int, str] = {}
            self._send(target, audits, delivered, refused)
            for audit_id in [i for i in refused if i in requeued]:
                # Requeued by an operator and refused again: parked again at once,
                # whatever else the sink took (requeued audits are the oldest: kept
                # queued, they would make up every batch and hold up the sink).
                parked.append(audit_id)
                target.stats.parked += 1
                log.error("forwarding to %s: audit %d parked again: requeued, the sink "
                          "still refuses it (%s)", target.sink.name, audit_id,
                          refused.pop(audit_id))
            if refused and not delivered:
                # Refused one by one, and nothing else delivered: that says more about
                # the sink (a format it no longer takes) than about these records.
                # None is parked; they stay queued and are tried again, with backoff.
                raise ForwardError(f"{target.sink.name} refused each of the "
                                   f"{len(refused)} audits of the batch on its own "
                                   f"({next(iter(refused.values()))}); none is parked")
            for audit_id, why in refused.items():
                parked.append(audit_id)
                target.stats.parked += 1
                log.error("forwarding to %s: audit %d parked: the sink refuses it on its "
                          "own (%s) while it takes the others; it is not sent again, the "
                          "rest goes on", target.sink.name, audit_id, why)
        except Exception as exc:  # a sink must never kill the forwarder
            undelivered = len(audits) - len(delivered) - len(parked)
            target.stats.failed += undelivered
            target.stats.retries += 1
            log.warning("forwarding to %s failed (%d audits kept; next try in %.1f s): %s",
                        target.sink.name, undelivered, target.delay, exc)
            target.retry_at = self.monotonic() + target.delay
            target.delay = min(target.delay * 2, self.max_backoff)
            self._settle(name, delivered, parked)
            target.stats.sent += len(delivered)
            return False
        target.delay = self.backoff
        self._settle(name, delivered, parked)
        target.stats.sent += len(delivered)
        return len(audits) == self.batch

    def _send(self, target: _Target, audits: Sequence[StoredAudit], delivered: list[int],
              refused: dict[int, str]) -> None:
        """Send ``audits``; when the sink rejects the batch for its content, halve
        it until the records it refuses on their own are found (``refused``: id ->
        the sink's answer; the caller parks them when the sink took others) and
        deliver the rest. A sink that is down raises (what is not delivered yet
        stays queued)."""
        try:
            target.sink.send(audits)
        except ForwardError as exc:
            if not exc.rejected:
                raise
            if len(audits) == 1:
                refused[audits[0].id] = str(exc)
                return
            half = len(audits) // 2
            self._send(target, audits[:half], delivered, refused)
            self._send(target, audits[half:], delivered, refused)
            return
        delivered += [a.id for a in audits]

    def _settle(self, name: str, delivered: Sequence[int], parked: Sequence[int]) -> None:
        if not delivered and not parked:
            return
        with self.sessions() as session:
            if delivered:
                session.execute(delete(OutboxRow).where(
                    OutboxRow.sink == name, OutboxRow.audit_id.in_(delivered)))
            if parked:
                session.execute(update(OutboxRow).where(
                    OutboxRow.sink == name, OutboxRow.audit_id.in_(parked))
                    .values(parked=datetime.now(UTC), requeued=None))
            session.commit()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (what is undelivered stays in the outbox), close the sinks."""
        self._stopping.set()
        self._wake.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)
        with self._targets_lock:
            for t in self._targets:
                t.sink.close()


def build_sinks(syslog: Sequence[str], webhooks: Sequence[str]) -> list[Sink]:
    sinks: list[Sink] = [SyslogSink(url) for url in syslog]
    sinks += [WebhookSink(url) for url in webhooks]
    return sinks


def build_sink(url: str) -> Sink:
    """A sink from its URL: udp:// and tcp:// are syslog, http(s):// a webhook."""
    if urlsplit(url).scheme in ("udp", "tcp"):
        return SyslogSink(url)
    return WebhookSink(url)


def same_named_sinks(urls: Sequence[str], option: str = "sink URL") -> None:
    """Refuse two URLs of one configuration that name one sink (:func:`sink_name`
    leaves out the user, password and query: credentials, so they cannot tell two
    receivers apart). One would silently win, and two receivers (two channels, two
    tenants' API keys) would share one backlog. Raises CnnfError naming both
    (``option`` and position: their secrets are not shown)."""
    seen: dict[str, int] = {}
    for position, url in enumerate(urls, 1):
        name = sink_name(url)
        if name in seen:
            raise CnnfError(
                f"{option} #{seen[name]} and {option} #{position} name one sink, "
                f"{name}: they "
                "differ only in user, password or query, which are credentials and do "
                "not tell receivers apart; use distinct paths or hosts (nothing was "
                "changed)")
        seen[name] = position


def sink_name(url: str) -> str:
    """The outbox key of the sink at ``url`` (what :func:`outbox_name` gives its sink)."""
    scheme = urlsplit(url).scheme
    if scheme in ("udp", "tcp"):
        transport, host, port = parse_syslog_url(url)
        name = f"syslog:{transport}://{host}:{port}"
    else:
        name = webhook_name(check_webhook_url(url))
    if len(name) <= 200:
        return name
    return name[:180] + " (" + hashlib.sha256(name.encode()).hexdigest()[:12] + ")"


@dataclass(frozen=True)
class SinksChanged:
    added: tuple[str, ...]
    removed: dict[str, tuple[int, int]]  # sink -> its (queued, parked) audits, kept
    rotated: tuple[str, ...] = ()  # same receiver, new URL (credentials): backlog kept


def configure_sinks(session: Session, urls: Sequence[str], now: datetime, *,
                    replace: bool = False) -> SinksChanged:
    """Add ``urls`` to the fleet's forwarding sinks (every replica queues each audit
    for each, whichever stored it); with ``replace``, make them the whole list
    (none: no forwarding for the fleet). Without ``replace`` nothing is removed: a
    replica started with a forgotten option must not stop the fleet's forwarding.
    A sink is keyed by its receiver (:func:`sink_name`), so a URL with new
    credentials updates the stored one and keeps its backlog. A sink removed keeps
    its undelivered audits in the outbox (counted): configured again, it gets
    them, and otherwise retention prunes them (counted and logged)."""
    try:
        stored = {row.name: row for row in session.scalars(select(SinkRow))}
        # A URL stored as it is keeps its key (0011 kept the old key of two stored
        # URLs that would have shared one); any other is keyed by its receiver.
        by_url = {row.url: name for name, row in stored.items()}
        same_named_sinks([url for url in urls if url not in by_url])
        wanted = {by_url.get(url) or sink_name(url): url for url in urls}
        removed: dict[str, tuple[int, int]] = {}
        if replace:
            for name, row in stored.items():
                if name not in wanted:
                    counts: dict[bool, int] = {
                        bool(is_parked): int(n) for is_parked, n in session.execute(
                            select(OutboxRow.parked.is_not(None), func.count())
                            .where(OutboxRow.sink == name)
                            .group_by(OutboxRow.parked.is_not(None)))}
                    removed[name] = (counts.get(False, 0), counts.get(True, 0))
                    session.delete(row)
        added: list[str] = []
        rotated: list[str] = []
        for name, url in wanted.items():
            have = stored.get(name)
            if have is None:
                session.add(SinkRow(name=name, url=url, updated=now))
                added.append(name)
            elif have.url != url:
                have.url, have.updated = url, now
                rotated.append(name)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return SinksChanged(tuple(sorted(added)), removed, tuple(sorted(rotated)))


class SinkSummary(PolicyModel):
    """A forwarding sink as operators see it (its URL, which may hold a secret, is
    never shown)."""

    name: str = Field(description="the sink's name (scheme, host, port; for a webhook "
                                  "a hash of its receiver): its key and metric label")
    configured: bool = Field(description="in the fleet's list (false: removed, with "
                                         "audits still waiting or parked)")
    queued: int = Field(description="audits waiting to be delivered")
    parked: int = Field(description="audits the sink refused on their own, set aside")


class ParkedAudit(PolicyModel):
    sink: str
    audit_id: int
    parked: datetime = Field(description="when the sink refused it")
    queued: datetime = Field(description="when it was stored and queued")
    audit: StoredAudit


MAX_REQUEUE = 1000  # parked audits one requeue queues again (the oldest first)


class Requeue(PolicyModel):
    """Which parked audits of one sink to send again."""

    sink: str = Field(min_length=1, max_length=200, description="the sink's name")
    ids: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None, min_length=1, max_length=MAX_REQUEUE,
        description=f"the audit ids to requeue; omitted or null: the sink's parked "
                    f"audits, the oldest {MAX_REQUEUE} (requeue again for more)")


class Requeued(PolicyModel):
    sink: str
    requeued: int = Field(description="parked audits queued again (sent at the next round)")
    left: int = Field(default=0, description="the sink's audits still parked (one "
                                             f"requeue takes at most {MAX_REQUEUE})")


def sink_summaries(session: Session) -> list[SinkSummary]:
    """The fleet's sinks, and any sink no longer configured that still has rows."""
    configured = set(session.scalars(select(SinkRow.name)))
    counts: dict[str, list[int]] = {name: [0, 0] for name in configured}
    for name, is_parked, count in session.execute(
            select(OutboxRow.sink, OutboxRow.parked.is_not(None), func.count())
            .group_by(OutboxRow.sink, OutboxRow.parked.is_not(None))):
        counts.setdefault(name, [0, 0])[1 if is_parked else 0] += count
    return [SinkSummary(name=name, configured=name in configured, queued=q, parked=p)
            for name, (q, p) in sorted(counts.items())]


def _check_sink(session: Session, sink: str) -> None:
    """NotFound unless ``sink`` is configured or still holds outbox rows."""
    if session.get(SinkRow, sink) is None and session.scalar(
            select(OutboxRow.audit_id).where(OutboxRow.sink == sink).limit(1)) is None:
        raise NotFound(f"no sink named {sink!r} (GET /api/v1/forwarding/sinks, or cnnf "
                       "forwarding sinks, lists them)")


def parked_count(session: Session, sink: str | None) -> int:
    """How many audits are parked (for one sink, or for all)."""
    query = select(func.count()).select_from(OutboxRow).where(OutboxRow.parked.is_not(None))
    if sink is not None:
        query = query.where(OutboxRow.sink == sink)
    return session.scalar(query) or 0


def parked_audits(session: Session, sink: str | None, limit: int) -> list[ParkedAudit]:
    """The first ``limit`` parked audits (of one sink, or of all), oldest first; a
    sink that does not exist is NotFound."""
    if sink is not None:
        _check_sink(session, sink)
    query = (select(OutboxRow, AuditRow).join(AuditRow, AuditRow.id == OutboxRow.audit_id)
             .where(OutboxRow.parked.is_not(None))
             .order_by(OutboxRow.audit_id, OutboxRow.sink).limit(limit))
    if sink is not None:
        query = query.where(OutboxRow.sink == sink)
    return [ParkedAudit(sink=row.sink, audit_id=row.audit_id, parked=_when(row.parked),
                        queued=_when(row.queued), audit=stored_audit(audit))
            for row, audit in session.execute(query).all()]


def _when(value: datetime | None) -> datetime:
    aware = _aware(value)
    assert aware is not None  # the query selects rows where it is set
    return aware


def requeue_parked(session: Session, request: Requeue) -> Requeued:
    """Queue parked audits of one sink again (all, or ``request.ids``): the
    forwarder sends them at its next round, in id order with the rest. A sink
    with no parked audit, or ids not parked for it, are refused (NotFound,
    naming them), a sink no longer configured too (Conflict), and nothing
    changes."""
    where = [OutboxRow.sink == request.sink, OutboxRow.parked.is_not(None)]
    try:
        _check_sink(session, request.sink)
        if request.ids is not None:
            wanted = sorted(set(request.ids))
            found = set(session.scalars(select(OutboxRow.audit_id).where(
                *where, OutboxRow.audit_id.in_(wanted))))
            missing = [i for i in wanted if i not in found]
            if missing:
                shown = ", ".join(str(i) for i in missing[:20])
                more = f" (and {len(missing) - 20} more)" if len(missing) > 20 else ""
                raise NotFound(f"audits {shown}{more} are not parked for sink "
                               f"{request.sink!r}; nothing was requeued")
            where.append(OutboxRow.audit_id.in_(wanted))
        else:  # all: the oldest MAX_REQUEUE (a requeue refused again costs 2N-1 sends)
            oldest = list(session.scalars(select(OutboxRow.audit_id).where(*where)
                                          .order_by(OutboxRow.audit_id)
                                          .limit(MAX_REQUEUE)))
            where.append(OutboxRow.audit_id.in_(oldest))
        count = session.scalar(select(func.count()).select_from(OutboxRow).where(*where)) or 0
        if not count:
            raise NotFound(f"sink {request.sink!r} has no parked audits; nothing was "
                           "requeued (GET /api/v1/forwarding/sinks lists the sinks)")
        if session.get(SinkRow, request.sink) is None:
            raise Conflict(f"sink {request.sink!r} is no longer configured: requeued "
                           "audits would wait for it; nothing was requeued (configure "
                           "it again with --syslog or --webhook first)")
        session.execute(update(OutboxRow).where(*where).values(
            parked=None, requeued=datetime.now(UTC)))
        left = session.scalar(select(func.count()).select_from(OutboxRow).where(
            OutboxRow.sink == request.sink, OutboxRow.parked.is_not(None))) or 0
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return Requeued(sink=request.sink, requeued=count, left=left)


def stored_sinks(session: Session) -> dict[str, str]:
    """The fleet's sinks: outbox key -> URL."""
    rows = session.execute(select(SinkRow.name, SinkRow.url).order_by(SinkRow.name))
    return {str(row.name): str(row.url) for row in rows}


def stats_as_rows(forwarder: Forwarder | None) -> list[tuple[str, str, int]]:
    """(sink, result, audits) rows for the metrics endpoint."""
    rows: list[tuple[str, str, int]] = []
    if forwarder is None:
        return rows
    for name, s in forwarder.stats.items():
        rows += [(name, "sent", s.sent), (name, "failed", s.failed),
                 (name, "parked", s.parked)]
    return rows

