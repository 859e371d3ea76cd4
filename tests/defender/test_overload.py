"""Overload episodes from the admission limit's per-source counters (pure)."""

from __future__ import annotations

from cnnf.defender.overload import OverloadTracker

F, G = "10.0.0.2", "10.0.0.3"


def test_an_episode_starts_reports_and_ends() -> None:
    t = OverloadTracker(quiet_after=5, report_every=10)
    assert t.update({}, 0.0) == []
    (first,) = t.update({F: 1000}, 1.0)
    assert first.first and not first.ended and first.dropped == {F: 1000} and first.total == 1000
    assert first.seconds == 1.0 and t.active
    assert t.update({F: 2000, G: 10}, 2.0) == []  # within report_every: no new report
    (mid,) = t.update({F: 12000, G: 10}, 11.0)
    assert mid.dropped == {F: 11000, G: 10} and mid.seconds == 10.0 and not mid.first
    assert t.update({F: 12000, G: 10}, 12.0) == []
    (end,) = t.update({F: 12000, G: 10}, 16.0)
    assert end.ended and end.total == 0 and end.started == 1.0 and not t.active
    assert t.total == 12010 and t.top() == [(F, 12000), (G, 10)]


def test_only_the_top_sources_are_named() -> None:
    t = OverloadTracker()
    (r,) = t.update({f"10.0.1.{i}": i for i in range(1, 20)}, 1.0)
    assert list(r.dropped) == [f"10.0.1.{i}" for i in (19, 18, 17, 16, 15)]
    assert r.total == sum(range(1, 20))


def test_a_source_that_left_the_kernel_set_counts_from_zero_again() -> None:
    t = OverloadTracker(forget_after=60)
    t.update({F: 500}, 0.0)
    assert t.idle_sources(30.0) == []
    assert t.idle_sources(61.0) == [F]  # the caller removes it from the kernel set
    t.update({}, 62.0)
    (r,) = [x for x in t.update({F: 40}, 70.0) if not x.ended] or [None]
    assert r is not None and r.dropped == {F: 40} and t.by_source[F] == 540


def test_the_verdict_loops_drops_join_the_same_episode_and_are_told_apart() -> None:
    """SYNs the verdict loop dropped beyond a source's fair share come as
    counts since the last update (not cumulative), beside the kernel's."""
    t = OverloadTracker(quiet_after=5, report_every=10)
    (first,) = t.update({}, 1.0, shed={F: 30})
    assert first.first and first.dropped == {F: 30} and first.shed == {F: 30}
    assert t.update({F: 1000}, 2.0, shed={F: 20, G: 5}) == []
    (mid,) = t.update({F: 1000}, 11.0, shed={F: 1})
    assert mid.dropped == {F: 1021, G: 5} and mid.shed == {F: 21, G: 5} and mid.total == 1026
    assert mid.shed_total == 26
    (end,) = t.update({F: 1000}, 16.0)
    assert end.ended and end.episode == 1056 and end.shed == {}
    assert end.episode_shed == 56  # the "overload ended" line says the loop's part
    assert t.total == 1056 and t.shed_total == 56 and t.by_source == {F: 1051, G: 5}


def test_the_verdict_loops_share_counts_all_sources_not_only_the_top_five() -> None:
    t = OverloadTracker()
    (r,) = t.update({}, 1.0, shed={f"10.0.0.{i}": 100 for i in range(1, 9)})
    assert r.total == 800 and r.shed_total == 800 and len(r.shed) == 5
