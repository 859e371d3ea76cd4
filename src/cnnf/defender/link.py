"""The Defender's side of the Console link (the Console's side is
:mod:`cnnf.console.api.defender`; bodies are the wire models of
:mod:`cnnf.model.records`, JSON with snake_case names).

- :meth:`ConsoleLink.enroll` trades the enrollment token for a Defender
  credential once; the credential is kept in the state dir (mode 0600) and
  reused on every later start.
- :meth:`ConsoleLink.fetch_policy` / :meth:`fetch_inventory` are the long-polls
  (``?revision=N&wait=S``: 200 with a new revision, 204 when the wait ended).
- :meth:`ConsoleLink.push_inventory` replaces this Defender's inventory.
- :meth:`ConsoleLink.deliver` sends the spooled report batches in order and
  deletes each one only after the Console answered 200.
- :class:`LinkRunner` runs the loops in threads with backoff; the last policy
  is persisted (``policy.json`` in the state dir) for starts without a Console.

Errors: :class:`LinkError` (Console unreachable or a bad answer) and
:class:`AuthError` (401: the credential was revoked or the token is bad).
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import structlog

from cnnf import __version__
from cnnf.defender.spool import Spool
from cnnf.errors import CnnfError, PolicyValidationError
from cnnf.model import Policy
from cnnf.model.records import ClusterInventory, InventoryReport, ReportBatch
from cnnf.policy.document import dump_policy, load_policy

log = structlog.get_logger(__name__)

MAX_WAIT = 30.0


class LinkError(CnnfError):
    """The Console could not be reached or answered something unexpected."""


class AuthError(LinkError):
    """The Console refused the credential or the enrollment token (401/403)."""


class BatchRefused(LinkError):
    """The Console refused a report batch or an inventory itself (400, 413, 422):
    sending it again cannot succeed, so it must not hold up what comes after it.
    ``records``: the records a 422 names (("flows" or "audits", index)), if any."""

    def __init__(self, message: str, records: frozenset[tuple[str, int]] = frozenset()) -> None:
        super().__init__(message)
        self.records = records


# A 422's error path naming one record of a batch: "flows[3].port" (the Console's
# mapping) or "body.flows.3.port" (request validation).
_RECORD_PATH = re.compile(r"(?:^|\.)(flows|audits)(?:\[(\d+)\]|\.(\d+))(?:\.|$)")


def _named_records(resp: httpx.Response) -> frozenset[tuple[str, int]]:
    """The records a 422 answer's ``errors`` name; empty when it names none."""
    try:
        errors = resp.json().get("errors") or []
        paths = [str(e["path"]) for e in errors]
    except (ValueError, AttributeError, TypeError, KeyError):
        return frozenset()
    named = set()
    for path in paths:
        m = _RECORD_PATH.search(path)
        if m is None:
            return frozenset()  # an error about the batch itself: nothing to salvage
        named.add((m.group(1), int(m.group(2) or m.group(3))))
    return frozenset(named)


# Answers to a report batch that no retry can change.
_REFUSED = frozenset({400, 413, 422})


