"""Policy propagation: from an API policy change to enforcement on every Defender.

A ``shop`` lab (named ``cnnfprop``), the Console as a real process on loopback
and one managed Defender per lab host (as in ``tests/e2e``). Each round flips
two rules through ``PUT /api/v1/policy``: one decided on node-1 (frontend ->
cache) and one decided on node-2 (payments -> db). Measured from just before
the API call:

- applied: both Defenders report the new revision (their metrics endpoints,
  polled every 5 ms);
- enforced: a real connect from each host shows the new verdict (connects
  repeated until it does; one connect's own cost is printed as a baseline).

Printed beside the Defenders' long-poll wait (25 s: a change that waited for
the poll to time out would take that long) and the Console's store fallback
(1 s). Target: at most 1 s to enforcement on every Defender.

    sudo .venv/bin/python bench/propagation.py [--rounds 10]

Bounded: about a minute and a half (lab up and down included). Traffic stays
inside the lab's namespaces; the Console listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.managed import RULES, ManagedCluster, lab_ok, policy_spec

from cnnf.lab import Lab

LAB = "cnnfprop"
LONG_POLL_WAIT = 25.0  # the Defender's default (cnnf.defender.link.LinkRunner)
STORE_POLL = 1.0  # the Console's default (ConsoleConfig.link_store_poll_seconds)
PAYMENTS_TO_DB = {"id": 8, "name": "payments-to-db", "src": "payments", "dst": "db",
                  "ports": [5432], "effect": "allow"}


def spec(opened: bool) -> dict[str, object]:
    """opened: frontend may reach cache (node-1) and payments may reach db (node-2)."""
    if not opened:
        return policy_spec()
    return policy_spec([{**r, "effect": "allow"} if r["id"] == 3 else r for r in RULES]
                       + [PAYMENTS_TO_DB])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    reason = lab_ok()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    lab = Lab.up("shop", name=LAB)
    try:
        with tempfile.TemporaryDirectory(prefix="cnnf-prop-") as tmp:
            c = ManagedCluster(lab, Path(tmp))
            try:
                c.start()
                return run(c, args.rounds)
            finally:
                c.stop()
    finally:
        Lab.down(LAB)


def run(c: ManagedCluster, rounds: int) -> int:
    probes = [("frontend", "cache", 6379), ("payments", "db", 5432)]
    t = time.perf_counter()
    for src, dst, port in probes:
        c.lab.connect(src, dst, port)
    connect_cost = (time.perf_counter() - t) / len(probes)

    api_times: list[float] = []
    applied: list[float] = []
    enforced: list[float] = []
    opened = False
    print(f"{'round':>5} {'API call':>11} {'applied (both)':>15} {'enforced (both)':>16}")
    for i in range(rounds):
        opened = not opened
        want = "connected" if opened else "refused"
        t0 = time.perf_counter()
        revision = c.set_policy(spec(opened))
        api_times.append(time.perf_counter() - t0)
        while not all(d.applied_revision() == revision for d in c.defenders):
            if time.perf_counter() - t0 > 30:
                print(f"round {i}: revision {revision} not applied within 30 s")
                return 1
            time.sleep(0.005)
        applied.append(time.perf_counter() - t0)
        pending = list(probes)
        while pending:
            if time.perf_counter() - t0 > 30:
                print(f"round {i}: {pending} not enforced within 30 s")
                return 1
            pending = [p for p in pending if c.lab.connect(*p, timeout=1).outcome != want]
        enforced.append(time.perf_counter() - t0)
        print(f"{i + 1:>5} {ms(api_times[-1]):>11} {ms(applied[-1]):>15} "
              f"{ms(enforced[-1]):>16}")

    print()
    print(f"Defenders: {len(c.defenders)}; rounds: {rounds}")
    print(f"{'':32}{'median':>11} {'max':>11}")
    for label, values in (("API call (PUT /api/v1/policy)", api_times),
                          ("applied on every Defender", applied),
                          ("enforced on every Defender", enforced)):
        print(f"{label:32}{ms(statistics.median(values)):>11} {ms(max(values)):>11}")
    print(f"{'baseline: one lab connect':32}{ms(connect_cost):>11}")
    print(f"{'Defender long-poll wait':32}{ms(LONG_POLL_WAIT):>11}")
    print(f"{'Console store fallback poll':32}{ms(STORE_POLL):>11}")
    verdict = "met" if max(enforced) <= 1.0 else "MISSED"
    print(f"target: enforced everywhere within 1 s: {verdict} (max {max(enforced):.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
