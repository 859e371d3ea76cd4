"""Lab benchmark: how long `up` and `down` of a topology take, and one connect.

For ROUNDS rounds it brings the topology up (lab name ``cnnfupdown``, its own: another
benchmark running at the same time must not lose its lab), makes
connects from inside a container, and takes it down, printing each figure
beside a baseline measured in the same run:

- up / down, beside creating and deleting the same number of bare network
  namespaces (what the kernel part alone costs) and one `podman --version`
  (what a Podman invocation costs; up runs a few per container);
- a connect through the lab's helper (a process entering the container's
  namespace), beside a direct connect made inside that helper (its own
  figure, i.e. the network part alone).

Goals (issue 3): up of `shop` < 60 s once images exist, down < 20 s.
Traffic stays inside the lab's namespaces.

    sudo .venv/bin/python bench/lab_updown.py [--topology shop] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from cnnf.lab import Lab, load_topology
from cnnf.lab.image import rootfs_tarball

NAME = "cnnfupdown"


def bare_namespaces(count: int) -> tuple[float, float]:
    names = [f"cnnf-{NAME}-bare{i}" for i in range(count)]
    t0 = time.perf_counter()
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    t1 = time.perf_counter()
    for n in names:
        subprocess.run(["ip", "netns", "delete", n], check=True)
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default="shop")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    topology = load_topology(args.topology)
    t0 = time.perf_counter()
    rootfs_tarball()  # images "exist" from here on: the tarball is cached
    print(f"rootfs tarball ready in {time.perf_counter() - t0:.2f} s")
    Lab.down(NAME)

    ups, downs, helper_ms, inner_ms = [], [], [], []
    pair = next(((p.source, p.destination, p.port) for p in topology.traffic), None)
    for r in range(args.rounds):
        t0 = time.perf_counter()
        lab = Lab.up(topology, name=NAME)
        ups.append(time.perf_counter() - t0)
        if pair:
            for _ in range(5):
                t0 = time.perf_counter()
                result = lab.connect(*pair)
                helper_ms.append((time.perf_counter() - t0) * 1000)
                inner_ms.append(result.ms)
        t0 = time.perf_counter()
        Lab.down(NAME)
        downs.append(time.perf_counter() - t0)
        print(f"round {r + 1}: up {ups[-1]:.2f} s, down {downs[-1]:.2f} s")

    count = len(lab.plan.netns)
    ns_add, ns_del = bare_namespaces(count)
    t0 = time.perf_counter()
    subprocess.run(["podman", "--version"], capture_output=True, check=True)
    podman_s = time.perf_counter() - t0

    n_containers = len(topology.containers)
    print(f"\ntopology {args.topology}: {count} namespaces, {n_containers} containers")
    print(f"up    median {statistics.median(ups):6.2f} s   (goal < 60 s)"
          f"   baseline: {count} bare netns add {ns_add:.3f} s, one `podman --version` "
          f"{podman_s:.3f} s")  # fmt: skip
    print(f"down  median {statistics.median(downs):6.2f} s   (goal < 20 s)"
          f"   baseline: {count} bare netns delete {ns_del:.3f} s")  # fmt: skip
    if pair:
        print(f"connect {pair[0]}->{pair[1]}:{pair[2]} via helper median "
              f"{statistics.median(helper_ms):.1f} ms   baseline: the connect itself "
              f"median {statistics.median(inner_ms):.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