class ConsoleLink:
    def __init__(
        self,
        url: str,
        state_dir: Path,
        *,
        hostname: str,
        enrollment_token: str | None = None,
        ca: Path | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        # Several Console replicas: "URL,URL,...". Calls go to one of them and move
        # to the next when it cannot be reached (see _request).
        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        if not self.urls:
            raise LinkError(f"--console {url!r}: no Console URL")
        self._current = 0
        self.state_dir = state_dir
        self.hostname = hostname
        self.enrollment_token = enrollment_token
        self.timeout = timeout
        # A context, not the path: httpx deprecates verify=<path> (a warning today).
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(ca))
                                         if ca is not None else True)
        self._clients = [httpx.Client(base_url=u, verify=verify, transport=transport,
                                      timeout=timeout) for u in self.urls]
        self.failovers = 0
        self.credential: str | None = None
        self.defender_id: str | None = None
        self._enroll_lock = threading.Lock()
        self._switch_lock = threading.Lock()
        self._read_credential()

    @property
    def url(self) -> str:
        """The Console replica the link talks to now."""
        return self.urls[self._current]

    # -- credentials -----------------------------------------------------------

    @property
    def credential_file(self) -> Path:
        return self.state_dir / "credential"

    @property
    def policy_file(self) -> Path:
        return self.state_dir / "policy.json"

    @property
    def cluster_file(self) -> Path:
        return self.state_dir / "cluster.json"

    def _read_credential(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            lines = self.credential_file.read_text().split()
            if lines:
                self.credential = lines[0]
                self.defender_id = lines[1] if len(lines) > 1 else None

    def enroll(self) -> str:
        """The credential: the stored one, or a new one from the enrollment token
        (once, even when the link's threads all need it at the same moment)."""
        if self.credential:
            return self.credential
        with self._enroll_lock:
            if self.credential:
                return self.credential
            return self._enroll()

    def _enroll(self) -> str:
        if not self.enrollment_token:
            raise AuthError(f"not enrolled yet ({self.credential_file} is missing) and no "
                            f"enrollment token given (--token)")
        resp = self._request("POST", "/api/v1/defenders/enroll", auth=False, json={
            "enrollment_token": self.enrollment_token, "hostname": self.hostname,
            "version": __version__,
        })
        if resp.status_code != 200:
            raise LinkError(f"enroll: unexpected answer {resp.status_code}: {resp.text[:200]}")
        body = resp.json()
        credential = str(body["credential"])
        self.defender_id = str(body.get("defender_id", ""))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.credential_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{credential} {self.defender_id}\n")
        os.replace(tmp, self.credential_file)
        self.credential = credential
        log.info("enrolled with the console", console=self.url, defender_id=self.defender_id)
        return credential

    def _request(self, method: str, path: str, *, auth: bool = True,
                 timeout: float | None = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if auth:
            headers["Authorization"] = f"Bearer {self.enroll()}"
        # Every call is safe to repeat (report batches are stored once by their id
        # in the store all replicas share, inventories replace, long-polls read), so
        # a replica that cannot be reached or answers 5xx (500: its store failed;
        # 503: not ready; 502/504: a proxy in front of a dead one) is left for the
        # next at once, each replica tried once per call.
        for attempt in range(len(self.urls)):
            current = self._current
            try:
                resp = self._clients[current].request(method, path, headers=headers,
                                                      timeout=timeout or self.timeout, **kw)
            except httpx.HTTPError as exc:
                error = f"{method} {self.urls[current]}{path}: {type(exc).__name__}: {exc}"
                if attempt + 1 == len(self.urls):
                    self._next(current, error)
                    raise LinkError(error) from exc
                self._next(current, error)
                continue
            if resp.status_code >= 500 and attempt + 1 < len(self.urls):
                self._next(current, f"{method} {path}: answered {resp.status_code}")
                continue
            break
        if resp.status_code in (401, 403):
            raise AuthError(f"{method} {path}: the console refused "
                            f"{'the credential' if auth else 'the enrollment token'} "
                            f"({resp.status_code}): {resp.text[:200]}")
        if resp.status_code >= 500:
            raise LinkError(f"{method} {path}: console error {resp.status_code}")
        return resp

    def _next(self, failed: int, error: str) -> None:
        if len(self.urls) == 1:
            return
        with self._switch_lock:
            if self._current == failed:  # another thread may have moved on already
                self._current = (failed + 1) % len(self.urls)
                self.failovers += 1
                log.warning("console replica unreachable or failing; moving to the next",
                            failed=self.urls[failed], next=self.urls[self._current],
                            error=error)

    # -- the calls ---------------------------------------------------------------

    def fetch_policy(self, revision: int, wait: float) -> tuple[int, Policy] | None:
        """(revision, policy) if the Console has another revision, None after a 204."""
        wait = min(max(wait, 0.0), MAX_WAIT)
        resp = self._request("GET", "/api/v1/defender/policy",
                             params={"revision": revision, "wait": wait},
                             timeout=wait + self.timeout)
        if resp.status_code == 204:
            return None
        if resp.status_code != 200:
            raise LinkError(f"GET policy: unexpected answer {resp.status_code}")
        try:
            body = resp.json()
            policy = load_policy(body["document"], source=f"{self.url} policy")
            return int(body["revision"]), policy
        except (ValueError, KeyError, TypeError, PolicyValidationError) as exc:
            raise LinkError(f"GET policy: bad answer: {exc}") from exc

    def fetch_inventory(self, revision: int, wait: float) -> ClusterInventory | None:
        wait = min(max(wait, 0.0), MAX_WAIT)
        resp = self._request("GET", "/api/v1/defender/inventory",
                             params={"revision": revision, "wait": wait},
                             timeout=wait + self.timeout)
        if resp.status_code == 204:
            return None
        if resp.status_code != 200:
            raise LinkError(f"GET inventory: unexpected answer {resp.status_code}")
        try:
            return ClusterInventory.model_validate_json(resp.content)
        except ValueError as exc:
            raise LinkError(f"GET inventory: bad answer: {exc}") from exc

    def push_inventory(self, report: InventoryReport) -> None:
        resp = self._request("POST", "/api/v1/defender/inventory",
                             content=report.model_dump_json(),
                             headers={"Content-Type": "application/json"})
        if resp.status_code in _REFUSED:
            raise BatchRefused(f"POST inventory: the console refused it "
                               f"({resp.status_code}): {resp.text[:300]}")
        if resp.status_code not in (200, 204):
            raise LinkError(f"POST inventory: unexpected answer {resp.status_code}")

    def push_batch(self, batch: ReportBatch) -> bool:
        """True once the Console stored it (or already had it: duplicate)."""
        resp = self._request("POST", "/api/v1/defender/reports",
                             content=batch.model_dump_json(),
                             headers={"Content-Type": "application/json"})
        if resp.status_code in _REFUSED:
            raise BatchRefused(f"POST reports: the console refused batch {batch.batch_id} "
                               f"({resp.status_code}): {resp.text[:200]}",
                               _named_records(resp) if resp.status_code == 422 else frozenset())
        if resp.status_code != 200:
            raise LinkError(f"POST reports: unexpected answer {resp.status_code}")
        return True

    def deliver(self, spool: Spool) -> int:
        """Send spooled batches oldest first; stop at the first failure (raised).

        A batch the Console refuses (:class:`BatchRefused`) is not sent again as it
        is: when the refusal names records (a 422 naming ``flows[i]``/``audits[i]``),
        the batch is sent once more without them (:meth:`_salvage`), so one record
        the Console cannot hold (a workload's SYN to port 0, say) does not cost the
        audits beside it; what cannot be sent is removed, logged and counted as
        dropped (reported in the next batch), instead of blocking every later batch."""
        sent = 0
        for item in spool.pending():
            batch = spool.load(item)
            if batch is not None:
                try:
                    self.push_batch(batch)
                except BatchRefused as exc:
                    self._salvage(batch, exc, spool)
            spool.remove(item)
            sent += 1
        return sent

    def _salvage(self, batch: ReportBatch, refused: BatchRefused, spool: Spool) -> None:
        """The refused batch without the records the Console named, under a batch id
        derived from the original's (a Defender restarted before the spool forgot
        the original makes the same one, which the Console then recognises)."""
        flows = [f for i, f in enumerate(batch.flows) if ("flows", i) not in refused.records]
        audits = [a for i, a in enumerate(batch.audits) if ("audits", i) not in refused.records]
        named = len(batch.flows) - len(flows) + len(batch.audits) - len(audits)
        if named == 0 or not (flows or audits):
            lost = len(batch.flows) + len(batch.audits) + batch.dropped
            log.error("report batch refused by the console; dropped",
                      batch_id=batch.batch_id, records=lost, error=str(refused))
            spool.add_dropped(lost)
            return
        log.error("report batch refused by the console for some of its records; "
                  "those are dropped, the rest sent again", batch_id=batch.batch_id,
                  records=named, error=str(refused))
        rest = batch.model_copy(update={"batch_id": f"{batch.batch_id}-rest",
                                        "flows": flows, "audits": audits})
        try:
            self.push_batch(rest)
        except BatchRefused as exc:
            lost = len(flows) + len(audits) + batch.dropped
            log.error("report batch refused again without the named records; dropped",
                      batch_id=rest.batch_id, records=lost, error=str(exc))
            spool.add_dropped(lost + named)
            return
        spool.add_dropped(named)

    # -- the persisted policy ------------------------------------------------------

    def save_policy(self, revision: int, policy: Policy) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.policy_file.with_suffix(".tmp")
        tmp.write_text(dump_policy(policy.model_copy(update={"revision": revision})))
        os.replace(tmp, self.policy_file)

    def saved_policy(self) -> Policy | None:
        try:
            return load_policy(self.policy_file.read_text(), source=str(self.policy_file))
        except FileNotFoundError:
            return None
        except PolicyValidationError as exc:
            log.error("the saved policy is invalid; ignoring it", file=str(self.policy_file),
                      error=str(exc))
            return None

    def save_cluster(self, inventory: ClusterInventory) -> None:
        """Keep the cluster inventory too: started without the Console, the Defender
        still knows which sources other Defenders evaluate (else it would evaluate
        and audit their connections a second time)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cluster_file.with_suffix(".tmp")
        tmp.write_text(inventory.model_dump_json())
        os.replace(tmp, self.cluster_file)

    def saved_cluster(self) -> ClusterInventory | None:
        try:
            return ClusterInventory.model_validate_json(self.cluster_file.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.error("the saved cluster inventory is invalid; ignoring it",
                      file=str(self.cluster_file), error=str(exc))
            return None

    def close(self) -> None:
        for client in self._clients:
            client.close()


class LinkRunner:
    """The link's threads: policy long-poll, inventory long-poll, and the uplink
    (inventory on change, spooled batches), each retrying with backoff."""

    def __init__(
        self,
        link: ConsoleLink,
        spool: Spool,
        *,
        on_policy: Callable[[int, Policy], None],
        on_inventory: Callable[[ClusterInventory], None],
        policy_revision: int = -1,
        wait: float = 25.0,
        max_backoff: float = 10.0,
    ) -> None:
        self.link = link
        self.spool = spool
        self.on_policy = on_policy
        self.on_inventory = on_inventory
        self.policy_revision = policy_revision
        self.inventory_revision = -1
        self.wait = wait
        self.max_backoff = max_backoff
        self.stop_event = threading.Event()
        self._wake = threading.Event()
        self._inventory: InventoryReport | None = None
        self._inventory_sent: InventoryReport | None = None
        self._threads: list[threading.Thread] = []
        self.connected = False
        self.last_error = ""

    def start(self) -> None:
        for name, target in (("policy", self._policy_loop), ("inventory", self._inventory_loop),
                             ("uplink", self._uplink_loop)):
            t = threading.Thread(target=target, name=f"cnnf-link-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)

    def set_inventory(self, report: InventoryReport) -> None:
        self._inventory = report
        self._wake.set()

    def flush_soon(self) -> None:
        self._wake.set()

    def _failed(self, what: str, exc: Exception, backoff: float) -> float:
        if self.connected or str(exc) != self.last_error:
            log.warning("console link failed; retrying", call=what, error=str(exc),
                        retry_in=backoff)
        self.connected = False
        self.last_error = str(exc)
        self.stop_event.wait(backoff)
        return min(backoff * 2, self.max_backoff)

    def _ok(self) -> None:
        if not self.connected:
            log.info("console link up", console=self.link.url)
        self.connected = True
        self.last_error = ""

    def _policy_loop(self) -> None:
        backoff = 0.5
        while not self.stop_event.is_set():
            try:
                got = self.link.fetch_policy(self.policy_revision, self.wait)
                self._ok()
                backoff = 0.5
                if got is not None:
                    revision, policy = got
                    self.policy_revision = revision
                    self.link.save_policy(revision, policy)
                    self.on_policy(revision, policy)
            except Exception as exc:  # never let the loop die; LinkError is the usual
                backoff = self._failed("policy", exc, backoff)

    def _inventory_loop(self) -> None:
        backoff = 0.5
        while not self.stop_event.is_set():
            try:
                got = self.link.fetch_inventory(self.inventory_revision, self.wait)
                self._ok()
                backoff = 0.5
                if got is not None:
                    self.inventory_revision = got.revision
                    self.link.save_cluster(got)
                    self.on_inventory(got)
            except Exception as exc:  # never let the loop die; LinkError is the usual
                backoff = self._failed("inventory", exc, backoff)

    def _uplink_loop(self) -> None:
        backoff = 0.5
        while not self.stop_event.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                current = self._inventory
                called = False
                if current is not None and current != self._inventory_sent:
                    try:
                        self.link.push_inventory(current)
                    except BatchRefused as exc:  # not again until it changes
                        log.error("inventory refused by the console", error=str(exc))
                    self._inventory_sent = current
                    called = True
                called = self.link.deliver(self.spool) > 0 or called
                if called:  # no call made: nothing learnt about the Console
                    self._ok()
                backoff = 0.5
            except Exception as exc:  # never let the loop die; LinkError is the usual
                backoff = self._failed("uplink", exc, backoff)
