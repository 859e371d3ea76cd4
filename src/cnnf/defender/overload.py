"""Overload episodes from the admission limit's per-source drop counters (pure).

The kernel drops new-connection SYNs above the per-source admission rate and
counts them per source. :class:`OverloadTracker` reads those counters (fed by
the caller every second or so) and turns them into what an operator sees: an
episode that starts, goes on and ends, the top sources, and a report every
``report_every`` seconds with what each source had dropped since the last one
(the caller turns reports into overload audits and log lines).

The verdict workers drop SYNs too, beyond a source's fair share of the verdict
loop (:mod:`cnnf.defender.datapath.fairqueue`); the caller passes those as
``shed`` (counts since the last update, per source): they are overload of the
same source, reported in the same episode, and told apart in ``shed``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

TOP_SOURCES = 5
MAX_SOURCES = 1000  # all-time per-source totals kept


@dataclass(frozen=True, slots=True)
class OverloadReport:
    """What happened since the last report of an episode."""

    started: float  # when the episode started
    seconds: float  # the time this report covers
    dropped: dict[str, int]  # source -> SYNs dropped in that time (the top sources)
    total: int  # all sources, since the last report
    episode: int = 0  # all sources, the whole episode so far
    ended: bool = False
    first: bool = False  # the episode's first report
    # of ``dropped``, those the verdict loop dropped (beyond the source's share)
    shed: dict[str, int] = field(default_factory=dict)
    shed_total: int = 0  # of ``total``, the verdict loop's (all sources)
    episode_shed: int = 0  # of ``episode``, the verdict loop's


@dataclass
class OverloadTracker:
    quiet_after: float = 5.0  # no drops for this long ends an episode
    report_every: float = 10.0
    forget_after: float = 60.0  # sources idle this long leave the kernel set
    total: int = 0  # SYNs dropped by admission and the verdict loop, all time
    shed_total: int = 0  # of them, by the verdict loop
    by_source: dict[str, int] = field(default_factory=dict)  # all time
    started: float | None = None  # the current episode
    _seen: dict[str, tuple[int, float]] = field(default_factory=dict)  # counter, changed
    _pending: dict[str, int] = field(default_factory=dict)  # since the last report
    _pending_shed: dict[str, int] = field(default_factory=dict)
    _last_drop = 0.0
    _window = 0.0  # start of the time the pending counts cover
    _episode = 0
    _episode_shed = 0
    _prev: float | None = None  # the previous update

    @property
    def active(self) -> bool:
        return self.started is not None

    def update(self, counters: dict[str, int], now: float,
               shed: dict[str, int] | None = None) -> list[OverloadReport]:
        """Feed the kernel's per-source counters (and the verdict loop's drops
        since the last update); returns the reports due now (a first one as
        the episode starts, then every ``report_every``, and a last one when it
        ends)."""
        new = 0
        for source, delta in (shed or {}).items():
            if delta > 0:
                self._pending[source] = self._pending.get(source, 0) + delta
                self._pending_shed[source] = self._pending_shed.get(source, 0) + delta
                self.by_source[source] = self.by_source.get(source, 0) + delta
                self.shed_total += delta
                self._episode_shed += delta
                new += delta
        for source, count in counters.items():
            before, _ = self._seen.get(source, (0, now))
            delta = count - before if count >= before else count
            if delta:
                self._seen[source] = (count, now)
                self._pending[source] = self._pending.get(source, 0) + delta
                self.by_source[source] = self.by_source.get(source, 0) + delta
                new += delta
        for source in [s for s in self._seen if s not in counters]:
            del self._seen[source]  # gone from the kernel set: its count restarts
        self.total += new
        self._episode += new
        if len(self.by_source) > 10 * MAX_SOURCES:  # e.g. spoofed sources: keep the top
            self.by_source = dict(self.top(MAX_SOURCES))
        reports: list[OverloadReport] = []
        if new:
            self._last_drop = now
            if self.started is None:
                self.started = now
                self._episode = new
                self._episode_shed = sum(d for d in (shed or {}).values() if d > 0)
                self._window = self._prev if self._prev is not None else now
                reports.append(dataclasses.replace(self._report(now), first=True))
            elif now - self._window >= self.report_every:
                reports.append(self._report(now))
        elif self.started is not None and now - self._last_drop >= self.quiet_after:
            reports.append(self._report(now, ended=True))
            self.started = None
        self._prev = now
        return reports

    def idle_sources(self, now: float) -> list[str]:
        """Sources without drops for ``forget_after``: the caller removes them
        from the kernel set, then calls :meth:`forget`."""
        return [s for s, (_, changed) in self._seen.items() if now - changed >= self.forget_after]

    def forget(self, sources: list[str]) -> None:
        """They left the kernel set: their counts start from zero there."""
        for s in sources:
            self._seen.pop(s, None)

    def top(self, n: int = TOP_SOURCES) -> list[tuple[str, int]]:
        """The sources that dropped most, all time."""
        return sorted(self.by_source.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def _report(self, now: float, ended: bool = False) -> OverloadReport:
        assert self.started is not None
        pending, self._pending = self._pending, {}
        shed, self._pending_shed = self._pending_shed, {}
        top = sorted(pending.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_SOURCES]
        report = OverloadReport(self.started, max(now - self._window, 0.0), dict(top),
                                sum(pending.values()), self._episode, ended,
                                shed={s: shed[s] for s, _ in top if shed.get(s)},
                                shed_total=sum(shed.values()),
                                episode_shed=self._episode_shed)
        self._window = now
        return report
