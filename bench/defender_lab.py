"""Defender benchmark in the lab: the whole ``cnnf defender run`` on a lab host.

In one run on a ``shop`` lab (named ``cnnfbench``), containers connect to a
server in ``api`` (node-1): clients in frontend and cache (node-1) and in
payments, db and worker (node-2; node-2 runs no Defender, so node-1 queues
their SYNs inbound). node-1's Defender has no cluster inventory, so it decides
node-1's clients by their rules and node-2's (unknown addresses to it) by the
policy's default effect, which each run sets to the effect the rules have.
Measured:

- new connections per second, closed loop, one client process per source
  container, and connect() latency p50/p99 of one client (frontend) paced at
  ``--rate``, for these kinds of traffic, each beside a no-Defender baseline
  measured in the same round (rounds alternate all configurations; each
  Defender figure is paired with its own round's baseline, and the summary
  gives the round with the median paired ratio, its throughput and latency
  together):

  - repeated triples: every connection of a client to api:9500, the same
    (source, destination, port) again and again, as in most cluster traffic:
    the Defender with its kernel fast path (default), and with
    ``--no-fastpath`` (every SYN through the verdict loop, as before it);
  - alerted: the same traffic with the rule's effect ``alert`` (alerts are
    never cached: every SYN through the verdict loop, and audited);
  - prevented: every connection of a client to api:9599, where nothing
    listens; the baseline is the server's own refusal (a reset from api's
    kernel), the Defender's is its ``prevent`` rule's reset (the first SYN of
    each triple through the verdict loop, repeats from the kernel cache); the
    figures are refusals per second and the time to a refusal;
  - first-seen triples: each connection to the next of 16,384 ports, so no
    triple repeats within the run and every SYN is decided by the verdict
    loop (with ``--admission-rate 0``: the default limit admits 1,000 new
    triples a second per source by design, and one client here makes more),
    with the fast path (each decision also offered to the kernel cache) and
    without it (as before the fast path);

- the Defender's memory (RSS of the main process and its verdict workers) with
  its own containers, then with 1,000 protected addresses (a cluster inventory
  of 1,000 remote containers, all in every worker's inventory and in the set),
  read once a worker has decided a SYN after the new inventory was sent (a
  worker applies pending updates before it decides);
- the start-to-named gap of containers started while it runs (the runtime's
  start time to the Defender naming the container), as the Defender logs it.
  The addresses of the host's container networks are queued from the start, so
  this is how long a new container's SYNs are dropped (and retransmitted), not
  a window in which they pass unevaluated.

    sudo .venv/bin/python bench/defender_lab.py [--seconds 3] [--rate 5000] [--rounds 2]

Bounded: about five minutes. Traffic stays inside the lab's namespaces.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cnnf.lab import Lab
from cnnf.lab.topology import Container
from cnnf.model.records import ClusterInventory, HostInfo, WorkloadInfo
from datapath import CLIENT, SERVER  # bench/datapath.py: the same client and server

LAB = "cnnfbench"
PORT = 9500
CLOSED_PORT = 9599  # nothing listens: refused
SOURCES = ["frontend", "cache", "payments", "db", "worker"]
CNNF = str(Path(sys.executable).with_name("cnnf"))


def policy_doc(effect: str = "allow", default: str = "allow") -> dict[str, Any]:
    """Each client may reach api on PORT (with ``effect``) and on the first-seen
    ports; api's CLOSED_PORT is prevented for all of them. node-1's Defender runs
    without a cluster inventory, so node-2's clients are unknown addresses to it:
    their SYNs get the ``default`` effect, which each run sets to the effect it
    measures."""
    objects = [{"kind": "container", "name": n, "selector": {"images": [f"shop/{n}"]}}
               for n in [*SOURCES, "api"]]
    rules = []
    for n in SOURCES:
        rules += [
            {"id": len(rules) + 1, "name": f"{n}-to-api", "src": n, "dst": "api",
             "ports": [PORT], "effect": effect},
            {"id": len(rules) + 2, "name": f"{n}-to-api-many", "src": n, "dst": "api",
             "ports": [f"{FIRST_SEEN_PORT}-{FIRST_SEEN_PORT + FIRST_SEEN_PORTS - 1}"],
             "effect": "allow"},
            {"id": len(rules) + 3, "name": f"{n}-not-closed", "src": n, "dst": "api",
             "ports": [CLOSED_PORT], "effect": "prevent"},
        ]
    return {"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {
        "containerEnabled": True, "defaultEffect": default, "blockMode": "reset",
        "objects": objects, "containerRules": rules}}


def in_container(lab: Lab, name: str, code: str, *args: str) -> list[str]:
    return ["nsenter", f"--net=/proc/{lab.container_pid(name)}/ns/net", sys.executable, "-c",
            textwrap.dedent(code), *args]


FIRST_SEEN_PORT, FIRST_SEEN_PORTS = 20000, 16384


def run_clients(lab: Lab, sources: list[str], seconds: float, rate: float,
                kind: str) -> list[dict[str, Any]]:
    dst = lab.container("api").address
    port, ports = {"first-seen": (FIRST_SEEN_PORT, FIRST_SEEN_PORTS),
                   "prevented": (CLOSED_PORT, 1)}.get(kind, (PORT, 1))
    expect = "refused" if kind == "prevented" else "connected"
    procs = [subprocess.Popen(in_container(lab, s, CLIENT, dst, str(port), str(seconds),
                                           str(rate), lab.container(s).address, str(ports),
                                           expect),
                              stdout=subprocess.PIPE, text=True) for s in sources]
    return [json.loads(p.communicate(timeout=seconds + 30)[0]) for p in procs]


def measure(lab: Lab, label: str, args: argparse.Namespace, kind: str) -> dict[str, float]:
    runs = run_clients(lab, SOURCES, args.seconds, 0, kind)
    cps = sum(r["ok"] for r in runs) / max(r["seconds"] for r in runs)
    (lat,) = run_clients(lab, ["frontend"], args.seconds, args.rate, kind)
    row = {"cps": cps, "errors": sum(r["errors"] for r in runs) + lat["errors"],
           "p50": lat["p50"], "p99": lat["p99"], "paced": lat["ok"] / lat["seconds"]}
    print(f"{label:<40} {cps:>9,.0f} {row['p50']:>8.0f} {row['p99']:>8.0f} "
          f"{row['paced']:>8,.0f} {row['errors']:>6}", flush=True)
    return row


class Defender:
    def __init__(self, lab: Lab, work: Path, *extra: str, effect: str = "allow",
                 default: str = "allow") -> None:
        self.state = work / "state"
        self.log = work / "defender.log"
        policy = work / f"policy-{effect}-{default}.json"
        policy.write_text(json.dumps(policy_doc(effect, default)))
        argv = [CNNF, "defender", "run", "--netns", lab.netns("node-1"), "--docker-host",
                lab.docker_host("node-1"), "--hostname", "node-1", "--policy",
                str(policy), "--state-dir", str(self.state), *extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
        self.wait(lambda s: s.get("pid") == self.proc.pid)

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state / "status.json").read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def wait(self, check: Any, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status()
            if s and check(s):
                return s
            if self.proc.poll() is not None:
                raise SystemExit(f"the Defender exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        raise SystemExit(f"timed out waiting for the Defender; log: {self.log}")

    def rss_kib(self) -> tuple[int, int]:
        def rss(pid: int) -> int:
            with open(f"/proc/{pid}/status") as f:
                return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
        s = self.status()
        return rss(self.proc.pid), sum(rss(p) for p in s.get("worker_pids", []))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def thousand(lab: Lab) -> ClusterInventory:
    containers = [WorkloadInfo(address=f"10.200.{i // 250}.{i % 250 + 1}", image="bench/app:1",
                               name=f"app-{i}", namespace="bench", host="node-9",
                               labels={"app": f"app-{i % 20}"}) for i in range(1000)]
    return ClusterInventory(revision=1, hosts=[HostInfo(name="node-9", addresses=["10.64.9.9"])],
                            containers=containers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=5000.0,
                        help="paced rate for latency (half the 10,000/s target)")
    parser.add_argument("--starts", type=int, default=3, help="containers started for the gap")
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurement rounds")
    args = parser.parse_args()
    t0 = time.monotonic()
    lab = Lab.up("shop", name=LAB)
    work = Path(tempfile.mkdtemp(prefix="cnnf-bench-defender-"))
    server = subprocess.Popen(in_container(lab, "api", SERVER, str(PORT)),
                              stdout=subprocess.PIPE, text=True)
    many = subprocess.Popen(in_container(lab, "api", SERVER, str(FIRST_SEEN_PORT),
                                         str(FIRST_SEEN_PORTS)), stdout=subprocess.PIPE, text=True)
    try:
        for srv in (server, many):
            assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        print(f"lab up in {time.monotonic() - t0:.1f}s; {len(SOURCES)} client containers x "
              f"{args.seconds:g}s closed loop -> api:{PORT}; latency: frontend paced at "
              f"{args.rate:g}/s (microseconds)")
        print(f"{'':<40} {'conn/s':>9} {'p50 us':>8} {'p99 us':>8} {'paced/s':>8} {'errors':>6}")
        # The machine is shared: the configurations run in alternating rounds, and
        # each Defender figure is compared with its own round's baseline.
        # (label, traffic kind, Defender options or None for no Defender, the
        # rule's effect on PORT, the baseline's label)
        configs: list[tuple[str, str, list[str] | None, str, str]] = [
            ("repeated: no Defender", "repeated", None, "", ""),
            ("repeated: Defender", "repeated", [], "allow", "repeated: no Defender"),
            ("repeated: Defender --no-fastpath", "repeated", ["--no-fastpath"], "allow",
             "repeated: no Defender"),
            ("alerted: Defender (rule alert)", "repeated", [], "alert",
             "repeated: no Defender"),
            ("prevented: no Defender (closed port)", "prevented", None, "prevent", ""),
            ("prevented: Defender (rule prevent)", "prevented", [], "prevent",
             "prevented: no Defender (closed port)"),
            ("first-seen: no Defender", "first-seen", None, "", ""),
            ("first-seen: Defender", "first-seen", ["--admission-rate", "0"], "allow",
             "first-seen: no Defender"),
            ("first-seen: Defender --no-fastpath", "first-seen",
             ["--admission-rate", "0", "--no-fastpath"], "allow", "first-seen: no Defender"),
        ]
        rows: dict[str, list[dict[str, float]]] = {}
        for rnd in range(1, args.rounds + 1):
            for key, kind, extra, effect, _ in configs:
                # the PORT rules' effect, and the default for node-2's (unknown) clients
                rule, default = {"alert": ("alert", "alert"),
                                 "prevent": ("allow", "prevent")}.get(effect, ("allow", "allow"))
                d = (Defender(lab, work, *extra, effect=rule, default=default)
                     if extra is not None else None)
                try:
                    row = measure(lab, f"r{rnd} {key}", args, kind)
                    if d is not None:
                        st = d.wait(lambda s: True)
                        c, fp = st["counters"], st.get("fastpath") or {}
                        hits = fp.get("hits", {})
                        print(f"{'':<40} verdict loop: accepted {c['accepted']:,}, audited "
                              f"{c['audited']:,}, rejected {c['rejected']:,}, errors "
                              f"{c['errors']}, reports lost {c['reports_lost']}; kernel fast "
                              f"path: accept {hits.get('accept', 0):,}, reject "
                              f"{hits.get('reject', 0):,}", flush=True)
                finally:
                    if d is not None:
                        d.stop()
                rows.setdefault(key, []).append(row)
        print(f"each against its own round's baseline; the round with the median ratio of "
              f"{args.rounds}:")
        for key, _, extra, _, base_key in configs:
            if extra is None:
                continue
            in_order = [(r["cps"] / b["cps"], r, b)
                        for r, b in zip(rows[key], rows[base_key], strict=True)]
            ratio, row, base = sorted(in_order, key=lambda x: x[0])[(len(in_order) - 1) // 2]
            print(f"{key}: {row['cps']:,.0f} conn/s = {ratio:.2f}x the baseline's "
                  f"{base['cps']:,.0f}; p50 {row['p50'] - base['p50']:+.0f} us, "
                  f"p99 {row['p99'] - base['p99']:+.0f} us (every round: "
                  f"{', '.join(f'{r:.2f}x' for r, _, _ in in_order)})")

        cluster = work / "cluster.json"
        cluster.write_text(ClusterInventory(revision=0).model_dump_json())
        d = Defender(lab, work, "--cluster-inventory", str(cluster))
        try:
            own = d.wait(lambda s: True)
            main_kib, workers_kib = d.rss_kib()
            print(f"memory, {len(own['protected'])} protected addresses: main {main_kib:,} KiB, "
                  f"worker {workers_kib:,} KiB RSS")
            cluster.write_text(thousand(lab).model_dump_json())
            s = d.wait(lambda s: s.get("cluster_revision") == 1 and s["cluster_protected"] > 1000)
            # A worker applies pending inventory updates before it decides a SYN:
            # once one more SYN is decided, the worker holds the new inventory.
            decided = s["counters"]["accepted"]
            lab.connect("frontend", "api", FIRST_SEEN_PORT + FIRST_SEEN_PORTS - 1)
            d.wait(lambda s: s["counters"]["accepted"] > decided)
            main_kib, workers_kib = d.rss_kib()
            print(f"memory, {s['cluster_protected']:,} protected addresses (cluster set): "
                  f"main {main_kib:,} KiB, worker {workers_kib:,} KiB RSS")
            for i in range(args.starts):
                lab.start_container(Container(name=f"gap{i}", host="node-1",
                                              image="shop/gap:1", namespace="bench"))
            s = d.wait(lambda s: s["start_to_protected_ms"]["count"] >= args.starts)
            gaps = sorted(g for ln in d.log.read_text().splitlines()
                          if '"container protected"' in ln
                          and (g := json.loads(ln)["start_to_protected_ms"]) is not None)
            print(f"start-to-named gap ({len(gaps)} containers, runtime start time to the "
                  f"Defender naming the container; its network's addresses are queued from the "
                  f"start): min {gaps[0]:.0f} ms, median {gaps[len(gaps) // 2]:.0f} ms, "
                  f"max {gaps[-1]:.0f} ms")
        finally:
            d.stop()
    finally:
        for srv in (server, many):
            srv.kill()
            srv.wait()
        Lab.down(LAB)
    print(f"total {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()
