"""Run a topology's traffic patterns continuously from inside the containers.

One worker process per source container runs ``probe.py loop`` inside that
container's network namespace (one thread per pattern, each at its rate) and
reports every attempt as a JSON line; :class:`Traffic` counts the outcomes.

    with Traffic(lab) as traffic:
        traffic.run(duration=10, every=1.0, report=print_summary)
    traffic.counts  # {pattern label: Counter({"connected": 20, ...})}
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType

from cnnf.lab.lab import Lab
from cnnf.lab.system import LabError
from cnnf.lab.topology import Traffic as Pattern

OUTCOMES = ("connected", "refused", "reset", "timeout", "unreachable", "dns-error", "error")


class Traffic:
    """Traffic patterns running in a lab (the topology's, or the given ones)."""

    def __init__(
        self,
        lab: Lab,
        patterns: Sequence[Pattern] | None = None,
        *,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lab = lab
        self.patterns = list(lab.topology.traffic if patterns is None else patterns)
        if not self.patterns:
            raise LabError(f"lab {lab.name!r} has no traffic patterns")
        if not timeout > 0:
            raise LabError(f"bad timeout {timeout}: must be a number of seconds above 0")
        self.timeout = timeout
        self.clock = clock
        self.counts: dict[str, Counter[str]] = {p.label: Counter() for p in self.patterns}
        self.last_ms: dict[str, float] = {}
        self._workers: list[subprocess.Popen[bytes]] = []
        self._selector = selectors.DefaultSelector()
        self._buffers: dict[int, str] = {}

    def start(self) -> None:
        by_source: dict[str, list[dict[str, object]]] = {}
        for p in self.patterns:
            address = self.lab.address_of(p.destination) or p.destination
            by_source.setdefault(p.source, []).append(
                {"id": p.label, "destination": address, "port": p.port, "rate": p.rate,
                 "timeout": self.timeout}
            )  # fmt: skip
        try:
            for source, specs in by_source.items():
                proc = subprocess.Popen(
                    self.lab.probe_command(source, "loop"),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
                assert proc.stdin is not None and proc.stdout is not None
                spec = {"dns": self.lab.plan.dns_server, "patterns": specs}
                proc.stdin.write(json.dumps(spec).encode() + b"\n")
                proc.stdin.flush()
                os.set_blocking(proc.stdout.fileno(), False)
                self._selector.register(proc.stdout, selectors.EVENT_READ, proc)
                self._buffers[proc.stdout.fileno()] = ""
                self._workers.append(proc)
        except BaseException:
            self.stop()
            raise

    def poll(self, timeout: float) -> int:
        """Collect results for up to ``timeout`` seconds; returns how many arrived."""
        n = 0
        for key, _ in self._selector.select(timeout):
            fd = key.fd
            try:
                chunk = os.read(fd, 65536).decode(errors="replace")
            except BlockingIOError:
                continue
            if not chunk:
                self._selector.unregister(key.fileobj)
                continue
            data = self._buffers[fd] + chunk
            *lines, self._buffers[fd] = data.split("\n")
            for line in lines:
                with contextlib.suppress(ValueError, KeyError):
                    r = json.loads(line)
                    self.counts[r["id"]][r["outcome"]] += 1
                    self.last_ms[r["id"]] = float(r.get("ms", 0.0))
                    n += 1
        return n

    def run(
        self,
        duration: float | None,
        *,
        every: float = 1.0,
        report: Callable[[Traffic], None] | None = None,
        until: Callable[[Traffic], bool] | None = None,
    ) -> dict[str, Counter[str]]:
        """Run for ``duration`` seconds (None: until interrupted), reporting every ``every`` s;
        stop earlier once ``until(self)`` is true (checked first, then after each batch of
        results)."""
        if duration is not None and not duration > 0:
            raise LabError(f"bad duration {duration}: must be a number of seconds above 0")
        if not every > 0:  # 0 would report in a busy loop
            raise LabError(f"bad report interval {every}: must be a number of seconds above 0")
        if not self._workers:
            self.start()
        end = None if duration is None else self.clock() + duration
        next_report = self.clock() + every
        try:
            while (end is None or self.clock() < end) and not (until is not None and until(self)):
                now = self.clock()
                wait = min(next_report, end if end is not None else next_report) - now
                self.poll(max(0.0, wait))
                if report and self.clock() >= next_report and (end is None or self.clock() < end):
                    report(self)
                    next_report += every
                if all(w.poll() is not None for w in self._workers):
                    raise LabError("every traffic worker exited (is the lab still up?)")
        finally:
            self.stop()
        return self.counts

    def stop(self) -> None:
        """Stop the workers (closing their stdin ends them) and collect what they sent."""
        for w in self._workers:
            with contextlib.suppress(OSError):
                if w.stdin:
                    w.stdin.close()
        deadline = self.clock() + 3.0
        while any(w.poll() is None for w in self._workers) and self.clock() < deadline:
            self.poll(0.05)
        for w in self._workers:
            if w.poll() is None:
                w.kill()
                w.wait()
            if w.stdout:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(w.stdout)
                w.stdout.close()
        self._workers = []

    def summary(self) -> str:
        width = max(len(label) for label in self.counts)
        lines = [f"{'pattern':<{width}}  " + " ".join(f"{o:>9}" for o in OUTCOMES[:4])]
        for label, c in self.counts.items():
            others = sum(v for k, v in c.items() if k not in OUTCOMES[:4])
            row = " ".join(f"{c.get(o, 0):>9}" for o in OUTCOMES[:4])
            lines.append(f"{label:<{width}}  {row}" + (f"  other={others}" if others else ""))
        return "\n".join(lines)

    def __enter__(self) -> Traffic:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
