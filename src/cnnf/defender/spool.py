"""A bounded on-disk spool of report batches, delivered in order.

One file per batch (``<sequence>-<batch_id>.json``, written to a temporary name
and renamed, so a crash never leaves half a batch). When the spool holds more
than ``max_files`` batches or ``max_bytes`` bytes, the OLDEST batches are
deleted and the records they held (flows + audits) are counted; the count goes
into the next batch (``ReportBatch.dropped``) through :meth:`take_dropped`, and
survives a restart in the ``dropped`` file.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cnnf.model.records import ReportBatch


@dataclass(frozen=True, slots=True)
class Spooled:
    path: Path
    seq: int
    batch_id: str


class Spool:
    def __init__(self, directory: Path, *, max_files: int = 1000,
                 max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_files < 1 or max_bytes < 1:
            raise ValueError("spool bounds must be positive")
        self.dir = directory
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self.dir.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        existing = self.pending()
        self._seq = existing[-1].seq + 1 if existing else 1
        self.dropped_total = 0

    @property
    def _dropped_file(self) -> Path:
        return self.dir / "dropped"

    def _read_dropped(self) -> int:
        try:
            return int(self._dropped_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _write_dropped(self, n: int) -> None:
        tmp = self._dropped_file.with_suffix(".tmp")
        tmp.write_text(str(n))
        os.replace(tmp, self._dropped_file)

    def pending(self) -> list[Spooled]:
        """Spooled batches, oldest first."""
        out = []
        for p in self.dir.glob("*.json"):
            seq, _, rest = p.stem.partition("-")
            if seq.isdigit():
                out.append(Spooled(p, int(seq), rest))
        out.sort(key=lambda s: s.seq)
        return out

    def put(self, batch: ReportBatch) -> Path:
        """Store a batch, then enforce the bounds (dropping the oldest)."""
        data = batch.model_dump_json().encode()
        with self._lock:
            path = self.dir / f"{self._seq:012d}-{batch.batch_id}.json"
            self._seq += 1
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
            self._enforce_bounds()
        return path

    def _enforce_bounds(self) -> None:
        items = self.pending()
        sizes = {s.path: s.path.stat().st_size for s in items}
        total = sum(sizes.values())
        lost = 0
        while items and (len(items) > self.max_files or total > self.max_bytes):
            oldest = items.pop(0)
            total -= sizes[oldest.path]
            with contextlib.suppress(FileNotFoundError, ValueError):
                b = ReportBatch.model_validate_json(oldest.path.read_bytes())
                lost += len(b.flows) + len(b.audits) + b.dropped
            oldest.path.unlink(missing_ok=True)
        if lost:
            self.dropped_total += lost
            self._write_dropped(self._read_dropped() + lost)

    def add_dropped(self, n: int) -> None:
        """Count ``n`` records lost otherwise (e.g. a batch the Console refused)."""
        if n > 0:
            with self._lock:
                self.dropped_total += n
                self._write_dropped(self._read_dropped() + n)

    def take_dropped(self) -> int:
        """Records dropped since the last call (to report in the next batch)."""
        with self._lock:
            n = self._read_dropped()
            if n:
                self._dropped_file.unlink(missing_ok=True)
            return n

    def load(self, item: Spooled) -> ReportBatch | None:
        """The batch, or None if the file is gone or unreadable (then it is removed)."""
        try:
            return ReportBatch.model_validate_json(item.path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            item.path.unlink(missing_ok=True)
            return None

    def remove(self, item: Spooled) -> None:
        item.path.unlink(missing_ok=True)

    def size(self) -> tuple[int, int]:
        """(batches, bytes) waiting."""
        items = self.pending()
        total = 0
        for s in items:
            with contextlib.suppress(FileNotFoundError):
                total += s.path.stat().st_size
        return len(items), total
