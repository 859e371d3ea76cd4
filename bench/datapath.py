"""Datapath benchmark: new TCP connections through the NFQUEUE verdict loop.

Builds throw-away namespaces (tests/netns.py: containers c1 and c2 on a bridge
in "node"), runs a server in c2 and clients in c1, and measures, in one run:

- rate: new connections per second, closed loop, CLIENTS client processes;
- latency: connect() time p50/p99 of one client paced at RATE connections/s;

with no firewall rules (baseline) and through the verdict loop (decide
accepts everything, reports collected as the Defender would) with queues=1 and
queues=2, in alternating rounds (baseline, queues=1, queues=2, then again), so
that a burst of foreign load on the shared machine hits them alike; each
firewall run is compared with the baseline of its own round, and the summary
gives the median of those paired ratios. The Datapath sets
``net.bridge.bridge-nf-call-iptables`` in the node namespace; it is put back
after each firewall run, so every baseline runs as the first one did. Traffic
stays inside the namespaces; the whole run takes about a minute.

    sudo .venv/bin/python bench/datapath.py [--seconds 3] [--clients 2] [--rate 2000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import netns  # tests/netns.py
from cnnf.defender.datapath import (
    AddressSet,
    Datapath,
    DatapathConfig,
    Decision,
    PacketInfo,
    cleanup,
)

PORT = 9000
# Client source addresses added to c1: NFQUEUE balancing hashes the address pair,
# so one pair would always use one queue.
SOURCES = [f"10.77.0.{i}" for i in range(100, 108)]

SERVER = """
    import resource, selectors, socket, sys, threading
    # argv: first port [, how many ports]: one port is served by two accept
    # threads; many ports (first-seen triples) by one selector loop.
    first, count = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1
    def listener(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("0.0.0.0", port))
        s.listen(4096)
        return s
    def loop():
        s = listener(first)
        while True:
            c, _ = s.accept()
            c.close()
    def many():
        sel = selectors.DefaultSelector()
        for port in range(first, first + count):
            sel.register(listener(port), selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                c, _ = key.fileobj.accept()
                c.close()
    if count == 1:
        for _ in range(2):
            threading.Thread(target=loop, daemon=True).start()
    else:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
        threading.Thread(target=many, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
"""

CLIENT = """
    import json, socket, struct, sys, time
    host, port = sys.argv[1], int(sys.argv[2])
    seconds, rate, sources = float(sys.argv[3]), float(sys.argv[4]), sys.argv[5].split(",")
    # ports > 1: each connection to the next port (a new triple each, first-seen)
    ports = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    # "refused": the expected answer is a refusal (a prevent rule's reset, or a
    # closed port): refusals are timed and counted, a connect is an error
    refused = len(sys.argv) > 7 and sys.argv[7] == "refused"
    linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT, no port exhaustion
    lat, errors = [], 0
    start = time.perf_counter(); end = start + seconds; n = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if rate:
            due = start + n / rate
            if due > now:
                time.sleep(due - now)
        n += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.bind((sources[n % len(sources)], 0))  # several pairs: --queue-balance hashes them
        s.settimeout(2)
        t0 = time.perf_counter()
        try:
            s.connect((host, port + n % ports))
            if refused:
                errors += 1
            else:
                lat.append(time.perf_counter() - t0)
        except ConnectionRefusedError:
            if refused:
                lat.append(time.perf_counter() - t0)
            else:
                errors += 1
        except OSError:
            errors += 1
        s.close()
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6 if lat else 0.0
    print(json.dumps({"ok": len(lat), "errors": errors, "seconds": time.perf_counter() - start,
                      "p50": pct(0.50), "p99": pct(0.99)}))
"""


def accept_all(_packet: PacketInfo) -> Decision:
    return Decision.ACCEPT


def run_clients(t: netns.Topology, clients: int, seconds: float, rate: float) -> list[dict]:
    procs = [
        subprocess.Popen(
            t.c1.python(CLIENT, t.C2, str(PORT), str(seconds), str(rate), ",".join(SOURCES)),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    return [json.loads(p.communicate(timeout=seconds + 30)[0]) for p in procs]


def measure(t: netns.Topology, label: str, args: argparse.Namespace) -> dict[str, float]:
    rate_runs = run_clients(t, args.clients, args.seconds, 0)
    ok = sum(r["ok"] for r in rate_runs)
    errors = sum(r["errors"] for r in rate_runs)
    cps = ok / max(r["seconds"] for r in rate_runs)
    (lat,) = run_clients(t, 1, args.seconds, args.rate)
    row = {
        "cps": cps,
        "errors": errors + lat["errors"],
        "p50": lat["p50"],
        "p99": lat["p99"],
        "paced": lat["ok"] / lat["seconds"],
    }
    print(
        f"{label:<24} {cps:>10,.0f} {row['p50']:>9.0f} {row['p99']:>9.0f} "
        f"{row['paced']:>8,.0f} {row['errors']:>6}",
        flush=True,
    )
    return row


BRIDGE_SYSCTL = "net.bridge.bridge-nf-call-iptables"


def bridge_sysctl(t: netns.Topology) -> str:
    got = t.node.run("sysctl", "-n", BRIDGE_SYSCTL, check=False)
    return got.stdout.strip() if got.returncode == 0 else "absent (br_netfilter not loaded)"


def with_datapath(t: netns.Topology, queues: int, args: argparse.Namespace,
                  label: str) -> dict[str, float]:
    config = DatapathConfig(queues=queues, dns=False)
    before = bridge_sysctl(t)
    dp = Datapath(config, accept_all, t.node.name)
    dp.start()
    dp.backend.set_addresses(AddressSet.LOCAL, [t.C1, t.C2, *SOURCES])
    dp.backend.set_addresses(AddressSet.CLUSTER, [t.C1, t.C2, *SOURCES])
    stop = threading.Event()
    reports = [0]

    def drain() -> None:  # the Defender reads reports all the time
        while not stop.wait(0.05):
            reports[0] += len(dp.workers.reports())

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        row = measure(t, label, args)
    finally:
        stop.set()
        reader.join()
        reports[0] += len(dp.workers.reports())
        stats = dp.stats()
        dp.stop()
        if before in ("0", "1"):
            t.node.sysctl(BRIDGE_SYSCTL, before)  # the next baseline as the first one
    total = stats.total
    kernel_drops = sum(q.dropped + q.user_dropped for q in stats.queues)
    print(
        f"{'':<24} verdicts={total.total:,} reports={reports[0]:,} "
        f"lost={total.reports_lost} kernel-dropped={kernel_drops} "
        f"per-queue={[c.total for c in stats.counters]}",
        flush=True,
    )
    return row


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))


def protect_costs(t: netns.Topology) -> None:
    """The datapath's share of the start-to-protected gap, and memory at 1,000 addresses."""
    dp = Datapath(DatapathConfig(dns=False), accept_all, t.node.name)
    dp.start()
    try:
        addresses = [f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(1000)]
        t0 = time.perf_counter()
        dp.backend.set_addresses(AddressSet.CLUSTER, addresses)
        bulk = time.perf_counter() - t0
        adds = []
        for address in addresses[:50]:
            t0 = time.perf_counter()
            dp.backend.add_address(AddressSet.LOCAL, address)
            adds.append(time.perf_counter() - t0)
        adds.sort()
        t0 = time.perf_counter()
        repaired = dp.check_and_repair()
        check = time.perf_counter() - t0
        print(
            f"set_addresses(1,000): {bulk * 1e3:.1f} ms; add_address (container start) "
            f"p50 {adds[25] * 1e3:.1f} ms, max {adds[-1] * 1e3:.1f} ms; "
            f"check_and_repair {check * 1e3:.1f} ms ({len(repaired)} repairs)"
        )
        print(
            f"memory with 1,000 protected addresses: this process {rss_kib(os.getpid()):,} KiB,"
            f" verdict worker {rss_kib(dp.workers.pids[0]):,} KiB RSS (addresses live in ipset)"
        )
    finally:
        dp.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rate", type=float, default=2000.0, help="paced rate for latency")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    args = parser.parse_args()
    with netns.topology() as t:
        for address in SOURCES:
            t.c1.ip("addr", "add", f"{address}/24", "dev", "eth0")
        server = subprocess.Popen(t.c2.python(SERVER, str(PORT)), stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            protect_costs(t)
            print(
                f"{args.clients} clients x {args.seconds:g}s closed loop; latency at "
                f"{args.rate:g}/s paced, one client (microseconds)"
            )
            print(
                f"{'':<24} {'conn/s':>10} {'p50 us':>9} {'p99 us':>9} {'paced/s':>8} {'errors':>6}"
            )
            print(f"{BRIDGE_SYSCTL} in the node namespace for the baselines: {bridge_sysctl(t)}")
            ratios: dict[int, list[tuple[float, float, float]]] = {1: [], 2: []}
            for rnd in range(1, args.rounds + 1):
                base = measure(t, f"r{rnd} no firewall", args)
                for q in (1, 2):
                    row = with_datapath(t, q, args, f"r{rnd} verdict loop, queues={q}")
                    ratios[q].append((row["cps"] / base["cps"], row["p50"] - base["p50"],
                                      row["p99"] - base["p99"]))
            for q, paired in ratios.items():
                pick = sorted(paired)[(len(paired) - 1) // 2]  # the median round (lower)
                print(
                    f"queues={q}: {pick[0]:.0%} of the same round's baseline rate, "
                    f"p50 {pick[1]:+.0f} us, p99 {pick[2]:+.0f} us (median of {len(paired)} "
                    f"rounds; each: {', '.join(f'{r:.0%}' for r, _, _ in paired)})"
                )
        finally:
            server.kill()
            server.wait()
            cleanup(t.node.name)


if __name__ == "__main__":
    main()
